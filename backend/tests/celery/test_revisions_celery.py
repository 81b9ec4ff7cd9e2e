"""Revisions with a real Celery worker on PostgreSQL: changes rolled out behind the health gate, automatic
and manual rollbacks, and workers killed during a rollout and during an automatic rollback (the deployment
still ends on exactly one revision, each container created once). Real engine, real workers."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from backend.app.core.events import EventType
from backend.tests.celery.test_celery_execution import celery_settings
from backend.tests.celery.test_self_healing import FAST, _children, _history, _wait_dead
from backend.tests.celery_fixtures import Proc, running_app, start_worker, wait_heartbeat, wait_mode
from backend.tests.deploy_helpers import force_cleanup, free_port, labelled, wait_status
from backend.tests.helpers import setup_admin
from backend.tests.revision_helpers import REV_STACK, containers, revisions, running_services, serves, wait_revision

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]

SETTINGS = dict(FAST, DEPLOYMENT_STABLE_SECONDS=1.0, DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=40)


async def _setup(client, docker_engine):
    admin = await setup_admin(client)
    target = await client.post(
        "/api/v1/targets",
        json={"name": "engine", "type": "docker", "endpoint": docker_engine, "max_concurrent_deployments": 4},
        headers=admin.headers,
    )
    assert target.status_code == 201, target.text
    stack = await client.post("/api/v1/stacks", json=REV_STACK, headers=admin.headers)
    assert stack.status_code == 201, stack.text
    return admin, target.json()["id"], stack.json()["id"]


async def _change(client, admin, deployment_id: str, variables: dict) -> dict:
    response = await client.post(f"/api/v1/deployments/{deployment_id}/revisions", json={"variables": variables}, headers=admin.headers)
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_worker_rolls_out_changes_and_rolls_back_by_itself_and_by_hand(db, docker_engine, tmp_path, events):
    settings = celery_settings(db, tmp_path, **SETTINGS)
    worker = start_worker(settings, tmp_path)
    deployment_id = None
    try:
        async with running_app(settings) as (_app, client):
            await wait_heartbeat("w1@", worker)
            admin, target_id, stack_id = await _setup(client, docker_engine)
            await wait_mode(client, admin.headers, "external")
            port = free_port()
            created = await client.post(
                "/api/v1/deployments",
                headers=admin.headers,
                json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": port}},
            )
            assert created.status_code == 201, created.text
            deployment_id = created.json()["id"]
            first = await wait_revision(client, admin.headers, deployment_id, 1, {"running", "failed"})
            assert (first["status"], first["executor"]) == ("running", "celery"), first["error_message"]
            assert serves(port) == "v1"

            await _change(client, admin, deployment_id, {"greeting": "v2"})
            refused = await client.post(f"/api/v1/deployments/{deployment_id}/rollback", json={"revision": 1}, headers=admin.headers)
            assert refused.status_code == 409 and refused.json()["code"] == "rollout_in_progress", refused.text
            assert (await wait_revision(client, admin.headers, deployment_id, 2, {"running", "failed"}))["status"] == "running"
            web_2 = running_services(deployment_id)["web"]
            await _change(client, admin, deployment_id, {"greeting": "v3"})
            assert (await wait_revision(client, admin.headers, deployment_id, 3, {"running", "failed"}))["status"] == "running"
            assert serves(port) == "v3" and web_2 not in containers(deployment_id)
            assert len(containers(deployment_id)) == 2

            # a revision whose healthcheck never passes, then one whose container exits at start
            await _change(client, admin, deployment_id, {"greeting": "broken", "mode": "unhealthy"})
            back = await wait_revision(client, admin.headers, deployment_id, 5, {"running", "failed"})
            assert back["status"] == "running", back["error_message"]
            assert serves(port) == "v3"
            await _change(client, admin, deployment_id, {"greeting": "broken", "mode": "crash"})
            back = await wait_revision(client, admin.headers, deployment_id, 7, {"running", "failed"})
            assert back["status"] == "running", back["error_message"]
            assert serves(port) == "v3"

            rolled = await client.post(f"/api/v1/deployments/{deployment_id}/rollback", json={"revision": 1}, headers=admin.headers)
            assert rolled.status_code == 201, rolled.text
            assert (await wait_revision(client, admin.headers, deployment_id, 8, {"running", "failed"}))["status"] == "running"
            assert serves(port) == "v1"

            listed = {r["number"]: r for r in await revisions(client, admin.headers, deployment_id)}
            assert {n: (r["reason"], r["rollback_of"], r["outcome"]) for n, r in listed.items()} == {
                8: ("rollback", 1, "running"),
                7: ("automatic_rollback", 5, "rolled_back"),
                6: ("update", None, "failed"),
                5: ("automatic_rollback", 3, "superseded"),
                4: ("update", None, "failed"),
                3: ("update", None, "superseded"),
                2: ("update", None, "superseded"),
                1: ("created", None, "superseded"),
            }
            assert "is unhealthy (last check: exit 1: GET /health 503)" in listed[4]["error_message"]
            assert "exited with code 3" in listed[6]["error_message"]
            assert all(r["images"] and all(i["digest"].startswith("sha256:") for i in r["images"]) for r in listed.values())
            diff = (await client.get(f"/api/v1/deployments/{deployment_id}/revisions/1/diff/3", headers=admin.headers)).json()["diff"]
            assert '-greeting: "v1"\n+greeting: "v3"\n' in diff

            # the worker's events crossed to this process, each status event with its revision
            for _ in range(50):
                rolled_back = [e.data for e in events if e.deployment_id == deployment_id and e.type is EventType.DEPLOYMENT_ROLLED_BACK]
                if len(rolled_back) == 2:
                    break
                await asyncio.sleep(0.1)
            assert [(d["from_revision"], d["to_revision"], d["revision"]) for d in rolled_back] == [(4, 3, 5), (6, 5, 7)]
            running = [
                e.data["revision"]
                for e in events
                if e.deployment_id == deployment_id and e.type is EventType.DEPLOYMENT_STATUS_CHANGED and e.data["new_status"] == "running"
            ]
            assert running == [1, 2, 3, 5, 7, 8]
    finally:
        worker.stop()
        if deployment_id:
            force_cleanup(deployment_id)


async def _kill_worker(worker: Proc) -> None:
    pool = _children(worker.pid)
    os.kill(worker.pid, signal.SIGKILL)  # its pool follows by Celery's parent-death signal
    worker.popen.wait(10)
    await _wait_dead(pool)


async def _at_the_gate(client, headers, deployment_id: str, revision: int, timeout: float = 60) -> None:
    """Wait until the rollout of ``revision`` is in its last step (the gate), its web container started."""
    for _ in range(int(timeout / 0.2)):
        body = (await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).json()
        if body["revision"] == revision and body["status"] == "deploying" and body["current_step"] == body["total_steps"] > 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"revision {revision} of {deployment_id} never reached its gate: {body}")


@pytest.mark.parametrize("during", ["rollout", "automatic_rollback"])
async def test_a_worker_killed_mid_rollout_ends_on_exactly_one_revision(db, docker_engine, tmp_path, during):
    """``rollout``: killed while revision 2 waits at its gate; ``automatic_rollback``: revision 2 crashes, and
    the worker is killed while the rollback (revision 3, a copy of the slow revision 1) waits at its gate.
    Either way the reaper reclaims it, the other worker finishes that same revision, and each container of it
    is created once."""
    settings = celery_settings(db, tmp_path, **SETTINGS)
    doomed = start_worker(settings, tmp_path, "--pool=prefork", "--concurrency=1", name="doomed")
    rescuer: Proc | None = None
    deployment_id = None
    try:
        async with running_app(settings) as (_app, client):
            await wait_heartbeat("doomed@", doomed)
            admin, target_id, stack_id = await _setup(client, docker_engine)
            await wait_mode(client, admin.headers, "external")
            port = free_port()
            delay = 0 if during == "rollout" else 6
            created = await client.post(
                "/api/v1/deployments",
                headers=admin.headers,
                json={"stack_id": stack_id, "target_id": target_id, "variables": {"port": port, "delay": delay}},
            )
            deployment_id = created.json()["id"]
            assert (await wait_revision(client, admin.headers, deployment_id, 1, {"running", "failed"}, timeout=60))["status"] == "running"
            if during == "rollout":
                await _change(client, admin, deployment_id, {"greeting": "v2", "delay": 6})
                victim, ends = 2, ("v2", {2: "running", 1: "superseded"})
            else:
                await _change(client, admin, deployment_id, {"greeting": "v2", "mode": "crash"})
                victim, ends = 3, ("v1", {3: "running", 2: "failed", 1: "superseded"})
            await _at_the_gate(client, admin.headers, deployment_id, victim)
            web = running_services(deployment_id)["web"]
            await _kill_worker(doomed)
            rescuer = start_worker(settings, tmp_path, "--concurrency=1", name="rescuer")

            final = await wait_status(client, admin.headers, deployment_id, {"running", "failed"}, timeout=90)
            assert (final["status"], final["revision"]) == ("running", victim), final["error_message"]
            assert serves(port) == ends[0]
            assert running_services(deployment_id)["web"] == web, "the revision's container was created once"
            assert len(labelled("container", deployment_id)) == 2
            outcomes = {r["number"]: r["outcome"] for r in await revisions(client, admin.headers, deployment_id)}
            assert outcomes == ends[1]
            assert list(outcomes.values()).count("running") == 1
            history = await _history(deployment_id)
            assert any(actor == "reaper" for *_, actor in history), history
    finally:
        doomed.stop()
        if rescuer is not None:
            rescuer.stop()
        if deployment_id:
            force_cleanup(deployment_id)
