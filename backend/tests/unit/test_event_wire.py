"""Pure logic of the event bus: typed payloads, the wire encoding across processes, bounded streams."""

from __future__ import annotations

import asyncio
import json

import pytest

from backend.app.core.events import (
    Event,
    EventType,
    LocalEventBus,
    LogLineData,
    LogsUpdateData,
    Overflow,
    ProgressData,
    StatusChangedData,
)
from backend.app.database import utcnow
from backend.app.runtime.event_transport.wire import LogPointer, encode_envelope
from backend.app.runtime.event_transport.wire import decode as _decode
from backend.app.runtime.event_transport.wire import log_pointer as _pointer
from backend.app.runtime.event_transport.wire import wire_event as _wire
from backend.app.runtime.event_transport.wire import wire_pointer as _wire_pointer


def status_event(error_message: str | None = None) -> Event:
    return Event.of(
        EventType.DEPLOYMENT_STATUS_CHANGED,
        "dep-1",
        "org-1",
        StatusChangedData(new_status="failed", old_status="deploying", name="web", error_message=error_message),
    )


def test_payloads_are_typed_and_checked():
    evt = status_event("boom")
    assert evt.data == {
        "new_status": "failed",
        "old_status": "deploying",
        "name": "web",
        "error_message": "boom",
        "error_code": None,  # not a sentence of deployment_words: no code
        "error_params": {},
        "attempt": None,
        "dispatch_latency_seconds": None,
        "revision": None,
    }
    with pytest.raises(TypeError, match="carries StatusChangedData"):
        Event.of(EventType.DEPLOYMENT_STATUS_CHANGED, "d", "o", ProgressData(progress=1, current_step=1, total_steps=2))
    with pytest.raises(ValueError):
        ProgressData(progress=101, current_step=1, total_steps=1)


def test_an_oversized_event_is_truncated_with_a_marker_to_fit():
    evt = status_event("é" * 20_000)
    encoded = encode_envelope(evt.to_dict(), 7000)
    assert len(encoded) <= 7000 and encoded.isascii()
    message = json.loads(encoded)["data"]["error_message"]
    assert message.startswith("é") and message.endswith("characters]") and "truncated" in message
    small = status_event("short")
    assert json.loads(encode_envelope(small.to_dict(), 7000)) == small.to_dict()


def test_log_updates_cross_as_a_small_pointer_whatever_their_size():
    lines = [LogLineData(seq=i, timestamp=utcnow(), level="info", message="x" * 5000) for i in range(41, 241)]
    evt = Event.of(EventType.DEPLOYMENT_LOGS_UPDATE, "dep-1", "org-1", LogsUpdateData(logs=lines, timestamp=utcnow()))
    wire = _wire_pointer("origin-a", 7, _pointer(evt))
    assert len(wire) < 300
    origin, pointer = _decode(wire)
    assert origin == "origin-a" and isinstance(pointer, LogPointer)
    assert (pointer.deployment_id, pointer.organization_id, pointer.first_seq, pointer.last_seq) == ("dep-1", "org-1", 41, 240)
    status = status_event("boom")
    origin, decoded = _decode(_wire("origin-b", 8, encode_envelope(status.to_dict(), 7000)))
    assert (origin, decoded) == ("origin-b", status)  # other events cross whole


async def test_a_stream_is_bounded_and_reports_what_it_dropped():
    bus = LocalEventBus()
    with bus.stream(lambda e: e.deployment_id == "dep-1", maxsize=3) as stream:
        for i in range(5):
            bus.publish(Event.of(EventType.DEPLOYMENT_PROGRESS, "dep-1", "org", ProgressData(progress=i, current_step=i, total_steps=9)))
        bus.publish(Event.of(EventType.DEPLOYMENT_PROGRESS, "dep-2", "org", ProgressData(progress=0, current_step=0, total_steps=9)))
        got = [await asyncio.wait_for(stream.__anext__(), 1) for _ in range(4)]
        assert [g.data["progress"] for g in got[:3]] == [0, 1, 2]  # the oldest kept, the newest dropped
        assert got[3] == Overflow(2)
        assert stream.get_nowait() is None
        assert bus.published_by_type["DEPLOYMENT_PROGRESS"] == 6
    assert bus.subscriber_count == 0  # closing the stream unsubscribed it


async def test_a_stream_is_fed_from_another_thread():
    bus = LocalEventBus()
    with bus.stream() as stream:
        await asyncio.to_thread(bus.publish, status_event("from a worker thread"))
        evt = await asyncio.wait_for(stream.__anext__(), 2)
        assert evt.data["error_message"] == "from a worker thread"


def test_every_event_and_frame_is_in_the_openapi_document(tmp_path):
    import re

    from backend.app.main import create_app
    from backend.tests.conftest import make_settings

    schema = create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/x.db")).openapi()
    components = schema["components"]["schemas"]
    server = set(components["ServerFrame"]["discriminator"]["mapping"])
    assert {str(kind) for kind in EventType} | {"resync", "error", "pong", "heartbeat", "SERVICE_LOGS"} <= server
    assert set(components["ClientFrame"]["discriminator"]["mapping"]) == {"auth", "subscribe", "unsubscribe", "ping"}
    assert components["DeploymentCreatedEvent"]["properties"]["data"] == {"$ref": "#/components/schemas/DeploymentRead"}
    assert components["StatusChangedData"]["required"] == ["new_status", "old_status", "name"]
    refs = set(re.findall(r"#/components/schemas/([\w.-]+)", json.dumps(schema)))
    assert refs <= set(components)  # every reference resolves
    sse = schema["paths"]["/api/v1/deployments/{deployment_id}/events"]["get"]["responses"]["200"]
    assert sse["content"]["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/ServerFrame"}
