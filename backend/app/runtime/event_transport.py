"""Events across processes: PostgreSQL LISTEN/NOTIFY, Redis pub/sub, or nothing (SQLite).

Deployments run in Celery worker processes and several backend replicas may serve WebSockets, so an
event committed in one process must reach the subscribers of every other process (DESIGN.md, "Events
and real time")::

    before_commit (PostgreSQL bus, a session on its database) -> pg_notify in the transaction itself
    after_commit -> bus.publish(evt) -+-> local subscribers, at once
                                      +-> forwarder (events not sent in their transaction): encode -> outbox
    sender task  -> outbox -> transport.send -> NOTIFY windflow_events / PUBLISH windflow:events
    listener     -> message of another origin -> receiver task -> bus.deliver(evt) -> local subscribers

Invariants and trade-offs:

* **No echo.** Every message carries the ``origin`` id of the process that sent it (new after a
  ``fork``); a process ignores its own messages, so its subscribers get each of its events exactly once,
  from ``publish``.
* **With the commit only.** With PostgreSQL, a session of the bus's database sends its events with
  ``pg_notify`` on its own connection just before committing (:meth:`_Runtime.send_in_transaction`):
  PostgreSQL delivers them when, and only if, the transaction commits, so they are neither sent for a
  rolled-back change nor lost when the process dies right after its commit, and listeners have them as
  soon as the commit is done (no sender task to wait for: ~1 ms less from commit to the WebSocket). Other
  events (Redis, a session committing off the bus's loop) are forwarded by ``bus.publish``, which only the
  ``after_commit`` hook of ``events.py`` calls for queued events.
* **Order.** PostgreSQL delivers the notifications of committed transactions in commit order; otherwise
  one sender per process sends its events in publish order over one connection. One receiver task per
  process delivers them in arrival order (a log pointer is resolved before what follows it).
* **Log lines travel as pointers.** A ``DEPLOYMENT_LOGS_UPDATE`` crosses processes as
  ``(deployment, first_seq, last_seq)``, never as text: the lines are already persisted with their
  ``seq``. The receiver reads from the database the lines after the last ``seq`` it delivered for that
  deployment up to ``last_seq`` and delivers them as ordinary ``DEPLOYMENT_LOGS_UPDATE`` events, so a lost
  notification is repaired by the next one. It reads nothing when no local subscriber follows the
  deployment. NOTIFY's 8000-byte limit therefore never applies to log text.
* **Delivery is at least once while connected, best effort otherwise.** Events published while the
  connection is down wait in the outbox (at most :data:`MAX_QUEUED`, oldest dropped first) and are sent
  after reconnecting. An event may be sent twice when the connection drops after the server accepted it.
  Neither NOTIFY nor pub/sub stores messages: a *listener* that is disconnected misses what is sent
  meanwhile. Clients recover log lines with ``since_seq`` and statuses by reading the deployment.
* **Size.** Any other event that does not fit a payload (an enormous ``error_message``) has its longest
  strings truncated with a ``...[truncated N characters]`` marker (:func:`encode_envelope`). Payloads are
  ASCII JSON, so bytes equal characters whatever the server encoding.
* **Never crashes its host.** A lost connection is logged as a warning and retried with exponential
  backoff; only configuration errors (``EVENT_BUS=postgres`` with SQLite, ...) raise, at start.
* **A database restart is ordinary.** With PostgreSQL, the backoff is cut short as soon as any connection
  of the process to the database succeeds again (a pool ``connect`` event), so the process listens again
  within moments of the server's return, not after a backoff grown during the outage. Once it listens again,
  :meth:`~backend.app.core.events.LocalEventBus.missed` tells the local subscribers that events of other
  processes may have been missed meanwhile: the real-time clients resynchronise (``resync`` frames, log
  lines read from the database).

The bus runs on the event loop that awaited :func:`start_event_bus`: the backend's loop, or the long-lived
loop of a Celery worker process (``backend.app.runtime.worker_loop``). :func:`flush_events` works from
any loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import Pool

from backend.app.config import BrokerType, DatabaseKind, Settings
from backend.app.core.events import Event, EventType, bus
from backend.app.runtime.loops import Backoff, sleep_or_event

logger = logging.getLogger(__name__)

EventBusKind = Literal["memory", "postgres", "redis"]

PG_CHANNEL = "windflow_events"
REDIS_CHANNEL = "windflow:events"
DEFAULT_REDIS_BROKER_URL = "redis://127.0.0.1:6379/1"  # the broker Settings.celery_broker_url derives
# PostgreSQL: "the payload string must be shorter than 8000 bytes" (NOTIFY, default configuration).
PG_MAX_PAYLOAD = 7999
# Redis accepts up to 512 MB; a smaller cap keeps one huge event from stalling slow subscribers.
REDIS_MAX_PAYLOAD = 1_000_000
MAX_QUEUED = 10_000
LOG_READ_PAGE = 5000  # lines read per query when resolving a log pointer
LOG_MARKS_KEPT = 10_000  # deployments whose last delivered seq a receiver remembers
SEND_BATCH = 100
BACKOFF_MIN_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
STABLE_CONNECTION_SECONDS = 30.0  # a connection that lived this long resets the backoff
HEARTBEAT_SECONDS = 15.0
CONNECT_TIMEOUT_SECONDS = 10.0
TRUNCATION_MARKER = "...[truncated {} characters]"
# Connections are named (PostgreSQL application_name, Redis CLIENT SETNAME) this prefix + 12 hex of the
# process's origin, so that an operator can tell them apart in pg_stat_activity / CLIENT LIST.
CONNECTION_NAME_PREFIX = "windflow-events-"


# --- encoding ----------------------------------------------------------------------


def _dumps(value: Any) -> str:
    # ASCII only: the byte size of the payload is its length, whatever the server encoding.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, default=str)


def _wire(origin: str, number: int, envelope_json: str) -> str:
    # ``n`` keeps two identical events distinct: PostgreSQL folds identical notifications of one transaction.
    return f'{{"origin":{json.dumps(origin)},"n":{number},"event":{envelope_json}}}'


def _wire_overhead(origin: str) -> int:
    return len(_wire(origin, 10**19, ""))


def _pointer(evt: Event) -> str:
    """A log update as it crosses processes: which deployment, which ``seq`` range (lines stay in the DB)."""
    seqs = [line["seq"] for line in evt.data.get("logs", ())]
    return _dumps({
        "deployment_id": evt.deployment_id, "organization_id": evt.organization_id,
        "timestamp": evt.data.get("timestamp") or evt.to_dict()["timestamp"],
        "first_seq": min(seqs, default=0), "last_seq": max(seqs, default=0),
    })


def _wire_pointer(origin: str, number: int, pointer_json: str) -> str:
    return f'{{"origin":{json.dumps(origin)},"n":{number},"logs":{pointer_json}}}'


@dataclass(frozen=True)
class LogPointer:
    deployment_id: str
    organization_id: str
    timestamp: str
    first_seq: int
    last_seq: int


def _decode(payload: str | bytes) -> tuple[str, Event | LogPointer]:
    raw = json.loads(payload)
    if "logs" in raw:
        return raw["origin"], LogPointer(**raw["logs"])
    return raw["origin"], Event.from_dict(raw["event"])


def _shrink(value: Any, max_bytes: int) -> Any | None:
    """A copy of JSON ``value`` whose longest strings are cut until it encodes in ``max_bytes``.

    Returns ``None`` when cutting strings is not enough (too many small values).
    """
    value = json.loads(_dumps(value))
    cut: set[tuple] = set()
    for _ in range(100):
        size = len(_dumps(value))
        if size <= max_bytes:
            return value
        path, longest = _longest_string(value, (), cut)
        if path is None:
            return None
        marker_room = len(TRUNCATION_MARKER.format(len(longest)))
        # Room left for this string once everything else is encoded; keep the longest prefix whose
        # encoding (escapes count: "é" is 6 bytes) fits in it.
        room = max(0, len(_dumps(longest)) - (size - max_bytes) - marker_room - 2)
        keep = _prefix_fitting(longest, room)
        shortened = longest[:keep] + TRUNCATION_MARKER.format(len(longest) - keep)
        value = _replace(value, path, shortened)
        cut.add(path)
    return None


def _prefix_fitting(text: str, room: int) -> int:
    """The length of the longest prefix of ``text`` whose JSON encoding (without quotes) fits ``room`` bytes."""
    low, high = 0, min(len(text), room)
    while low < high:
        middle = (low + high + 1) // 2
        if len(_dumps(text[:middle])) - 2 <= room:
            low = middle
        else:
            high = middle - 1
    return low


def _longest_string(value: Any, path: tuple, skip: set[tuple]) -> tuple[tuple | None, str]:
    best: tuple[tuple | None, str] = (None, "")
    if isinstance(value, str):
        return (path, value) if path not in skip else best
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        candidate = _longest_string(item, (*path, key), skip)
        if candidate[0] is not None and len(_dumps(candidate[1])) > len(_dumps(best[1])):
            best = candidate
    return best


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def encode_envelope(envelope: dict[str, Any], max_bytes: int) -> str:
    """Encode an event envelope in at most ``max_bytes``: as is when it fits, else with the longest strings
    of its ``data`` truncated (marked ``...[truncated N characters]``)."""
    encoded = _dumps(envelope)
    if len(encoded) <= max_bytes:
        return encoded
    return _truncate_data(envelope, max_bytes)


def _truncate_data(envelope: dict, max_bytes: int) -> str:
    # ``"data":{}`` grows by the encoding of data minus the two braces.
    base = len(_dumps(dict(envelope, data={}))) - 2
    data = _shrink(envelope.get("data") or {}, max_bytes - base)
    if data is None:
        logger.warning(
            "%s event of deployment %s is too large to send even truncated; sending it without data",
            envelope.get("type"), envelope.get("deployment_id"),
        )
        data = {"truncated": True}
    return _dumps(dict(envelope, data=data))


# --- transports -----------------------------------------------------------------------------------


class PayloadRejected(Exception):
    """The server refused these payloads although the connection is fine: resending will not help."""


MessageHandler = Callable[[str | bytes], None]


class EventTransport(ABC):
    """One connection to a message server: listen on a channel and send payloads to it.

    ``connect`` returns once the process is listening (so nothing sent afterwards is missed);
    ``wait_closed`` returns or raises when the connection is lost; ``send`` raises
    :class:`PayloadRejected` for payloads the server refuses and any other exception for a broken
    connection (after which ``wait_closed`` returns).
    """

    name: str
    channel: str = ""
    max_payload: int = PG_MAX_PAYLOAD
    crosses_processes = True

    @abstractmethod
    async def connect(self, on_message: MessageHandler | None) -> None: ...

    @abstractmethod
    async def send(self, payloads: Sequence[str]) -> None: ...

    @abstractmethod
    async def wait_closed(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


async def _watch(lost: asyncio.Event, heartbeat: float, probe: Callable[[], Awaitable[bool]]) -> bool:
    """A transport's ``wait_closed``: until ``lost`` is set (True), probing the connection after every
    ``heartbeat`` seconds without news. ``probe`` raises when the connection is broken and returns False
    when there is none any more (closed meanwhile: then this returns False)."""
    while not lost.is_set():
        try:
            await asyncio.wait_for(lost.wait(), heartbeat)
        except TimeoutError:
            if not await probe():
                return False
    return True


class InProcessTransport(EventTransport):
    """SQLite: one process does everything, nothing crosses (the forwarder is not even installed)."""

    name = "memory"
    crosses_processes = False

    async def connect(self, on_message: MessageHandler | None) -> None:
        return None

    async def send(self, payloads: Sequence[str]) -> None:
        return None

    async def wait_closed(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None


class PostgresNotifyTransport(EventTransport):
    """``LISTEN`` and ``pg_notify`` on one asyncpg connection.

    NOTIFY is transactional: the parts of a batch are sent in one implicit transaction (``executemany``),
    so they are delivered together, in order, or not at all. A heartbeat query detects a half-open
    connection when nothing else is sent.
    """

    name = "postgres"
    max_payload = PG_MAX_PAYLOAD

    def __init__(
        self, dsn: str, channel: str = PG_CHANNEL, *, application_name: str = "windflow-events",
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.application_name = application_name[:63]
        self.heartbeat = heartbeat
        self._conn = None
        self._lock = asyncio.Lock()
        self._lost = asyncio.Event()

    async def connect(self, on_message: MessageHandler | None) -> None:
        import asyncpg

        self._lost = asyncio.Event()
        self._lock = asyncio.Lock()
        conn = await asyncpg.connect(
            self.dsn, timeout=CONNECT_TIMEOUT_SECONDS, server_settings={"application_name": self.application_name}
        )
        try:
            conn.add_termination_listener(lambda _conn: self._lost.set())
            if on_message is not None:
                await conn.add_listener(self.channel, lambda _conn, _pid, _channel, payload: on_message(payload))
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def send(self, payloads: Sequence[str]) -> None:
        import asyncpg

        conn = self._conn
        if conn is None or conn.is_closed():
            self._lost.set()
            raise ConnectionError("not connected to PostgreSQL")
        try:
            async with self._lock:
                await conn.executemany(
                    "SELECT pg_notify($1, $2)", [(self.channel, p) for p in payloads], timeout=30
                )
        except asyncpg.PostgresError as exc:
            if conn.is_closed():  # e.g. AdminShutdownError: the server killed the session
                self._lost.set()
                raise
            raise PayloadRejected(str(exc)) from exc
        except BaseException:
            self._lost.set()
            raise

    async def wait_closed(self) -> None:
        await _watch(self._lost, self.heartbeat, self._probe)

    async def _probe(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        async with self._lock:
            await conn.execute("SELECT 1", timeout=self.heartbeat)
        return True

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.is_closed():
            conn.terminate()
            return
        try:
            await conn.close(timeout=5)
        except Exception:  # noqa: BLE001 - close() already aborted the connection
            conn.terminate()


class RedisTransport(EventTransport):
    """Redis pub/sub: a pubsub connection to listen, the client's pool to ``PUBLISH``.

    redis-py's own pub/sub reconnection is disabled (``Retry(NoBackoff(), 0)``) so that a lost
    connection surfaces here and goes through the same reconnect path, status and logs as PostgreSQL.
    """

    name = "redis"
    max_payload = REDIS_MAX_PAYLOAD

    def __init__(
        self, url: str, channel: str = REDIS_CHANNEL, *, client_name: str = "windflow-events",
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.url = url
        self.channel = channel
        self.client_name = client_name
        self.heartbeat = heartbeat
        self._client = None
        self._pubsub = None
        self._reader: asyncio.Task | None = None
        self._lost = asyncio.Event()
        self._reader_error: BaseException | None = None

    async def connect(self, on_message: MessageHandler | None) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._lost = asyncio.Event()
        self._reader_error = None
        client = Redis.from_url(
            self.url, client_name=self.client_name, retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, health_check_interval=int(self.heartbeat),
        )
        self._client = client
        try:
            await client.ping()
            if on_message is not None:
                self._pubsub = client.pubsub()
                await self._pubsub.subscribe(self.channel)
                # SUBSCRIBE only counts once the server confirms it: wait for the confirmation.
                deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
                while True:
                    message = await self._pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"Redis did not confirm SUBSCRIBE {self.channel}")
                self._reader = asyncio.create_task(self._read(self._pubsub, on_message), name="event-bus-redis-reader")
        except BaseException:
            await self.close()
            raise

    async def _read(self, pubsub, on_message: MessageHandler) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=self.heartbeat)
                if message is not None and message["type"] == "message":
                    on_message(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the subscription means reconnecting
            self._reader_error = exc
            self._lost.set()

    async def send(self, payloads: Sequence[str]) -> None:
        from redis.exceptions import ResponseError

        client = self._client
        if client is None:
            self._lost.set()
            raise ConnectionError("not connected to Redis")
        try:
            async with client.pipeline(transaction=True) as pipe:
                for payload in payloads:
                    pipe.publish(self.channel, payload)
                await pipe.execute()
        except ResponseError as exc:
            raise PayloadRejected(str(exc)) from exc
        except BaseException:
            self._lost.set()
            raise

    async def wait_closed(self) -> None:
        if await _watch(self._lost, self.heartbeat, self._probe) and self._reader_error is not None:
            raise ConnectionError(f"subscription lost: {self._reader_error}")

    async def _probe(self) -> bool:
        if self._client is None:
            return False
        await asyncio.wait_for(self._client.ping(), self.heartbeat)
        return True

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        for resource in (pubsub, client):
            if resource is not None:
                try:
                    await resource.aclose()
                except Exception:  # noqa: BLE001 - the connection is gone either way
                    logger.debug("closing the Redis event bus connection failed", exc_info=True)
        if client is not None:
            # A connection killed server-side can make aclose() fail half-way: close every socket of the
            # pool anyway, or it is left to the garbage collector (a ResourceWarning, seen in the tests).
            try:
                await client.connection_pool.disconnect(inuse_connections=True)
            except Exception:  # noqa: BLE001
                logger.debug("closing the Redis event bus connection pool failed", exc_info=True)


# --- choosing a transport -------------------------------------------------------------------------


def resolve_event_bus_kind(settings: Settings) -> EventBusKind:
    """``EVENT_BUS``, with ``auto`` resolved; raises ``ValueError`` for an impossible choice."""
    choice = settings.EVENT_BUS
    if choice == "auto":
        if settings.CELERY_BROKER_TYPE is BrokerType.REDIS:
            return "redis"
        return "postgres" if settings.database_kind is DatabaseKind.POSTGRESQL else "memory"
    if choice == "postgres" and settings.database_kind is not DatabaseKind.POSTGRESQL:
        raise ValueError(
            "EVENT_BUS=postgres needs a PostgreSQL DATABASE_URL; with SQLite use EVENT_BUS=memory (or redis "
            "with EVENT_BUS_REDIS_URL)"
        )
    return choice


def event_bus_redis_url(settings: Settings) -> str:
    """``EVENT_BUS_REDIS_URL``, else the Celery broker URL when the broker is Redis."""
    if settings.EVENT_BUS_REDIS_URL:
        return settings.EVENT_BUS_REDIS_URL
    if settings.CELERY_BROKER_TYPE is BrokerType.REDIS:
        return settings.CELERY_BROKER_URL or DEFAULT_REDIS_BROKER_URL
    raise ValueError(
        "EVENT_BUS=redis needs EVENT_BUS_REDIS_URL (e.g. redis://127.0.0.1:6379/0) when CELERY_BROKER_TYPE "
        "is not redis"
    )


def postgres_dsn(settings: Settings) -> str:
    """``DATABASE_URL`` as asyncpg's ``connect`` wants it (no SQLAlchemy ``+asyncpg`` driver suffix)."""
    return settings.async_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


_PG_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def _pg_address(url: URL) -> tuple[str | None, int, str | None]:
    """(host, port, database) of a PostgreSQL URL: which database a connection reaches."""
    return url.host, url.port or 5432, url.database


def build_transport(settings: Settings, channel: str | None = None) -> EventTransport:
    kind = resolve_event_bus_kind(settings)
    name = CONNECTION_NAME_PREFIX + _origin[:12]
    if kind == "postgres":
        return PostgresNotifyTransport(postgres_dsn(settings), channel or PG_CHANNEL, application_name=name)
    if kind == "redis":
        return RedisTransport(event_bus_redis_url(settings), channel or REDIS_CHANNEL, client_name=name)
    return InProcessTransport()


# --- the per-process runtime ----------------------------------------------------------------------


class _Outbox:
    """Thread-safe FIFO of encoded events (``(kind, json)``: an event or a log pointer) with flush waiters.

    ``enqueued`` counts events accepted, ``completed`` events sent or dropped; a waiter created when
    ``enqueued`` was N is resolved once ``completed`` reaches N.
    """

    def __init__(self, limit: int = MAX_QUEUED) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[str, str]] = deque()
        self._limit = limit
        self._waiters: list[tuple[int, concurrent.futures.Future[bool]]] = []
        self.enqueued = 0
        self.completed = 0
        self.dropped = 0

    def pending(self) -> int:
        return self.enqueued - self.completed

    def put(self, item: tuple[str, str]) -> bool:
        """Queue an event; returns ``False`` when the oldest queued event had to be dropped for it."""
        with self._lock:
            overflow = len(self._items) >= self._limit
            if overflow:
                self._items.popleft()
                self.dropped += 1
                self.completed += 1
            self._items.append(item)
            self.enqueued += 1
            ready = self._take_ready()
        _resolve(ready, True)
        return not overflow

    def take(self, count: int) -> list[tuple[str, str]]:
        with self._lock:
            return [self._items.popleft() for _ in range(min(count, len(self._items)))]

    def requeue(self, batch: list[tuple[str, str]]) -> None:
        with self._lock:
            self._items.extendleft(reversed(batch))

    def done(self, sent: int, dropped: int = 0) -> None:
        with self._lock:
            self.completed += sent + dropped
            self.dropped += dropped
            ready = self._take_ready()
        _resolve(ready, True)

    def drop_all(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self.dropped += count
            self.completed += count
            waiters, self._waiters = self._waiters, []
        _resolve([future for _, future in waiters], False)
        return count

    def waiter(self) -> concurrent.futures.Future[bool]:
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        with self._lock:
            if self.completed >= self.enqueued:
                future.set_result(True)
            else:
                self._waiters.append((self.enqueued, future))
        return future

    def _take_ready(self) -> list[concurrent.futures.Future[bool]]:
        ready = [future for target, future in self._waiters if target <= self.completed]
        if ready:
            self._waiters = [(t, f) for t, f in self._waiters if t > self.completed]
        return ready


def _resolve(futures: list[concurrent.futures.Future[bool]], value: bool) -> None:
    for future in futures:
        try:
            future.set_result(value)
        except concurrent.futures.InvalidStateError:  # the waiter gave up (timeout) meanwhile
            pass


class _Runtime:
    """The listener (connection supervisor) and the sender of one process, on one event loop."""

    def __init__(self, kind: EventBusKind, transport: EventTransport, loop: asyncio.AbstractEventLoop, listen: bool):
        self.kind = kind
        self.transport = transport
        self.loop = loop
        self.thread = threading.get_ident()  # the loop's (a runtime is made on its loop)
        self.listen = listen
        # (host, port, database) of the PostgreSQL bus: a session on it may send its events in its transaction
        self.database = _pg_address(make_url(transport.dsn)) if isinstance(transport, PostgresNotifyTransport) else None
        self._databases: dict[int, tuple[object, bool]] = {}  # id(engine) -> (engine, same database as the bus)
        self.origin = _origin
        self.max_envelope = transport.max_payload - _wire_overhead(self.origin)
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
            return "logs", _pointer(evt)
        return "event", encode_envelope(evt.to_dict(), self.max_envelope)

    def forward(self, evt: Event) -> None:
        """``bus`` forwarder: encode now (a snapshot of ``data``), send later. Any thread, never blocks."""
        item = self._encode(evt)
        if not _outbox.put(item) and _outbox.dropped % 1000 == 1:
            logger.warning(
                "event bus: %d event(s) waiting for the %s transport; dropped the oldest (%d dropped so far)",
                MAX_QUEUED, self.kind, _outbox.dropped,
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
        payloads = self._wire([self._encode(evt) for evt in events])
        params = [{"channel": self.transport.channel, "payload": p} for p in payloads]
        session.execute(_PG_NOTIFY, params[0] if len(params) == 1 else params)
        self.sent += len(payloads)
        return True

    def _same_database(self, session) -> bool:
        bind = session.get_bind()
        known = self._databases.get(id(bind))
        if known is None or known[0] is not bind:
            same = bind.dialect.name == "postgresql" and _pg_address(bind.url) == self.database
            known = self._databases[id(bind)] = (bind, same)
        return known[1]

    def on_message(self, payload: str | bytes) -> None:
        try:
            origin, item = _decode(payload)
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
                        await self._resolve(item)
                    else:
                        bus.deliver(item)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the next pointer of the deployment repairs the gap
                    logger.warning("event bus: could not read the log lines of %s", item, exc_info=True)
                self.inbox.popleft()
            self.inbox_ready.clear()

    async def _resolve(self, pointer: LogPointer) -> None:
        """Read the lines a log pointer announces (and any this process missed) and deliver them."""
        from backend.app import database
        from backend.app.services.deployment_logs import LogLine, read_logs

        known = self.log_marks.pop(pointer.deployment_id, None)
        start = pointer.first_seq - 1 if known is None else min(known, pointer.first_seq - 1)
        mark = max(pointer.last_seq, known or 0)
        self.log_marks[pointer.deployment_id] = mark
        while len(self.log_marks) > LOG_MARKS_KEPT:
            self.log_marks.popitem(last=False)
        probe = Event(EventType.DEPLOYMENT_LOGS_UPDATE, pointer.deployment_id, pointer.organization_id,
                      {"logs": [], "append": True, "timestamp": pointer.timestamp})
        if start >= pointer.last_seq or not bus.wants(probe):
            return
        timestamp = datetime.fromisoformat(pointer.timestamp.replace("Z", "+00:00"))
        while start < pointer.last_seq:
            async with database.AsyncSessionLocal() as session:
                lines: list[LogLine] = await read_logs(
                    session, deployment_id=pointer.deployment_id, since_seq=start, limit=min(LOG_READ_PAGE, pointer.last_seq - start))
            if not lines:
                return
            self.resolved += len(lines)
            bus.deliver(Event(
                EventType.DEPLOYMENT_LOGS_UPDATE, pointer.deployment_id, pointer.organization_id,
                {"logs": [line.to_dict() for line in lines], "append": True, "timestamp": pointer.timestamp},
                timestamp,
            ))
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
                        self.kind, self.error, backoff.delay,
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
                logger.warning(
                    "event bus: %s transport connection lost (%s); reconnecting in %.1fs", self.kind, reason, backoff.delay
                )
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
            await self.transport.send(self._wire(batch))
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

    def _wire(self, batch: list[tuple[str, str]]) -> list[str]:
        payloads = []
        for kind, body in batch:
            self.number += 1
            payloads.append((_wire_pointer if kind == "logs" else _wire)(self.origin, self.number, body))
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
_outbox = _Outbox()
_runtime: _Runtime | None = None
_state_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A forked child (Celery prefork) inherits neither the loop nor the connection: it starts
    # its own bus, with its own origin so that its parent's and siblings' events are not taken for its own.
    global _origin, _outbox, _runtime, _state_lock
    _origin = uuid.uuid4().hex
    _outbox = _Outbox()
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
        "event bus: %s transport%s", kind,
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
            _outbox.pending(), timeout, runtime.kind, runtime.connected, runtime.error,
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
        "transport": None, "started": False, "connected": False, "listening": False, "channel": None,
        "origin": _origin, "sent": 0, "received": 0, "log_lines_read": 0, "queued": _outbox.pending(), "dropped": _outbox.dropped,
        "connections": 0, "error": None,
    }
