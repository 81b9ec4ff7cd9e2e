"""Apply Alembic migrations programmatically (start-up and ``windflow db upgrade``)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.app.config import Settings

logger = logging.getLogger(__name__)
ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def alembic_config(settings: Settings) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes["settings"] = settings
    config.attributes["configure_logger"] = False
    return config


async def upgrade_database(engine: AsyncEngine, settings: Settings, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision`` (idempotent)."""
    config = alembic_config(settings)

    def _upgrade(connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several replicas (or a backend and its workers) may start at once: serialise migrations.
            await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274001)")
        await conn.run_sync(_upgrade)
    logger.info("Database schema is at %s", revision)


def upgrade_sync(settings: Settings, revision: str = "head") -> None:
    from backend.app.database import build_engine

    async def _run() -> None:
        engine = build_engine(settings)
        try:
            await upgrade_database(engine, settings, revision)
        finally:
            await engine.dispose()

    asyncio.run(_run())
