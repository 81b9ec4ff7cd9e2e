"""A real deployment that fails tells a webhook why: HTTP API -> asyncio executor -> runner -> real Docker
engine -> the failure's commit queues the delivery -> the sender loop -> a local receiver, signed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest

from backend.app.runtime import background_tasks
from backend.app.runtime.notifier import NotificationLoop
from backend.tests.conftest import TEST_IMAGE, make_settings
from backend.tests.deploy_helpers import force_cleanup, free_port
from backend.tests.docker.test_deployments import make_env
from backend.tests.helpers import default_org
from backend.tests.notify_helpers import Receiver, eventually
from backend.tests.revision_helpers import REV_STACK, wait_revision

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]
SECRET = "notify-secret-0123456789"


async def test_a_failed_deployment_is_notified_with_its_image_and_error(db, docker_engine, tmp_path):
    receiver = Receiver()
    local = "127.0.0.0/8"  # the receiver listens on the loopback, which notifications refuse by default
    client, env = await make_env(db, docker_engine, tmp_path, DEPLOYMENT_STABLE_SECONDS=1.0, NOTIFY_ALLOWED_NETWORKS=local)
    sender = asyncio.create_task(
        NotificationLoop(make_settings(db.settings.DATABASE_URL, NOTIFY_POLL_SECONDS=0.2, NOTIFY_ALLOWED_NETWORKS=local)).run()
    )
    try:
        env.stack_id = await env.stack(REV_STACK["template"], REV_STACK["variables"], name="rev")
        org = await default_org(client, env.admin)
        channel = await client.post(
            "/api/v1/notification-channels",
            json={
                "organization_id": org,
                "name": "ci",
                "kind": "webhook",
                "url": receiver.url,
                "secret": SECRET,
                "events": ["deployment.failed"],
            },
            headers=env.admin.headers,
        )
        assert channel.status_code == 201, channel.text
        deployment_id = (await env.deploy({"port": free_port(), "mode": "crash"}))["id"]
        failed = await wait_revision(client, env.admin.headers, deployment_id, 1, {"running", "failed"})
        assert failed["status"] == "failed"
        await eventually(lambda: asyncio.sleep(0, result=receiver.received), timeout=20)
        (request,) = receiver.received
        expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["x-windflow-signature-256"] == expected and request.headers["x-windflow-event"] == "deployment.failed"
        body = request.json
        assert body["deployment"]["id"] == deployment_id and body["deployment"]["status"] == "failed"
        assert body["deployment"]["error_message"] == failed["error_message"] and failed["error_message"]
        images = {i["service"]: i for i in body["deployment"]["images"]}
        assert images["web"]["image"] == TEST_IMAGE and images["web"]["digest"].startswith("sha256:")
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()
        receiver.close()
