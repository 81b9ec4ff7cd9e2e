"""The notification events besides succeeded/failed/cancelled, each from its real cause to a real local
receiver, signed, with the payload the issue's API promises ({id, event, occurred_at, organization,
deployment: {id, name, status, revision, images, error_message, url}}):

* ``deployment.rolled_back`` — a revision whose health gate fails (its service crashes) is rolled back;
* ``deployment.recovered`` — a rollout whose executor died (its lease expired mid-rollout) is re-run by
  recovery and reaches ``running``;
* ``deployment.stuck`` — recovery fails a deployment pending beyond its timeout;
* ``target.unreachable`` — a deployment on a target whose engine does not answer fails.

Each channel chooses only the event under test, so what arrives is that event and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend.app import database
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentStatus
from backend.app.runtime import background_tasks
from backend.app.runtime.notifier import NotificationLoop
from backend.app.services.deployment_service import DeploymentService
from backend.tests.conftest import TEST_IMAGE, make_settings
from backend.tests.deploy_helpers import force_cleanup, free_port
from backend.tests.docker.test_deployments import make_env
from backend.tests.helpers import default_org
from backend.tests.notify_helpers import Receiver, eventually
from backend.tests.revision_helpers import REV_STACK, wait_revision

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]
SECRET = "notify-events-secret-0123456789"
LOCAL = "127.0.0.0/8"  # the receiver listens on the loopback, which notifications refuse by default
PUBLIC_URL = "https://windflow.example.com"


class World:
    def __init__(self, client, env, receiver, org) -> None:
        self.client, self.env, self.receiver, self.org = client, env, receiver, org

    async def channel(self, event: str) -> None:
        created = await self.client.post(
            "/api/v1/notification-channels",
            json={
                "organization_id": self.org,
                "name": event,
                "kind": "webhook",
                "url": self.receiver.url,
                "secret": SECRET,
                "events": [event],
            },
            headers=self.env.admin.headers,
        )
        assert created.status_code == 201, created.text

    async def delivered(self, event: str, deployment_id: str) -> dict:
        """The one delivery of ``event`` for the deployment, its signature checked."""
        await eventually(lambda: asyncio.sleep(0, result=self.receiver.received), timeout=60)
        await asyncio.sleep(1)  # nothing else comes (a second delivery would be a duplicate)
        (request,) = self.receiver.received
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-windflow-signature-256"] == expected
        assert request.headers["x-windflow-event"] == event
        body = request.json
        assert request.headers["x-windflow-delivery"] == body["id"]
        assert body["event"] == event and body["occurred_at"].endswith("Z")
        assert body["organization"]["id"] == self.org
        deployment = body["deployment"]
        assert deployment["id"] == deployment_id and deployment["url"] == f"{PUBLIC_URL}/deployments/{deployment_id}"
        assert set(deployment) == {"id", "name", "status", "revision", "images", "error_message", "url"}
        return deployment


@pytest.fixture
async def world(db, docker_engine, tmp_path):
    receiver = Receiver()
    client, env = await make_env(
        db, docker_engine, tmp_path, DEPLOYMENT_STABLE_SECONDS=1.0, NOTIFY_ALLOWED_NETWORKS=LOCAL, PUBLIC_URL=PUBLIC_URL
    )
    sender_settings = make_settings(db.settings.DATABASE_URL, NOTIFY_POLL_SECONDS=0.2, NOTIFY_ALLOWED_NETWORKS=LOCAL, PUBLIC_URL=PUBLIC_URL)
    sender = asyncio.create_task(NotificationLoop(sender_settings).run())
    try:
        env.stack_id = await env.stack(REV_STACK["template"], REV_STACK["variables"], name="rev")
        yield World(client, env, receiver, await default_org(client, env.admin))
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()
        receiver.close()


async def test_a_revision_failing_its_health_gate_is_notified_as_rolled_back(world):
    await world.channel("deployment.rolled_back")
    deployment_id = (await world.env.deploy({"port": free_port(), "greeting": "good"}))["id"]
    assert (await wait_revision(world.client, world.env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    changed = await world.client.post(
        f"/api/v1/deployments/{deployment_id}/revisions",
        json={"variables": {"greeting": "bad", "mode": "crash"}},
        headers=world.env.admin.headers,
    )
    assert changed.status_code == 201, changed.text
    final = await wait_revision(world.client, world.env.admin.headers, deployment_id, 3, {"running", "failed"})
    assert final["status"] == "running", final["error_message"]
    deployment = await world.delivered("deployment.rolled_back", deployment_id)
    # the rollback's own revision (3, a copy of 1) is being rolled out: its images are revision 1's
    assert deployment["revision"] == 3 and deployment["status"] in ("pending", "deploying")
    assert {i["service"]: i["image"] for i in deployment["images"]} == {"web": TEST_IMAGE, "worker": TEST_IMAGE}
    assert "service web exited with code 3" in deployment["error_message"]


async def test_a_rollout_whose_executor_died_is_notified_as_recovered_once_running(world):
    await world.channel("deployment.recovered")
    deployment_id = (await world.env.deploy({"port": free_port()}))["id"]
    assert (await wait_revision(world.client, world.env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    # a redeploy whose executor died early in the rollout: deploying, its lease expired (what a killed worker leaves)
    async with database.AsyncSessionLocal() as session:
        await session.execute(
            update(Deployment)
            .where(Deployment.id == deployment_id)
            .values(
                status=DeploymentStatus.DEPLOYING,
                lease_owner="worker-killed",
                lease_expires_at=utcnow() - timedelta(seconds=5),
                current_step=1,
                total_steps=6,
            )
        )
        await session.commit()
    app = world.client._transport.app
    async with database.AsyncSessionLocal() as session:
        report = await DeploymentService.recover_pending_deployments(
            session, max_age_minutes=2, timeout_minutes=60, settings=app.state.settings, dispatch=app.state.dispatcher.dispatch
        )
    assert report["statistics"]["retried"] == 1, report
    final = await wait_revision(world.client, world.env.admin.headers, deployment_id, 1, {"running", "failed"})
    assert final["status"] == "running", final["error_message"]
    deployment = await world.delivered("deployment.recovered", deployment_id)
    assert (deployment["status"], deployment["revision"], deployment["error_message"]) == ("running", 1, None)
    assert {i["service"] for i in deployment["images"]} == {"web", "worker"}


async def test_a_deployment_pending_past_its_timeout_is_notified_as_stuck(world):
    await world.channel("deployment.stuck")
    deployment_id = (await world.env.deploy({"port": free_port()}))["id"]
    assert (await wait_revision(world.client, world.env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    # queued again 61 minutes ago, and no executor ever took it
    async with database.AsyncSessionLocal() as session:
        await session.execute(
            update(Deployment)
            .where(Deployment.id == deployment_id)
            .values(status=DeploymentStatus.PENDING, lease_owner=None, lease_expires_at=None, queued_at=utcnow() - timedelta(minutes=61))
        )
        await session.commit()
    async with database.AsyncSessionLocal() as session:
        report = await DeploymentService.recover_pending_deployments(session, max_age_minutes=2, timeout_minutes=60)
    assert report["statistics"]["failed"] == 1, report
    deployment = await world.delivered("deployment.stuck", deployment_id)
    assert deployment["status"] == "failed" and deployment["error_message"].startswith("Timeout"), deployment


async def test_a_deployment_on_an_engine_that_does_not_answer_is_notified_as_target_unreachable(world):
    await world.channel("target.unreachable")
    target = await world.client.post(
        "/api/v1/targets",
        json={"name": "gone", "type": "docker", "endpoint": f"tcp://127.0.0.1:{free_port()}"},
        headers=world.env.admin.headers,
    )
    assert target.status_code == 201, target.text
    created = await world.client.post(
        "/api/v1/deployments",
        json={"stack_id": world.env.stack_id, "target_id": target.json()["id"], "variables": {"port": free_port()}},
        headers=world.env.admin.headers,
    )
    assert created.status_code == 201, created.text
    deployment_id = created.json()["id"]
    world.env.created.append(deployment_id)
    final = await wait_revision(world.client, world.env.admin.headers, deployment_id, 1, {"running", "failed"}, timeout=120)
    assert final["status"] == "failed"
    deployment = await world.delivered("target.unreachable", deployment_id)
    assert deployment["status"] == "failed" and deployment["error_message"] == final["error_message"]
