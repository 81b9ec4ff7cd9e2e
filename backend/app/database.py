"""Async SQLAlchemy engine, ``AsyncSessionLocal`` and the declarative ``Base``.

``AsyncSessionLocal`` is a module-level session factory so that scripts can write
``async with AsyncSessionLocal() as db:`` (the product guide's troubleshooting snippet does: docs/architecture.md#the-product-guide). It is bound to the
engine built from ``settings.DATABASE_URL``; :func:`configure` rebinds it (tests, the CLI ``--database-url``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from backend.app import sqlite_driver
from backend.app.config import DatabaseKind, Settings, settings
from backend.app.core.files import private_dir

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores text without an offset. Values are normalised to
    UTC on the way in and made aware again on the way out, so comparisons never mix naive and aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def end_transaction(session: AsyncSession) -> None:
    """End ``session``'s transaction before slow work outside the database (an engine call, the network).

    On SQLite a transaction holds the database's write lock from its ``BEGIN IMMEDIATE``: every other
    request and every runner writing log lines would wait for it, up to the busy timeout. On PostgreSQL it
    would keep a pooled connection idle in transaction. Nothing may be pending; the objects loaded stay
    usable (sessions do not expire them on commit), and the next query begins a new transaction.
    """
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("end_transaction() with unsaved changes: commit or discard them first")
    await session.commit()


async def defer_foreign_keys(session: AsyncSession, *constraints: str) -> None:
    """Check ``constraints`` (foreign keys) when ``session``'s transaction commits instead of at each statement,
    so that a row may be written before the row it references, in the same transaction. A key still broken at
    the commit fails it, as it would have failed its statement.

    PostgreSQL defers the named constraints, which must be ``DEFERRABLE``; SQLite's ``PRAGMA
    defer_foreign_keys`` defers every foreign key of the transaction (it has no per-constraint switch). Both
    last until the transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text(f"SET CONSTRAINTS {', '.join(constraints)} DEFERRED"))
    else:
        await session.execute(text("PRAGMA defer_foreign_keys = ON"))


def _configure_sqlite(async_engine: AsyncEngine) -> None:
    """SQLite: WAL, a busy timeout, foreign keys, ``BEGIN IMMEDIATE`` transactions, and a rollback after a
    failed commit.

    A deferred SQLite transaction that reads and then writes fails at once with "database is locked"
    when another connection committed in between (the busy timeout does not apply to that upgrade).
    Taking the write lock at ``BEGIN`` makes concurrent writers queue instead, which is what the
    compare-and-set claim needs. (SQLAlchemy's documented recipe for pysqlite/aiosqlite.)
    """

    @event.listens_for(async_engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(async_engine.sync_engine, "begin")
    def _on_begin(conn) -> None:
        # A read-only probe (``/health``) must not queue behind a writer: it opts out with ``sqlite_deferred``.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("sqlite_deferred") else "BEGIN IMMEDIATE")

    @event.listens_for(async_engine.sync_engine, "handle_error")
    def _on_error(context) -> None:
        # A COMMIT refused by a deferred foreign key (defer_foreign_keys) leaves SQLite's transaction open, and
        # SQLAlchemy, which takes a failed commit for an ended transaction, would pool the connection still
        # holding the write lock: end it here, as PostgreSQL ends a transaction whose COMMIT failed.
        if context.statement is None and isinstance(context.original_exception, sqlite3.IntegrityError) and context.connection is not None:
            context.connection.connection.dbapi_connection.rollback()


def build_engine(config: Settings) -> AsyncEngine:
    url = config.async_database_url
    if config.database_kind is DatabaseKind.SQLITE:
        path = config.sqlite_path
        if path is not None:
            private_dir(Path(path).parent)
        # one trip to aiosqlite's thread per statement instead of three or four (backend/app/sqlite_driver.py)
        sqlite_engine = create_async_engine(url, echo=config.DATABASE_ECHO, connect_args={"timeout": 30}, module=sqlite_driver.DBAPI)
        _configure_sqlite(sqlite_engine)
        return sqlite_engine
    return create_async_engine(
        url,
        echo=config.DATABASE_ECHO,
        pool_size=config.DATABASE_POOL_SIZE,
        max_overflow=config.DATABASE_POOL_SIZE,
        pool_pre_ping=True,  # a connection the server closed (restart) is replaced at checkout, not used
        # asyncpg waits 60 s by default for a server that does not answer: a request would hang that long
        connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
    )


engine: AsyncEngine = build_engine(settings)
AsyncSessionLocal: async_sessionmaker[AsyncSession] = async_sessionmaker(engine, expire_on_commit=False, class_=AsyncSession)


def configure(config: Settings, new_engine: AsyncEngine | None = None) -> AsyncEngine:
    """Rebind the module engine and ``AsyncSessionLocal`` to ``config``'s database."""
    global engine
    engine = new_engine or build_engine(config)
    AsyncSessionLocal.configure(bind=engine)
    return engine


def get_engine() -> AsyncEngine:
    return engine


#: a process (backend, worker, beat) started while its database restarts waits this long for it
STARTUP_WAIT_SECONDS = 120.0


async def wait_until_reachable(timeout: float, log: logging.Logger, on: AsyncEngine | None = None) -> None:
    """Return once the database answers (through ``on``, or the module's engine); while it is unreachable
    (:func:`is_unavailable`) try again every second, with a line every 10 s, for up to ``timeout`` seconds,
    then raise the last error. A process started while its database restarts goes on by itself instead of
    exiting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    said_at = None
    while True:
        try:
            async with asyncio.timeout(10):
                async with (on or engine).connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            if not is_unavailable(exc) or loop.time() >= deadline:
                raise
            if said_at is None or loop.time() - said_at >= 10:
                said_at = loop.time()
                log.warning("waiting for the database (%s)", f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
            await asyncio.sleep(1)
        else:
            if said_at is not None:
                log.info("the database answers")
            return


async def check_database(timeout: float = 5.0) -> str | None:
    """Return ``None`` when the database answers, else a one-line reason."""
    try:
        async with asyncio.timeout(timeout):
            async with engine.connect() as conn:
                conn = await conn.execution_options(sqlite_deferred=True)
                await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


# --- an unreachable database ----------------------------------------------------------------------------

#: SQLSTATEs that say the server cannot be reached or takes no connection now, whatever the statement: class
#: 08 (connection exception, e.g. 08003 "connection was closed in the middle of operation"), 57P01 admin
#: shutdown (``pg_ctl stop -m fast``), 57P02 crash shutdown, 57P03 cannot connect now (starting up, shutting
#: down, in recovery) and 53300 too many connections.
_UNREACHABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached (down, restarting, the connection lost), as
    opposed to a fault of the statement or the data (syntax, integrity, ...), which stays an error.

    What PostgreSQL through asyncpg raises when its server goes away (seen with ``pg_ctl stop -m fast`` and
    ``-m immediate``): at connect, the bare ``ConnectionRefusedError`` / ``socket.gaierror`` / ``TimeoutError``
    of the socket (SQLAlchemy passes them on unwrapped) or a ``DBAPIError`` of SQLSTATE 57P03 while the server
    starts; during a statement or in an open transaction, a ``DBAPIError`` / ``InterfaceError`` whose
    ``connection_invalidated`` is set. An ``OSError`` counts only when asyncpg raised it (another ``OSError`` of
    a request, the Docker engine's, is not the database's). SQLite never is unavailable this way: "database is
    locked" is contention, not an outage.
    """
    if isinstance(exc, BaseExceptionGroup):
        return bool(exc.exceptions) and all(is_unavailable(inner) for inner in exc.exceptions)
    current: BaseException | None = exc
    for _ in range(8):  # the chain SQLAlchemy builds is 3 deep
        if current is None:
            return False
        if isinstance(current, DBAPIError):
            if _is_sqlite(current.orig):
                return False
            if current.connection_invalidated:
                return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate in _UNREACHABLE_SQLSTATES):
            return True
        if isinstance(current, OSError) and _raised_by_driver(current):
            return True
        current = current.__cause__
    return False


def _is_sqlite(error: BaseException | None) -> bool:
    import sqlite3

    return isinstance(error, sqlite3.Error)


def _raised_by_driver(exc: BaseException) -> bool:
    """Whether ``exc`` went up through asyncpg's code (connecting, reading or writing its socket)."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "asyncpg" or module.startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False


class OutageLog:
    """How a background loop reports its failed passes: a traceback for a real error; for an unreachable
    database (:func:`is_unavailable`) one warning line when the outage starts, a reminder at most every
    ``reminder`` seconds while it lasts, and one line when a pass succeeds again."""

    def __init__(self, what: str, log: logging.Logger, reminder: float = 60.0) -> None:
        self.what = what
        self.log = log
        self.reminder = reminder
        self.down_since: float | None = None
        self._reminded_at = 0.0

    def failed(self, exc: BaseException) -> None:
        if not is_unavailable(exc):
            self.log.error("%s failed", self.what, exc_info=exc)
            return
        now = time.monotonic()
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        if self.down_since is None:
            self.down_since = self._reminded_at = now
            self.log.warning("%s skipped: the database is unreachable (%s); retrying at the next pass", self.what, reason)
        elif now - self._reminded_at >= self.reminder:
            self._reminded_at = now
            self.log.warning("%s still skipped: the database has been unreachable for %.0fs (%s)", self.what, now - self.down_since, reason)

    def succeeded(self) -> None:
        if self.down_since is not None:
            self.log.info("%s resumed: the database answers again (after %.0fs)", self.what, time.monotonic() - self.down_since)
            self.down_since = None
