"""Recovery: start-up, timeout, orphaned leases, the API and CLI entry points (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from backend.app import database
from backend.app.core.security import encrypt_secret
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentLog, DeploymentStatus, LogLevel, Target, User
from backend.app.services.deployment_service import DeploymentService
from backend.app.services.deployments.logs import append_logs
from backend.app.services.deployments.recovery import reap
from backend.tests.celery_fixtures import REPO_ROOT, running_app, settings_env
from backend.tests.conftest import TEST_IMAGE, make_settings
from backend.tests.deploy_helpers import WEB_STACK, force_cleanup, free_port, http_get, wait_status
from backend.tests.factories import make_deployment
from backend.tests.helpers import create_user, setup_admin

pytestmark = pytest.mark.docker


def _settings(db, tmp_path, **overrides):
    values = dict(
        DEPLOYMENTS_WORKDIR=tmp_path / "deployments",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=30,
        RECOVERY_ON_STARTUP=True,
        LOG_LEVEL="INFO",
    )
    values.update(overrides)
    return make_settings(db.settings.DATABASE_URL, **values)


async def _stack_and_target(client, admin, docker_engine) -> tuple[str, str]:
    target = await client.post(
        "/api/v1/targets", json={"name": "engine", "type": "docker", "endpoint": docker_engine}, headers=admin.headers
    )
    stack = await client.post("/api/v1/stacks", json=WEB_STACK, headers=admin.headers)
    assert target.status_code == 201 and stack.status_code == 201, (target.text, stack.text)
    return target.json()["id"], stack.json()["id"]


async def _create_undispatched(settings, stack_id: str, target_id: str, port: int) -> str:
    """A committed ``pending`` deployment that no executor received (the backend died right after commit)."""
    async with database.AsyncSessionLocal() as session:
        user = (await session.execute(select(User).where(User.is_superuser.is_(True)))).scalars().first()
        deployment = await DeploymentService.create(
            session, settings=settings, user=user, stack_id=stack_id, target_id=target_id, variables={"port": port}
        )
        await session.commit()
        return deployment.id


async def test_backend_restart_recovers_pending(db, docker_engine, tmp_path):
    settings = _settings(db, tmp_path, RECOVERY_ON_STARTUP=False)
    port = free_port()
    async with running_app(settings) as (_app, client):
        admin = await setup_admin(client)
        target_id, stack_id = await _stack_and_target(client, admin, docker_engine)
        deployment_id = await _create_undispatched(settings, stack_id, target_id, port)
    try:
        # "restart": a new backend whose start-up recovery retries every pending deployment
        async with running_app(_settings(db, tmp_path)) as (_app, client):
            final = await wait_status(client, admin.headers, deployment_id, {"running", "failed"})
            assert final["status"] == "running", final["error_message"]
            assert http_get(port).strip() == "hello-windflow"
            recovery = (await client.get("/api/v1/system/recovery", headers=admin.headers)).json()
            assert recovery["last"]["statistics"]["retried"] == 1
            assert recovery["last"]["status"] == "completed"
        async with database.AsyncSessionLocal() as session:
            messages = (
                (await session.execute(select(DeploymentLog.message).where(DeploymentLog.deployment_id == deployment_id))).scalars().all()
            )
        assert any(m.startswith("[RETRY]") for m in messages)
    finally:
        force_cleanup(deployment_id)


async def test_timeout_marks_failed_and_recent_pending_is_left_alone(session):
    old = await make_deployment(session, queued_minutes_ago=61)
    recent = await make_deployment(session, queued_minutes_ago=1)
    old_id, recent_id = old.id, recent.id
    await session.commit()

    report = await DeploymentService.recover_pending_deployments(session, max_age_minutes=2, timeout_minutes=60)

    assert report["status"] == "completed"
    assert set(report["statistics"]) >= {"retried", "failed", "skipped", "errors"}
    assert report["statistics"]["failed"] == 1 and report["statistics"]["retried"] == 0
    rows = {d.id: d for d in (await session.execute(select(Deployment).execution_options(populate_existing=True))).scalars()}
    assert rows[old_id].status == "failed" and rows[old_id].error_message.startswith("Timeout")
    assert rows[recent_id].status == "pending"
    await session.commit()


async def test_orphaned_lease_is_requeued_or_failed(session):
    """A deploying row whose executor died: back to pending while attempts remain, else failed."""
    alive = await make_deployment(session, DeploymentStatus.DEPLOYING, attempt=1)
    spent = await make_deployment(session, DeploymentStatus.DEPLOYING, attempt=3)
    fresh = await make_deployment(session, DeploymentStatus.DEPLOYING, attempt=1)
    expired = utcnow() - timedelta(seconds=5)
    await session.execute(update(Deployment).where(Deployment.id.in_([alive.id, spent.id])).values(lease_expires_at=expired))
    ids = (alive.id, spent.id, fresh.id)
    await session.commit()

    sent: list[str] = []

    async def record(deployment_id: str) -> None:  # records instead of running: these rows point at a fake target
        sent.append(deployment_id)

    report = await DeploymentService.recover_pending_deployments(session, max_age_minutes=2, timeout_minutes=60, dispatch=record)
    rows = {d.id: d for d in (await session.execute(select(Deployment).execution_options(populate_existing=True))).scalars()}
    await session.commit()
    assert rows[ids[0]].status == "pending" and sent == [ids[0]]
    assert rows[ids[1]].status == "failed" and "lease expired" in rows[ids[1]].error_message
    assert rows[ids[2]].status == "deploying", "a live lease is never taken away"
    assert report["statistics"]["retried"] == 1 and report["statistics"]["failed"] == 1


async def test_reaping_an_orphan_whose_engine_does_not_answer_holds_up_no_writer(db, session):
    """The reaper asks the orphan's engine whether its containers run; an engine that accepts the connection
    and never answers keeps it waiting, and meanwhile the rest of the platform writes (on SQLite, whose
    transactions take the write lock, the reaper must not hold one)."""
    connected, peers = asyncio.Event(), []

    async def never_answer(reader, writer) -> None:
        peers.append(writer)
        connected.set()

    blackhole = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = blackhole.sockets[0].getsockname()[1]
    orphan = await make_deployment(
        session,
        DeploymentStatus.DEPLOYING,
        attempt=1,
        rendered_compose=encrypt_secret(db.settings, f"services:\n  app:\n    image: {TEST_IMAGE}\n"),
    )
    other = await make_deployment(session, DeploymentStatus.DEPLOYING, attempt=1)
    orphan_id, other_id = orphan.id, other.id
    await session.execute(update(Target).where(Target.id == orphan.target_id).values(endpoint=f"tcp://127.0.0.1:{port}"))
    # it reached its gate (before it, the reaper trusts no container it finds: they are the previous revision's)
    await session.execute(
        update(Deployment)
        .where(Deployment.id == orphan_id)
        .values(lease_expires_at=utcnow() - timedelta(seconds=5), current_step=6, total_steps=6)
    )
    await session.commit()
    sent: list[str] = []

    async def record(deployment_id: str) -> None:
        sent.append(deployment_id)

    reaper = asyncio.create_task(reap(session, settings=db.settings, dispatch=record))
    try:
        await asyncio.wait_for(connected.wait(), 30)  # the reaper now waits for the engine
        async with database.AsyncSessionLocal() as writer:  # a runner writing its log meanwhile
            await append_logs(writer, deployment_id=other_id, lines=[(LogLevel.INFO, "still writing", utcnow())])
            await writer.commit()
        assert not reaper.done(), "the write waited for the reaper"
    finally:
        for peer in peers:  # the engine hangs up: its answer is unknown, so the orphan is requeued
            peer.close()
        blackhole.close()
        await asyncio.wait_for(reaper, 60)
    rows = {d.id: d for d in (await session.execute(select(Deployment).execution_options(populate_existing=True))).scalars()}
    await session.commit()
    assert rows[orphan_id].status == "pending" and sent == [orphan_id]


async def test_recovery_api_is_superuser_only(db, tmp_path):
    settings = _settings(db, tmp_path, RECOVERY_ON_STARTUP=False)
    async with running_app(settings) as (_app, client):
        admin = await setup_admin(client)
        member = await create_user(client, admin, "member@example.com")
        refused = await client.post("/api/v1/system/recovery", headers=member.headers)
        assert refused.status_code == 403
        bad = await client.post("/api/v1/system/recovery", json={"max_age_minutes": -1}, headers=admin.headers)
        assert bad.status_code == 422
        ran = await client.post("/api/v1/system/recovery", json={"max_age_minutes": 0}, headers=admin.headers)
        assert ran.status_code == 200 and ran.json()["status"] == "completed"
        workers = await client.get("/api/v1/system/workers", headers=member.headers)
        assert workers.status_code == 200 and workers.json()["execution_mode"] == "asyncio"


SNIPPET = """
from backend.app.services.deployment_service import DeploymentService
from backend.app.database import AsyncSessionLocal
import asyncio

async def run():
    async with AsyncSessionLocal() as db:
        stats = await DeploymentService.recover_pending_deployments(db)
        print(stats)

asyncio.run(run())
"""


@pytest.mark.parametrize("command", ["snippet", "cli"])
async def test_troubleshooting_snippet_and_cli_as_typed(db, docker_engine, tmp_path, command):
    """The product guide's manual recovery (docs/operations.md#recovery), exactly as written, recovers a stuck deployment to running."""
    settings = _settings(db, tmp_path, RECOVERY_ON_STARTUP=False)
    port = free_port()
    async with running_app(settings) as (_app, client):
        admin = await setup_admin(client)
        target_id, stack_id = await _stack_and_target(client, admin, docker_engine)
        deployment_id = await _create_undispatched(settings, stack_id, target_id, port)
        async with database.AsyncSessionLocal() as session:  # stuck for 3 minutes
            await session.execute(
                update(Deployment).where(Deployment.id == deployment_id).values(queued_at=utcnow() - timedelta(minutes=3))
            )
            await session.commit()
    try:
        argv = [sys.executable, "-c", SNIPPET] if command == "snippet" else [str(REPO_ROOT / ".venv/bin/windflow"), "recover"]
        if command == "cli" and not (REPO_ROOT / ".venv/bin/windflow").exists():
            argv = [sys.executable, "-m", "backend.app.cli", "recover"]
        done = await asyncio.to_thread(  # in a thread: the event loop stays live while the command runs
            subprocess.run, argv, cwd=REPO_ROOT, env=settings_env(settings), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        if command == "snippet":
            assert "'retried': 1" in done.stdout and "'status': 'completed'" in done.stdout
        else:
            assert json.loads(done.stdout)["statistics"]["retried"] == 1
        async with database.AsyncSessionLocal() as session:
            row = await session.get(Deployment, deployment_id)
        assert row.status == "running", row.error_message
        assert http_get(port).strip() == "hello-windflow"
    finally:
        force_cleanup(deployment_id)
