"""PostgreSQL ``LISTEN``/``NOTIFY`` on one asyncpg connection (and ``pg_notify`` in a session's transaction)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.engine import URL

from backend.app.runtime.event_transport.base import (
    CONNECT_TIMEOUT_SECONDS,
    HEARTBEAT_SECONDS,
    PG_CHANNEL,
    PG_MAX_PAYLOAD,
    EventTransport,
    MessageHandler,
    PayloadRejected,
    watch,
)

logger = logging.getLogger("backend.app.runtime.event_transport")  # one logger name for the whole bus


class PostgresNotifyTransport(EventTransport):
    """``LISTEN`` and ``pg_notify`` on one asyncpg connection.

    NOTIFY is transactional: the parts of a batch are sent in one implicit transaction (``executemany``),
    so they are delivered together, in order, or not at all. A heartbeat query detects a half-open
    connection when nothing else is sent.
    """

    name = "postgres"
    max_payload = PG_MAX_PAYLOAD

    def __init__(
        self,
        dsn: str,
        channel: str = PG_CHANNEL,
        *,
        application_name: str = "windflow-events",
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
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_SECONDS, server_settings={"application_name": self.application_name})
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
                await conn.executemany("SELECT pg_notify($1, $2)", [(self.channel, p) for p in payloads], timeout=30)
        except asyncpg.PostgresError as exc:
            if conn.is_closed():  # e.g. AdminShutdownError: the server killed the session
                self._lost.set()
                raise
            raise PayloadRejected(str(exc)) from exc
        except BaseException:
            self._lost.set()
            raise

    async def wait_closed(self) -> None:
        await watch(self._lost, self.heartbeat, self._probe)

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


PG_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def pg_address(url: URL) -> tuple[str | None, int, str | None]:
    """(host, port, database) of a PostgreSQL URL: which database a connection reaches."""
    return url.host, url.port or 5432, url.database
