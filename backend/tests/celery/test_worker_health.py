"""A worker that is alive but runs nothing, and a database or broker restart: real workers, real engine.

* A pool that cannot start tasks (its children stopped with SIGSTOP) is reported ``degraded`` with its
  problem (``/api/v1/system/workers``, ``/health``, ``/metrics``), leaves with exit 75, and its deployments
  run on another worker (``runtime/worker_watchdog.py``).
* SIGTERM stops a worker whose pool is broken at once, not after its grace period (or never).
* Pool children killed in quick succession: every deployment runs and the pool is back to its concurrency.
* PostgreSQL stopped and started (``-m fast`` and ``-m immediate``, a private server) during deployments:
  the API answers 503 while it is down; every deployment ends ``running``, each container created once, no
  log ``seq`` missing; the worker reconnects by itself.
* Redis restarted while it is the broker: every deployment still ends ``running``.

The tests play the supervisor (compose ``restart:``): a worker that leaves with exit 75 is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.app.runtime.worker_watchdog import EXIT_DEGRADED, live_processes
from backend.tests.celery.test_celery_execution import SLOW_TEMPLATE, _setup, celery_settings, redis_clean  # noqa: F401
from backend.tests.celery.test_self_healing import FAST as SELF_HEALING_FAST
from backend.tests.celery.test_self_healing import _children, _pid_alive
from backend.tests.celery_fixtures import CELERY, REPO_ROOT, Proc, running_app, settings_env, start_worker, wait_heartbeat, wait_mode
from backend.tests.conftest import make_settings
from backend.tests.deploy_helpers import force_cleanup, free_port, labelled, wait_status

pytestmark = [pytest.mark.docker]

#: the self-healing tests' short bounds, and a watchdog that judges within seconds
FAST = {**SELF_HEALING_FAST, "WORKER_STALL_SECONDS": 3, "WORKER_LEAVE_AFTER_SECONDS": 2}
#: the slow stack without a network of its own: no bridge or veth created per deployment (the host's
#: interfaces changing under a browser test in the other stream aborts its loads with ERR_NETWORK_CHANGED)
SLOW_NO_NETWORK = SLOW_TEMPLATE.replace("    init: true\n", "    init: true\n    network_mode: none\n")
VARIABLES = [{"name": "delay", "type": "integer", "default": 2}]


class Supervised:
    """A worker restarted when it leaves degraded (exit 75), as compose's ``restart:`` or systemd would."""

    def __init__(self, settings, log_dir: Path, name: str, *extra: str) -> None:
        self.settings, self.log_dir, self.name, self.extra = settings, log_dir, name, extra
        self.generation = 0
        self.left = 0
        self.proc = self._start()

    def _start(self) -> Proc:
        self.generation += 1
        return start_worker(self.settings, self.log_dir, *self.extra, name=f"{self.name}{self.generation}")

    def tick(self) -> None:
        if self.proc.popen.poll() == EXIT_DEGRADED:
            self.left += 1
            self.proc.stop()
            self.proc = self._start()

    async def watch(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(0.5)

    def output(self) -> str:
        return "\n".join(
            (self.log_dir / f"worker-{self.name}{g}.log").read_text(errors="replace")[-4000:] for g in range(1, self.generation + 1)
        )


async def _pool(pid: int | Callable[[], int], size: int, timeout: float = 30) -> list[int]:
    """The pool processes of worker ``pid`` once ``size`` of them live; ``pid`` may be read again at each look
    (a worker started again has another)."""
    pid_now = pid if callable(pid) else lambda: pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = _children(pid_now())
        if len(children) >= size and live_processes(children) >= size:
            return children
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker {pid_now()} has no pool of {size} within {timeout}s: {_children(pid_now())}")


async def _still_alive(pids: list[int], timeout: float = 10) -> list[int]:
    """Which of ``pids`` still live after ``timeout``: a worker SIGKILLs its pool before it exits, and on a
    loaded machine a killed (or stopped) process takes a moment to be gone."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if _pid_alive(pid)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return alive


async def _ready(client, docker_engine, worker: Proc, prefix: str, pool_size: int | None = None):
    """The worker heartbeats, the admin, target and slow stack exist, deployments go to external workers;
    with ``pool_size``, also the worker's pool processes, once that many are up."""
    await wait_heartbeat(prefix, worker)
    admin, target_id, stack_id = await _setup(client, docker_engine, SLOW_NO_NETWORK, VARIABLES)
    await wait_mode(client, admin.headers, "external")
    pool = await _pool(worker.pid, pool_size) if pool_size else []
    return admin, target_id, stack_id, pool


async def _worker_row(client, headers, prefix: str) -> dict | None:
    body = (await client.get("/api/v1/system/workers", headers=headers)).json()
    return next((w for w in body["workers"] if w["name"] and w["name"].startswith(prefix) and w["alive"]), None)


async def _deploy(client, headers, stack_id: str, target_id: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = await client.post("/api/v1/deployments", json={"stack_id": stack_id, "target_id": target_id}, headers=headers)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def _assert_all_running_once(client, headers, ids: list[str], timeout: float = 120) -> None:
    for deployment_id in ids:
        final = await wait_status(client, headers, deployment_id, {"running", "failed"}, timeout=timeout)
        assert final["status"] == "running", final["error_message"]
        assert len(labelled("container", deployment_id)) == 1, "each container created once"
        logs = (await client.get(f"/api/v1/deployments/{deployment_id}/logs?since_seq=0&limit=1000", headers=headers)).json()
        seqs = [line["seq"] for line in logs["items"]]
        assert seqs == list(range(1, len(seqs) + 1)), f"log lines missing or doubled: {seqs}"


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("broker", ["database", "redis"])
async def test_a_pool_that_cannot_start_tasks_is_degraded_and_its_deployments_run_elsewhere(
    db, docker_engine, tmp_path, broker, redis_clean
):
    # PostgreSQL: the backend may start its embedded worker, which takes over once the only external worker
    # is degraded (mode 3); Redis: another external worker does
    embedded = broker == "database"
    settings = celery_settings(db, tmp_path, broker, PROMETHEUS_ENABLED=True, CELERY_AUTO_START_WORKER=embedded, **FAST)
    stuck = start_worker(settings, tmp_path, "--pool=prefork", "--concurrency=2", name="stuck")
    rescuer: Proc | None = None
    ids: list[str] = []
    pool: list[int] = []
    try:
        async with running_app(settings) as (_app, client):
            admin, target_id, stack_id, pool = await _ready(client, docker_engine, stuck, "stuck@", 2)
            for pid in pool:
                os.kill(pid, signal.SIGSTOP)  # alive, and runs nothing
            stopped_at = time.monotonic()
            ids = await _deploy(client, admin.headers, stack_id, target_id, 2)

            row = None
            while time.monotonic() - stopped_at < settings.WORKER_STALL_SECONDS + 10:
                row = await _worker_row(client, admin.headers, "stuck@")
                if row and row["state"] == "degraded":
                    break
                await asyncio.sleep(0.2)
            assert row and row["state"] == "degraded", f"never reported degraded: {row}\n{stuck.tail()}"
            assert "0/2 live processes" in row["problem"], row
            assert row["problems"][0]["code"] == "pool_not_refilled" and row["problems"][0]["params"]["live"] == 0, row
            deadline = time.monotonic() + 10  # /health shows the execution-mode check's view (every 3 s)
            while (health := (await client.get("/health")).json())["status"] != "degraded" and time.monotonic() < deadline:
                await asyncio.sleep(0.3)
            assert health["status"] == "degraded", health
            assert health["workers"]["degraded"] and "live processes" in health["workers"]["degraded"][0]["problem"]
            metrics = (await client.get("/metrics")).text
            assert 'windflow_workers{state="degraded"} 1.0' in metrics, metrics
            degradations = re.search(r"^windflow_workers_degraded_total (\S+)$", metrics, re.M)
            assert degradations and float(degradations.group(1)) >= 1, metrics  # cumulative over the session's database

            if embedded:
                await wait_mode(client, admin.headers, "embedded", timeout=30)
            else:
                rescuer = start_worker(settings, tmp_path, "--concurrency=2", name="rescuer")
            assert stuck.popen.wait(settings.WORKER_LEAVE_AFTER_SECONDS + 15) == EXIT_DEGRADED, stuck.tail()
            assert "leaves: degraded" in stuck.output()
            assert not await _still_alive(pool), "the degraded worker's pool was killed"
            await _assert_all_running_once(client, admin.headers, ids)
    finally:
        for pid in pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        stuck.stop()
        if rescuer is not None:
            rescuer.stop()
        for deployment_id in ids:
            force_cleanup(deployment_id)


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_a_message_taken_by_a_dead_worker_is_visible_again(db, docker_engine, tmp_path):
    """PostgreSQL broker: kombu hides a message it delivers and never shows it again. The message of a
    worker ``kill -9``ed before it started the task is visible again once the worker's heartbeat is stale,
    and a new worker runs it (no re-dispatch: the reaper's is pushed out of the way)."""
    settings = celery_settings(db, tmp_path, **{**FAST, "WORKER_STALL_SECONDS": 600, "DISPATCH_TIMEOUT_SECONDS": 600})
    doomed = start_worker(settings, tmp_path, "--pool=prefork", "--concurrency=1", name="doomed")
    rescuer: Proc | None = None
    pool: list[int] = []
    ids: list[str] = []
    try:
        async with running_app(settings) as (_app, client):
            admin, target_id, stack_id, pool = await _ready(client, docker_engine, doomed, "doomed@", 1)
            os.kill(pool[0], signal.SIGSTOP)  # the message is taken, its task never starts
            ids = await _deploy(client, admin.headers, stack_id, target_id, 1)
            deadline = time.monotonic() + 15
            while not (taken := await _deliveries(doomed.pid)) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert len(taken) == 1, taken
            assert await _visible(taken[0][0]) is False

            doomed.kill9()  # main process and pool: nobody gives the message back
            killed_at = time.monotonic()
            while await _visible(taken[0][0]) is False and time.monotonic() - killed_at < 40:
                await asyncio.sleep(0.5)
            assert await _visible(taken[0][0]) is True, "the dead worker's message never came back"
            assert await _deliveries(doomed.pid) == []
            rescuer = start_worker(settings, tmp_path, "--concurrency=1", name="rescuer")
            await _assert_all_running_once(client, admin.headers, ids)
    finally:
        doomed.stop()
        if rescuer is not None:
            rescuer.stop()
        for deployment_id in ids:
            force_cleanup(deployment_id)


async def _deliveries(pid: int) -> list[tuple[int, int]]:
    """The PostgreSQL broker's messages taken by the worker process ``pid`` and not acknowledged."""
    from sqlalchemy import text

    from backend.app import database

    async with database.AsyncSessionLocal() as session:
        rows = await session.execute(text("SELECT message_id, pid FROM broker_deliveries WHERE pid = :pid"), {"pid": pid})
        return [tuple(row) for row in rows.all()]


async def _visible(message_id: int) -> bool | None:
    from sqlalchemy import text

    from backend.app import database

    async with database.AsyncSessionLocal() as session:
        return (await session.execute(text("SELECT visible FROM kombu_message WHERE id = :id"), {"id": message_id})).scalar()


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_sigterm_stops_a_worker_whose_pool_is_broken_at_once(db, docker_engine, tmp_path):
    """A warm shutdown waits for running tasks: with WORKER_SHUTDOWN_GRACE_SECONDS=120, a worker whose pool
    is stopped must still exit within seconds (it has nothing it could finish), its message back in the queue."""
    settings = celery_settings(db, tmp_path, WORKER_SHUTDOWN_GRACE_SECONDS=120, **{**FAST, "WORKER_STALL_SECONDS": 60})
    worker = start_worker(settings, tmp_path, "--pool=prefork", "--concurrency=2", name="broken")
    pool: list[int] = []
    ids: list[str] = []
    try:
        async with running_app(settings) as (_app, client):
            admin, target_id, stack_id, pool = await _ready(client, docker_engine, worker, "broken@", 2)
            for pid in pool:
                os.kill(pid, signal.SIGSTOP)
            ids = await _deploy(client, admin.headers, stack_id, target_id, 1)
            await asyncio.sleep(2)  # received, never started
            os.kill(worker.pid, signal.SIGTERM)
            began = time.monotonic()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.popen.wait(20)
            took = time.monotonic() - began
            assert worker.popen.poll() is not None, f"still running {took:.0f}s after SIGTERM:\n{worker.tail()}"
            assert took < 15, took
            assert "nothing left to finish" in worker.output()
            assert not await _still_alive(pool), "the pool was killed"
    finally:
        for pid in pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        worker.stop()
        for deployment_id in ids:
            force_cleanup(deployment_id)


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("broker", ["database", "redis"])
async def test_pool_children_killed_in_quick_succession(db, docker_engine, tmp_path, broker, redis_clean):
    # Five kills land on whichever deployments the two children run at those moments: one deployment can take
    # three of them (a CI run: "executor lost (lease expired) after 3 attempt(s)", rightly failed at the
    # default of 3 attempts). Each kill costs its deployment an attempt; with more attempts than kills, every
    # deployment must end running, once.
    settings = celery_settings(db, tmp_path, broker, **FAST, DEPLOYMENT_MAX_ATTEMPTS=6)
    worker = Supervised(settings, tmp_path, "rapid", "--pool=prefork", "--concurrency=2")
    ids: list[str] = []
    watch = None
    try:
        async with running_app(settings) as (_app, client):
            admin, target_id, stack_id, _ = await _ready(client, docker_engine, worker.proc, "rapid1@", 2)
            watch = asyncio.create_task(worker.watch())
            ids = await _deploy(client, admin.headers, stack_id, target_id, 4)
            killed = 0
            for _ in range(5):  # five kills within ~8 s, busy children first
                await asyncio.sleep(1.5)
                children = [pid for pid in _children(worker.proc.pid) if _pid_alive(pid)]
                if children:
                    os.kill(children[killed % len(children)], signal.SIGKILL)
                    killed += 1
            assert killed >= 4
            await _assert_all_running_once(client, admin.headers, ids, timeout=150)
            # back to its concurrency: the same worker's pool, or the pool of the one started again if it left
            # degraded meanwhile (a restart takes a while on a loaded machine: see below)
            live = await _pool(lambda: worker.proc.pid, 2, timeout=120)
            assert live_processes(live) == 2, (worker.generation, worker.output())
            # a worker that left while degraded is started again: its first heartbeat comes once it is ready,
            # which takes a while on a loaded 2-core machine (CI's seven test streams: more than 45 s twice)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                row = await _worker_row(client, admin.headers, f"rapid{worker.generation}@")
                if row and row["state"] == "healthy" and row["live_processes"] == 2:
                    break
                await asyncio.sleep(0.5)
            assert row and row["state"] == "healthy" and row["live_processes"] == 2, (row, worker.generation, worker.output())
    finally:
        if watch is not None:
            watch.cancel()
        worker.proc.stop()
        for deployment_id in ids:
            force_cleanup(deployment_id)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_database_restart_during_deployments_loses_nothing(docker_engine, tmp_path, mode):
    """PostgreSQL (database and broker) stopped for 5 s while deployments run, then started again."""
    from backend.tests.pg_cluster import PrivateCluster

    cluster = PrivateCluster()
    settings = make_settings(
        cluster.async_url,
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE="database",
        CELERY_AUTO_START_WORKER=False,
        DEPLOYMENTS_WORKDIR=tmp_path / "deployments",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=60,
        RUN_MIGRATIONS_ON_STARTUP=True,
        LOG_LEVEL="INFO",
        **FAST,
    )
    worker: Supervised | None = None
    beat: Proc | None = None
    ids: list[str] = []
    watch = None
    try:
        async with running_app(settings) as (_app, client):
            worker = Supervised(settings, tmp_path, "dbr", "--pool=prefork", "--concurrency=2")
            beat = Proc(
                [CELERY, "-A", "backend.app.celery_app", "beat", "--loglevel=INFO"],
                {**settings_env(settings), "PYTHONPATH": str(REPO_ROOT)},
                tmp_path / "beat.log",
                cwd=tmp_path,
            )
            admin, target_id, stack_id, _ = await _ready(client, docker_engine, worker.proc, "dbr1@")
            watch = asyncio.create_task(worker.watch())
            ids = await _deploy(client, admin.headers, stack_id, target_id, 4)
            await asyncio.sleep(1.5)  # some claimed and deploying, some queued

            cluster.stop(mode)
            outage = await client.get("/api/v1/deployments", headers=admin.headers)
            assert outage.status_code == 503, outage.text
            assert outage.json()["code"] == "database_unavailable" and int(outage.headers["retry-after"]) > 0
            # a worker (re)started while the database is down waits for it rather than exiting
            worker.proc.kill9()
            worker.proc.stop()  # (closes its log)
            worker.proc = worker._start()
            # it says so once its imports are done (seconds on a loaded machine), and stays up meanwhile
            deadline = time.monotonic() + 60
            while "waiting for the database" not in worker.output() and time.monotonic() < deadline:
                assert worker.proc.alive(), worker.output()
                await asyncio.sleep(0.5)
            assert "waiting for the database" in worker.output(), worker.output()
            await asyncio.sleep(2)
            assert worker.proc.alive(), worker.output()
            beat_seen = len(beat.output())
            cluster.start()

            await _assert_all_running_once(client, admin.headers, ids, timeout=150)
            assert worker.proc.alive() or worker.left, worker.output()
            # beat went on: it sent its reaper task again after the restart
            deadline = time.monotonic() + 20
            while "Sending due task reap-expired-leases" not in beat.output()[beat_seen:] and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert beat.alive() and "Sending due task reap-expired-leases" in beat.output()[beat_seen:], beat.tail()
    finally:
        if watch is not None:
            watch.cancel()
        if worker is not None:
            worker.proc.stop()
        if beat is not None:
            beat.stop()
        for deployment_id in ids:
            force_cleanup(deployment_id)
        cluster.destroy()


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_a_redis_broker_restart_during_deployments(db, docker_engine, tmp_path):
    """A private Redis (no persistence: what it held is gone) restarted while deployments are queued."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    settings = celery_settings(db, tmp_path, "redis", CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url, **FAST)
    worker = Supervised(settings, tmp_path, "rr", "--pool=prefork", "--concurrency=2")
    ids: list[str] = []
    watch = None
    try:
        async with running_app(settings) as (_app, client):
            admin, target_id, stack_id, _ = await _ready(client, docker_engine, worker.proc, "rr1@")
            watch = asyncio.create_task(worker.watch())
            ids = await _deploy(client, admin.headers, stack_id, target_id, 4)
            await asyncio.sleep(1.0)
            redis.kill()
            redis.wait(10)
            await asyncio.sleep(3)
            redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await _assert_all_running_once(client, admin.headers, ids, timeout=150)
    finally:
        if watch is not None:
            watch.cancel()
        worker.proc.stop()
        redis.kill()
        redis.wait(10)
        for deployment_id in ids:
            force_cleanup(deployment_id)
