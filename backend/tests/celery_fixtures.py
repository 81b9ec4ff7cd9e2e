"""Real Celery worker/beat processes and a backend app with its lifespan, for the execution tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
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
from backend.app.tasks import background_tasks

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CELERY = str(BIN / "celery")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "WINDFLOW_", "DEPLOYMENT", "RECOVERY_"))}
    env.update(settings.as_environment())
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A child process in its own process group, with its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO_ROOT) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, grace: float = 15) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill9()
        # children of a warm-shut-down worker are gone with the group; make sure
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._log.close()


def start_worker(settings: Settings, log_dir: Path, *extra: str, name: str = "w1") -> Proc:
    """``celery -A backend.app.celery_app worker --concurrency=4``, as the guide types it."""
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
