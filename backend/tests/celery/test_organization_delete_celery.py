"""A forced organisation delete whose Celery worker is killed (SIGKILL) in the middle of a teardown: nothing is
orphaned meanwhile (every container left still has its deployment's row, the organisation is kept), and once the
dead worker's lease expires the reaper hands the teardown to another worker, which finishes it; the request that
asked for the delete then answers 204 with nothing left on the engine. Real worker, real engine, PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from sqlalchemy import func, select

from backend.app import database
from backend.app.models import Deployment, DeploymentStatus, Organization
from backend.tests.celery.test_celery_execution import celery_settings
from backend.tests.celery.test_self_healing import FAST, _children, _wait_dead
from backend.tests.celery_fixtures import Proc, running_app, start_worker, wait_heartbeat, wait_mode
from backend.tests.deploy_helpers import force_cleanup, labelled, wait_status
from backend.tests.docker.test_organization_delete import SLEEPER
from backend.tests.helpers import setup_admin

pytestmark = [pytest.mark.docker]

GRACE = 10
#: ignores SIGTERM: its teardown waits out the whole grace period, during which the worker is killed
STUBBORN = SLEEPER.replace("    init: true\n", f"    stop_grace_period: {GRACE}s\n").replace(
    '["sh", "-c", "while true; do sleep 1; done"]', '["sh", "-c", "trap \'\' TERM; while true; do sleep 1; done"]'
)


async def _rows(org_id: str) -> tuple[int, dict[str, Deployment]]:
    async with database.AsyncSessionLocal() as session:
        orgs = await session.scalar(select(func.count()).select_from(Organization).where(Organization.id == org_id))
        rows = (await session.execute(select(Deployment).where(Deployment.organization_id == org_id))).scalars()
        return orgs, {row.id: row for row in rows}


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_a_forced_organization_delete_with_its_worker_killed_midway_is_finished_by_another(db, docker_engine, tmp_path, events):
    settings = celery_settings(db, tmp_path, **FAST)
    doomed = start_worker(settings, tmp_path, "--pool=prefork", "--concurrency=2", name="doomed")
    rescuer: Proc | None = None
    ids: list[str] = []
    try:
        async with running_app(settings) as (_app, client):
            await wait_heartbeat("doomed@", doomed)
            admin = await setup_admin(client)
            headers = admin.headers
            await wait_mode(client, headers, "external")
            org = (await client.post("/api/v1/organizations", json={"name": "doomed"}, headers=headers)).json()["id"]
            target = await client.post(
                "/api/v1/targets", json={"name": "e", "endpoint": docker_engine, "organization_id": org}, headers=headers
            )
            assert target.status_code == 201, target.text
            for name, template in (("stubborn", STUBBORN), ("sleeper", SLEEPER)):
                stack = await client.post(
                    "/api/v1/stacks", json={"name": name, "template": template, "organization_id": org}, headers=headers
                )
                created = await client.post(
                    "/api/v1/deployments",
                    json={"stack_id": stack.json()["id"], "target_id": target.json()["id"], "name": name, "organization_id": org},
                    headers=headers,
                )
                assert created.status_code == 201, created.text
                ids.append(created.json()["id"])
            for deployment_id in ids:
                running = await wait_status(client, headers, deployment_id, {"running", "failed"}, timeout=90)
                assert running["status"] == "running" and running["executor"] == "celery", running["error_message"]
            stubborn_id = ids[0]

            forced = asyncio.create_task(client.delete(f"/api/v1/organizations/{org}", params={"force": "true"}, headers=headers))
            # the worker has taken the stubborn deployment's teardown and waits out its container's grace period
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                _orgs, rows = await _rows(org)
                row = rows.get(stubborn_id)
                if row is not None and row.status is DeploymentStatus.DELETING and (row.lease_owner or "").startswith("celery:"):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the worker never took the teardown: {rows}")
            await asyncio.sleep(1.5)
            assert labelled("container", stubborn_id), "the stubborn container is still being stopped"

            pool = _children(doomed.pid)
            os.kill(doomed.pid, signal.SIGKILL)  # its pool and their compose runs follow by the parent-death signal
            killed_at = time.monotonic()
            doomed.popen.wait(10)
            await _wait_dead(pool)
            assert not forced.done(), forced.result().text  # the request waits for the teardowns

            # nothing orphaned meanwhile: every container left has its deployment's row, the organisation is kept
            orgs, rows = await _rows(org)
            assert orgs == 1 and stubborn_id in rows and rows[stubborn_id].status is DeploymentStatus.DELETING
            for deployment_id in ids:
                if labelled("container", deployment_id):
                    assert deployment_id in rows, "a container was left without its deployment's row"

            rescuer = start_worker(settings, tmp_path, "--concurrency=1", name="rescuer")
            # the dead worker's lease expires, the reaper sends the teardown again, the rescuer claims and finishes it
            bound = settings.DEPLOYMENT_LEASE_SECONDS + settings.DISPATCH_TIMEOUT_SECONDS + GRACE + 60
            answer = await asyncio.wait_for(forced, bound)
            assert answer.status_code == 204, answer.text
            finished_in = time.monotonic() - killed_at
            for deployment_id in ids:
                assert labelled("container", deployment_id) == [] and labelled("network", deployment_id) == []
                assert not (tmp_path / "deployments" / deployment_id).exists()
            assert await _rows(org) == (0, {})
            assert finished_in < bound
            deadline = time.monotonic() + 10  # the worker's DEPLOYMENT_DELETED events reach this process by the bus
            while time.monotonic() < deadline and not set(ids) <= {e.deployment_id for e in events if e.type == "DEPLOYMENT_DELETED"}:
                await asyncio.sleep(0.1)
            assert set(ids) <= {e.deployment_id for e in events if e.type == "DEPLOYMENT_DELETED"}
    finally:
        doomed.stop()
        if rescuer is not None:
            rescuer.stop()
        for deployment_id in ids:
            force_cleanup(deployment_id)
