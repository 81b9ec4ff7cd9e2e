"""Shared fixtures.

Database tests run twice, against SQLite (the embedded default) and the PostgreSQL on 127.0.0.1:5432,
through the ``db_backend`` parameter (test ids end in ``[sqlite]`` / ``[postgresql]``). Each test session
creates its own throw-away PostgreSQL database and migrates it with Alembic, so the migrations are tested too.

A service a test needs but cannot reach is a *skip with a reason* on a laptop and a *failure* on CI
(``CI=true``), so a broken CI machine never passes by skipping.
"""

from __future__ import annotations

import os
import tempfile
import uuid

# Before any backend import: the module-level Settings must not read a developer's .env or ./data.
TEST_SECRET_KEY = "test-secret-key-that-is-long-enough-0123456789"
os.environ["SECRET_KEY"] = TEST_SECRET_KEY
os.environ["DATABASE_URL"] = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='windflow-default-')}/unused.db"
os.environ.setdefault("CELERY_ENABLED", "false")
# Real argon2id, at the smallest cost: a test suite hashes hundreds of passwords.
os.environ["PASSWORD_HASH_TIME_COST"] = "1"
os.environ["PASSWORD_HASH_MEMORY_KIB"] = "1024"
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.app import database
from backend.app.config import Settings
from backend.app.core.events import bus
from backend.app.database import Base, build_engine
from backend.app.main import create_app, install_state
from backend.app.migrate import upgrade_database

ON_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_DSN = os.environ.get("WINDFLOW_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def require_service(name: str, reason: str) -> None:
    message = f"{name} is not reachable: {reason}"
    if ON_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure)")
    pytest.skip(message)


def make_settings(database_url: str, **overrides) -> Settings:
    values = dict(
        DATABASE_URL=database_url,
        SECRET_KEY=TEST_SECRET_KEY,
        CELERY_ENABLED=False,
        RUN_MIGRATIONS_ON_STARTUP=False,
        RECOVERY_ON_STARTUP=False,
        STACKS_CATALOG_ENABLED=False,
        FRONTEND_DIST=Path(tempfile.gettempdir()) / "windflow-no-frontend",
        # the health gate's settle window, shorter than the default 3 s: still long enough to see a container
        # that dies a second after it starts (tests of the gate set their own)
        DEPLOYMENT_STABLE_SECONDS=1.0,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class TestDatabase:
    kind: str
    settings: Settings
    engine: AsyncEngine


def _pg_admin_connect():
    import psycopg

    return psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def db_backend(request, tmp_path_factory) -> AsyncIterator[TestDatabase]:
    kind = request.param
    dropper = None
    if kind == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "windflow-test.db"
        url = f"sqlite+aiosqlite:///{path}"
    else:
        try:
            admin = _pg_admin_connect()
        except Exception as exc:  # noqa: BLE001
            require_service("PostgreSQL", f"{PG_ADMIN_DSN}: {exc}")
        name = f"windflow_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        url = f"{base}/{name}"

        def dropper() -> None:
            with _pg_admin_connect() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    settings = make_settings(url)
    engine = build_engine(settings)
    await upgrade_database(engine, settings)
    try:
        yield TestDatabase(kind, settings, engine)
    finally:
        await engine.dispose()
        if dropper is not None:
            dropper()


async def _wipe(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            await conn.execute(delete(table))


@pytest.fixture
async def db(db_backend: TestDatabase) -> AsyncIterator[TestDatabase]:
    """A migrated, empty database; ``backend.app.database.AsyncSessionLocal`` is bound to it."""
    database.configure(db_backend.settings, db_backend.engine)
    await _wipe(db_backend.engine)
    yield db_backend


@pytest.fixture
async def session(db: TestDatabase):
    async with database.AsyncSessionLocal() as s:
        yield s


_APPS: dict[int, FastAPI] = {}


@pytest.fixture
def app(db: TestDatabase) -> FastAPI:
    """The backend on the test's database: one app per database for the session, with new state (rate
    limiters, Celery manager, dispatcher) for every test. FastAPI builds a route's handler (its dependencies,
    its validators) the first time the route is matched in an app; in a new app per test that was about a
    third of an API test's CPU. A test that needs other settings calls ``create_app`` itself."""
    app = _APPS.get(id(db.settings))
    if app is None:
        app = _APPS[id(db.settings)] = create_app(db.settings)
    else:
        install_state(app, db.settings)
    return app


@pytest.fixture
async def client(app) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
def events():
    """Every event published on the in-process bus during the test, in order."""
    received = []
    unsubscribe = bus.subscribe(received.append)
    yield received
    unsubscribe()


def _docker_reachable() -> str | None:
    import subprocess

    try:
        probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if probe.returncode == 0 else (probe.stderr.strip() or "docker info failed")


TEST_IMAGE = "windflow-test/busybox:latest"


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The local Docker engine (``scripts/setup-docker.sh`` starts it and builds ``TEST_IMAGE``)."""
    import subprocess

    problem = _docker_reachable()
    if problem:
        require_service("Docker engine", f"{problem} (run: bash scripts/setup-docker.sh)")
    image = subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True, timeout=20)
    if image.returncode != 0:
        require_service("Docker test image", f"{TEST_IMAGE} is missing (run: bash scripts/setup-docker.sh)")
    return "unix:///var/run/docker.sock"


@pytest.fixture(scope="module")
def compose() -> tuple[str, ...]:
    """The compose tool's command (``docker compose`` or ``docker-compose``); the test is skipped without one."""
    from backend.app.engines.compose_cli import find_compose_command

    command = find_compose_command()
    if command is None:
        pytest.skip("no docker compose / docker-compose installed")
    return command
