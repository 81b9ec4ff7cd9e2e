"""Reliable execution with real Celery processes on both brokers, the embedded worker, the asyncio
fallback and recovery. PostgreSQL database (SQLite is never a broker)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time

import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.celery_app import DEPLOY_TASK
from backend.app.models import Deployment, DeploymentStatusHistory
from backend.tests.celery_fixtures import Proc, running_app, start_worker, wait_heartbeat, wait_mode
from backend.tests.conftest import TEST_IMAGE, make_settings
from backend.tests.deploy_helpers import WEB_STACK, force_cleanup, free_port, http_get, labelled, wait_status
from backend.tests.helpers import setup_admin

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]

REDIS_TEST_DB = int(os.environ.get("WINDFLOW_TEST_REDIS_DB", "11"))  # parallel test sessions use different databases
SLOW_TEMPLATE = (
    "services:\n  app:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    '    command: ["sh", "-c", "sleep {{ delay }}; touch /tmp/ready; sleep 600"]\n'
    '    healthcheck:\n      test: ["CMD", "test", "-f", "/tmp/ready"]\n      interval: 1s\n      retries: 60\n'
)


def celery_settings(db, tmp_path, broker: str = "database", **overrides):
    values = dict(
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE=broker,
        CELERY_AUTO_START_WORKER=False,
        DEPLOYMENTS_WORKDIR=tmp_path / "deployments",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=40,
        DEPLOYMENT_RETRY_BACKOFF_SECONDS=0.2,
        RUN_MIGRATIONS_ON_STARTUP=True,
        LOG_LEVEL="INFO",
    )
    if broker == "redis":
        values["CELERY_BROKER_URL"] = f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
        values["CELERY_RESULT_BACKEND"] = f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
    values.update(overrides)
    return make_settings(db.settings.DATABASE_URL, **values)


@pytest.fixture
def redis_clean():
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_TEST_DB)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        from backend.tests.conftest import require_service

        require_service("Redis", str(exc))
    yield
    client.flushdb()
    client.close()


async def _setup(client, docker_engine, template: str | None = None, variables: list | None = None, limit: int = 4):
    admin = await setup_admin(client)
    target = await client.post(
        "/api/v1/targets",
        json={"name": "engine", "type": "docker", "endpoint": docker_engine, "max_concurrent_deployments": limit},
        headers=admin.headers,
    )
    assert target.status_code == 201, target.text
    body = WEB_STACK if template is None else {"name": "slow", "template": template, "variables": variables or []}
    stack = await client.post("/api/v1/stacks", json=body, headers=admin.headers)
    assert stack.status_code == 201, stack.text
    return admin, target.json()["id"], stack.json()["id"]


async def _history(deployment_id: str) -> list[tuple[str | None, str, str | None]]:
    async with database.AsyncSessionLocal() as session:
        rows = await session.execute(
            select(DeploymentStatusHistory)
            .where(DeploymentStatusHistory.deployment_id == deployment_id)
            .order_by(DeploymentStatusHistory.id)
        )
        return [(h.from_status, h.to_status, h.actor) for h in rows.scalars()]


@pytest.mark.parametrize("broker", ["database", "redis"])
async def test_external_worker_deploys_a_real_stack(db, docker_engine, tmp_path, broker, redis_clean, events):
    settings = celery_settings(db, tmp_path, broker)
    worker = start_worker(settings, tmp_path)
    created_id = None
    try:
        async with running_app(settings) as (app, client):
            await wait_heartbeat("w1@", worker)
            admin, target_id, stack_id = await _setup(client, docker_engine)
            mode = await wait_mode(client, admin.headers, "external")
            assert mode["broker"] == ("postgresql" if broker == "database" else "redis")
            assert any(w["name"].startswith("w1@") and w["kind"] == "external" and w["alive"] for w in mode["workers"])

            port = free_port()
            response = await client.post(
                "/api/v1/deployments",
                json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": port}},
                headers=admin.headers,
            )
            assert response.status_code == 201, response.text
            created_id = response.json()["id"]
            final = await wait_status(client, admin.headers, created_id, {"running", "failed"})
            assert final["status"] == "running", final["error_message"]
            assert final["executor"] == "celery"
            assert http_get(port).strip() == "hello-windflow"
            health = (await client.get("/health")).json()
            assert health["execution_mode"] == "external" and health["workers"]["external"] >= 1
            assert health["broker"]["status"] == "ok"
            async with database.AsyncSessionLocal() as session:
                task_id = (await session.get(Deployment, created_id)).task_id
            result = app.state.celery_manager.celery.AsyncResult(task_id)
            outcome = await asyncio.to_thread(result.get, timeout=20)
            assert outcome == {"deployment_id": created_id, "status": "running", "reason": ""}
            # the worker's events crossed to this process (PostgreSQL NOTIFY or Redis pub/sub)
            for _ in range(50):
                seen = [(e.type, e.data.get("new_status")) for e in events if e.deployment_id == created_id]
                if ("DEPLOYMENT_STATUS_CHANGED", "running") in seen:
                    break
                await asyncio.sleep(0.1)
            assert ("DEPLOYMENT_STATUS_CHANGED", "deploying") in seen and ("DEPLOYMENT_STATUS_CHANGED", "running") in seen
            assert any(t == "DEPLOYMENT_LOGS_UPDATE" for t, _ in seen) and any(t == "DEPLOYMENT_PROGRESS" for t, _ in seen)
    finally:
        worker.stop()
        if created_id:
            force_cleanup(created_id)


async def test_embedded_worker_starts_only_without_external_and_takes_over(db, docker_engine, tmp_path, caplog):
    """No external worker: the embedded one starts and deploys. An external worker appears: the embedded
    one stops. The external one disappears: the embedded one starts again (the guide's mode 3)."""
    caplog.set_level("INFO")
    settings = celery_settings(db, tmp_path, CELERY_AUTO_START_WORKER=True)
    created_id = None
    external: Proc | None = None
    async with running_app(settings) as (app, client):
        try:
            admin, target_id, stack_id = await _setup(client, docker_engine)
            body = await wait_mode(client, admin.headers, "embedded")
            embedded_pid = body["embedded_worker"]["pid"]
            await wait_heartbeat("embedded-")
            assert "Starting embedded Celery worker..." in caplog.text

            port = free_port()
            response = await client.post(
                "/api/v1/deployments",
                json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": port}},
                headers=admin.headers,
            )
            created_id = response.json()["id"]
            final = await wait_status(client, admin.headers, created_id, {"running", "failed"})
            assert (final["status"], final["executor"]) == ("running", "celery"), final["error_message"]
            for _ in range(50):
                if "Embedded Celery worker started" in caplog.text:
                    break
                await asyncio.sleep(0.2)
            assert "Embedded Celery worker started" in caplog.text

            external = start_worker(settings, tmp_path, name="ext")
            await wait_heartbeat("ext@", external)
            body = await wait_mode(client, admin.headers, "external")
            assert body["embedded_worker"]["alive"] is False
            with pytest.raises(ProcessLookupError):
                import os

                os.kill(embedded_pid, 0)

            external.stop()
            body = await wait_mode(client, admin.headers, "embedded", timeout=40)
            assert body["embedded_worker"]["alive"] is True
            new_pid = body["embedded_worker"]["pid"]
        finally:
            if external is not None:
                external.stop()
            if created_id:
                force_cleanup(created_id)
    # leaving the lifespan stops the embedded worker (SIGTERM, then SIGKILL after the grace period)
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(new_pid, 0)


async def test_kill9_worker_mid_deployment_runs_once(db, docker_engine, tmp_path):
    # the manual recovery pass below is what this test is about: keep the reaper out of its way
    settings = celery_settings(db, tmp_path, DEPLOYMENT_LEASE_SECONDS=6, REAPER_INTERVAL_SECONDS=300)
    first = start_worker(settings, tmp_path, name="doomed")
    second: Proc | None = None
    created_id = None
    try:
        async with running_app(settings) as (app, client):
            await wait_heartbeat("doomed@", first)
            admin, target_id, stack_id = await _setup(
                client, docker_engine, SLOW_TEMPLATE, [{"name": "delay", "type": "integer", "default": 8}]
            )
            await wait_mode(client, admin.headers, "external")
            response = await client.post("/api/v1/deployments", json={"stack_id": stack_id, "target_id": target_id}, headers=admin.headers)
            created_id = response.json()["id"]
            await wait_status(client, admin.headers, created_id, {"deploying"})
            for _ in range(150):
                if labelled("container", created_id):
                    break
                await asyncio.sleep(0.2)
            before = set(labelled("container", created_id))
            assert len(before) == 1

            first.kill9()  # the worker and its pool die in the middle of wait_healthy
            second = start_worker(settings, tmp_path, name="rescuer")
            await wait_heartbeat("rescuer@", second)
            await asyncio.sleep(7)  # the dead worker's lease expires

            report = (await client.post("/api/v1/system/recovery", json={"max_age_minutes": 0}, headers=admin.headers)).json()
            stats = report["statistics"]
            assert stats["retried"] + stats["settled"] >= 1, report
            final = await wait_status(client, admin.headers, created_id, {"running", "failed"}, timeout=60)
            assert final["status"] == "running", final["error_message"]
            assert set(labelled("container", created_id)) == before, "the containers were created once"
            history = await _history(created_id)
            assert [h[1] for h in history].count("running") == 1
            assert history[0][:2] == (None, "pending")
    finally:
        first.stop()
        if second is not None:
            second.stop()
        if created_id:
            force_cleanup(created_id)


async def test_broker_unreachable_runs_in_process(db, docker_engine, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    settings = celery_settings(
        db,
        tmp_path,
        "redis",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{closed}/0",
        CELERY_RESULT_BACKEND=f"redis://127.0.0.1:{closed}/0",
        CELERY_AUTO_START_WORKER=True,
        EVENT_BUS="postgres",
    )
    created_id = None
    async with running_app(settings) as (app, client):
        try:
            admin, target_id, stack_id = await _setup(client, docker_engine)
            body = await wait_mode(client, admin.headers, "asyncio")
            assert "unreachable" in body["reason"] and body["reason_code"] == "broker_unreachable"
            health = (await client.get("/health")).json()
            assert health["status"] == "degraded" and health["broker"]["status"] == "error"
            port = free_port()
            response = await client.post(
                "/api/v1/deployments",
                json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": port}},
                headers=admin.headers,
            )
            assert response.status_code == 201
            created_id = response.json()["id"]
            final = await wait_status(client, admin.headers, created_id, {"running", "failed"})
            assert (final["status"], final["executor"]) == ("running", "asyncio"), final["error_message"]
        finally:
            if created_id:
                force_cleanup(created_id)


async def test_broker_failing_during_enqueue_falls_back_without_losing_it(db, docker_engine, tmp_path):
    port = free_port()
    redis_server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    settings = celery_settings(db, tmp_path, "redis", CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url, EVENT_BUS="postgres")
    worker = start_worker(settings, tmp_path, name="lonely")
    created_id = None
    try:
        async with running_app(settings) as (app, client):
            await wait_heartbeat("lonely@", worker)
            admin, target_id, stack_id = await _setup(client, docker_engine)
            await wait_mode(client, admin.headers, "external")
            app.state.celery_manager._task.cancel()  # freeze the mode: the next enqueue meets a dead broker
            worker.stop()
            redis_server.terminate()
            redis_server.wait(10)
            web_port = free_port()
            started = time.monotonic()
            response = await client.post(
                "/api/v1/deployments",
                json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": web_port}},
                headers=admin.headers,
            )
            assert response.status_code == 201, response.text
            assert time.monotonic() - started < 10
            created_id = response.json()["id"]
            final = await wait_status(client, admin.headers, created_id, {"running", "failed"})
            assert (final["status"], final["executor"]) == ("running", "asyncio"), final["error_message"]
            from backend.app.runtime.metrics import DISPATCH_FALLBACKS

            assert DISPATCH_FALLBACKS.labels("enqueue_failed")._value.get() >= 1
    finally:
        worker.stop()
        if redis_server.poll() is None:
            redis_server.kill()
        if created_id:
            force_cleanup(created_id)


async def test_celery_delivery_and_recovery_at_once_run_once(db, docker_engine, tmp_path):
    from backend.app.services.deployment_service import DeploymentService

    settings = celery_settings(db, tmp_path)
    worker = start_worker(settings, tmp_path, name="racer")
    created_id = None
    try:
        async with running_app(settings) as (app, client):
            await wait_heartbeat("racer@", worker)
            admin, target_id, stack_id = await _setup(client, docker_engine)
            # a committed pending deployment nobody dispatched yet (a backend crashed right after commit)
            from backend.app.models import User

            async with database.AsyncSessionLocal() as session:
                user = (await session.execute(select(User))).scalar_one()
                deployment = await DeploymentService.create(
                    session, settings=settings, user=user, stack_id=stack_id, target_id=target_id, variables={"port": free_port()}
                )
                await session.commit()
                created_id = deployment.id

            async def recover() -> dict:  # no dispatch callable: it runs the deployment in this process
                async with database.AsyncSessionLocal() as session:
                    return await DeploymentService.recover_pending_deployments(
                        session, max_age_minutes=0, timeout_minutes=60, settings=settings
                    )

            app.state.celery_manager.celery.send_task(DEPLOY_TASK, args=(created_id,))  # Celery delivery ...
            report = await recover()  # ... and recovery's asyncio run, at the same moment
            assert report["statistics"]["retried"] == 1
            final = await wait_status(client, admin.headers, created_id, {"running", "failed"})
            assert final["status"] == "running", final["error_message"]
            await asyncio.sleep(2)  # let the loser finish noticing it lost
            history = await _history(created_id)
            claims = [h for h in history if h[1] == "deploying"]
            assert len(claims) == 1, history
            assert len(labelled("container", created_id)) == 2
    finally:
        worker.stop()
        if created_id:
            force_cleanup(created_id)


async def test_celery_retries_transient_failures_then_fails(db, docker_engine, tmp_path):
    settings = celery_settings(db, tmp_path)
    worker = start_worker(settings, tmp_path, name="retrier")
    try:
        async with running_app(settings) as (app, client):
            await wait_heartbeat("retrier@", worker)
            admin, _target_id, stack_id = await _setup(client, docker_engine)
            await wait_mode(client, admin.headers, "external")
            down = await client.post(
                "/api/v1/targets",
                json={"name": "down", "type": "docker", "endpoint": "tcp://127.0.0.1:1"},
                headers=admin.headers,
            )
            response = await client.post(
                "/api/v1/deployments",
                json={"stack_id": stack_id, "target_id": down.json()["id"], "variables": {"port": free_port()}},
                headers=admin.headers,
            )
            created_id = response.json()["id"]
            final = await wait_status(client, admin.headers, created_id, {"failed", "running"}, timeout=60)
            assert (final["status"], final["attempt"], final["executor"]) == ("failed", 3, "celery")
            claims = [h for h in await _history(created_id) if h[1] == "deploying"]
            assert len(claims) == 3
    finally:
        worker.stop()
