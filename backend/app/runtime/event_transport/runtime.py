"""The per-process runtime: the connection supervisor (reconnect with backoff), the sender and the
receiver on one event loop; the process's state (reset in a forked child) and the public API."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import Pool

from backend.app.config import Settings
from backend.app.core.events import Event, EventType, bus
from backend.app.runtime.event_transport.base import (
    CONNECTION_NAME_PREFIX,
    PG_CHANNEL,
    REDIS_CHANNEL,
    EventBusKind,
    EventTransport,
    PayloadRejected,
)
from backend.app.runtime.event_transport.memory import InProcessTransport
from backend.app.runtime.event_transport.outbox import MAX_QUEUED, Outbox
from backend.app.runtime.event_transport.postgres_notify import (
    PG_NOTIFY,
    PostgresNotifyTransport,
    pg_address,
)
from backend.app.runtime.event_transport.redis_pubsub import RedisTransport
from backend.app.runtime.event_transport.selection import (
    event_bus_redis_url,
    postgres_dsn,
    resolve_event_bus_kind,
)
from backend.app.runtime.event_transport.wire import (
    LogPointer,
    decode,
    encode_envelope,
    log_pointer,
    wire_event,
    wire_overhead,
    wire_pointer,
)
from backend.app.runtime.loops import Backoff, sleep_or_event

logger = logging.getLogger("backend.app.runtime.event_transport")  # one logger name for the whole bus

LOG_READ_PAGE = 5000  # lines read per query when resolving a log pointer
LOG_MARKS_KEPT = 10_000  # deployments whose last delivered seq a receiver remembers
SEND_BATCH = 100
BACKOFF_MIN_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
STABLE_CONNECTION_SECONDS = 30.0  # a connection that lived this long resets the backoff


def build_transport(settings: Settings, channel: str | None = None) -> EventTransport:
    kind = resolve_event_bus_kind(settings)
    name = CONNECTION_NAME_PREFIX + _origin[:12]
    if kind == "postgres":
        return PostgresNotifyTransport(postgres_dsn(settings), channel or PG_CHANNEL, application_name=name)
    if kind == "redis":
        return RedisTransport(event_bus_redis_url(settings), channel or REDIS_CHANNEL, client_name=name)
    return InProcessTransport()


class _Runtime:
    """The listener (connection supervisor) and the sender of one process, on one event loop."""

    def __init__(self, kind: EventBusKind, transport: EventTransport, loop: asyncio.AbstractEventLoop, listen: bool):
        self.kind = kind
        self.transport = transport
        self.loop = loop
        self.thread = threading.get_ident()  # the loop's (a runtime is made on its loop)
        self.listen = listen
        # (host, port, database) of the PostgreSQL bus: a session on it may send its events in its transaction
        self.database = pg_address(make_url(transport.dsn)) if isinstance(transport, PostgresNotifyTransport) else None
        self._databases: dict[int, tuple[object, bool]] = {}  # id(engine) -> (engine, same database as the bus)
        self.origin = _origin
        self.max_envelope = transport.max_payload - wire_overhead(self.origin)
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()
        self.retry = asyncio.Event()  # set: reconnect now, without waiting for the rest of the backoff
        self.connected = not transport.crosses_processes
        self.error: str | None = None
        self.sent = 0
        self.received = 0
        self.connections = 0
        self.number = 0
        self.resolved = 0
        self.inbox: deque[Event | LogPointer] = deque()
        self.inbox_ready = asyncio.Event()
        self.log_marks: OrderedDict[str, int] = OrderedDict()  # deployment -> last seq delivered here
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        if not self.transport.crosses_processes:
            return
        self.tasks = [
            self.loop.create_task(self._supervise(), name="event-bus-connection"),
            self.loop.create_task(self._send_loop(), name="event-bus-sender"),
            self.loop.create_task(self._receive_loop(), name="event-bus-receiver"),
        ]
        self.wake.set()

    def _encode(self, evt: Event) -> tuple[str, str]:
        if evt.type is EventType.DEPLOYMENT_LOGS_UPDATE:
            return "logs", log_pointer(evt)
        return "event", encode_envelope(evt.to_dict(), self.max_envelope)

    def forward(self, evt: Event) -> None:
        """``bus`` forwarder: encode now (a snapshot of ``data``), send later. Any thread, never blocks."""
        item = self._encode(evt)
        if not _outbox.put(item) and _outbox.dropped % 1000 == 1:
            logger.warning(
                "event bus: %d event(s) waiting for the %s transport; dropped the oldest (%d dropped so far)",
                MAX_QUEUED,
                self.kind,
                _outbox.dropped,
            )
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the loop is closed: the event waits for start_event_bus on a new loop
            pass

    def send_in_transaction(self, session, events: list[Event]) -> bool:
        """``bus`` transactional sender (PostgreSQL): ``pg_notify`` every event of the committing transaction
        on its own connection, from ``before_commit``. PostgreSQL delivers them when (and only if) the
        transaction commits, in commit order, and the listeners have them by the time the commit returns:
        no sender task to wait for, no event sent for a rolled-back change, none lost if this process dies
        right after committing. Declines (the events then take the sender task) for a session of another
        database than the bus's or one committing on another thread than the bus's loop."""
        if threading.get_ident() != self.thread or not self._same_database(session):
            return False
        payloads = self._frames([self._encode(evt) for evt in events])
        params = [{"channel": self.transport.channel, "payload": p} for p in payloads]
        session.execute(PG_NOTIFY, params[0] if len(params) == 1 else params)
        self.sent += len(payloads)
        return True

    def _same_database(self, session) -> bool:
        bind = session.get_bind()
        known = self._databases.get(id(bind))
        if known is None or known[0] is not bind:
            same = bind.dialect.name == "postgresql" and pg_address(bind.url) == self.database
            known = self._databases[id(bind)] = (bind, same)
        return known[1]

    def on_message(self, payload: str | bytes) -> None:
        try:
            origin, item = decode(payload)
        except Exception:  # noqa: BLE001 - a foreign or corrupt message must not stop the listener
            logger.warning("event bus: ignoring a malformed message on %s: %.200r", self.transport.channel, payload)
            return
        if origin == self.origin:
            return
        self.received += 1
        if isinstance(item, Event) and not self.inbox:
            bus.deliver(item)  # nothing to wait for: deliver at once
            return
        self.inbox.append(item)
        self.inbox_ready.set()

    async def _receive_loop(self) -> None:
        """Deliver received items in order; a log pointer is resolved (lines read) before what follows."""
        while True:
            await self.inbox_ready.wait()
            while self.inbox:
                item = self.inbox[0]
                try:
                    if isinstance(item, LogPointer):
                        await self._resolve_pointer(item)
                    else:
                        bus.deliver(item)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.warning("event bus: could not read the log lines of %s", item, exc_info=True)
                self.inbox.popleft()
            self.inbox_ready.clear()

    async def _resolve_pointer(self, pointer: LogPointer) -> None:
        """Read the lines a log pointer announces (and any this process missed) and deliver them."""
        from backend.app import database
        from backend.app.services.deployments.logs import LogLine, read_logs

        known = self.log_marks.pop(pointer.deployment_id, None)
        start = pointer.first_seq - 1 if known is None else min(known, pointer.first_seq - 1)
        mark = max(pointer.last_seq, known or 0)
        self.log_marks[pointer.deployment_id] = mark
        while len(self.log_marks) > LOG_MARKS_KEPT:
            self.log_marks.popitem(last=False)
        probe = Event(
            EventType.DEPLOYMENT_LOGS_UPDATE,
            pointer.deployment_id,
            pointer.organization_id,
            {"logs": [], "append": True, "timestamp": pointer.timestamp},
        )
        if start >= pointer.last_seq or not bus.wants(probe):
            return
        timestamp = datetime.fromisoformat(pointer.timestamp.replace("Z", "+00:00"))
        while start < pointer.last_seq:
            async with database.AsyncSessionLocal() as session:
                lines: list[LogLine] = await read_logs(
                    session, deployment_id=pointer.deployment_id, since_seq=start, limit=min(LOG_READ_PAGE, pointer.last_seq - start)
                )
            if not lines:
                return
            self.resolved += len(lines)
            bus.deliver(
                Event(
                    EventType.DEPLOYMENT_LOGS_UPDATE,
                    pointer.deployment_id,
                    pointer.organization_id,
                    {"logs": [line.to_dict() for line in lines], "append": True, "timestamp": pointer.timestamp},
                    timestamp,
                )
            )
            start = lines[-1].seq

    def nudge(self) -> None:
        """Reconnect now if disconnected (any thread): the server is known to answer again."""
        if not self.connected:
            try:
                self.loop.call_soon_threadsafe(self.retry.set)
            except RuntimeError:  # the loop has closed
                pass

    async def _supervise(self) -> None:
        backoff = Backoff(BACKOFF_MIN_SECONDS, BACKOFF_MAX_SECONDS)  # jittered waits: runtime/loops.py
        try:
            while True:
                self.retry.clear()
                try:
                    await self.transport.connect(self.on_message if self.listen else None)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - retried with backoff, never fatal
                    self.error = f"{type(exc).__name__}: {exc}"
                    logger.warning(
                        "event bus: cannot connect the %s transport (%s); retrying in %.1fs",
                        self.kind,
                        self.error,
                        backoff.delay,
                    )
                    await sleep_or_event(backoff.next(), self.retry)
                    continue
                connected_at = time.monotonic()
                self.connected, self.error = True, None
                self.connections += 1
                self.ready.set()
                self.wake.set()
                if self.connections > 1:
                    logger.info("event bus: %s transport reconnected", self.kind)
                    if self.listen:
                        bus.missed()  # what other processes sent while this one was not listening
                try:
                    await self.transport.wait_closed()
                    reason = "connection closed"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    reason = f"{type(exc).__name__}: {exc}"
                self.connected, self.error = False, reason
                self.ready.clear()
                await self.transport.close()
                if time.monotonic() - connected_at > STABLE_CONNECTION_SECONDS:
                    backoff.reset()
                logger.warning("event bus: %s transport connection lost (%s); reconnecting in %.1fs", self.kind, reason, backoff.delay)
                self.retry.clear()
                await sleep_or_event(backoff.next(), self.retry)
        finally:
            self.connected = False
            self.ready.clear()
            await self.transport.close()

    async def _send_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while _outbox.pending():
                await self.ready.wait()
                batch = _outbox.take(SEND_BATCH)
                if not batch:
                    break
                try:
                    sent, dropped = await self._send(batch)
                except asyncio.CancelledError:
                    _outbox.requeue(batch)
                    raise
                except Exception as exc:  # noqa: BLE001 - the supervisor reconnects; the batch waits
                    _outbox.requeue(batch)
                    logger.warning("event bus: sending %d event(s) failed (%s); will retry", len(batch), exc)
                    await asyncio.sleep(0.05)
                    continue
                self.sent += sent
                _outbox.done(sent, dropped)

    async def _send(self, batch: list[tuple[str, str]]) -> tuple[int, int]:
        """Send a batch; on :class:`PayloadRejected` retry event by event and drop only the refused ones."""
        try:
            await self.transport.send(self._frames(batch))
            return len(batch), 0
        except PayloadRejected as exc:
            if len(batch) == 1:
                logger.error("event bus: the %s server refused an event (%s); dropped", self.kind, exc)
                return 0, 1
        sent = dropped = 0
        for item in batch:
            ok, bad = await self._send([item])
            sent, dropped = sent + ok, dropped + bad
        return sent, dropped

    def _frames(self, batch: list[tuple[str, str]]) -> list[str]:
        payloads = []
        for kind, body in batch:
            self.number += 1
            payloads.append((wire_pointer if kind == "logs" else wire_event)(self.origin, self.number, body))
        return payloads

    def status(self) -> dict[str, Any]:
        return {
            "transport": self.kind,
            "started": True,
            "connected": self.connected,
            "listening": self.listen and self.connected and self.transport.crosses_processes,
            "channel": self.transport.channel or None,
            "origin": self.origin,
            "sent": self.sent,
            "received": self.received,
            "log_lines_read": self.resolved,
            "queued": _outbox.pending(),
            "dropped": _outbox.dropped,
            "connections": self.connections,
            "error": self.error,
        }


_origin = uuid.uuid4().hex
_outbox = Outbox()
_runtime: _Runtime | None = None
_state_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A forked child (Celery prefork) inherits neither the loop nor the connection: it starts
    # its own bus, with its own origin so that its parent's and siblings' events are not taken for its own.
    global _origin, _outbox, _runtime, _state_lock
    _origin = uuid.uuid4().hex
    _outbox = Outbox()
    _runtime = None
    _state_lock = threading.Lock()
    bus.set_forwarder(None)
    bus.set_transactional_sender(None)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _on_database_connect(_dbapi_connection, _record) -> None:
    """Pool ``connect`` event (every pool of the process, any thread): the database answers again, so a
    PostgreSQL bus waiting out its backoff reconnects at once."""
    runtime = _runtime
    if runtime is not None and runtime.kind == "postgres" and not runtime.connected:
        runtime.nudge()


if not sa_event.contains(Pool, "connect", _on_database_connect):
    sa_event.listen(Pool, "connect", _on_database_connect)


# --- public API -----------------------------------------------------------------------------------


async def start_event_bus(settings: Settings, *, listen: bool = True, channel: str | None = None) -> None:
    """Start sending this process's events to the others and (``listen``) delivering theirs here.

    Idempotent: a bus already running (on any live loop) is kept, whatever ``settings`` say now. A bus whose
    loop has closed (a finished ``asyncio.run``) is replaced, keeping the events it had not sent. Returns
    at once; the connection is made, and remade after a loss, in the background. Raises ``ValueError``
    only for an impossible configuration. ``listen=False`` suits processes that only produce events
    (Celery workers): they do not receive every other process's events for nothing.
    """
    global _runtime
    loop = asyncio.get_running_loop()
    with _state_lock:
        current = _runtime
        if current is not None and not current.loop.is_closed():
            return
        if current is not None:
            logger.info("event bus: its event loop has closed; restarting it on the current loop")
        kind = resolve_event_bus_kind(settings)
        runtime = _Runtime(kind, build_transport(settings, channel), loop, listen)
        _runtime = runtime
        runtime.start()
        bus.set_forwarder(runtime.forward if runtime.transport.crosses_processes else None)
        bus.set_transactional_sender(runtime.send_in_transaction if kind == "postgres" else None)
    logger.info(
        "event bus: %s transport%s",
        kind,
        f" on channel {runtime.transport.channel!r}" if runtime.transport.crosses_processes else " (this process only)",
    )


async def flush_events(timeout: float = 5.0) -> bool:
    """Wait until every event published so far has been sent; ``False`` after ``timeout`` seconds.

    Works from any event loop. ``True`` at once when nothing crosses processes.
    """
    runtime = _runtime
    if runtime is None or not runtime.transport.crosses_processes:
        return True
    future = _outbox.waiter()
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
    except TimeoutError:
        logger.warning(
            "event bus: %d event(s) still unsent after %.1fs (%s transport, connected=%s, error=%s)",
            _outbox.pending(),
            timeout,
            runtime.kind,
            runtime.connected,
            runtime.error,
        )
        return False


async def stop_event_bus(timeout: float = 5.0) -> None:
    """Send what is queued (up to ``timeout`` seconds), then close the connection. Idempotent.

    Events still unsent after ``timeout`` are dropped with a warning.
    """
    global _runtime
    runtime = _runtime
    if runtime is None:
        return
    current = asyncio.get_running_loop()
    if runtime.loop is not current and runtime.loop.is_running():
        # The bus runs on another thread's loop: stop it there.
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(stop_event_bus(timeout), runtime.loop))
        return
    if runtime.loop is current:
        await flush_events(timeout)
    with _state_lock:
        if _runtime is runtime:
            _runtime = None
            bus.set_forwarder(None)
            bus.set_transactional_sender(None)
    if runtime.loop is current:
        for task in runtime.tasks:
            task.cancel()
        await asyncio.gather(*runtime.tasks, return_exceptions=True)
    dropped = _outbox.drop_all()
    if dropped:
        logger.warning("event bus: stopped with %d event(s) not sent to other processes", dropped)


def event_bus_status() -> dict[str, Any]:
    """For ``/health``: ``transport``, ``connected``, ``sent``, ``received``, ``error`` and more."""
    runtime = _runtime
    if runtime is not None:
        return runtime.status()
    return {
        "transport": None,
        "started": False,
        "connected": False,
        "listening": False,
        "channel": None,
        "origin": _origin,
        "sent": 0,
        "received": 0,
        "log_lines_read": 0,
        "queued": _outbox.pending(),
        "dropped": _outbox.dropped,
        "connections": 0,
        "error": None,
    }
