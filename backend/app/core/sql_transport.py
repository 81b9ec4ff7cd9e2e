"""kombu's SQL transport with a working ``polling_interval`` and a purge of consumed messages.

kombu 5.7's SQLAlchemy transport reads ``polling_interval`` from the transport options (the virtual
transport base honours it) but also passes *every* transport option to ``sqlalchemy.create_engine``, which
rejects ``polling_interval`` with a TypeError. This channel drops it before creating the engine. The
transport is registered under kombu's ``sqla`` alias, so ``sqla+postgresql+psycopg://`` URLs use it.

The transport never deletes delivered messages: it flips them to ``visible = false``.
:func:`purge_consumed_messages` deletes those older than a retention window (a beat task runs it).
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sql
from sqlalchemy import create_engine, text

_NOT_ENGINE_OPTIONS = ("polling_interval",)


class Channel(kombu_sql.Channel):
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
    TRANSPORT_ALIASES["sqla"] = "backend.app.core.sql_transport:Transport"
    TRANSPORT_ALIASES["sqlalchemy"] = "backend.app.core.sql_transport:Transport"


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
