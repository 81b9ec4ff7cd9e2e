"""Real Celery worker/beat processes and a backend app with its lifespan, for the execution tests."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from sqlalchemy import select

from backend.app import database
from backend.app.config import Settings
from backend.app.main import create_app
from backend.app.models import WorkerHeartbeat
from backend.app.runtime import background_tasks
from backend.tests.processes import REPO_ROOT, Proc, settings_env

__all__ = ["CELERY", "REPO_ROOT", "Proc", "running_app", "settings_env", "start_worker", "wait_heartbeat", "wait_mode"]

BIN = Path(sys.executable).parent
CELERY = str(BIN / "celery")


def start_worker(settings: Settings, log_dir: Path, *extra: str, name: str = "w1") -> Proc:
    """``celery -A backend.app.celery_app worker --concurrency=4``, as the product guide types it (docs/architecture.md#the-product-guide)."""
    argv = [CELERY, "-A", "backend.app.celery_app", "worker", "--concurrency=4", "-n", f"{name}@%h", *extra]
    return Proc(argv, settings_env(settings), log_dir / f"worker-{name}.log")


async def wait_heartbeat(name_prefix: str, proc: Proc | None = None, timeout: float = 45) -> WorkerHeartbeat:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with database.AsyncSessionLocal() as session:
            rows = (await session.execute(select(WorkerHeartbeat))).scalars().all()
        for row in rows:
            if row.name.startswith(name_prefix):
                return row
        if proc is not None and not proc.alive():
            raise AssertionError(f"worker exited early:\n{proc.output()[-3000:]}")
        import asyncio

        await asyncio.sleep(0.2)
    raise AssertionError(f"no heartbeat from {name_prefix} within {timeout}s" + (f":\n{proc.output()[-3000:]}" if proc else ""))


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    """The backend with its lifespan (migrations, event bus, Celery manager, recovery loops)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            try:
                yield app, client
            finally:
                await background_tasks.shutdown()


async def wait_mode(client: httpx.AsyncClient, headers, mode: str, timeout: float = 30) -> dict:
    import asyncio

    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = (await client.get("/api/v1/system/workers", headers=headers)).json()
        if body.get("execution_mode") == mode:
            return body
        await asyncio.sleep(0.3)
    raise AssertionError(f"execution mode never became {mode}: {body}")
