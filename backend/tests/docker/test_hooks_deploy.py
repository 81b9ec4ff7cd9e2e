"""A deploy hook rolls a real deployment out: HTTP call signed like GitHub -> new revision -> asyncio executor
-> runner -> real Docker engine, serving the new value; a variable the hook does not allow changes nothing."""

from __future__ import annotations

import json

import pytest

from backend.app.runtime import background_tasks
from backend.app.services.hooks.signature import sign
from backend.tests.deploy_helpers import force_cleanup, free_port
from backend.tests.docker.test_deployments import make_env
from backend.tests.revision_helpers import REV_STACK, revisions, serves, wait_revision

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]


@pytest.fixture
async def env(db, docker_engine, tmp_path):
    client, environment = await make_env(db, docker_engine, tmp_path, DEPLOYMENT_STABLE_SECONDS=1.0)
    environment.stack_id = await environment.stack(REV_STACK["template"], REV_STACK["variables"], name="rev")
    try:
        yield environment
    finally:
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def test_a_hook_changes_an_allowed_variable_of_a_running_deployment(env):
    port = free_port()
    deployment_id = (await env.deploy({"port": port, "greeting": "v1"}))["id"]
    first = await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"})
    assert first["status"] == "running", first["error_message"]
    hook = await env.client.post(
        f"/api/v1/deployments/{deployment_id}/hooks", json={"name": "ci", "allowed_variables": ["greeting"]}, headers=env.admin.headers
    )
    assert hook.status_code == 201, hook.text
    hook = hook.json()

    body = json.dumps({"variables": {"greeting": "v2"}}).encode()
    called = await env.client.post(
        hook["url"].replace("http://testserver", ""), content=body, headers={"X-Hub-Signature-256": sign(hook["secret"], body)}
    )
    assert called.status_code == 202, called.text
    assert called.json() == {
        "deployment_id": deployment_id,
        "revision": 2,
        "action": "change",
        "reason": None,
        "stack_id": None,
        "deployments": [],
        "skipped": [],
    }
    second = await wait_revision(env.client, env.admin.headers, deployment_id, 2, {"running", "failed"})
    assert second["status"] == "running", second["error_message"]
    assert serves(port) == "v2"
    latest = (await revisions(env.client, env.admin.headers, deployment_id))[0]
    assert (latest["number"], latest["created_by"], latest["reason"]) == (2, "hook:ci", "update")

    refused_body = json.dumps({"variables": {"mode": "crash"}}).encode()
    refused = await env.client.post(
        f"/api/v1/hooks/{hook['id']}", content=refused_body, headers={"X-Hub-Signature-256": sign(hook["secret"], refused_body)}
    )
    assert refused.status_code == 422 and refused.json()["code"] == "hook_variable_not_allowed"
    assert len(await revisions(env.client, env.admin.headers, deployment_id)) == 2 and serves(port) == "v2"
