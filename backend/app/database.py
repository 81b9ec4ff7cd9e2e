"""Async SQLAlchemy engine, ``AsyncSessionLocal`` and the declarative ``Base``.

``AsyncSessionLocal`` is a module-level session factory so that scripts can write
``async with AsyncSessionLocal() as db:`` (the guide's troubleshooting snippet does). It is bound to the
engine built from ``settings.DATABASE_URL``; :func:`configure` rebinds it (tests, the CLI ``--database-url``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from backend.app.core.files import private_dir
from backend.app.config import DatabaseKind, Settings, settings

logger = logging.getLogger(__name__)

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


def _configure_sqlite(async_engine: AsyncEngine) -> None:
    """SQLite: WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` transactions.

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


def build_engine(config: Settings) -> AsyncEngine:
    url = config.async_database_url
    if config.database_kind is DatabaseKind.SQLITE:
        path = config.sqlite_path
        if path is not None:
            private_dir(Path(path).parent)
        sqlite_engine = create_async_engine(url, echo=config.DATABASE_ECHO, connect_args={"timeout": 30})
        _configure_sqlite(sqlite_engine)
        return sqlite_engine
    return create_async_engine(
        url,
        echo=config.DATABASE_ECHO,
        pool_size=config.DATABASE_POOL_SIZE,
        max_overflow=config.DATABASE_POOL_SIZE,
        pool_pre_ping=True,
    )


engine: AsyncEngine = build_engine(settings)
AsyncSessionLocal: async_sessionmaker[AsyncSession] = async_sessionmaker(
    engine, expire_on_commit=False, class_=AsyncSession
)


def configure(config: Settings, new_engine: AsyncEngine | None = None) -> AsyncEngine:
    """Rebind the module engine and ``AsyncSessionLocal`` to ``config``'s database."""
    global engine
    engine = new_engine or build_engine(config)
    AsyncSessionLocal.configure(bind=engine)
    return engine


def get_engine() -> AsyncEngine:
    return engine


async def check_database(timeout: float = 5.0) -> str | None:
    """Return ``None`` when the database answers, else a one-line reason."""
    from sqlalchemy import text

    try:
        async with asyncio.timeout(timeout):
            async with engine.connect() as conn:
                conn = await conn.execution_options(sqlite_deferred=True)
                await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None
