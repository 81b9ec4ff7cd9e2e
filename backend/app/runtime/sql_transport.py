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
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from queue import Empty

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sql
from kombu.utils.json import loads
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from backend.app.runtime.workers import HEALTHY, STALE_AFTER_SECONDS

_NOT_ENGINE_OPTIONS = ("polling_interval",)


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

_TAKE = text(
    "SELECT id, payload FROM kombu_message WHERE queue_id = :queue AND visible = true ORDER BY timestamp, id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
_HIDE = text("UPDATE kombu_message SET visible = false, version = version + 1 WHERE id = :id")
_RECORD = text(
    "INSERT INTO broker_deliveries (message_id, delivery_tag, hostname, pid, taken_at) "
    "VALUES (:id, :tag, :hostname, :pid, now()) ON CONFLICT (message_id) DO UPDATE SET "
    "delivery_tag = excluded.delivery_tag, hostname = excluded.hostname, pid = excluded.pid, taken_at = now()"
)
_FORGET = text("DELETE FROM broker_deliveries WHERE delivery_tag = :tag")


class Channel(kombu_sql.Channel):
    def __init__(self, *args, **kwargs) -> None:
        self._session_lock = threading.RLock()
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

    def _take(self, queue):
        """kombu's ``_get`` on PostgreSQL, plus the record of who took the message (same transaction)."""
        queue_id = self._get_or_create(queue).id
        row = self.session.execute(_TAKE, {"queue": queue_id}).first()
        if row is None:
            self.session.commit()
            POLLS.last_ok = time.monotonic()
            raise Empty()
        payload = loads(row.payload)
        self.session.execute(_HIDE, {"id": row.id})
        tag = str((payload.get("properties") or {}).get("delivery_tag") or "")[:64]
        if tag:
            self.session.execute(_RECORD, {"id": row.id, "tag": tag, "hostname": socket.gethostname(), "pid": os.getpid()})
        self.session.commit()
        POLLS.last_ok = time.monotonic()
        return payload

    def _forget(self, delivery_tag) -> None:
        """The message of ``delivery_tag`` is acknowledged or back in the queue: nobody holds it any more."""
        if not delivery_tag or self.session.bind.name != "postgresql":
            return

        def forget() -> None:
            self.session.execute(_FORGET, {"tag": str(delivery_tag)[:64]})
            self.session.commit()

        with contextlib.suppress(Exception):  # a stale record costs a harmless redelivery, never a loss
            self._locked(forget)

    def basic_ack(self, delivery_tag, multiple=False):
        super().basic_ack(delivery_tag, multiple=multiple)
        self._forget(delivery_tag)

    def basic_reject(self, delivery_tag, requeue=False):
        super().basic_reject(delivery_tag, requeue=requeue)
        self._forget(delivery_tag)

    def _restore(self, message):
        super()._restore(message)
        self._forget(message.delivery_tag)

    def _put(self, queue, payload, **kwargs):
        return self._locked(super()._put, queue, payload, **kwargs)

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
        return create_engine(conninfo.hostname, **options)


class Transport(kombu_sql.Transport):
    Channel = Channel


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
                        "WHERE visible = false AND id IN (SELECT message_id FROM mine)"
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
