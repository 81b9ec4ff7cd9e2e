"""Workers placed next to their targets, with no shared disk: real backend, real Celery workers, two engines.

Two "hosts": host A is this machine's engine; host B is a second dockerd in a network namespace of its own
(``remote_docker``), reached by B's workers through its unix socket, as a worker on that host would reach its
local engine. Each worker declares ``WORKER_TARGETS=local`` with its own ``HOST_ID``, its own empty
``DEPLOYMENTS_WORKDIR`` and ``LOCAL_DOCKER_ENDPOINT``, and registers its host's engine as target
``local@<HOST_ID>`` (placed: a queue of its own). The backend runs no worker (``CELERY_AUTO_START_WORKER=false``)
and shares no directory with anyone.

* Deployments to each host's target run on that host's worker only (its directory, its engine).
* With the worker that deployed killed and its directory removed, another worker of that host (an empty
  directory) stops, starts and deletes the deployment through the API.
* A worker killed in the middle of a deploy is healed by the other worker of its host.
* A placed target that no live worker serves says so: ``/health``, the target's ``served``, the deployment's log,
  and ``503 target_unserved`` for a delete.

PostgreSQL broker; short leases (the bound each test asserts is derived from them).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.models import Deployment, DeploymentStatus, WorkerHeartbeat
from backend.tests.celery.test_celery_execution import _history, celery_settings
from backend.tests.celery.test_self_healing import FAST, heal_bound
from backend.tests.celery_fixtures import Proc, running_app, start_worker, wait_heartbeat
from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import all_logs, force_cleanup, labelled, wait_deleted, wait_status
from backend.tests.helpers import setup_admin
from backend.tests.remote_docker import RemoteDocker, remote_docker  # noqa: F401 - fixture

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]

#: no network of its own (host B has no default bridge; on host A no bridge appears under the browser tests)
QUICK = f'services:\n  app:\n    image: {TEST_IMAGE}\n    init: true\n    network_mode: none\n    command: ["sh", "-c", "exec sleep 600"]\n'
SLOW = (  # healthy 6 s after it starts: a kill lands in the middle of the deploy
    "services:\n  app:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    "    network_mode: none\n"
    '    command: ["sh", "-c", "sleep 6; touch /tmp/ready; exec sleep 600"]\n'
    '    healthcheck:\n      test: ["CMD", "test", "-f", "/tmp/ready"]\n      interval: 1s\n      retries: 60\n'
)


@pytest.fixture(scope="module")
def host_b(remote_docker: RemoteDocker) -> Iterator[tuple[str, docker.DockerClient]]:
    """Host B's engine: its unix socket (what its workers use) and a client, the test image loaded into it."""
    socket = remote_docker.workdir / "docker.sock"
    client = docker.DockerClient(base_url=f"unix://{socket}", version="auto")
    local = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto")
    try:
        client.images.load(b"".join(local.images.get(TEST_IMAGE).save(named=True)))
        yield f"unix://{socket}", client
    finally:
        local.close()
        client.close()


def on_b(client: docker.DockerClient, deployment_id: str) -> list[str]:
    return [
        c.id for c in client.containers.list(ignore_removed=True, all=True, filters={"label": f"windflow.deployment_id={deployment_id}"})
    ]


def states_on_b(client: docker.DockerClient, deployment_id: str) -> set[str]:
    return {
        c.status
        for c in client.containers.list(ignore_removed=True, all=True, filters={"label": f"windflow.deployment_id={deployment_id}"})
    }


def clean_b(client: docker.DockerClient, deployment_id: str) -> None:
    for container in client.containers.list(ignore_removed=True, all=True, filters={"label": f"windflow.deployment_id={deployment_id}"}):
        container.remove(force=True, v=True)


def host_worker(base, tmp_path: Path, name: str, host: str, endpoint: str, *extra: str) -> tuple[Proc, Path]:
    """A worker of ``host``: WORKER_TARGETS=local, its own empty directory, its host's engine."""
    workdir = tmp_path / f"workdir-{name}"
    settings = base.model_copy(
        update={
            "WORKER_TARGETS": "local",
            "HOST_ID": host,
            "LOCAL_DOCKER_ENDPOINT": endpoint,
            "DEPLOYMENTS_WORKDIR": workdir,
        }
    )
    return start_worker(settings, tmp_path, "--pool=solo", *extra, name=name), workdir


async def targets_by_name(client, headers) -> dict[str, dict]:
    response = await client.get("/api/v1/targets", headers=headers, params={"limit": 100})
    assert response.status_code == 200, response.text
    return {t["name"]: t for t in response.json()["items"]}


async def deploy(client, headers, stack_id: str, target_id: str) -> str:
    response = await client.post("/api/v1/deployments", json={"stack_id": stack_id, "target_id": target_id}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def stack(client, headers, name: str, template: str) -> str:
    response = await client.post("/api/v1/stacks", json={"name": name, "template": template}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def forget_heartbeat(name_prefix: str) -> None:
    """A killed worker's row stays fresh for up to STALE_AFTER_SECONDS: drop it rather than wait."""
    async with database.AsyncSessionLocal() as session:
        for row in (await session.execute(select(WorkerHeartbeat))).scalars().all():
            if row.name.startswith(name_prefix):
                await session.delete(row)
        await session.commit()


async def test_each_host_runs_its_targets_and_another_worker_takes_over_without_the_directory(db, docker_engine, host_b, tmp_path):
    endpoint_b, engine_b = host_b
    base = celery_settings(db, tmp_path, **FAST)
    procs: list[Proc] = []
    created: list[str] = []
    try:
        async with running_app(base) as (_app, client):
            admin = await setup_admin(client)  # the organisation the hosts' engines are registered in
            headers = admin.headers
            worker_a, dir_a = host_worker(base, tmp_path, "a1", "host-a", docker_engine)
            worker_b, dir_b = host_worker(base, tmp_path, "b1", "host-b", endpoint_b)
            procs += [worker_a, worker_b]
            await wait_heartbeat("a1@", worker_a)
            await wait_heartbeat("b1@", worker_b)

            targets = await targets_by_name(client, headers)
            target_a, target_b = targets["local@host-a"], targets["local@host-b"]
            for target, host, endpoint in ((target_a, "host-a", docker_engine), (target_b, "host-b", endpoint_b)):
                assert target["placed"] is True and target["host"] == host and target["endpoint"] == endpoint, target
                assert target["served"] is True and target["workers"] == 1, target
            stack_id = await stack(client, headers, "quick", QUICK)

            on_a_id = await deploy(client, headers, stack_id, target_a["id"])
            on_b_id = await deploy(client, headers, stack_id, target_b["id"])
            created += [on_a_id, on_b_id]
            for deployment_id in (on_a_id, on_b_id):
                final = await wait_status(client, headers, deployment_id, {"running", "failed"}, timeout=60)
                assert final["status"] == "running" and final["executor"] == "celery", final["error_message"]
            # each on its own host's engine, deployed from its own host's directory
            assert labelled("container", on_a_id) and not on_b(engine_b, on_a_id)
            assert on_b(engine_b, on_b_id) and not labelled("container", on_b_id)
            assert sorted(p.name for p in dir_a.iterdir()) == [on_a_id]
            assert sorted(p.name for p in dir_b.iterdir()) == [on_b_id]

            # host B's worker dies with its directory; another worker of host B starts empty
            worker_b.kill9()
            shutil.rmtree(dir_b)
            await forget_heartbeat("b1@")
            url = f"/api/v1/deployments/{on_b_id}"
            unserved = await client.post(f"{url}/stop", headers=headers)
            assert unserved.status_code == 503 and unserved.json()["code"] == "target_unserved", unserved.text
            assert (await targets_by_name(client, headers))["local@host-b"]["served"] is False
            assert target_b["id"] in (await client.get("/health")).json()["targets"]["unserved"]

            rescuer, dir_rescuer = host_worker(base, tmp_path, "b2", "host-b", endpoint_b)
            procs.append(rescuer)
            await wait_heartbeat("b2@", rescuer)
            stopped = await client.post(f"{url}/stop", headers=headers)
            assert stopped.status_code == 202 and stopped.json()["status"] == "stopping", stopped.text
            done = await wait_status(client, headers, on_b_id, {"stopped", "failed"}, timeout=60)  # by host B's worker
            assert done["status"] == "stopped", done["error_message"]
            assert states_on_b(engine_b, on_b_id) == {"exited"}
            assert labelled("container", on_a_id), "host A's deployment untouched"
            assert sorted(p.name for p in dir_rescuer.iterdir()) == [on_b_id]  # rebuilt from the snapshot

            started = await client.post(f"{url}/start", headers=headers)
            assert started.status_code == 200, started.text
            final = await wait_status(client, headers, on_b_id, {"running", "failed"}, timeout=60)
            assert final["status"] == "running", final["error_message"]
            assert states_on_b(engine_b, on_b_id) == {"running"}

            shutil.rmtree(dir_rescuer)
            deleted = await client.delete(url, headers=headers)
            assert deleted.status_code == 202, deleted.text
            await wait_deleted(client, headers, on_b_id, timeout=60)
            assert on_b(engine_b, on_b_id) == []
            assert labelled("container", on_a_id), "host A's deployment untouched"

            deleted = await client.delete(f"/api/v1/deployments/{on_a_id}", headers=headers)
            assert deleted.status_code == 202, deleted.text
            await wait_deleted(client, headers, on_a_id, timeout=60)
            assert labelled("container", on_a_id) == [] and not (dir_a / on_a_id).exists()
    finally:
        for proc in procs:
            proc.stop()
        for deployment_id in created:
            force_cleanup(deployment_id)
            clean_b(engine_b, deployment_id)


async def test_a_worker_killed_mid_deploy_is_healed_by_another_worker_of_its_host(db, docker_engine, host_b, tmp_path):
    endpoint_b, engine_b = host_b
    base = celery_settings(db, tmp_path, **FAST)
    procs: dict[int, tuple[Proc, Path]] = {}
    created: list[str] = []
    try:
        async with running_app(base) as (_app, client):
            headers = (await setup_admin(client)).headers
            for name in ("b1", "b2"):
                proc, workdir = host_worker(base, tmp_path, name, "host-b", endpoint_b)
                procs[proc.pid] = (proc, workdir)
            for proc, _ in procs.values():
                await wait_heartbeat(proc.argv[proc.argv.index("-n") + 1].split("@")[0] + "@", proc)
            target_b = (await targets_by_name(client, headers))["local@host-b"]
            assert target_b["workers"] == 2, target_b
            stack_id = await stack(client, headers, "slow", SLOW)
            deployment_id = await deploy(client, headers, stack_id, target_b["id"])
            created.append(deployment_id)

            deadline = time.monotonic() + 40
            while not on_b(engine_b, deployment_id):
                assert time.monotonic() < deadline, "no container on host B"
                await asyncio.sleep(0.2)
            async with database.AsyncSessionLocal() as session:
                row = await session.get(Deployment, deployment_id)
            assert row.status is DeploymentStatus.DEPLOYING
            owner_pid = int(row.lease_owner.split(":")[2])  # celery:<host>:<pid>:<nonce>; a solo pool runs in the main process
            doomed, doomed_dir = procs[owner_pid]
            survivor, survivor_dir = next(v for pid, v in procs.items() if pid != owner_pid)
            assert (doomed_dir / deployment_id).is_dir() and not survivor_dir.exists()
            doomed.kill9()
            killed_at = time.monotonic()

            final = await wait_status(client, headers, deployment_id, {"running", "failed"}, timeout=heal_bound(base))
            assert final["status"] == "running", final["error_message"]
            assert time.monotonic() - killed_at <= heal_bound(base)
            assert survivor.alive() and (survivor_dir / deployment_id).is_dir(), "the other worker of host B finished it"
            assert states_on_b(engine_b, deployment_id) == {"running"} and not labelled("container", deployment_id)
            history = await _history(deployment_id)
            assert [h[1] for h in history].count("running") == 1, history
            assert any(actor == "reaper" for *_, actor in history), history
            logs = "\n".join(line["message"] for line in await all_logs(client, headers, deployment_id))
            assert "[RECOVERY]" in logs
    finally:
        for proc, _ in procs.values():
            proc.stop()
        for deployment_id in created:
            clean_b(engine_b, deployment_id)


async def test_a_placed_target_no_worker_serves_says_so(db, docker_engine, tmp_path):
    base = celery_settings(db, tmp_path, **FAST)
    created: list[str] = []
    try:
        async with running_app(base) as (_app, client):
            headers = (await setup_admin(client)).headers
            response = await client.post(
                "/api/v1/targets", headers=headers, json={"name": "far", "type": "docker", "endpoint": docker_engine, "placed": True}
            )
            assert response.status_code == 201, response.text
            target = response.json()
            assert target["placed"] is True and target["served"] is False and target["workers"] == 0
            health = (await client.get("/health")).json()
            assert health["targets"]["unserved"] == [target["id"]] and health["status"] == "degraded", health

            deployment_id = await deploy(client, headers, await stack(client, headers, "quick", QUICK), target["id"])
            created.append(deployment_id)
            deadline = time.monotonic() + 10
            while True:
                logs = [line["message"] for line in await all_logs(client, headers, deployment_id)]
                if any(m.startswith("[WAITING] no live worker serves target far") for m in logs) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert any(m.startswith("[WAITING] no live worker serves target far") for m in logs), logs
            await asyncio.sleep(2 * base.DISPATCH_TIMEOUT_SECONDS)  # the reaper re-dispatches it meanwhile
            read = (await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).json()
            assert read["status"] == "pending", read  # nobody ran it (no worker in-process for a placed target)
            logs = [line["message"] for line in await all_logs(client, headers, deployment_id)]
            assert sum(m.startswith("[WAITING]") for m in logs) == 1, logs  # said once, not at every re-dispatch
            assert labelled("container", deployment_id) == []

            refused = await client.delete(f"/api/v1/deployments/{deployment_id}", headers=headers)
            assert refused.status_code == 503 and refused.json()["code"] == "target_unserved", refused.text

            unplaced = await client.patch(f"/api/v1/targets/{target['id']}", headers=headers, json={"placed": False})
            assert unplaced.status_code == 200 and unplaced.json()["served"] is True, unplaced.text
            assert (await client.get("/health")).json()["targets"]["unserved"] == []
    finally:
        for deployment_id in created:
            force_cleanup(deployment_id)


async def test_a_hosts_deployments_are_watched_by_a_worker_of_that_host(db, docker_engine, host_b, tmp_path):
    """Only host B's processes reach host B's engine. The backend (another host) skips its targets and no beat
    runs, so host B's worker watches them itself: a container of a running deployment there killed by hand is
    seen, and the deployment fails (``running`` seen ``down`` twice), as on a target any process reaches."""
    endpoint_b, engine_b = host_b
    base = celery_settings(db, tmp_path, **FAST, DEPLOYMENT_WATCH_INTERVAL_SECONDS=0.5)
    procs: list[Proc] = []
    created: list[str] = []
    try:
        async with running_app(base) as (_app, client):
            headers = (await setup_admin(client)).headers
            worker_b, _ = host_worker(base, tmp_path, "w1", "host-b", endpoint_b)
            procs.append(worker_b)
            await wait_heartbeat("w1@", worker_b)
            target_b = (await targets_by_name(client, headers))["local@host-b"]
            deployment_id = await deploy(client, headers, await stack(client, headers, "quick", QUICK), target_b["id"])
            created.append(deployment_id)
            final = await wait_status(client, headers, deployment_id, {"running", "failed"}, timeout=60)
            assert final["status"] == "running", final["error_message"]

            for container in engine_b.containers.list(ignore_removed=True, filters={"label": f"windflow.deployment_id={deployment_id}"}):
                container.kill()
            failed = await wait_status(client, headers, deployment_id, {"failed"}, timeout=30)
            assert failed["health"] == "down", failed
            assert failed["error_message"].startswith("nothing of revision 1 runs any more: service app exited"), failed["error_message"]
            logs = [line["message"] for line in await all_logs(client, headers, deployment_id)]
            assert any(m.startswith("[WATCH] nothing of revision 1 runs any more") for m in logs), logs
    finally:
        for proc in procs:
            proc.stop()
        for deployment_id in created:
            clean_b(engine_b, deployment_id)
