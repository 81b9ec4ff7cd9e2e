"""Which transport the settings choose, and where it connects."""

from __future__ import annotations

import logging

from backend.app.config import BrokerType, DatabaseKind, Settings
from backend.app.runtime.event_transport.base import (
    DEFAULT_REDIS_BROKER_URL,
    EventBusKind,
)

logger = logging.getLogger("backend.app.runtime.event_transport")  # one logger name for the whole bus


def resolve_event_bus_kind(settings: Settings) -> EventBusKind:
    """``EVENT_BUS``, with ``auto`` resolved; raises ``ValueError`` for an impossible choice."""
    choice = settings.EVENT_BUS
    if choice == "auto":
        if settings.CELERY_BROKER_TYPE is BrokerType.REDIS:
            return "redis"
        return "postgres" if settings.database_kind is DatabaseKind.POSTGRESQL else "memory"
    if choice == "postgres" and settings.database_kind is not DatabaseKind.POSTGRESQL:
        raise ValueError(
            "EVENT_BUS=postgres needs a PostgreSQL DATABASE_URL; with SQLite use EVENT_BUS=memory (or redis with EVENT_BUS_REDIS_URL)"
        )
    return choice


def event_bus_redis_url(settings: Settings) -> str:
    """``EVENT_BUS_REDIS_URL``, else the Celery broker URL when the broker is Redis."""
    if settings.EVENT_BUS_REDIS_URL:
        return settings.EVENT_BUS_REDIS_URL
    if settings.CELERY_BROKER_TYPE is BrokerType.REDIS:
        return settings.CELERY_BROKER_URL or DEFAULT_REDIS_BROKER_URL
    raise ValueError("EVENT_BUS=redis needs EVENT_BUS_REDIS_URL (e.g. redis://127.0.0.1:6379/0) when CELERY_BROKER_TYPE is not redis")


def postgres_dsn(settings: Settings) -> str:
    """``DATABASE_URL`` as asyncpg's ``connect`` wants it (no SQLAlchemy ``+asyncpg`` driver suffix)."""
    return settings.async_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
