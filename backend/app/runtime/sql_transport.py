"""kombu's SQL transport with a working ``polling_interval`` and a purge of consumed messages.

kombu 5.7's SQLAlchemy transport reads ``polling_interval`` from the transport options (the virtual
transport base honours it) but also passes *every* transport option to ``sqlalchemy.create_engine``, which
rejects ``polling_interval`` with a TypeError. This channel drops it before creating the engine. The
transport is registered under kombu's ``sqla`` alias, so ``sqla+postgresql+psycopg://`` URLs use it.

kombu's channel keeps one SQLAlchemy ``Session`` that two threads of a prefork worker's main process use at
once: the consumer loop (``_get``) and billiard's result-handler thread, which requeues the message of a
killed pool child (``reject_on_worker_lost`` → ``_put``). Interleaved, they leave the session "in
'prepared' state" and the worker dies with an unrecoverable error. This channel serialises every use of
its session with a lock.

The transport never deletes delivered messages: it flips them to ``visible = false``.
:func:`purge_consumed_messages` deletes those older than a retention window (a beat task runs it).
"""

from __future__ import annotations

import threading

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sql
from sqlalchemy import create_engine, text

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


class Channel(kombu_sql.Channel):
    def __init__(self, *args, **kwargs) -> None:
        self._session_lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def _get(self, queue):
        with self._session_lock:
            return super()._get(queue)

    def _put(self, queue, payload, **kwargs):
        with self._session_lock:
            return super()._put(queue, payload, **kwargs)

    def _purge(self, queue):
        with self._session_lock:
            return super()._purge(queue)

    def _size(self, queue):
        with self._session_lock:
            return super()._size(queue)

    def _new_queue(self, queue, **kwargs):
        with self._session_lock:
            return super()._new_queue(queue, **kwargs)

    def _engine_from_config(self):
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in _NOT_ENGINE_OPTIONS}
        for key in ("queue_tablename", "message_tablename", "callback", "errback", "max_retries",
                    "interval_start", "interval_step", "interval_max", "retry_errors"):
            options.pop(key, None)
        options.setdefault("pool_pre_ping", True)
        return create_engine(conninfo.hostname, **options)


class Transport(kombu_sql.Transport):
    Channel = Channel


def install() -> None:
    TRANSPORT_ALIASES["sqla"] = "backend.app.runtime.sql_transport:Transport"
    TRANSPORT_ALIASES["sqlalchemy"] = "backend.app.runtime.sql_transport:Transport"


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
        return deleted
    finally:
        engine.dispose()


install()
