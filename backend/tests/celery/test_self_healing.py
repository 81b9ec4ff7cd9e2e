"""Self-healing without recovery: a ``kill -9`` of a worker's main process, of a pool child or of the
backend (embedded worker) in the middle of a deployment heals within LEASE + REAPER_INTERVAL (+ the
redeploy), each container created once, with the 5-minute recovery out of the picture
(``RECOVERY_ON_STARTUP=false``; its interval is far longer than these tests). Real workers, real engine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import httpx
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from backend.app import database
from backend.app.models import Deployment, DeploymentStatus, ExecutorKind, Target, User
from backend.app.services.deployment_service import DeploymentService
from backend.app.services.deployments.state_machine import claim_deployment
from backend.tests.celery.test_celery_execution import SLOW_TEMPLATE, _history, _setup, celery_settings, redis_clean  # noqa: F401
from backend.tests.celery_fixtures import CELERY, REPO_ROOT, Proc, running_app, settings_env, start_worker, wait_heartbeat, wait_mode
from backend.tests.conftest import PG_ADMIN_DSN, _pg_admin_connect, make_settings
from backend.tests.deploy_helpers import force_cleanup, free_port, labelled, wait_status

pytestmark = [pytest.mark.docker]

#: Short leases so that the tests are quick; the bound each test asserts is derived from them.
FAST = dict(
    DEPLOYMENT_LEASE_SECONDS=4,
    DEPLOYMENT_HEARTBEAT_SECONDS=1,
    REAPER_INTERVAL_SECONDS=0.5,
    DISPATCH_TIMEOUT_SECONDS=3,
    RECOVERY_ON_STARTUP=False,
)
SLOW_VARIABLES = [{"name": "delay", "type": "integer", "default": 6}]


def heal_bound(settings) -> float:
    """Kill → running: the lease runs out, the reaper's next pass, then a redeploy of the slow stack
    (its 6 s start plus compose on a shared 2-CPU machine)."""
    return settings.DEPLOYMENT_LEASE_SECONDS + settings.REAPER_INTERVAL_SECONDS + 35


async def _deployment(deployment_id: str) -> Deployment:
    async with database.AsyncSessionLocal() as session:
        return await session.get(Deployment, deployment_id)


async def _wait_container(deployment_id: str, timeout: float = 40) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = labelled("container", deployment_id)
        if found:
            return set(found)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no container of {deployment_id} within {timeout}s")


async def _assert_healed_once(client, headers, deployment_id: str, before: set[str], killed_at: float, bound: float) -> None:
    final = await wait_status(client, headers, deployment_id, {"running", "failed"}, timeout=bound)
    healed_in = time.monotonic() - killed_at
    assert final["status"] == "running", final["error_message"]
    assert healed_in <= bound, healed_in
    assert set(labelled("container", deployment_id)) == before, "the container was created once"
    history = await _history(deployment_id)
    assert [h[1] for h in history].count("running") == 1, history
    assert not any(actor == "recovery" for *_, actor in history), history  # healed without recovery


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_kill9_worker_main_process_heals_without_recovery(db, docker_engine, tmp_path):
    """PostgreSQL broker: the dead worker's message stays invisible in kombu_message; the lease expires,
    the reaper reclaims the deployment and the surviving worker finishes it."""
    settings = celery_settings(db, tmp_path, **FAST)
    doomed = start_worker(settings, tmp_path, "--pool=prefork", "--concurrency=1", name="doomed")
    rescuer: Proc | None = None
    created_id = None
    try:
        async with running_app(settings) as (_app, client):
            await wait_heartbeat("doomed@", doomed)
            admin, target_id, stack_id = await _setup(client, docker_engine, SLOW_TEMPLATE, SLOW_VARIABLES)
            await wait_mode(client, admin.headers, "external")
            response = await client.post("/api/v1/deployments", json={"stack_id": stack_id, "target_id": target_id}, headers=admin.headers)
            created_id = response.json()["id"]
            before = await _wait_container(created_id)
            assert (await _deployment(created_id)).status is DeploymentStatus.DEPLOYING

            pool = _children(doomed.pid)
            assert pool, "a prefork worker has pool children"
            os.kill(doomed.pid, signal.SIGKILL)  # the main process only: its pool follows by Celery's parent-death signal
            killed_at = time.monotonic()
            doomed.popen.wait(10)
            await _wait_dead(pool)
            rescuer = start_worker(settings, tmp_path, "--concurrency=1", name="rescuer")
            await _assert_healed_once(client, admin.headers, created_id, before, killed_at, heal_bound(settings))
            assert any(actor == "reaper" for *_, actor in await _history(created_id))
    finally:
        doomed.stop()
        if rescuer is not None:
            rescuer.stop()
        if created_id:
            force_cleanup(created_id)


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_kill9_pool_child_heals_and_its_compose_dies(db, docker_engine, tmp_path, redis_clean):
    """Redis broker: only the pool child running the deployment dies; Celery redelivers the message
    (reject_on_worker_lost), which must not be dropped while the dead child's lease is still valid."""
    settings = celery_settings(db, tmp_path, "redis", **FAST)
    worker = start_worker(settings, tmp_path, "--pool=prefork", "--concurrency=2", name="pool")
    created_id = None
    try:
        async with running_app(settings) as (_app, client):
            await wait_heartbeat("pool@", worker)
            admin, target_id, stack_id = await _setup(client, docker_engine, SLOW_TEMPLATE, SLOW_VARIABLES)
            await wait_mode(client, admin.headers, "external")
            response = await client.post("/api/v1/deployments", json={"stack_id": stack_id, "target_id": target_id}, headers=admin.headers)
            created_id = response.json()["id"]
            before = await _wait_container(created_id)
            owner = (await _deployment(created_id)).lease_owner
            child = int(owner.split(":")[2])  # celery:<host>:<pid>:<nonce>
            assert child != worker.pid

            os.kill(child, signal.SIGKILL)
            killed_at = time.monotonic()
            await _assert_healed_once(client, admin.headers, created_id, before, killed_at, heal_bound(settings))
            assert worker.alive()
            assert (await _deployment(created_id)).lease_owner is None
    finally:
        worker.stop()
        if created_id:
            force_cleanup(created_id)


def _backend(settings, port: int, log_path) -> Proc:
    env = settings_env(settings)
    env.update(HOST="127.0.0.1", PORT=str(port))
    return Proc([sys.executable, "-m", "backend.app.main"], env, log_path)


async def _wait_http(base: str, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"backend exited:\n{proc.output()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/health")).status_code in (200, 503):
                    return
            await asyncio.sleep(0.3)
    raise AssertionError(f"backend not serving within {timeout}s:\n{proc.output()[-3000:]}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


async def _wait_dead(pids: list[int], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not [p for p in pids if _pid_alive(p)], "children outlived their executor"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"
    return False


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_kill9_backend_with_embedded_worker_heals(db, docker_engine, tmp_path):
    """``python -m backend.app.main`` with its embedded worker: the backend is ``kill -9``ed (alone, not its
    process group) in the middle of a deployment. Its embedded worker dies with it (parent-death signal);
    the restarted backend's reaper reclaims the deployment and its new embedded worker finishes it."""
    settings = celery_settings(db, tmp_path, CELERY_AUTO_START_WORKER=True, CELERY_WORKER_CONCURRENCY=1, **FAST)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = _backend(settings, port, tmp_path / "backend-1.log")
    second: Proc | None = None
    created_id = None
    try:
        await _wait_http(base, first)
        # 60 s a request: a backend just started pays its first stack's costs (the render children's forkserver,
        # FastAPI building the route's handler) while its embedded worker starts beside it; on a slow machine
        # under the full suite (load 11 on two cores) the first POST /stacks took more than 20 s
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            admin, target_id, stack_id = await _setup(client, docker_engine, SLOW_TEMPLATE, SLOW_VARIABLES)
            body = await wait_mode(client, admin.headers, "embedded", timeout=60)
            embedded_pid = body["embedded_worker"]["pid"]
            await wait_heartbeat("embedded-")
            response = await client.post("/api/v1/deployments", json={"stack_id": stack_id, "target_id": target_id}, headers=admin.headers)
            created_id = response.json()["id"]
            before = await _wait_container(created_id)
            assert (await _deployment(created_id)).status is DeploymentStatus.DEPLOYING

        os.kill(first.pid, signal.SIGKILL)  # the backend process only
        killed_at = time.monotonic()
        first.popen.wait(10)
        await _wait_dead([embedded_pid])  # the embedded worker died with its backend

        second = _backend(settings, port, tmp_path / "backend-2.log")
        await _wait_http(base, second)
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            login = await client.post("/api/v1/auth/login", data={"username": admin.email, "password": admin.password})
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            await _assert_healed_once(client, headers, created_id, before, killed_at, heal_bound(settings) + 20)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        if created_id:
            force_cleanup(created_id)


async def test_target_held_by_dead_executors_drains_its_queue(db, docker_engine, tmp_path):
    """Every slot of a target is held by executors that died (their leases stop being renewed); more
    deployments wait, and one was committed but never dispatched (a backend crashed right after the
    commit). Once the leases expire, the queue drains by itself: asyncio executor, SQLite and PostgreSQL."""
    settings = make_settings(
        db.settings.DATABASE_URL,
        CELERY_ENABLED=False,
        DEPLOYMENTS_WORKDIR=tmp_path / "deployments",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=40,
        **FAST,
    )
    created: list[str] = []
    try:
        async with running_app(settings) as (_app, client):
            admin, target_id, stack_id = await _setup(client, docker_engine, limit=2)
            async with database.AsyncSessionLocal() as session:
                user = (await session.execute(select(User))).scalar_one()
                for _ in range(3):
                    deployment = await DeploymentService.create(
                        session, settings=settings, user=user, stack_id=stack_id, target_id=target_id, variables={"port": free_port()}
                    )
                    created.append(deployment.id)
                await session.commit()
                # two executors claim, then die before their first heartbeat. Their leases outlast the two creations
                # below, each with values never validated before (a compose subprocess): 4 s did not, once, on a
                # slow machine under the full suite, and a creation after they expired rightly took a slot.
                for ghost in created[:2]:
                    claim = await claim_deployment(
                        session, deployment_id=ghost, owner=f"ghost-{ghost[:4]}", executor=ExecutorKind.CELERY, lease_seconds=12
                    )
                    assert claim.accepted, claim.reason
                await session.commit()
            # created[2] was never dispatched; two more are queued through the API and must wait
            for _ in range(2):
                response = await client.post(
                    "/api/v1/deployments",
                    json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": free_port()}},
                    headers=admin.headers,
                )
                assert response.status_code == 201, response.text
                created.append(response.json()["id"])
            await asyncio.sleep(0.5)
            assert {(await _deployment(d)).status for d in created[3:]} == {DeploymentStatus.PENDING}

            for deployment_id in created:
                final = await wait_status(client, admin.headers, deployment_id, {"running", "failed"}, timeout=120)
                assert final["status"] == "running", final["error_message"]
                assert len(labelled("container", deployment_id)) == 2
            actors = {deployment_id: [h[2] for h in await _history(deployment_id)] for deployment_id in created}
            assert all("reaper" in actors[ghost] for ghost in created[:2]), actors
            assert not any("recovery" in a for a in actors.values()), actors
    finally:
        for deployment_id in created:
            force_cleanup(deployment_id)


async def test_an_expired_lease_frees_its_slot_at_once(session):
    """Capacity counts live leases only: with its one slot held by an executor whose lease expired, a
    target lets the next deployment claim at once (before any reaper ran); a live lease still blocks it."""
    from datetime import timedelta

    from backend.app.database import utcnow
    from backend.tests.factories import make_deployment

    held = await make_deployment(session, DeploymentStatus.DEPLOYING, lease_owner="dead-worker")
    target = await session.get(Target, held.target_id)
    target.max_concurrent_deployments = 1
    waiting = Deployment(
        organization_id=held.organization_id,
        stack_id=held.stack_id,
        target_id=held.target_id,
        name="next",
        status=DeploymentStatus.PENDING,
        attempt=0,
        queued_at=utcnow(),
    )
    session.add(waiting)
    await session.commit()
    held_id, waiting_id = held.id, waiting.id

    refused = await claim_deployment(session, deployment_id=waiting_id, owner="me", executor=ExecutorKind.ASYNCIO)
    assert not refused.accepted and "limit of 1" in refused.reason
    await session.rollback()

    await session.execute(update(Deployment).where(Deployment.id == held_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    await session.commit()
    claimed = await claim_deployment(session, deployment_id=waiting_id, owner="me", executor=ExecutorKind.ASYNCIO)
    assert claimed.accepted, claimed.reason


def test_workers_started_together_on_a_fresh_database_all_heartbeat(tmp_path):
    """Three workers started at the same moment on a fresh PostgreSQL database (no schema, no kombu
    tables): the migration step creates both once under its advisory lock; nobody dies on
    ``CREATE SEQUENCE queue_id_sequence``."""
    try:
        admin = _pg_admin_connect()
    except Exception as exc:  # noqa: BLE001
        from backend.tests.conftest import require_service

        require_service("PostgreSQL", str(exc))
    name = f"windflow_test_fresh_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
    settings = make_settings(url, CELERY_ENABLED=True, CELERY_BROKER_TYPE="database", RUN_MIGRATIONS_ON_STARTUP=True)
    workers: list[Proc] = []
    try:
        for index in range(3):
            argv = [CELERY, "-A", "backend.app.celery_app", "worker", "--concurrency=1", "-n", f"together{index}@%h"]
            workers.append(Proc(argv, settings_env(settings), tmp_path / f"together{index}.log"))

        async def heartbeats() -> set[str]:
            engine = create_async_engine(url)
            try:
                deadline = time.monotonic() + 60
                names: set[str] = set()
                while time.monotonic() < deadline and len(names) < 3:
                    with contextlib.suppress(Exception):  # the table appears with the first migration
                        async with engine.connect() as conn:
                            names = set((await conn.execute(text("SELECT name FROM worker_heartbeats"))).scalars())
                    for proc in workers:
                        assert proc.alive(), proc.output()[-3000:]
                    await asyncio.sleep(0.3)
                return names
            finally:
                await engine.dispose()

        names = asyncio.run(heartbeats())
        assert {n.split("@")[0] for n in names} == {"together0", "together1", "together2"}, [w.output()[-2000:] for w in workers]
        for proc in workers:
            assert proc.alive()
            assert "IntegrityError" not in proc.output() and "queue_id_sequence" not in proc.output()
    finally:
        for proc in workers:
            proc.stop()
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from backend.app.engines.process import run_command
    from backend.app.runtime import worker_loop

    async def log(level, line):
        print(line, flush=True)

    # like a Celery pool child: the command is started from the worker's long-lived loop thread
    worker_loop.run(run_command(["sh", "-c", "echo started $$; exec sleep 300"], env={"PATH": "/usr/bin:/bin"}, log=log))
    """
)


def test_compose_children_die_with_their_executor(tmp_path):
    """``kill -9`` of an executor in the middle of a command: the command (in its own session, so no
    process-group signal reaches it) dies too, by its parent-death signal, so a reclaimed attempt never
    runs beside it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DEBUG": "true"}
    executor = subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = executor.stdout.readline()
        assert line.startswith("started "), line
        command = int(line.split()[1])
        assert os.getsid(command) == command != os.getsid(executor.pid)  # its own session
        assert _pid_alive(command)
        executor.kill()
        executor.wait(10)
        deadline = time.monotonic() + 5
        while _pid_alive(command) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(command), "the command outlived its executor"
    finally:
        executor.kill()
        executor.wait(10)
        executor.stdout.close()
