"""Apply Alembic migrations programmatically (start-up and ``windflow db upgrade``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.app.config import Settings

logger = logging.getLogger(__name__)
ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def alembic_config(settings: Settings) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    return config


def _broker_in(settings: Settings, url: URL) -> bool:
    """Whether the Celery broker is kombu's SQL transport on this very database."""
    broker = settings.celery_broker_url or ""
    if not broker.startswith("sqla+"):
        return False
    target = make_url(broker.removeprefix("sqla+"))
    return (target.host, target.port or 5432, target.database) == (url.host, url.port or 5432, url.database)


async def upgrade_database(engine: AsyncEngine, settings: Settings, revision: str = "head", *, schema: bool = True) -> None:
    """Upgrade the database behind ``engine`` to ``revision`` (idempotent), and create kombu's tables when
    the Celery broker lives in it. ``schema=False`` does only the latter (``RUN_MIGRATIONS_ON_STARTUP=false``)."""
    config = alembic_config(settings)

    def _upgrade(connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several replicas (or a backend and its workers) may start at once: serialise migrations.
            await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274001)")
        if schema:
            await conn.run_sync(_upgrade)
        if conn.dialect.name == "postgresql" and _broker_in(settings, conn.engine.url):
            from backend.app.runtime.sql_transport import create_broker_tables

            await conn.run_sync(create_broker_tables)  # same lock: workers starting together never race on them
    if schema:
        logger.info("Database schema is at %s", revision)


def upgrade_sync(settings: Settings, revision: str = "head", *, schema: bool = True, wait_seconds: float = 0) -> None:
    """:func:`upgrade_database` on a throwaway engine and loop; with ``wait_seconds``, first wait that long
    at most for a database that is unreachable (restarting)."""
    from backend.app.database import build_engine, wait_until_reachable

    async def _run() -> None:
        engine = build_engine(settings)
        try:
            if wait_seconds:
                await wait_until_reachable(wait_seconds, logger, engine)
            await upgrade_database(engine, settings, revision, schema=schema)
        finally:
            await engine.dispose()

    asyncio.run(_run())
