"""The JSON of the frames the real-time clients send: :func:`encode_event` (an event encoded once, whatever the
number of clients), :func:`logs_frame` (log lines read from the database or part of a live batch) and
:func:`dumps` (any other frame); and :func:`text_frame`, a text message's WebSocket frame."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from backend.app.core.events import Event, EventType, iso_utc
from backend.app.services.deployments.logs import LogLine


def dumps(frame: dict) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str)


_encoded: dict[int, tuple[Event, str]] = {}


def encode_event(evt: Event) -> str:
    """The JSON of an event, encoded once however many clients receive it: the last few hundred are kept,
    keyed by the event's identity (the event is kept with its text, so an id reused by a later event never
    returns a stale text)."""
    entry = _encoded.get(id(evt))
    if entry is not None and entry[0] is evt:
        return entry[1]
    text = dumps(evt.to_dict())
    if len(_encoded) > 256:
        _encoded.clear()
    _encoded[id(evt)] = (evt, text)
    return text


#: The largest message sent as one frame. Above it a message goes out in fragments of at most this size
#: (``api/realtime_listener.py``: picows hands a larger frame's header to the transport as a view of a buffer it
#: reuses, and a backed-up socket then sent a header overwritten by the next frame's).
FRAME_BYTES = 8192


def text_frame(payload: bytes) -> bytes | None:
    """The whole frame of a text message as a server sends it (RFC 6455 5.2: final, unmasked), or None for a
    payload over :data:`FRAME_BYTES`."""
    size = len(payload)
    if size > FRAME_BYTES:
        return None
    if size < 126:
        return bytes((0x81, size)) + payload
    return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload


def latency(evt: Event) -> float:
    """Seconds since ``evt`` was emitted (its timestamp)."""
    return max(0.0, (datetime.now(UTC) - evt.timestamp).total_seconds())


def logs_frame(deployment_id: str, organization_id: str, lines: list[LogLine] | list[dict]) -> dict:
    now = iso_utc(datetime.now(UTC))
    logs = [line if isinstance(line, dict) else line.to_dict() for line in lines]
    return {
        "type": str(EventType.DEPLOYMENT_LOGS_UPDATE),
        "deployment_id": deployment_id,
        "organization_id": organization_id,
        "timestamp": now,
        "data": {"logs": logs, "append": True, "timestamp": now},
    }
