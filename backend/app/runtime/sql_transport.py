"""kombu's SQL transport with a working ``polling_interval`` and a purge of consumed messages.

kombu 5.7's SQLAlchemy transport reads ``polling_interval`` from the transport options (the virtual
transport base honours it) but also passes *every* transport option to ``sqlalchemy.create_engine``, which
rejects ``polling_interval`` with a TypeError. This channel drops it before creating the engine. The
transport is registered under kombu's ``sqla`` alias, so ``sqla+postgresql+psycopg://`` URLs use it.

kombu's channel keeps one SQLAlchemy ``Session`` that two threads of a prefork worker's main process use at
once: the consumer loop (``_get``) and billiard's result-handler thread, which requeues the message of a
killed pool child (``reject_on_worker_lost`` → ``_put``). Interleaved, they leave the session "in
'prepared' state" and the worker dies with an unrecoverable error. This channel serialises every use of
its session with a lock, and rolls the session back after a failure: a database restart would otherwise
leave it on a dead transaction, and every later publish or poll of that process would fail.

The transport never deletes delivered messages: it flips them to ``visible = false``, and never shows them
again. A worker that dies holding one (a ``kill -9``, a wedged worker that leaves) would lose it. This
channel records who took each message (``broker_deliveries``: host and PID of the worker's main process),
in the transaction that hides it, and forgets it on the ack, the reject or the restore;
:func:`restore_orphaned_deliveries` (run by the reaper) makes the messages of a taker that is gone — or
degraded — visible again, as Redis does with unacknowledged messages. It also takes its message with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so that workers polling the same queue never wait for each other.
:func:`purge_consumed_messages` deletes delivered messages older than a retention window (a beat task).

kombu creates a queue's row the first time a process declares it, under a lock of its own process only,
and lets the unique violation through when another process created it in between: workers started
together on a fresh database died of it. :meth:`Channel._get_or_create` reads the row the winner wrote.

Every poll that completes stamps :data:`POLLS` (the worker's watchdog asks whether the consumer still
fetches).

On PostgreSQL a consumer does not wait out kombu's polling interval for a new message: every publish sends
``NOTIFY windflow_broker`` (payload: the queue) in the transaction that inserts the message, so the
notification is delivered exactly when the message becomes visible, and so do the statements that make a
taken message visible again. A consuming process LISTENs on its own connection and, with nothing to take,
sleeps in ``select()`` on that connection instead of ``time.sleep`` (:class:`Listener`): a notification, or
an ack that frees a prefetch slot, wakes it at once. Polling stays the fallback: the queues are polled again
after :data:`LISTENING_POLL_INTERVAL` seconds without a notification (a message published by a process
without this transport, a notification lost with a broken connection), and at ``polling_interval`` while
there is no listener (it could not connect: it tries again every :data:`LISTENER_RETRY_SECONDS`).

On PostgreSQL a publish is one statement (the insert and its NOTIFY), and so is a take, each run in autocommit
mode as a transaction of its own (one round trip, not a ``BEGIN``, the statement and a ``COMMIT``); each
channel reads a queue's id once, not on every publish and poll; and the broker's connections commit
asynchronously (:data:`ASYNC_COMMIT_OPTIONS`: what a crash can cost, and what recovers it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from queue import Empty
from typing import TYPE_CHECKING

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sql
from kombu.utils.json import dumps, loads
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import IntegrityError

from backend.app.runtime.workers import HEALTHY, STALE_AFTER_SECONDS

if TYPE_CHECKING:  # imported by the listener that uses it: 0.1-0.2 s of CPU in every process otherwise
    import psycopg

logger = logging.getLogger(__name__)

_NOT_ENGINE_OPTIONS = ("polling_interval",)

#: The channel every publish notifies (payload: the queue's name).
NOTIFY_CHANNEL = "windflow_broker"
#: With a listener, seconds an idle consumer waits for a notification before it polls its queues anyway.
LISTENING_POLL_INTERVAL = 1.0
#: Seconds between two attempts to open the listening connection after one failed (polling meanwhile).
LISTENER_RETRY_SECONDS = 5.0
#: The broker's connections commit asynchronously (``synchronous_commit = off`` for its sessions only): a
#: publish, a take and the record of a delivery each return without waiting for the disk. A server crash
#: can lose the last of them (at most ``3 x wal_writer_delay``, 0.6 s by default), never corrupt them: a lost
#: publish leaves its deployment ``pending`` with no message, which the reaper dispatches again after
#: ``DISPATCH_TIMEOUT_SECONDS`` (as a message lost with a killed worker); a lost take makes the message visible
#: again, and the claim's compare-and-set refuses a second run. What WindFlow itself commits (deployments,
#: leases, logs) keeps the server's ``synchronous_commit``. Redis, the other broker, does not wait for a
#: disk either.
ASYNC_COMMIT_OPTIONS = "-c synchronous_commit=off"


def broker_metadata():
    """kombu's own table definitions (``kombu_queue``, ``kombu_message``), registered as its channel does.

    kombu creates its tables lazily, from every channel that opens (``metadata.create_all``): several
    workers starting at once on a fresh database race on ``CREATE SEQUENCE queue_id_sequence`` and the
    losers die. WindFlow creates them once, in the migration step, under the migration's advisory lock
    (:func:`backend.app.migrate.upgrade_database`); a channel then finds them and creates nothing.
    """
    from kombu.transport.sqlalchemy import models

    with kombu_sql._MUTEX:
        if "Queue" not in models.class_registry:
            type("Queue", (models.Queue, models.ModelBase), {"__tablename__": "kombu_queue"})
        if "Message" not in models.class_registry:
            type("Message", (models.Message, models.ModelBase), {"__tablename__": "kombu_message"})
    return models.metadata


def create_broker_tables(sync_connection) -> None:
    """Create kombu's tables if missing, on a connection whose transaction holds the migration lock."""
    broker_metadata().create_all(sync_connection, checkfirst=True)


class PollStamps:
    """When this process's consumer last completed a poll of the broker (monotonic seconds; 0: never)."""

    def __init__(self) -> None:
        self.last_ok = 0.0

    def age(self, now: float | None = None) -> float | None:
        return None if not self.last_ok else (now or time.monotonic()) - self.last_ok


POLLS = PollStamps()

#: kombu's ``_get`` (the oldest visible message of the queue, flipped invisible) and the record of who took it
#: (when the message has a delivery tag), in one statement; workers polling one queue skip each other's rows
_TAKE = text(
    "WITH taken AS (SELECT id FROM kombu_message WHERE queue_id = :queue AND visible = true "
    "ORDER BY timestamp, id LIMIT 1 FOR UPDATE SKIP LOCKED), "
    "hidden AS (UPDATE kombu_message m SET visible = false, version = m.version + 1 FROM taken "
    "WHERE m.id = taken.id RETURNING m.id, m.payload, left(m.payload::json #>> '{properties,delivery_tag}', 64) AS tag), "
    "recorded AS (INSERT INTO broker_deliveries (message_id, delivery_tag, hostname, pid, taken_at) "
    "SELECT id, tag, :hostname, :pid, now() FROM hidden WHERE coalesce(tag, '') <> '' "
    "ON CONFLICT (message_id) DO UPDATE SET delivery_tag = excluded.delivery_tag, hostname = excluded.hostname, "
    "pid = excluded.pid, taken_at = now()) "
    "SELECT payload FROM hidden"
)
_FORGET = text("DELETE FROM broker_deliveries WHERE delivery_tag = :tag")
#: kombu's ``_put`` (its ``Message`` row: the id from its sequence, visible, no timestamp, version 1) and the
#: NOTIFY that announces it, in one statement
_PUBLISH = text(
    "WITH message AS (INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id) "
    "VALUES (nextval('message_id_sequence'), true, NULL, :payload, 1, :queue_id) RETURNING id) "
    "SELECT pg_notify(:channel, :queue) FROM message"
)


class Channel(kombu_sql.Channel):
    def __init__(self, *args, **kwargs) -> None:
        self._session_lock = threading.RLock()
        #: queue name -> its ``kombu_queue`` id (kombu never deletes a queue's row): each publish and poll on
        #: PostgreSQL reads it once per channel instead of once per message
        self._queue_ids: dict[str, int] = {}
        super().__init__(*args, **kwargs)

    def _locked(self, method, *args, **kwargs):
        """Run one of kombu's session methods under the lock; after a failure (the database restarted under
        it) roll the session back, or every later call fails on the dead transaction ("This result object
        does not return rows", "Can't reconnect until invalid transaction is rolled back")."""
        with self._session_lock:
            try:
                return method(*args, **kwargs)
            except Empty:
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    self.session.rollback()
                raise

    def _get_or_create(self, queue):
        """kombu's, plus the race it loses across processes: another worker declared the same queue between
        this one's read and its insert (a unique violation, which kombu lets through): read theirs."""
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            existing = self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).first()
            if existing is None:
                raise
            return existing

    def _get(self, queue):
        if self.session.bind.name != "postgresql":
            message = self._locked(super()._get, queue)
            POLLS.last_ok = time.monotonic()
            return message
        return self._locked(self._take, queue)

    def _queue_id(self, queue) -> int:
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            queue_id = self._queue_ids[queue] = self._get_or_create(queue).id
            self.session.commit()  # the session's read ends here: the statements that use the id run alone
        return queue_id

    def _alone(self, statement, params: dict):
        """``statement`` as a transaction of its own, on a pooled connection in autocommit mode, and its first
        row: one round trip where the session's ``BEGIN``, statement and ``COMMIT`` were three (psycopg sends
        each on its own). Only for a statement that is atomic by itself: the insert with its NOTIFY, the take
        with its record, the forgetting of a delivery."""
        with self.session.get_bind().connect() as conn:
            result = conn.execution_options(isolation_level="AUTOCOMMIT").execute(statement, params)
            return result.first() if result.returns_rows else None

    def _take(self, queue):
        """kombu's ``_get`` on PostgreSQL, plus the record of who took the message (same statement)."""
        row = self._alone(_TAKE, {"queue": self._queue_id(queue), "hostname": socket.gethostname(), "pid": os.getpid()})
        POLLS.last_ok = time.monotonic()
        if row is None:
            raise Empty()
        return loads(row.payload)

    def _forget(self, delivery_tag) -> None:
        """The message of ``delivery_tag`` is acknowledged or back in the queue: nobody holds it any more."""
        if not delivery_tag or self.session.bind.name != "postgresql":
            return

        def forget() -> None:
            self._alone(_FORGET, {"tag": str(delivery_tag)[:64]})

        with contextlib.suppress(Exception):  # a stale record costs a harmless redelivery, never a loss
            self._locked(forget)

    def _slot_freed(self) -> None:
        """A prefetch slot is free again: the consumer, maybe asleep because its prefetch was full, polls."""
        wake = getattr(self.connection, "wake", None)
        if wake is not None:
            wake()

    def basic_ack(self, delivery_tag, multiple=False):
        super().basic_ack(delivery_tag, multiple=multiple)
        self._forget(delivery_tag)
        self._slot_freed()

    def basic_reject(self, delivery_tag, requeue=False):
        super().basic_reject(delivery_tag, requeue=requeue)
        self._forget(delivery_tag)
        self._slot_freed()

    def _restore(self, message):
        super()._restore(message)
        self._forget(message.delivery_tag)
        self._slot_freed()

    def _put(self, queue, payload, **kwargs):
        if self.session.bind.name != "postgresql":
            return self._locked(super()._put, queue, payload, **kwargs)
        return self._locked(self._put_notified, queue, payload)

    def _put_notified(self, queue, payload) -> None:
        """kombu's ``_put``, plus the NOTIFY that wakes the consumers, sent when the insert commits: one
        statement, committed on its own. A queue row gone since this channel read its id (nothing of kombu's
        or WindFlow's deletes one) is looked up again once."""
        params = {"payload": dumps(payload), "channel": NOTIFY_CHANNEL, "queue": str(queue)}
        try:
            self._alone(_PUBLISH, {**params, "queue_id": self._queue_id(queue)})
        except IntegrityError:
            self._queue_ids.pop(queue, None)
            self._alone(_PUBLISH, {**params, "queue_id": self._queue_id(queue)})

    def _purge(self, queue):
        return self._locked(super()._purge, queue)

    def _size(self, queue):
        return self._locked(super()._size, queue)

    def _new_queue(self, queue, **kwargs):
        return self._locked(super()._new_queue, queue, **kwargs)

    def _engine_from_config(self):
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in _NOT_ENGINE_OPTIONS}
        for key in (
            "queue_tablename",
            "message_tablename",
            "callback",
            "errback",
            "max_retries",
            "interval_start",
            "interval_step",
            "interval_max",
            "retry_errors",
        ):
            options.pop(key, None)
        options.setdefault("pool_pre_ping", True)
        if make_url(conninfo.hostname).get_backend_name() == "postgresql":
            # The broker's own transactions (a publish, a take, the record of a delivery) do not wait for
            # their WAL flush: see ASYNC_COMMIT_OPTIONS
            connect_args = dict(options.get("connect_args") or {})
            connect_args["options"] = " ".join(filter(None, [connect_args.get("options"), ASYNC_COMMIT_OPTIONS]))
            options["connect_args"] = connect_args
        return create_engine(conninfo.hostname, **options)


class Listener:
    """A consumer's wait for work: ``LISTEN windflow_broker`` on a connection of its own, and a pipe that any
    thread of the process writes to (:meth:`wake`) when a prefetch slot frees.

    :meth:`wait` returns as soon as a notification or a wake-up arrives, or after ``timeout`` seconds. It is
    called by the consuming thread only, after a poll found nothing: the LISTEN was issued before that poll,
    so a message committed after it is announced on this connection even if its notification arrived before
    the wait began (it waits in the socket)."""

    def __init__(self, url: str) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn: psycopg.Connection | None = None
        self._failed_at = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.notifications = 0

    @property
    def listening(self) -> bool:
        return self._conn is not None

    def ensure(self) -> bool:
        """Open the listening connection if there is none (not more often than every LISTENER_RETRY_SECONDS).
        True when it was opened now: the caller polls once more before it waits, as nothing was listened to
        during its last poll."""
        if self._conn is not None or time.monotonic() - self._failed_at < LISTENER_RETRY_SECONDS:
            return False
        import psycopg

        try:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error as exc:
            self._failed_at = time.monotonic()
            logger.warning("cannot LISTEN for broker messages (%s); polling every interval instead", exc)
            return False
        self._conn = conn
        return True

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"w")

    def wait(self, timeout: float) -> None:
        conn = self._conn
        if conn is None:
            time.sleep(timeout)
            return
        import psycopg  # loaded by ensure(), which opened the connection

        try:
            readable, _, _ = select.select([conn.fileno(), self._wake_r], [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    while os.read(self._wake_r, 4096):
                        pass
            if conn.fileno() in readable:
                for _ in conn.notifies(timeout=0):
                    self.notifications += 1
        except (psycopg.Error, OSError, ValueError) as exc:  # the connection broke: poll until it is back
            logger.warning("broker LISTEN connection lost (%s); polling until it is back", exc)
            self.close()
            self._failed_at = time.monotonic()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def dispose(self) -> None:
        self.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class Transport(kombu_sql.Transport):
    Channel = Channel

    _listener: Listener | None = None

    def _listener_for_drain(self) -> Listener | None:
        if self._listener is None:
            url = str(self.client.hostname or "")
            if not url.startswith("postgresql"):
                return None
            self._listener = Listener(url)
        return self._listener

    def wake(self) -> None:
        """Wake the consumer waiting in :meth:`drain_events` (any thread)."""
        listener = self._listener
        if listener is not None:
            listener.wake()

    def drain_events(self, connection, timeout=None):
        """kombu's loop (poll each queue, deliver the first message found), where an idle round waits for a
        NOTIFY (or a freed prefetch slot) instead of sleeping the polling interval."""
        time_start = time.monotonic()
        get = self.cycle.get
        listener = self._listener_for_drain()
        while True:
            try:
                get(self._deliver, timeout=timeout)
            except Empty:
                elapsed = time.monotonic() - time_start
                # listening from now on, even when this drain's time is up: a poll slower than the drain's
                # timeout (a loaded database) would otherwise never get to the LISTEN, and every later wait
                # would be a poll interval's
                opened = listener is not None and listener.ensure()
                if timeout is not None and elapsed >= timeout:
                    raise TimeoutError() from None
                if opened:
                    continue  # poll once more, then wait
                interval = self.polling_interval or 0.0
                if listener is not None and listener.listening:
                    interval = max(interval, LISTENING_POLL_INTERVAL)
                if timeout is not None:
                    interval = min(interval, timeout - elapsed)
                if listener is not None:
                    listener.wait(interval)
                elif interval:
                    time.sleep(interval)
            else:
                return

    def close_connection(self, connection):
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.dispose()
        super().close_connection(connection)


def install() -> None:
    TRANSPORT_ALIASES["sqla"] = "backend.app.runtime.sql_transport:Transport"
    TRANSPORT_ALIASES["sqlalchemy"] = "backend.app.runtime.sql_transport:Transport"


_RESTORE_ORPHANS = """
WITH orphaned AS (
    DELETE FROM broker_deliveries d
    WHERE d.taken_at < now() - make_interval(secs => :grace)
      AND NOT EXISTS (
        SELECT 1 FROM worker_heartbeats h
        WHERE h.hostname = d.hostname AND h.pid = d.pid AND h.state = :healthy
          AND h.last_seen >= now() - make_interval(secs => :stale))
    RETURNING d.message_id)
UPDATE kombu_message SET visible = true WHERE visible = false AND id IN (SELECT message_id FROM orphaned)
RETURNING pg_notify('windflow_broker', '')
"""


async def restore_orphaned_deliveries(session, *, grace: float = STALE_AFTER_SECONDS) -> int:
    """Make visible again the messages taken by a worker process that is gone or degraded (no fresh,
    healthy heartbeat from its host and PID) more than ``grace`` seconds ago. Returns how many; 0 where the
    PostgreSQL broker is not in use. The caller (the reaper, leader-elected) commits."""
    if session.bind.dialect.name != "postgresql":
        return 0
    if (await session.execute(text("SELECT to_regclass('public.kombu_message')"))).scalar() is None:
        return 0
    result = await session.execute(text(_RESTORE_ORPHANS), {"grace": float(grace), "stale": float(STALE_AFTER_SECONDS), "healthy": HEALTHY})
    return result.rowcount or 0


def release_deliveries(sync_database_url: str, *, hostname: str, pid: int) -> int:
    """A worker that leaves puts back what its process took (at once, rather than at the reaper's grace)."""
    engine = create_engine(sync_database_url, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            if conn.execute(text("SELECT to_regclass('public.kombu_message')")).scalar() is None:
                return 0
            return (
                conn.execute(
                    text(
                        "WITH mine AS (DELETE FROM broker_deliveries WHERE hostname = :hostname AND pid = :pid "
                        "RETURNING message_id) UPDATE kombu_message SET visible = true "
                        "WHERE visible = false AND id IN (SELECT message_id FROM mine) RETURNING pg_notify('windflow_broker', '')"
                    ),
                    {"hostname": hostname, "pid": pid},
                ).rowcount
                or 0
            )
    finally:
        engine.dispose()


def purge_consumed_messages(
    sync_database_url: str, older_than_minutes: int = 60, *, batch_size: int = 1000, max_batches: int = 1000
) -> int:
    """Delete delivered (invisible) kombu messages older than the window. Returns the count.

    Deleted ``batch_size`` rows at a time, each batch its own short transaction, so a large backlog never
    holds locks on the broker's table for long (workers keep polling and acking meanwhile); at most
    ``max_batches`` per call, the next beat run continues.
    """
    engine = create_engine(sync_database_url, pool_pre_ping=True)
    statement = text(
        "DELETE FROM kombu_message WHERE id IN (SELECT id FROM kombu_message WHERE visible = false "
        "AND (timestamp IS NULL OR timestamp < now() - make_interval(mins => :minutes)) LIMIT :batch)"
    )
    forgotten = text(  # records of messages purged meanwhile (an ack that could not reach the database)
        "DELETE FROM broker_deliveries d WHERE NOT EXISTS (SELECT 1 FROM kombu_message m WHERE m.id = d.message_id)"
    )
    deleted = 0
    try:
        with engine.connect() as conn:
            if conn.execute(text("SELECT to_regclass('public.kombu_message')")).scalar() is None:
                return 0
            conn.commit()
        for _ in range(max_batches):
            with engine.begin() as conn:
                count = conn.execute(statement, {"minutes": older_than_minutes, "batch": batch_size}).rowcount
            deleted += count
            if count < batch_size:
                break
        with engine.begin() as conn:
            conn.execute(forgotten)
        return deleted
    finally:
        engine.dispose()


install()
