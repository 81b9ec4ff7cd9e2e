"""After the gate with real Celery processes on PostgreSQL: the watcher run by beat's
``windflow.watch_deployments`` on a worker fails a deployment of which nothing runs and brings it back when its
containers do; and a worker killed at the gate of a change with its attempts spent has the change rolled back
by the reaper, the previous revision serving again. Real engine, real worker and beat."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from backend.app.core.events import EventType
from backend.tests.celery.test_celery_execution import _history, celery_settings
from backend.tests.celery.test_revisions_celery import SETTINGS, _at_the_gate, _change, _kill_worker, _setup
from backend.tests.celery_fixtures import CELERY, REPO_ROOT, Proc, running_app, settings_env, start_worker, wait_heartbeat, wait_mode
from backend.tests.deploy_helpers import force_cleanup, free_port, wait_status
from backend.tests.revision_helpers import revisions, running_services, serves, wait_revision

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]


async def _until(client, headers, deployment_id: str, check, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = (await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).json()
        if check(body):
            return body
        await asyncio.sleep(0.3)
    raise AssertionError(f"deployment {deployment_id} never got there in {timeout}s: {body}")


async def _logged(proc: Proc, text: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


async def test_beat_runs_the_watcher_on_a_worker(db, docker_engine, tmp_path):
    # the worker and beat watch every second; the backend's own loop would first look after 5 minutes
    watched = celery_settings(db, tmp_path, **SETTINGS, DEPLOYMENT_WATCH_INTERVAL_SECONDS=1)
    backend = celery_settings(db, tmp_path, **SETTINGS, DEPLOYMENT_WATCH_INTERVAL_SECONDS=300)
    worker = start_worker(watched, tmp_path)
    beat = Proc(
        [CELERY, "-A", "backend.app.celery_app", "beat", "--loglevel=INFO", "-s", str(tmp_path / "beat-schedule")],
        {**settings_env(watched), "PYTHONPATH": str(REPO_ROOT)},
        tmp_path / "beat.log",
        cwd=tmp_path,
    )
    deployment_id = None
    try:
        async with running_app(backend) as (_app, client):
            await wait_heartbeat("w1@", worker)
            admin, target_id, stack_id = await _setup(client, docker_engine)
            await wait_mode(client, admin.headers, "external")
            port = free_port()
            created = await client.post(
                "/api/v1/deployments",
                headers=admin.headers,
                json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": port}},
            )
            deployment_id = created.json()["id"]
            assert (await wait_revision(client, admin.headers, deployment_id, 1, {"running", "failed"}, timeout=60))["status"] == "running"
            await _until(client, admin.headers, deployment_id, lambda d: d["health"] == "healthy")
            services = running_services(deployment_id)

            subprocess.run(["docker", "kill", *services.values()], capture_output=True, timeout=60, check=True)
            failed = await _until(client, admin.headers, deployment_id, lambda d: d["status"] == "failed")
            assert failed["health"] == "down" and failed["error_message"].startswith("nothing of revision 1 runs any more")
            subprocess.run(["docker", "start", *services.values()], capture_output=True, timeout=60, check=True)
            back = await _until(client, admin.headers, deployment_id, lambda d: d["status"] == "running")
            assert (back["health"], back["error_message"]) == ("healthy", None)
            assert serves(port) == "v1"
            moves = await _history(deployment_id)
            assert moves[-2:] == [("running", "failed", "watcher"), ("failed", "running", "watcher")]
            assert "windflow.watch_deployments" in beat.output()  # beat sent it ...
            assert "Watcher: looked=1 changed=1 failed=1" in worker.output()  # ... a worker ran it: failed it
            # ... and brought it back: the pass logs its summary after its commit, which the API may show first
            assert await _logged(worker, "recovered=1"), worker.tail()
    finally:
        beat.stop()
        worker.stop()
        if deployment_id:
            force_cleanup(deployment_id)


async def test_a_worker_killed_at_the_gate_with_its_attempts_spent_is_rolled_back(db, docker_engine, tmp_path, events):
    settings = celery_settings(db, tmp_path, **SETTINGS, DEPLOYMENT_MAX_ATTEMPTS=1)
    doomed = start_worker(settings, tmp_path, "--pool=prefork", "--concurrency=1", name="doomed")
    rescuer = None
    deployment_id = None
    try:
        async with running_app(settings) as (_app, client):
            await wait_heartbeat("doomed@", doomed)
            admin, target_id, stack_id = await _setup(client, docker_engine)
            await wait_mode(client, admin.headers, "external")
            port = free_port()
            created = await client.post(
                "/api/v1/deployments",
                headers=admin.headers,
                json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": port}},
            )
            deployment_id = created.json()["id"]
            assert (await wait_revision(client, admin.headers, deployment_id, 1, {"running", "failed"}, timeout=60))["status"] == "running"
            await _change(client, admin, deployment_id, {"greeting": "v2", "delay": 30})  # healthy only after 30 s
            await _at_the_gate(client, admin.headers, deployment_id, 2)
            await _kill_worker(doomed)  # its one attempt spent, revision 2 not healthy yet
            rescuer = start_worker(settings, tmp_path, "--concurrency=1", name="rescuer")

            final = await wait_revision(client, admin.headers, deployment_id, 3, {"running", "failed"}, timeout=90)
            assert final["status"] == "running", final["error_message"]
            assert serves(port) == "v1"
            listed = {
                r["number"]: (r["reason"], r["outcome"], r["error_message"]) for r in await revisions(client, admin.headers, deployment_id)
            }
            assert listed == {
                3: ("automatic_rollback", "running", None),
                2: ("update", "failed", "executor lost (lease expired) after 1 attempt(s)"),
                1: ("created", "superseded", None),
            }
            history = await _history(deployment_id)
            assert any(actor == "reaper" and to == "pending" for _f, to, actor in history), history
            rolled = [e.data for e in events if e.deployment_id == deployment_id and e.type is EventType.DEPLOYMENT_ROLLED_BACK]
            assert [(e["from_revision"], e["to_revision"], e["revision"]) for e in rolled] == [(2, 1, 3)]
            final = await wait_status(client, admin.headers, deployment_id, {"running"})
            assert final["revision"] == 3
    finally:
        doomed.stop()
        if rescuer is not None:
            rescuer.stop()
        if deployment_id:
            force_cleanup(deployment_id)
