"""Events across processes, through the real PostgreSQL (LISTEN/NOTIFY) and Redis (pub/sub).

The other process is a real one: ``event_bus_peer.py`` run with the venv's Python. It starts the bus with
the same settings, commits or publishes, flushes and reports on stdout; this process has its bus started
too and checks what its local subscribers receive. Connections are killed server-side
(``pg_terminate_backend``, ``CLIENT KILL``) to test reconnection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.core.events import Event, EventType, bus, queue_event
from backend.app.database import utcnow
from backend.app.models import LogLevel, Organization
from backend.app.runtime.event_transport import (
    CONNECTION_NAME_PREFIX,
    event_bus_status,
    flush_events,
    postgres_dsn,
    start_event_bus,
    stop_event_bus,
)
from backend.tests import conftest
from backend.tests.conftest import make_settings, require_service

PROJECT_ROOT = Path(__file__).resolve().parents[3]
REDIS_URL = "redis://127.0.0.1:6379/0"
#: How long a wait may take before the test fails: a peer is a new Python process, which a loaded machine (a CI run
#: at load 20+) takes well over 20 s to start and import the backend in
TIMEOUT = 60.0

on_postgres = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)


# --- helpers ----------------------------------------------------------------------------------------


def make_event(kind: EventType = EventType.DEPLOYMENT_STATUS_CHANGED, **data) -> Event:
    defaults = {
        EventType.DEPLOYMENT_STATUS_CHANGED: {"new_status": "running", "old_status": "deploying", "name": "web", "error_message": None},
        EventType.DEPLOYMENT_PROGRESS: {"progress": 40, "current_step": 3, "total_steps": 5, "step_name": "pull"},
    }.get(kind, {})
    return Event(kind, str(uuid.uuid4()), str(uuid.uuid4()), {**defaults, **data})


def log_event(lines: int, width: int) -> Event:
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    logs = [
        {
            "seq": i,
            "timestamp": (start + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
            "level": "info",
            "message": f"{i:05d} " + "é-x" * ((width - 6) // 3),
        }
        for i in range(1, lines + 1)
    ]
    return Event(
        EventType.DEPLOYMENT_LOGS_UPDATE,
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        {"logs": logs, "append": True, "timestamp": "2026-01-01T12:00:01Z"},
    )


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; bus status {event_bus_status()}")
        await asyncio.sleep(0.02)


def of(received: list[Event], evt: Event) -> list[Event]:
    return [e for e in received if e.deployment_id == evt.deployment_id]


class Peer:
    """The other process. Its stderr goes to a file so that a chatty peer never blocks on a full pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.lines: list[dict] = []

    @classmethod
    async def start(cls, spec: dict, tmp_path: Path) -> Peer:
        stderr_path = tmp_path / f"peer-{uuid.uuid4().hex[:8]}.stderr"
        with stderr_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "backend.tests.integration.event_bus_peer",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=PROJECT_ROOT,
            )
        proc.stdin.write(json.dumps(spec).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        await proc.stdin.wait_closed()
        return cls(proc, stderr_path)

    async def next_line(self, key: str) -> dict:
        """Read lines up to the first one with ``key``."""
        while True:
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
            except TimeoutError:
                pytest.fail(f"peer said nothing for {TIMEOUT}s; stderr:\n{self.stderr_path.read_text()[-3000:]}")
            if not raw:
                await self.proc.wait()
                pytest.fail(f"peer exited ({self.proc.returncode}) before {key!r}; stderr:\n{self.stderr_path.read_text()[-3000:]}")
            line = json.loads(raw)
            self.lines.append(line)
            if key in line:
                return line

    async def finish(self) -> dict:
        done = await self.next_line("done")
        await asyncio.wait_for(self.proc.stdout.read(), TIMEOUT)
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        assert code == 0, self.stderr_path.read_text()[-3000:]
        assert done["flushed"], done
        return done

    def received(self) -> list[dict]:
        return [line["received"] for line in self.lines if "received" in line]

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.communicate()


@dataclass
class Setup:
    """What both processes need: the same settings and channel, and how to kill our listener."""

    transport: str
    db: conftest.TestDatabase
    values: dict
    channel: str | None

    @property
    def settings(self):
        values = dict(self.values)
        return make_settings(values.pop("DATABASE_URL"), **values)

    def spec(self, actions: list[dict], **extra) -> dict:
        return {
            "settings": {**self.values, "SECRET_KEY": conftest.TEST_SECRET_KEY, "CELERY_ENABLED": False},
            "channel": self.channel,
            "actions": actions,
            **extra,
        }

    async def kill_our_connection(self) -> int:
        """Kill this process's listening connection server-side; returns how many were killed."""
        name = CONNECTION_NAME_PREFIX + event_bus_status()["origin"][:12]
        if self.transport == "postgres":
            import asyncpg

            conn = await asyncpg.connect(postgres_dsn(self.db.settings))
            try:
                rows = await conn.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()",
                    name,
                )
            finally:
                await conn.close()
            return sum(1 for row in rows if row[0])
        from redis.asyncio import Redis

        # Only our own pub/sub connection: ``CLIENT KILL TYPE pubsub`` would also cut every other pub/sub
        # client of this shared Redis (other test runs, Celery result subscribers).
        client = Redis.from_url(REDIS_URL)
        try:
            ids = [c["id"] for c in await client.client_list(_type="pubsub") if c.get("name") == name]
            for client_id in ids:
                await client.client_kill_filter(_id=client_id)
        finally:
            await client.aclose()
        return len(ids)


async def _redis_reachable() -> str | None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    finally:
        await client.aclose()
    return None


@pytest.fixture(params=["postgres", "redis"])
async def bus_setup(request, db: conftest.TestDatabase) -> Setup:
    assert db.kind == "postgresql"
    if request.param == "postgres":
        # The test database is private to this test session, so the default channel is isolated already.
        return Setup("postgres", db, {"DATABASE_URL": db.settings.DATABASE_URL, "EVENT_BUS": "postgres"}, None)
    problem = await _redis_reachable()
    if problem:
        require_service("Redis", f"{REDIS_URL}: {problem}")
    values = {"DATABASE_URL": db.settings.DATABASE_URL, "EVENT_BUS": "redis", "EVENT_BUS_REDIS_URL": REDIS_URL}
    # Pub/sub channels are global to a Redis server: a channel of our own keeps other runs out.
    return Setup("redis", db, values, f"windflow:events:test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def running(bus_setup: Setup, events: list[Event]) -> AsyncIterator[Setup]:
    """Our bus, started and listening."""
    await start_event_bus(bus_setup.settings, channel=bus_setup.channel)
    try:
        await wait_until(lambda: event_bus_status()["connected"], "our bus to connect")
        assert event_bus_status()["transport"] == bus_setup.transport
        yield bus_setup
    finally:
        await stop_event_bus()
    assert event_bus_status()["started"] is False


# --- across processes -------------------------------------------------------------------------------


@on_postgres
async def test_committed_events_arrive_with_the_exact_envelope(running: Setup, events, tmp_path, session):
    origin = event_bus_status()["origin"]
    await start_event_bus(make_settings("sqlite+aiosqlite:///unused.db"))  # idempotent: the running bus stays
    assert (event_bus_status()["origin"], event_bus_status()["transport"]) == (origin, running.transport)

    status = make_event(EventType.DEPLOYMENT_STATUS_CHANGED, error_message="l'image « web » est introuvable")
    progress = make_event(EventType.DEPLOYMENT_PROGRESS)
    direct = make_event(EventType.DEPLOYMENT_PROGRESS, progress=100, step_name="done")
    peer = await Peer.start(
        running.spec(
            [
                {"do": "commit", "event": status.to_dict()},
                {"do": "commit", "event": progress.to_dict()},
                {"do": "publish", "event": direct.to_dict()},
            ]
        ),
        tmp_path,
    )
    try:
        await peer.finish()
        await wait_until(lambda: of(events, direct), "the directly published event")
    finally:
        await peer.kill()

    ids = {status.deployment_id, progress.deployment_id, direct.deployment_id}
    ours = [e for e in events if e.deployment_id in ids]
    assert [e.to_dict() for e in ours] == [status.to_dict(), progress.to_dict(), direct.to_dict()]
    assert ours[0] == status  # the dataclass round-trips too: type, ids, timestamp, data
    assert event_bus_status()["received"] == 3
    committed = await session.scalars(
        select(Organization.id).where(Organization.id.in_([status.organization_id, progress.organization_id]))
    )
    assert set(committed) == {status.organization_id, progress.organization_id}


@on_postgres
async def test_rolled_back_session_sends_nothing(running: Setup, events, tmp_path, session):
    rolled_back = make_event()
    committed = make_event()
    peer = await Peer.start(
        running.spec(
            [
                {"do": "rollback", "event": rolled_back.to_dict()},
                {"do": "commit", "event": committed.to_dict()},
            ]
        ),
        tmp_path,
    )
    try:
        done = await peer.finish()
        # The commit was sent after the rollback, on the same connection: had the rolled-back event been
        # sent, it would have arrived first.
        await wait_until(lambda: of(events, committed), "the committed event")
    finally:
        await peer.kill()
    assert of(events, rolled_back) == []
    assert done["done"]["sent"] == 1
    assert await session.get(Organization, rolled_back.organization_id) is None


@on_postgres
@pytest.mark.parametrize("bus_setup", ["postgres"], indirect=True)  # Redis pub/sub is not transactional
async def test_with_postgresql_a_commit_carries_its_events_even_if_the_process_dies_at_once(running: Setup, events, tmp_path):
    """PostgreSQL: the events go out with the transaction (pg_notify before COMMIT), not from a sender task
    after it. A worker that dies as its commit returns has still told every other process."""
    last_words = make_event()
    peer = await Peer.start(running.spec([{"do": "commit_then_die", "event": last_words.to_dict()}]), tmp_path)
    try:
        assert await asyncio.wait_for(peer.proc.wait(), TIMEOUT) == 3
        await wait_until(lambda: of(events, last_words), "the event of the process that died")
    finally:
        await peer.kill()
    assert [e.to_dict() for e in of(events, last_words)] == [last_words.to_dict()]


@on_postgres
async def test_a_transaction_with_a_savepoint_sends_each_event_once(running: Setup, events, tmp_path, session):
    """The events go out at the real commit, once each: not when a SAVEPOINT is released (with PostgreSQL
    they are sent inside the transaction, whose before_commit hook also runs for a SAVEPOINT)."""
    first, second, last = make_event(), make_event(), make_event()
    peer = await Peer.start(running.spec([{"do": "listen", "until": last.deployment_id}]), tmp_path)
    try:
        await peer.next_line("ready")
        queue_event(session, first)
        async with session.begin_nested():
            queue_event(session, second)
        queue_event(session, last)
        await session.commit()
        assert await flush_events(TIMEOUT)
        await peer.finish()
    finally:
        await peer.kill()
    assert peer.received() == [first.to_dict(), second.to_dict(), last.to_dict()]


@on_postgres
async def test_own_events_are_delivered_once_and_reach_the_other_process(running: Setup, events, tmp_path):
    ours = make_event()
    theirs = make_event()
    peer = await Peer.start(
        running.spec(
            [
                {"do": "listen", "until": ours.deployment_id},
                {"do": "publish", "event": theirs.to_dict()},
            ]
        ),
        tmp_path,
    )
    try:
        await peer.next_line("ready")
        bus.publish(ours)
        assert await flush_events(TIMEOUT)
        await peer.finish()
        # The peer published ``theirs`` after receiving ``ours``: an echo of ``ours`` would come first.
        await wait_until(lambda: of(events, theirs), "the peer's event")
    finally:
        await peer.kill()
    assert [e.to_dict() for e in of(events, ours)] == [ours.to_dict()]
    assert peer.received() == [ours.to_dict()]  # the peer got ours once and not its own
    status = event_bus_status()
    assert (status["sent"], status["received"]) == (1, 1)


@on_postgres
async def test_log_lines_cross_as_pointers_and_are_read_from_the_database(running: Setup, events, tmp_path, session):
    """500 long lines (~250 KB) cross as one small pointer; this process reads them back by seq, in order."""
    _, _, _, deployment = await _deployment(session)
    peer = await Peer.start(running.spec([{"do": "logs", "deployment_id": deployment, "lines": 500, "prefix": "é-x" * 160}]), tmp_path)
    try:
        done = await peer.finish()
        await wait_until(lambda: len(_lines(events, deployment)) >= 500, "all 500 lines")
    finally:
        await peer.kill()
    assert [line["seq"] for line in _lines(events, deployment)] == list(range(1, 501))
    assert _lines(events, deployment)[7]["message"] == "é-x" * 160 + " 7"
    assert done["done"]["sent"] == 1  # one pointer, whatever the size of the lines
    assert event_bus_status()["log_lines_read"] == 500


@on_postgres
async def test_a_lost_log_pointer_is_repaired_by_the_next_one(running: Setup, events, tmp_path, session):
    _, _, _, deployment = await _deployment(session)
    gate = tmp_path / "reconnected"
    peer = await Peer.start(
        running.spec(
            [
                {"do": "logs", "deployment_id": deployment, "lines": 3, "prefix": "a"},
                {"do": "wait_file", "path": str(gate)},
                {"do": "logs", "deployment_id": deployment, "lines": 4, "prefix": "c"},
            ]
        ),
        tmp_path,
    )
    try:
        await wait_until(lambda: len(_lines(events, deployment)) == 3, "the first batch")
        # Lost: written and announced while our listener is disconnected.
        assert await running.kill_our_connection() == 1
        async with database.AsyncSessionLocal() as other:
            from backend.app.services.deployments.logs import append_logs

            await append_logs(other, deployment_id=deployment, lines=[(LogLevel.INFO, f"b {i}", utcnow()) for i in range(2)])
            await other.commit()  # published by this process: only the local, in-process delivery
        await wait_until(lambda: event_bus_status()["connected"] and event_bus_status()["connections"] == 2, "the reconnection")
        events.clear()
        gate.touch()
        await peer.finish()
        await wait_until(lambda: len(_lines(events, deployment)) >= 4, "the last batch")
    finally:
        await peer.kill()
    # The receiver remembered seq 3 as the last it delivered: the pointer (6..9) also brings 4 and 5,
    # whose own notification (sent by this process, never to itself) it had not received.
    assert [(line["seq"], line["message"]) for line in _lines(events, deployment)] == [
        (4, "b 0"),
        (5, "b 1"),
        (6, "c 0"),
        (7, "c 1"),
        (8, "c 2"),
        (9, "c 3"),
    ]


async def _deployment(session) -> tuple:
    from backend.tests.factories import make_deployment

    deployment = await make_deployment(session)
    await session.commit()
    return None, None, None, deployment.id


def _lines(events: list[Event], deployment_id: str) -> list[dict]:
    return [
        line for e in events if e.deployment_id == deployment_id and e.type == EventType.DEPLOYMENT_LOGS_UPDATE for line in e.data["logs"]
    ]


@on_postgres
async def test_listener_reconnects_after_its_connection_is_killed(running: Setup, events, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="backend.app.runtime.event_transport")
    assert await running.kill_our_connection() == 1
    await wait_until(lambda: event_bus_status()["connections"] == 2 and event_bus_status()["connected"], "the listener to reconnect")
    assert any("connection lost" in r.getMessage() for r in caplog.records), caplog.text

    after = make_event()
    peer = await Peer.start(running.spec([{"do": "commit", "event": after.to_dict()}]), tmp_path)
    try:
        await peer.finish()
        await wait_until(lambda: of(events, after), "an event published after the reconnection")
    finally:
        await peer.kill()
    assert [e.to_dict() for e in of(events, after)] == [after.to_dict()]


@on_postgres
async def test_events_published_while_disconnected_are_sent_after_reconnecting(running: Setup, events, tmp_path):
    queued = make_event()
    peer = await Peer.start(running.spec([{"do": "listen", "until": queued.deployment_id}]), tmp_path)
    try:
        await peer.next_line("ready")
        assert await running.kill_our_connection() == 1
        bus.publish(queued)
        assert [e.to_dict() for e in of(events, queued)] == [queued.to_dict()]  # local delivery is immediate
        assert await flush_events(TIMEOUT)
        await peer.finish()
    finally:
        await peer.kill()
    assert peer.received() == [queued.to_dict()]
    await wait_until(lambda: event_bus_status()["connections"] == 2, "the reconnection")


# --- SQLite: nothing crosses ------------------------------------------------------------------------


async def test_sqlite_keeps_events_in_process(events):
    settings = make_settings(f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='windflow-events-')}/w.db")
    await start_event_bus(settings)
    try:
        status = event_bus_status()
        assert (status["transport"], status["connected"], status["error"]) == ("memory", True, None)
        evt = make_event()
        bus.publish(evt)
        assert await flush_events(1)
        assert of(events, evt) == [evt]
        assert event_bus_status()["sent"] == 0
    finally:
        await stop_event_bus()
