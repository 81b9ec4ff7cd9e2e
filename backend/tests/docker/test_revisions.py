"""Revisions end to end, in process on SQLite: HTTP API -> asyncio executor -> runner -> real Docker engine.

A change of a running deployment is a new revision rolled out behind the health gate; one that fails its
gate is rolled back by itself to the last good revision, which serves again; a manual rollback re-applies an
older revision's record with its images pinned. (The same with a Celery worker on PostgreSQL, and workers
killed mid-rollout: backend/tests/celery/test_revisions_celery.py.)
"""

from __future__ import annotations

import asyncio

import pytest

from backend.app.core.events import EventType
from backend.app.runtime import background_tasks
from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import all_logs, force_cleanup, free_port, labelled, wait_status
from backend.tests.docker.test_deployments import make_env
from backend.tests.helpers import add_member, create_user, default_org
from backend.tests.revision_helpers import (
    REV_STACK,
    containers,
    env_of,
    revisions,
    running_services,
    serves,
    wait_revision,
)

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]

FAST = {"DEPLOYMENT_STABLE_SECONDS": 1.0}


@pytest.fixture
async def env(db, docker_engine, tmp_path):
    client, environment = await make_env(db, docker_engine, tmp_path, **FAST)
    environment.stack_id = await environment.stack(REV_STACK["template"], REV_STACK["variables"], name="rev")
    try:
        yield environment
    finally:
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def change(env, deployment_id: str, body: dict, expect: int = 201) -> dict:
    response = await env.client.post(f"/api/v1/deployments/{deployment_id}/revisions", json=body, headers=env.admin.headers)
    assert response.status_code == expect, response.text
    return response.json()


async def test_a_variable_changed_twice_makes_three_revisions_then_a_rollback_to_1(env, events):
    port = free_port()
    created = await env.deploy({"port": port, "greeting": "v1"})
    deployment_id = created["id"]
    assert (created["revision"], created["last_good_revision"], created["auto_rollback"]) == (1, None, True)
    first = await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"})
    assert first["status"] == "running", first["error_message"]
    assert first["last_good_revision"] == 1 and serves(port) == "v1"
    web_1 = running_services(deployment_id)["web"]
    api_key = env_of(containers(deployment_id)[running_services(deployment_id)["worker"]], "API_KEY")

    second = await change(env, deployment_id, {"variables": {"greeting": "v2"}})
    assert (second["number"], second["reason"], second["outcome"], second["created_by"]) == (2, "update", "pending", env.admin.email)
    busy = await change(env, deployment_id, {"variables": {"greeting": "v9"}}, expect=409)  # a rollout runs
    assert busy["code"] == "rollout_in_progress" and busy["params"]["revision"] == 2
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 2, {"running", "failed"}))["status"] == "running"
    assert serves(port) == "v2"
    web_2 = running_services(deployment_id)["web"]
    assert web_2 != web_1 and web_1 not in containers(deployment_id)  # recreated; the old one is gone

    await change(env, deployment_id, {"variables": {"greeting": "v3"}})
    third = await wait_revision(env.client, env.admin.headers, deployment_id, 3, {"running", "failed"})
    assert third["status"] == "running" and third["last_good_revision"] == 3 and serves(port) == "v3"
    assert set(containers(deployment_id)) == set(running_services(deployment_id).values())  # nothing left over
    assert len(containers(deployment_id)) == 2
    worker = containers(deployment_id)[running_services(deployment_id)["worker"]]
    assert env_of(worker, "API_KEY") == api_key  # the secret, left out, kept its value

    listed = await revisions(env.client, env.admin.headers, deployment_id)
    assert [(r["number"], r["reason"], r["outcome"]) for r in listed] == [
        (3, "update", "running"),
        (2, "update", "superseded"),
        (1, "created", "superseded"),
    ]
    image_id = await asyncio.to_thread(lambda: __import__("docker").from_env().images.get(TEST_IMAGE).id)
    for revision in listed:
        assert revision["variables"]["api_key"] == "***"
        assert sorted((i["service"], i["image"], i["digest"]) for i in revision["images"]) == [
            ("web", TEST_IMAGE, image_id),
            ("worker", TEST_IMAGE, image_id),
        ]
        assert revision["finished_at"] is not None and revision["error_message"] is None
    one = await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions/2", headers=env.admin.headers)
    assert one.status_code == 200 and one.json()["variables"]["greeting"] == "v2"
    paged = await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions", params={"limit": 2}, headers=env.admin.headers)
    assert [r["number"] for r in paged.json()["items"]] == [3, 2] and paged.json()["total"] == 3
    rest = await env.client.get(
        f"/api/v1/deployments/{deployment_id}/revisions",
        params={"limit": 2, "cursor": paged.json()["next_cursor"]},
        headers=env.admin.headers,
    )
    assert [r["number"] for r in rest.json()["items"]] == [1] and rest.json()["next_cursor"] is None

    diff = (await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions/1/diff/3", headers=env.admin.headers)).json()["diff"]
    assert "--- revision 1/compose\n+++ revision 3/compose\n" in diff
    assert "-        sleep 0; echo v1 > /www/index.html" in diff and "+        sleep 0; echo v3 > /www/index.html" in diff
    assert '-greeting: "v1"\n+greeting: "v3"\n' in diff and " api_key: ***\n" in diff  # unchanged: context
    assert "+api_key" not in diff and "(changed)" not in diff and api_key not in diff

    # a new secret: the diff says it changed, never what it is
    await change(env, deployment_id, {"variables": {"api_key": "a-brand-new-api-key-4242"}})
    await wait_revision(env.client, env.admin.headers, deployment_id, 4, {"running"})
    diff = (await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions/3/diff/4", headers=env.admin.headers)).json()["diff"]
    assert "-api_key: ***\n+api_key: *** (changed)\n" in diff, diff
    assert "a-brand-new-api-key-4242" not in diff and api_key not in diff

    rolled = await env.client.post(f"/api/v1/deployments/{deployment_id}/rollback", json={"revision": 1}, headers=env.admin.headers)
    assert rolled.status_code == 201, rolled.text
    assert (rolled.json()["number"], rolled.json()["reason"], rolled.json()["rollback_of"]) == (5, "rollback", 1)
    back = await wait_revision(env.client, env.admin.headers, deployment_id, 5, {"running", "failed"})
    assert back["status"] == "running", back["error_message"]
    assert serves(port) == "v1"
    worker = containers(deployment_id)[running_services(deployment_id)["worker"]]
    assert env_of(worker, "API_KEY") == api_key  # revision 1's values, secret included
    outcomes = {r["number"]: r["outcome"] for r in await revisions(env.client, env.admin.headers, deployment_id)}
    assert outcomes == {5: "running", 4: "rolled_back", 3: "superseded", 2: "superseded", 1: "superseded"}
    statuses = [e for e in events if e.deployment_id == deployment_id and e.type is EventType.DEPLOYMENT_STATUS_CHANGED]
    assert statuses and all(e.data["revision"] is not None for e in statuses)
    assert [e.data["revision"] for e in statuses if e.data["new_status"] == "running"] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "mode, why",
    [
        ("crash", "service web exited with code 3"),
        ("unhealthy", "service web is unhealthy (last check: exit 1: GET /health 503)"),
    ],
)
async def test_a_revision_failing_its_gate_is_rolled_back_and_the_previous_one_serves_again(env, events, mode, why):
    port = free_port()
    deployment_id = (await env.deploy({"port": port, "greeting": "good"}))["id"]
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"

    await change(env, deployment_id, {"variables": {"greeting": "bad", "mode": mode}})
    final = await wait_revision(env.client, env.admin.headers, deployment_id, 3, {"running", "failed"})
    assert final["status"] == "running", final["error_message"]
    assert final["last_good_revision"] == 3 and final["error_message"] is None
    assert serves(port) == "good"

    listed = {r["number"]: r for r in await revisions(env.client, env.admin.headers, deployment_id)}
    assert (listed[3]["reason"], listed[3]["rollback_of"], listed[3]["outcome"], listed[3]["created_by"]) == (
        "automatic_rollback",
        1,
        "running",
        None,
    )
    assert listed[2]["outcome"] == "failed" and why in listed[2]["error_message"]
    if mode == "crash":
        assert "fatal: DATABASE_URL is not set" in listed[2]["error_message"]
    assert listed[1]["outcome"] == "superseded"
    assert listed[3]["images"] == listed[1]["images"] != []

    rolled_back = [e for e in events if e.deployment_id == deployment_id and e.type is EventType.DEPLOYMENT_ROLLED_BACK]
    assert len(rolled_back) == 1
    data = rolled_back[0].data
    assert (data["from_revision"], data["to_revision"], data["revision"]) == (2, 1, 3) and why in data["reason"]
    lines = [line["message"] for line in await all_logs(env.client, env.admin.headers, deployment_id)]
    assert any("Revision 2 failed" in line and "rolling back to revision 1" in line for line in lines), lines
    assert any(line.startswith("--- Automatic rollback to revision 1") for line in lines), lines


async def test_a_first_deploy_failing_the_gate_ends_failed_with_nothing_running(env):
    deployment_id = (await env.deploy({"port": free_port(), "mode": "crash"}))["id"]
    final = await wait_status(env.client, env.admin.headers, deployment_id, {"running", "failed"})
    assert final["status"] == "failed"
    assert final["error_message"].startswith("service web exited with code 3; last log lines:")
    assert final["last_good_revision"] is None
    assert labelled("container", deployment_id) == []  # nothing of the failed revision is left running
    (only,) = await revisions(env.client, env.admin.headers, deployment_id)
    assert (only["number"], only["outcome"]) == (1, "failed") and "exited with code 3" in only["error_message"]


async def test_without_auto_rollback_a_failed_revision_leaves_the_deployment_failed(env):
    port = free_port()
    deployment_id = (await env.deploy({"port": port}))["id"]
    await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running"})
    patched = await env.client.patch(f"/api/v1/deployments/{deployment_id}", json={"auto_rollback": False}, headers=env.admin.headers)
    assert patched.status_code == 200 and patched.json()["auto_rollback"] is False
    await change(env, deployment_id, {"variables": {"mode": "crash"}})
    final = await wait_revision(env.client, env.admin.headers, deployment_id, 2, {"failed", "running"})
    assert final["status"] == "failed" and final["last_good_revision"] == 1
    assert labelled("container", deployment_id) == []
    # the user rolls back by hand
    rolled = await env.client.post(f"/api/v1/deployments/{deployment_id}/rollback", json={"revision": 1}, headers=env.admin.headers)
    assert rolled.status_code == 201, rolled.text
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 3, {"running", "failed"}))["status"] == "running"
    assert serves(port) == "v1"


async def test_a_rollback_that_fails_too_leaves_the_deployment_failed_with_both_reasons(env):
    """The bad revision poisons the volume the good one reads: the rollback's gate fails as well."""
    deployment_id = (await env.deploy({"port": free_port()}))["id"]
    await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running"})
    await change(env, deployment_id, {"variables": {"mode": "poison"}})
    final = await wait_revision(env.client, env.admin.headers, deployment_id, 3, {"failed", "running"})
    assert final["status"] == "failed"
    message = final["error_message"]
    assert message.startswith("automatic rollback to revision 1 failed: service web exited with code 4"), message
    assert "fatal: the volume is poisoned" in message
    assert "revision 2 had failed: service web exited with code 3" in message
    outcomes = {r["number"]: r["outcome"] for r in await revisions(env.client, env.admin.headers, deployment_id)}
    assert outcomes == {3: "failed", 2: "failed", 1: "superseded"}
    assert labelled("container", deployment_id) == []


async def test_changes_are_validated_like_a_creation_and_need_an_operator(env):
    deployment_id = (await env.deploy({"port": free_port()}))["id"]
    await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running"})
    bad = await change(env, deployment_id, {"variables": {"port": "not-a-port"}}, expect=422)
    assert bad["code"] == "invalid_variables" and "port" in bad["detail"]
    unknown = await change(env, deployment_id, {"variables": {"nope": 1}}, expect=422)
    assert "nope" in unknown["detail"]
    extra = await change(env, deployment_id, {"variables": {}, "stack_version": "v2"}, expect=422)
    assert extra["code"] == "validation_error"
    missing = await env.client.post(f"/api/v1/deployments/{deployment_id}/rollback", json={"revision": 7}, headers=env.admin.headers)
    assert missing.status_code == 404 and missing.json()["code"] == "revision_not_found"
    assert (
        await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions/99999999999", headers=env.admin.headers)
    ).status_code == 422
    # a viewer reads revisions and diffs; changing, rolling back and the settings need an operator, as redeploy
    viewer = await create_user(env.client, env.admin, "viewer@example.com")
    await add_member(env.client, env.admin, await default_org(env.client, env.admin), viewer, "viewer")
    assert len(await revisions(env.client, viewer.headers, deployment_id)) == 1
    base = f"/api/v1/deployments/{deployment_id}"
    assert (await env.client.get(f"{base}/revisions/1/diff/1", headers=viewer.headers)).json() == {"diff": ""}
    for method, path, body in (
        ("POST", "/revisions", {"variables": {}}),
        ("POST", "/rollback", {"revision": 1}),
        ("PATCH", "", {"auto_rollback": False}),
        ("POST", "/redeploy", None),
    ):
        refused = await env.client.request(method, base + path, json=body, headers=viewer.headers)
        assert refused.status_code == 403, (path, refused.text)
    listed = await revisions(env.client, env.admin.headers, deployment_id)
    assert [r["number"] for r in listed] == [1]  # nothing refused made a revision


async def test_cancelling_a_rollout_keeps_the_volumes_the_revisions_before_it_wrote(env):
    port = free_port()
    deployment_id = (await env.deploy({"port": port}))["id"]
    await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running"})
    assert len(labelled("volume", deployment_id)) == 1
    await change(env, deployment_id, {"variables": {"greeting": "slow", "delay": 30}})
    await wait_revision(env.client, env.admin.headers, deployment_id, 2, {"deploying"})
    for _ in range(100):  # its web container is up, waiting to serve
        if (
            running_services(deployment_id).get("web")
            and (await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.admin.headers)).json()["current_step"] == 6
        ):
            break
        await asyncio.sleep(0.2)
    cancelled = await env.client.post(f"/api/v1/deployments/{deployment_id}/cancel", headers=env.admin.headers)
    assert cancelled.status_code == 200, cancelled.text
    for _ in range(100):
        if not labelled("container", deployment_id):
            break
        await asyncio.sleep(0.2)
    assert labelled("container", deployment_id) == []
    assert len(labelled("volume", deployment_id)) == 1  # revision 1's data is still there
    outcomes = {r["number"]: (r["outcome"], r["error_message"]) for r in await revisions(env.client, env.admin.headers, deployment_id)}
    assert outcomes == {2: ("failed", "Cancelled by user"), 1: ("superseded", None)}
    rolled = await env.client.post(f"/api/v1/deployments/{deployment_id}/rollback", json={"revision": 1}, headers=env.admin.headers)
    assert rolled.status_code == 201, rolled.text
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 3, {"running", "failed"}))["status"] == "running"
    assert serves(port) == "v1"


async def test_a_revision_keeps_the_variable_schema_it_was_made_with(env):
    """What the Edit & redeploy form is built from: the schema the revision's values were checked against, not the
    stack's current one (a change without "latest" is validated against the revision's)."""
    deployment_id = (await env.deploy({"port": free_port()}))["id"]
    await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"})
    stack = (await env.client.get(f"/api/v1/stacks/{env.stack_id}", headers=env.admin.headers)).json()
    first = (await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions/1", headers=env.admin.headers)).json()
    assert [v["name"] for v in first["variable_schema"]] == [v["name"] for v in stack["variables"]]
    motto = {"name": "motto", "type": "string", "required": True, "description": "added after revision 1"}
    patched = await env.client.patch(
        f"/api/v1/stacks/{env.stack_id}", json={"variables": [*stack["variables"], motto]}, headers=env.admin.headers
    )
    assert patched.status_code == 200, patched.text
    again = (await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions/1", headers=env.admin.headers)).json()
    assert again["variable_schema"] == first["variable_schema"]
    assert "motto" not in [v["name"] for v in again["variable_schema"]]
    listed = await revisions(env.client, env.admin.headers, deployment_id)
    assert listed[0]["variable_schema"] == first["variable_schema"]
    # the API checks a change against that schema: the stack's new variable is unknown to it
    refused = await change(env, deployment_id, {"variables": {"motto": "hi"}}, expect=422)
    assert "motto" in refused["detail"]
