"""The event transport's pure parts: NOTIFY-sized splitting, transport choice, the outbox."""

from __future__ import annotations

import json
import uuid

import pytest

from backend.app.core import event_transport as et
from backend.app.core.events import Event, EventType
from backend.tests.conftest import make_settings

MAX = et.PG_MAX_PAYLOAD - et._wire_overhead(uuid.uuid4().hex)
SQLITE = "sqlite+aiosqlite:///./unused.db"
POSTGRES = "postgresql+asyncpg://windflow:pw@db.example:5432/windflow"


def logs_envelope(messages: list[str], append: bool = True) -> dict:
    logs = [{"seq": i, "timestamp": "2026-01-01T12:00:00.123456Z", "level": "info", "message": m}
            for i, m in enumerate(messages, start=1)]
    return Event(EventType.DEPLOYMENT_LOGS_UPDATE, "dep-1", "org-1",
                 {"logs": logs, "append": append, "timestamp": "2026-01-01T12:00:00Z"}).to_dict()


def decoded(parts: list[str]) -> list[dict]:
    for part in parts:
        assert len(part.encode()) <= MAX, len(part.encode())
        assert part.isascii()
    envelopes = [json.loads(part) for part in parts]
    for envelope in envelopes:
        Event.from_dict(envelope)  # every part is a valid envelope
    return envelopes


def test_an_event_that_fits_is_sent_unchanged():
    envelope = logs_envelope(["hello", "wörld ✓"])
    (part,) = et.split_envelope(envelope, MAX)
    assert json.loads(part) == envelope


def test_a_large_log_batch_is_split_into_complete_envelopes_in_seq_order():
    envelope = logs_envelope([f"{i:04d} " + "x" * 195 for i in range(500)])
    parts = decoded(et.split_envelope(envelope, MAX))
    assert len(parts) > 10
    assert [line for part in parts for line in part["data"]["logs"]] == envelope["data"]["logs"]
    for part in parts:
        assert {k: v for k, v in part.items() if k != "data"} == {k: v for k, v in envelope.items() if k != "data"}
        assert part["data"]["timestamp"] == envelope["data"]["timestamp"]
    # greedy packing: every part but the last is nearly full
    assert all(len(json.dumps(p, separators=(",", ":"))) > MAX - 300 for p in parts[:-1])


def test_only_the_first_part_of_a_replacing_batch_replaces():
    envelope = logs_envelope(["y" * 300] * 100, append=False)
    parts = decoded(et.split_envelope(envelope, MAX))
    assert [p["data"]["append"] for p in parts] == [False] + [True] * (len(parts) - 1)


def test_non_ascii_lines_are_sized_by_their_escaped_bytes():
    envelope = logs_envelope(["déploiement 🚀 " * 20] * 200)
    parts = decoded(et.split_envelope(envelope, MAX))
    assert [line for part in parts for line in part["data"]["logs"]] == envelope["data"]["logs"]


def test_a_line_too_long_for_one_payload_is_truncated_with_a_marker():
    long_line = "z" * 20_000
    envelope = logs_envelope(["before", long_line, "after"])
    parts = decoded(et.split_envelope(envelope, MAX))
    lines = [line for part in parts for line in part["data"]["logs"]]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert [lines[0]["message"], lines[2]["message"]] == ["before", "after"]
    kept, marker = lines[1]["message"].split("...[truncated ")
    removed = int(marker.removesuffix(" characters]"))
    assert kept == "z" * len(kept) and len(kept) > 7000
    assert len(kept) + removed == len(long_line)


def test_a_line_of_escaped_characters_is_truncated_below_the_limit():
    envelope = logs_envelope(["\U0001f680" * 3000])  # 12 bytes each once escaped
    (part,) = decoded(et.split_envelope(envelope, MAX))
    assert "...[truncated " in part["data"]["logs"][0]["message"]


def test_another_oversized_event_has_its_longest_string_truncated():
    envelope = Event(EventType.DEPLOYMENT_STATUS_CHANGED, "dep-1", "org-1",
                     {"new_status": "failed", "old_status": "deploying", "name": "web",
                      "error_message": "boom " * 5000}).to_dict()
    (part,) = decoded(et.split_envelope(envelope, MAX))
    assert part["data"]["new_status"] == "failed" and part["data"]["name"] == "web"
    assert part["data"]["error_message"].startswith("boom boom") and "...[truncated " in part["data"]["error_message"]


def test_an_event_that_cannot_shrink_enough_keeps_its_envelope_without_data():
    envelope = Event(EventType.DEPLOYMENT_PROGRESS, "dep-1", "org-1", {"steps": list(range(5000))}).to_dict()
    (part,) = decoded(et.split_envelope(envelope, MAX))
    assert part["data"] == {"truncated": True} and part["deployment_id"] == "dep-1"


def test_the_wire_message_fits_in_a_notify_payload():
    origin = uuid.uuid4().hex
    envelope_json = "x" * (et.PG_MAX_PAYLOAD - et._wire_overhead(origin))
    assert len(et._wire(origin, 10**12, envelope_json)) <= et.PG_MAX_PAYLOAD


# --- choosing a transport ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("database_url", "overrides", "kind"),
    [
        (SQLITE, {}, "memory"),
        (POSTGRES, {}, "postgres"),
        (POSTGRES, {"CELERY_BROKER_TYPE": "redis"}, "redis"),
        (SQLITE, {"CELERY_BROKER_TYPE": "redis"}, "redis"),
        (POSTGRES, {"EVENT_BUS": "memory"}, "memory"),
        (POSTGRES, {"EVENT_BUS": "redis", "EVENT_BUS_REDIS_URL": "redis://r:6379/0"}, "redis"),
    ],
    ids=["auto-sqlite", "auto-postgres", "auto-redis-broker", "auto-redis-broker-sqlite", "memory", "redis"],
)
def test_transport_choice(database_url, overrides, kind):
    settings = make_settings(database_url, **overrides)
    assert et.resolve_event_bus_kind(settings) == kind
    assert et.build_transport(settings).name == kind


def test_postgres_on_sqlite_is_refused():
    with pytest.raises(ValueError, match="EVENT_BUS=postgres needs a PostgreSQL DATABASE_URL"):
        et.resolve_event_bus_kind(make_settings(SQLITE, EVENT_BUS="postgres"))


def test_redis_url_defaults_to_the_broker():
    assert et.event_bus_redis_url(make_settings(POSTGRES, CELERY_BROKER_TYPE="redis")) == "redis://127.0.0.1:6379/1"
    assert et.event_bus_redis_url(make_settings(
        POSTGRES, CELERY_BROKER_TYPE="redis", CELERY_BROKER_URL="redis://broker:6379/3")) == "redis://broker:6379/3"
    assert et.event_bus_redis_url(make_settings(
        POSTGRES, CELERY_BROKER_TYPE="redis", EVENT_BUS_REDIS_URL="redis://events:6379/0")) == "redis://events:6379/0"
    with pytest.raises(ValueError, match="EVENT_BUS_REDIS_URL"):
        et.build_transport(make_settings(POSTGRES, EVENT_BUS="redis"))


def test_asyncpg_dsn_has_no_driver_suffix():
    assert et.postgres_dsn(make_settings("postgresql://windflow:pw@db:5432/w")) == "postgresql://windflow:pw@db:5432/w"
    assert et.postgres_dsn(make_settings(POSTGRES)) == "postgresql://windflow:pw@db.example:5432/windflow"


# --- the outbox -------------------------------------------------------------------------------------


def test_outbox_waiters_resolve_when_their_events_are_done():
    outbox = et._Outbox(limit=3)
    assert outbox.waiter().result(0) is True  # nothing queued
    outbox.put(["a"])
    outbox.put(["b"])
    first = outbox.waiter()
    outbox.put(["c"])
    second = outbox.waiter()
    batch = outbox.take(2)
    assert batch == [["a"], ["b"]] and not first.done()
    outbox.requeue(batch)  # a failed send puts the batch back in front
    assert outbox.take(10) == [["a"], ["b"], ["c"]]
    outbox.done(2)
    assert first.result(0) is True and not second.done()
    outbox.done(1)
    assert second.result(0) is True and outbox.pending() == 0


def test_outbox_drops_the_oldest_when_full_and_fails_waiters_on_stop():
    outbox = et._Outbox(limit=2)
    assert outbox.put(["a"]) and outbox.put(["b"])
    assert outbox.put(["c"]) is False
    assert (outbox.dropped, outbox.take(10)) == (1, [["b"], ["c"]])
    outbox.requeue([["b"], ["c"]])
    waiter = outbox.waiter()
    assert outbox.drop_all() == 2
    assert waiter.result(0) is False and outbox.pending() == 0
