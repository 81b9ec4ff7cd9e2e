"""Settings: the refused default secret and the URLs derived from DATABASE_URL (pure logic)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.app.config import DEFAULT_SECRET_KEY, Settings

SECRET = "s" * 40


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def test_default_secret_refused_outside_debug_with_instructions():
    with pytest.raises(ValidationError) as caught:
        settings(SECRET_KEY=DEFAULT_SECRET_KEY, DEBUG=False)
    message = str(caught.value)
    assert "SECRET_KEY" in message and "secrets.token_urlsafe" in message
    assert settings(SECRET_KEY=DEFAULT_SECRET_KEY, DEBUG=True).DEBUG is True


def test_short_secret_and_unknown_database_refused():
    with pytest.raises(ValidationError, match="at least 32"):
        settings(SECRET_KEY="short")
    with pytest.raises(ValidationError, match="postgresql\\+asyncpg"):
        settings(SECRET_KEY=SECRET, DATABASE_URL="mysql://u@h/db")


@pytest.mark.parametrize(
    "database_url",
    [
        "postgresql+asyncpg://windflow:pw@localhost:5432/windflow",
        "postgresql://windflow:pw@localhost:5432/windflow",
        "postgresql+psycopg://windflow:pw@localhost:5432/windflow",
    ],
)
def test_database_broker_derived_from_database_url(database_url):
    s = settings(SECRET_KEY=SECRET, DATABASE_URL=database_url, CELERY_ENABLED=True, CELERY_BROKER_TYPE="database")
    assert s.async_database_url == "postgresql+asyncpg://windflow:pw@localhost:5432/windflow"
    assert s.sync_database_url == "postgresql+psycopg://windflow:pw@localhost:5432/windflow"
    assert s.celery_broker_url == "sqla+postgresql+psycopg://windflow:pw@localhost:5432/windflow"
    assert s.celery_result_backend == "db+postgresql+psycopg://windflow:pw@localhost:5432/windflow"
    assert s.celery_unavailable_reason is None


def test_redis_broker_and_explicit_overrides():
    s = settings(SECRET_KEY=SECRET, CELERY_ENABLED=True, CELERY_BROKER_TYPE="redis")
    assert (s.celery_broker_url, s.celery_result_backend) == ("redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379/2")
    s = settings(
        SECRET_KEY=SECRET,
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE="redis",
        CELERY_BROKER_URL="redis://redis:6379/1",
        CELERY_RESULT_BACKEND="redis://redis:6379/2",
    )
    assert (s.celery_broker_url, s.celery_result_backend) == ("redis://redis:6379/1", "redis://redis:6379/2")


def test_sqlite_is_never_a_broker_and_disabled_celery_says_so():
    s = settings(SECRET_KEY=SECRET, DATABASE_URL="sqlite+aiosqlite:///./data/windflow.db", CELERY_ENABLED=True)
    assert s.celery_broker_url is None and s.celery_result_backend is None
    assert "SQLite" in s.celery_unavailable_reason and "in-process" in s.celery_unavailable_reason
    assert s.sqlite_path is not None and s.sqlite_path.name == "windflow.db"
    off = settings(SECRET_KEY=SECRET, DATABASE_URL="postgresql://u@h/db", CELERY_ENABLED=False)
    assert off.celery_broker_url is None and off.celery_unavailable_reason == "CELERY_ENABLED=false"


def test_guide_defaults(monkeypatch):
    for name in ("CELERY_ENABLED", "DATABASE_URL"):  # the test session's own overrides
        monkeypatch.delenv(name, raising=False)
    s = settings(SECRET_KEY=SECRET)
    assert (s.CELERY_ENABLED, s.CELERY_BROKER_TYPE, s.CELERY_AUTO_START_WORKER) == (True, "database", True)
    assert (s.CELERY_WORKER_CONCURRENCY, s.CELERY_WORKER_POOL, s.CELERY_WORKER_LOGLEVEL) == (2, "solo", "info")
    assert (s.RECOVERY_INTERVAL_MINUTES, s.RECOVERY_MAX_AGE_MINUTES, s.RECOVERY_TIMEOUT_MINUTES) == (5, 2, 60)
    assert (s.HOST, s.PORT, s.DEPLOYMENT_RATE_LIMIT_PER_MINUTE, s.PROMETHEUS_ENABLED) == ("127.0.0.1", 8000, 100, False)
    assert s.DATABASE_URL.startswith("sqlite+aiosqlite:///") and s.DATABASE_URL.endswith("data/windflow.db")
