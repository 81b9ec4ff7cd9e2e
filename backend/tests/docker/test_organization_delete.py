"""Deleting an owner never orphans a container: an organisation with deployments is refused (409 naming them),
or torn down first with ``force=true``; two deletes of one deployment at once leave nothing behind."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from sqlalchemy import func, select

from backend.app import database
from backend.app.models import Deployment, Organization
from backend.app.runtime import background_tasks
from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import force_cleanup, labelled, wait_deleted, wait_status
from backend.tests.docker.test_deployments import make_env
from backend.tests.helpers import setup_admin
from backend.tests.realtime_helpers import Server

pytestmark = pytest.mark.docker

SLEEPER = (
    "services:\n  app:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    "    network_mode: none\n"
    '    command: ["sh", "-c", "while true; do sleep 1; done"]\n'
)
#: ignores SIGTERM: its teardown waits out the grace period, long enough for two deletes to overlap
STUBBORN = (
    "services:\n  app:\n"
    f"    image: {TEST_IMAGE}\n"
    "    network_mode: none\n"
    "    stop_grace_period: 3s\n"
    '    command: ["sh", "-c", "trap \'\' TERM; while true; do sleep 1; done"]\n'
)


@pytest.fixture
async def env(db, docker_engine, tmp_path):
    client, environment = await make_env(db, docker_engine, tmp_path)
    try:
        yield environment
    finally:
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def _organization_with(env, docker_engine, names: list[str]) -> tuple[str, list[str]]:
    """A second organisation with its own target and stack, and one running deployment per name."""
    headers = env.admin.headers
    org = await env.client.post("/api/v1/organizations", json={"name": "doomed"}, headers=headers)
    assert org.status_code == 201, org.text
    org_id = org.json()["id"]
    target = await env.client.post(
        "/api/v1/targets",
        json={"name": "doomed-engine", "type": "docker", "endpoint": docker_engine, "organization_id": org_id},
        headers=headers,
    )
    assert target.status_code == 201, target.text
    stack = await env.client.post(
        "/api/v1/stacks", json={"name": "sleeper", "template": SLEEPER, "organization_id": org_id}, headers=headers
    )
    assert stack.status_code == 201, stack.text
    ids = []
    for name in names:
        created = await env.client.post(
            "/api/v1/deployments",
            json={
                "stack_id": stack.json()["id"],
                "target_id": target.json()["id"],
                "name": name,
                "variables": {},
                "organization_id": org_id,
            },
            headers=headers,
        )
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
        env.created.append(ids[-1])
    for deployment_id in ids:
        running = await wait_status(env.client, headers, deployment_id, {"running", "failed"})
        assert running["status"] == "running", running["error_message"]
    return org_id, ids


async def _rows(org_id: str) -> tuple[int, int]:
    async with database.AsyncSessionLocal() as session:
        orgs = await session.scalar(select(func.count()).select_from(Organization).where(Organization.id == org_id))
        deployments = await session.scalar(select(func.count()).select_from(Deployment).where(Deployment.organization_id == org_id))
    return orgs, deployments


async def test_an_organization_with_running_deployments_is_refused_then_torn_down_with_force(env, docker_engine, events, tmp_path):
    org_id, ids = await _organization_with(env, docker_engine, ["web-a", "web-b"])
    headers = env.admin.headers
    workdir = tmp_path / "deployments"
    assert all((workdir / i).is_dir() for i in ids)

    refused = await env.client.delete(f"/api/v1/organizations/{org_id}", headers=headers)
    assert refused.status_code == 409, refused.text
    body = refused.json()
    assert body["code"] == "organization_has_deployments"
    assert body["params"] == {"count": 2, "deployments": ["web-a", "web-b"]}
    assert "web-a" in body["detail"] and "force=true" in body["detail"]
    assert await _rows(org_id) == (1, 2)
    assert all(len(labelled("container", i)) == 1 for i in ids), "a refused delete touched the containers"

    forced = await env.client.delete(f"/api/v1/organizations/{org_id}", params={"force": "true"}, headers=headers)
    assert forced.status_code == 204, forced.text
    for deployment_id in ids:
        assert labelled("container", deployment_id) == []
        assert labelled("network", deployment_id) == []
        assert not (workdir / deployment_id).exists()
    assert await _rows(org_id) == (0, 0)
    deleted = [e.deployment_id for e in events if e.type == "DEPLOYMENT_DELETED"]
    assert sorted(deleted) == sorted(ids)  # each went through the deployment's own delete
    assert (await env.client.get(f"/api/v1/organizations/{org_id}", headers=headers)).status_code == 404


async def test_a_forced_delete_whose_teardown_fails_keeps_the_organization_and_what_remains(env, docker_engine):
    """Rows go only once nothing remains on any engine: a deployment whose engine does not answer keeps its row
    and the organisation (the ones torn down before it are gone, with their containers)."""
    org_id, ids = await _organization_with(env, docker_engine, ["first", "second"])
    headers = env.admin.headers
    async with database.AsyncSessionLocal() as session:  # the second's engine is now unreachable
        second = await session.get(Deployment, ids[1])
        target_id = second.target_id
    dead = await env.client.post(
        "/api/v1/targets",
        json={"name": "dead", "type": "docker", "endpoint": "tcp://127.0.0.1:9", "organization_id": org_id},
        headers=headers,
    )
    assert dead.status_code == 201, dead.text
    async with database.AsyncSessionLocal() as session:
        second = await session.get(Deployment, ids[1])
        second.target_id = dead.json()["id"]
        await session.commit()

    forced = await env.client.delete(f"/api/v1/organizations/{org_id}", params={"force": "true"}, headers=headers)
    assert forced.status_code == 409, forced.text
    assert forced.json()["code"] == "teardown_failed" and forced.json()["params"]["deployments"] == ["second"], forced.text
    failed = (await env.client.get(f"/api/v1/deployments/{ids[1]}", headers=headers)).json()
    assert failed["status"] == "failed" and failed["error_message"].startswith("Delete failed: "), failed
    assert labelled("container", ids[0]) == []
    assert await _rows(org_id) == (1, 1)  # the organisation and the deployment that could not be torn down
    async with database.AsyncSessionLocal() as session:  # its engine answers again: the forced delete completes
        second = await session.get(Deployment, ids[1])
        second.target_id = target_id
        await session.commit()
    assert len(labelled("container", ids[1])) == 1
    again = await env.client.delete(f"/api/v1/organizations/{org_id}", params={"force": "true"}, headers=headers)
    assert again.status_code == 204, again.text
    assert labelled("container", ids[1]) == [] and await _rows(org_id) == (0, 0)


async def test_two_deletes_of_one_deployment_at_once_leave_nothing_behind(env, tmp_path, events):
    stack_id = await env.stack(STUBBORN, name="stubborn")
    created = await env.deploy({}, stack_id=stack_id)
    running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    assert running["status"] == "running", running["error_message"]
    url = f"/api/v1/deployments/{created['id']}"
    first, second = await asyncio.gather(
        env.client.delete(url, headers=env.admin.headers), env.client.delete(url, headers=env.admin.headers)
    )
    assert [first.status_code, second.status_code] == [202, 202], (first.text, second.text)
    assert first.json()["status"] == second.json()["status"] == "deleting"
    await wait_deleted(env.client, env.admin.headers, created["id"])
    teardowns = [e for e in events if e.type == "DEPLOYMENT_DELETED" and e.deployment_id == created["id"]]
    assert len(teardowns) == 1, "one teardown ran"
    assert labelled("container", created["id"]) == []
    assert not (tmp_path / "deployments" / created["id"]).exists(), "a delete that lost the race left the project directory"
    assert (await env.client.get(url, headers=env.admin.headers)).status_code == 404


async def test_a_forced_delete_killed_midway_orphans_nothing(db, docker_engine, tmp_path):
    """The backend is killed (SIGKILL, its compose run with it) while a forced delete waits out a container's
    stop grace period: every container left still has its deployment's row, so nothing is out of reach; the
    forced delete asked again of the restarted backend removes everything."""
    workdir = tmp_path / "deployments"
    # The dead backend's lease on the teardown holds until it expires; then the reaper (every 5 s) resumes it once
    # the delete's last dispatch is DISPATCH_TIMEOUT_SECONDS old. The defaults (30 s and 15 s) made the second
    # delete wait about 30 s, a CI client's whole timeout; short ones keep the same path.
    options = {
        "DEPLOYMENTS_WORKDIR": workdir,
        "DEPLOYMENT_HEALTH_TIMEOUT_SECONDS": 30,
        "DEPLOYMENT_LEASE_SECONDS": 6,
        "DISPATCH_TIMEOUT_SECONDS": 3,
    }
    slow = STUBBORN.replace("stop_grace_period: 3s", "stop_grace_period: 8s")
    servers, ids = [], []
    try:
        servers.append(await Server.start(db.settings.DATABASE_URL, tmp_path, name="first", **options))
        async with servers[0].http() as client:
            admin = await setup_admin(client)
            headers = admin.headers
            org = (await client.post("/api/v1/organizations", json={"name": "doomed"}, headers=headers)).json()["id"]
            target = await client.post(
                "/api/v1/targets", json={"name": "e", "endpoint": docker_engine, "organization_id": org}, headers=headers
            )
            for name, template in (("stubborn", slow), ("sleeper", SLEEPER)):
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
                running = await wait_status(client, headers, deployment_id, {"running", "failed"})
                assert running["status"] == "running", running["error_message"]
            forced = asyncio.create_task(client.delete(f"/api/v1/organizations/{org}", params={"force": "true"}, headers=headers))
            await asyncio.sleep(2.5)  # the stubborn container's teardown is waiting out its grace period
            assert not forced.done(), forced.result().text
            servers[0].proc.kill9()
            with contextlib.suppress(httpx.HTTPError):
                await forced
        async with database.AsyncSessionLocal() as session:
            rows = set((await session.execute(select(Deployment.id).where(Deployment.organization_id == org))).scalars())
        for deployment_id in ids:
            if labelled("container", deployment_id):
                assert deployment_id in rows, "a container was left without its deployment's row"
        assert await _rows(org) == (1, len(rows)) and rows, "the organisation went before its deployments"

        servers.append(await Server.start(db.settings.DATABASE_URL, tmp_path, name="second", **options))
        async with servers[1].http() as client:
            again = await client.delete(f"/api/v1/organizations/{org}", params={"force": "true"}, headers=headers, timeout=90)
            assert again.status_code == 204, again.text
        for deployment_id in ids:
            assert labelled("container", deployment_id) == [] and labelled("network", deployment_id) == []
            assert not (workdir / deployment_id).exists()
        assert await _rows(org) == (0, 0)
    finally:
        for server in servers:
            server.stop()
        for deployment_id in ids:
            force_cleanup(deployment_id)
