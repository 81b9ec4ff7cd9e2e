"""The guide's commands, typed as the guide types them, against real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.request

import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.models import SystemState
from backend.tests.celery_fixtures import CELERY, REPO_ROOT, Proc, settings_env, start_worker, wait_heartbeat
from backend.tests.conftest import make_settings
from backend.tests.deploy_helpers import free_port

pytestmark = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)


def _get_json(url: str) -> dict:
    import json

    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def _wait_http(url: str, proc: Proc, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"server exited:\n{proc.output()[-3000:]}")
        try:
            return _get_json(url)
        except OSError:
            await asyncio.sleep(0.3)
    raise AssertionError(f"{url} did not answer:\n{proc.output()[-3000:]}")


async def test_python_m_backend_app_main_with_embedded_worker(db, tmp_path):
    """Mode 1 of the guide: CELERY_ENABLED + CELERY_AUTO_START_WORKER, one command, embedded worker."""
    port = free_port()
    settings = make_settings(
        db.settings.DATABASE_URL,
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE="database",
        CELERY_AUTO_START_WORKER=True,
        RUN_MIGRATIONS_ON_STARTUP=True,
        HOST="127.0.0.1",
        PORT=port,
        LOG_FILE=str(tmp_path / "logs" / "backend.log"),
        PROMETHEUS_ENABLED=True,
        RECOVERY_ON_STARTUP=True,
    )
    server = Proc(
        ["python", "-m", "backend.app.main"],
        {**settings_env(settings), "PATH": f"{os.path.dirname(CELERY)}:{os.environ['PATH']}"},
        tmp_path / "server.log",
    )
    try:
        health = await _wait_http(f"http://127.0.0.1:{port}/health", server)
        assert health["database"]["status"] == "ok"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (health["execution_mode"] == "embedded" and health["workers"]["embedded"] == 1):
            await asyncio.sleep(0.5)
            health = _get_json(f"http://127.0.0.1:{port}/health")
        assert health["execution_mode"] == "embedded" and health["workers"]["embedded"] == 1, health
        assert health["broker"] == {"type": "postgresql", "status": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert "windflow_deployments_pending" in metrics and "windflow_dispatch_latency_seconds_bucket" in metrics
        log = (tmp_path / "logs" / "backend.log").read_text()
        assert "Worker Celery intégré" in log and "Starting embedded Celery worker..." in log
        assert "Recovery terminé" in log
    finally:
        server.stop(grace=30)
    # the embedded worker went down with the backend (graceful SIGTERM): its heartbeat row is gone
    async with database.AsyncSessionLocal() as session:
        from backend.app.models import WorkerHeartbeat

        assert (await session.execute(select(WorkerHeartbeat))).scalars().all() == []


async def test_celery_beat_schedules_recovery_on_a_worker(db, tmp_path):
    """``celery -A backend.app.celery_app beat`` sends retry-pending-deployments and the reaper; a worker runs
    them. A dead executor's deployment (expired lease; no backend runs here) is reclaimed by beat's reaper."""
    settings = make_settings(
        db.settings.DATABASE_URL,
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE="database",
        RECOVERY_INTERVAL_MINUTES=1,  # crontab */1: the first run is due at the next minute boundary
        RUN_MIGRATIONS_ON_STARTUP=True,
        LOG_LEVEL="INFO",
    )
    worker = start_worker(settings, tmp_path, name="beatworker")
    beat = Proc(
        [CELERY, "-A", "backend.app.celery_app", "beat"],  # as typed; its schedule file lands in cwd
        {**settings_env(settings), "PYTHONPATH": str(REPO_ROOT)},
        tmp_path / "beat.log",
        cwd=tmp_path,
    )
    from datetime import timedelta

    from sqlalchemy import update

    from backend.app.database import utcnow
    from backend.app.models import Deployment, DeploymentStatus, DeploymentStatusHistory
    from backend.tests.factories import make_deployment

    try:
        await wait_heartbeat("beatworker@", worker)
        deadline = time.monotonic() + 90
        state = None
        while time.monotonic() < deadline:
            async with database.AsyncSessionLocal() as session:
                state = (await session.execute(select(SystemState).where(SystemState.key == "recovery"))).scalar_one_or_none()
            if state is not None:
                break
            assert beat.alive(), beat.output()[-3000:]
            await asyncio.sleep(1)
        assert state is not None, beat.output()[-3000:]
        assert state.value["last"]["status"] == "completed"

        # just after a recovery pass (the next one is a minute away): only beat's reaper can take this one
        async with database.AsyncSessionLocal() as session:
            orphan = await make_deployment(session, DeploymentStatus.DEPLOYING, lease_owner="celery:gone:1:dead")
            orphan_id = orphan.id
            await session.execute(
                update(Deployment).where(Deployment.id == orphan_id).values(lease_expires_at=utcnow() - timedelta(seconds=5))
            )
            await session.commit()
        actors: list = []
        for _ in range(60):  # the reaper runs every REAPER_INTERVAL_SECONDS (5 s)
            async with database.AsyncSessionLocal() as session:
                actors = (
                    (await session.execute(select(DeploymentStatusHistory.actor).where(DeploymentStatusHistory.deployment_id == orphan_id)))
                    .scalars()
                    .all()
                )
            if "reaper" in actors:
                break
            await asyncio.sleep(0.5)
        assert "reaper" in actors, (actors, worker.output()[-3000:])
    finally:
        beat.stop()
        worker.stop()


async def test_guide_worker_command_is_not_turned_solo_by_the_embedded_worker_settings(db, tmp_path):
    """The guide's `.env` configures the *embedded* worker (``CELERY_WORKER_POOL=solo``,
    ``CELERY_WORKER_CONCURRENCY=2``, ``CELERY_WORKER_LOGLEVEL=info``). Exported, the celery CLI would read them
    as its own option defaults; ``celery -A backend.app.celery_app worker --concurrency=4`` must still run a
    prefork pool of 4 (and WindFlow's INFO records, such as ``emit_``, still reach its log)."""
    settings = make_settings(
        db.settings.DATABASE_URL,
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE="database",
        RUN_MIGRATIONS_ON_STARTUP=True,
        CELERY_WORKER_POOL="solo",
        CELERY_WORKER_CONCURRENCY=2,
        CELERY_WORKER_LOGLEVEL="info",
    )
    env = settings_env(settings)
    assert env["CELERY_WORKER_POOL"] == "solo" and env["CELERY_WORKER_CONCURRENCY"] == "2"  # exported, as in the guide
    worker = start_worker(settings, tmp_path, name="guide")
    try:
        await wait_heartbeat("guide@", worker)
        banner = worker.output()
        assert "concurrency: 4 (prefork)" in banner, banner[-3000:]
        listed = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True, timeout=10)
        children = listed.stdout.split()
        assert len(children) >= 4, f"expected 4 pool processes under the worker, found {children}"
    finally:
        worker.stop()
