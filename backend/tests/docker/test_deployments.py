"""Deployments end to end: HTTP API → asyncio executor → runner → real Docker engine."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.main import create_app
from backend.app.models import Deployment
from backend.app.runtime import background_tasks
from backend.tests.conftest import TEST_IMAGE, make_settings
from backend.tests.deploy_helpers import (
    WEB_STACK,
    all_logs,
    container_labels,
    force_cleanup,
    free_port,
    http_get,
    labelled,
    wait_deleted,
    wait_status,
)
from backend.tests.helpers import Actor, setup_admin
from backend.tests.registry_fixtures import open_registry  # noqa: F401

pytestmark = pytest.mark.docker


@dataclass
class Env:
    client: httpx.AsyncClient
    admin: Actor
    target_id: str
    stack_id: str
    created: list[str]

    async def deploy(self, variables: dict, stack_id: str | None = None, expect: int = 201) -> dict:
        response = await self.client.post(
            "/api/v1/deployments",
            json={"stack_id": stack_id or self.stack_id, "target_id": self.target_id, "variables": variables},
            headers=self.admin.headers,
        )
        assert response.status_code == expect, response.text
        body = response.json()
        if expect == 201:
            self.created.append(body["id"])
        return body

    async def stack(self, template: str, variables: list | None = None, name: str = "s") -> str:
        response = await self.client.post(
            "/api/v1/stacks", json={"name": name, "template": template, "variables": variables or []}, headers=self.admin.headers
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]


async def make_env(db, docker_engine, tmp_path, limit: int = 2, **overrides) -> tuple[httpx.AsyncClient, Env]:
    settings = make_settings(
        db.settings.DATABASE_URL,
        DEPLOYMENTS_WORKDIR=tmp_path / "deployments",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=30,
        DEPLOYMENT_RETRY_BACKOFF_SECONDS=0.2,
        **overrides,
    )
    app = create_app(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    admin = await setup_admin(client)
    target = await client.post(
        "/api/v1/targets",
        json={"name": "engine", "type": "docker", "endpoint": docker_engine, "max_concurrent_deployments": limit},
        headers=admin.headers,
    )
    assert target.status_code == 201, target.text
    stack = await client.post("/api/v1/stacks", json=WEB_STACK, headers=admin.headers)
    assert stack.status_code == 201, stack.text
    return client, Env(client, admin, target.json()["id"], stack.json()["id"], [])


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


async def test_two_service_stack_runs_and_answers(env, events, caplog):
    caplog.set_level("INFO")
    port = free_port()
    created = await env.deploy({"port": port})
    # the backend runs it itself (no Celery here): its creation claimed it, and the answer says so
    assert created["status"] == "deploying" and created["executor"] == "asyncio" and created["attempt"] == 1, created
    running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    assert running["status"] == "running", running["error_message"]
    assert running["progress"] == 100 and running["attempt"] == 1 and running["executor"] == "asyncio"
    assert http_get(port).strip() == "hello-windflow"

    labels = container_labels(created["id"])
    assert len(labels) == 2
    assert all(l["windflow.managed"] == "true" and l["windflow.deployment_id"] == created["id"] for l in labels)
    assert labelled("network", created["id"]), "the project network carries the labels too"

    logs = await all_logs(env.client, env.admin.headers, created["id"])
    assert [l["seq"] for l in logs] == list(range(1, len(logs) + 1))
    messages = "\n".join(l["message"] for l in logs)
    assert "[1/6] Validate configuration" in messages and "[6/6]" in messages and "Deployment is running" in messages

    mine = [e for e in events if e.deployment_id == created["id"]]
    statuses = [(e.data["old_status"], e.data["new_status"]) for e in mine if e.type == "DEPLOYMENT_STATUS_CHANGED"]
    assert statuses == [("pending", "deploying"), ("deploying", "running")]
    progress = [e.data["current_step"] for e in mine if e.type == "DEPLOYMENT_PROGRESS"]
    assert progress == [1, 2, 3, 4, 5, 6]
    streamed = [l["seq"] for e in mine if e.type == "DEPLOYMENT_LOGS_UPDATE" for l in e.data["logs"]]
    assert streamed == [l["seq"] for l in logs]
    # the server log lines the product guide greps for (docs/architecture.md#the-product-guide)
    assert f"update_status: deployment {created['id']}" in caplog.text and "DEPLOYING -> RUNNING" in caplog.text
    assert f"emit_deployment_status_changed: deployment {created['id']}" in caplog.text


async def test_stop_start_delete_leave_nothing_behind(env):
    port = free_port()
    created = await env.deploy({"port": port})
    await wait_status(env.client, env.admin.headers, created["id"], {"running"})
    headers = env.admin.headers

    stopping = await env.client.post(f"/api/v1/deployments/{created['id']}/stop", headers=headers)
    assert stopping.status_code == 202, stopping.text
    assert stopping.json()["status"] == "stopping"
    await wait_status(env.client, headers, created["id"], {"stopped"})
    with pytest.raises(OSError):
        http_get(port, timeout=1)
    again = await env.client.post(f"/api/v1/deployments/{created['id']}/stop", headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "invalid_transition"

    started = await env.client.post(f"/api/v1/deployments/{created['id']}/start", headers=headers)
    assert started.status_code == 200 and started.json()["status"] in {"pending", "deploying"}
    await wait_status(env.client, headers, created["id"], {"running"})
    assert http_get(port).strip() == "hello-windflow"

    deleting = await env.client.delete(f"/api/v1/deployments/{created['id']}", headers=headers)
    assert deleting.status_code == 202 and deleting.json()["status"] == "deleting", deleting.text
    await wait_deleted(env.client, headers, created["id"])
    assert labelled("container", created["id"]) == []
    assert labelled("network", created["id"]) == []


STUBBORN = (  # ignores SIGTERM: stopping it takes its whole grace period (10 s), then SIGKILL
    "services:\n  app:\n"
    f"    image: {TEST_IMAGE}\n"
    "    network_mode: none\n"
    "    stop_grace_period: 10s\n"
    '    command: ["sh", "-c", "trap \'\' TERM; while true; do sleep 1; done"]\n'
)


def running_containers(deployment_id: str) -> list[str]:
    """Ids of the deployment's containers the engine reports running."""
    ids = labelled("container", deployment_id)
    if not ids:
        return []
    out = subprocess.run(["docker", "inspect", "--format", "{{.Id}} {{.State.Running}}", *ids], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in out.stdout.splitlines() if line.endswith(" true")]


@pytest.mark.parametrize("action", ["stop", "delete"])
async def test_a_slow_stop_or_delete_answers_at_once_and_finishes_in_the_background(env, events, action):
    """A container that ignores SIGTERM takes its 10 s grace period to stop: the request answers 202 with the
    deployment ``stopping``/``deleting`` while that container still runs (no wall-clock bound: the answer is
    there before the engine is done), other requests read and write meanwhile, and the executor finishes it:
    ``stopped`` (its log says so), or the row gone with DEPLOYMENT_DELETED and nothing left on the engine."""
    stack_id = await env.stack(STUBBORN, name="stubborn")
    created = await env.deploy({}, stack_id=stack_id)
    running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    assert running["status"] == "running", running["error_message"]
    assert len(running_containers(created["id"])) == 1
    url = f"/api/v1/deployments/{created['id']}"
    started = time.monotonic()
    if action == "stop":
        response = await env.client.post(f"{url}/stop", headers=env.admin.headers)
    else:
        response = await env.client.delete(url, headers=env.admin.headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == ("stopping" if action == "stop" else "deleting")
    assert response.json()["id"] == created["id"]
    assert len(running_containers(created["id"])) == 1, "the answer came after the container had stopped"
    listing = await env.client.get("/api/v1/deployments", headers=env.admin.headers)
    assert listing.status_code == 200 and created["id"] in [d["id"] for d in listing.json()["items"]]
    await env.stack("services:\n  app:\n    image: busybox\n", name="written-meanwhile")
    again = await (
        env.client.post(f"{url}/stop", headers=env.admin.headers) if action == "stop" else env.client.delete(url, headers=env.admin.headers)
    )
    if action == "stop":
        assert again.status_code == 409 and again.json()["code"] == "invalid_transition", again.text
        stopped = await wait_status(env.client, env.admin.headers, created["id"], {"stopped", "failed"}, timeout=60)
        assert stopped["status"] == "stopped", stopped["error_message"]
        logs = [l["message"] for l in await all_logs(env.client, env.admin.headers, created["id"])]
        assert logs[-1] == "Stopped" and any(line.startswith("Stopping (attempt 1/") for line in logs), logs
        assert running_containers(created["id"]) == [] and labelled("container", created["id"]), "stopped, not removed"
        history = (await env.client.get(f"{url}/history", headers=env.admin.headers)).json()
        moves = [(h["from_status"], h["to_status"]) for h in history]
        assert ("running", "stopping") in moves and ("stopping", "stopped") in moves, moves
    else:
        assert again.status_code == 202 and again.json()["status"] == "deleting", "a delete asked twice goes on once"
        await wait_deleted(env.client, env.admin.headers, created["id"], timeout=60)
        assert labelled("container", created["id"]) == [] and labelled("network", created["id"]) == []
    assert time.monotonic() - started > 8  # the grace period was really waited out, in the background
    mine = [e for e in events if e.deployment_id == created["id"]]
    statuses = [(e.data["old_status"], e.data["new_status"]) for e in mine if e.type == "DEPLOYMENT_STATUS_CHANGED"]
    if action == "stop":
        assert statuses[-2:] == [("running", "stopping"), ("stopping", "stopped")], statuses
    else:
        assert statuses[-1] == ("running", "deleting"), statuses
        assert mine[-1].type == "DEPLOYMENT_DELETED", [e.type for e in mine[-3:]]


async def test_missing_image_fails_with_clear_message(env, open_registry):
    # an unknown repository of a registry that answers (backend/tests/docker/test_private_registry.py: the others)
    image = f"{open_registry.server}/windflow-test/does-not-exist:1.0"
    stack_id = await env.stack(f"services:\n  app:\n    image: {image}\n", name="missing")
    created = await env.deploy({}, stack_id=stack_id)
    failed = await wait_status(env.client, env.admin.headers, created["id"], {"failed", "running"})
    assert failed["status"] == "failed"
    assert image in failed["error_message"] and "unknown image or tag" in failed["error_message"]
    assert failed["attempt"] == 1, "a missing image is permanent: no retry"
    logs = await all_logs(env.client, env.admin.headers, created["id"])
    assert any(l["level"] == "error" and "does-not-exist" in l["message"] for l in logs)


async def test_container_exiting_soon_after_start_fails_the_deployment(db, docker_engine, tmp_path):
    """A container without a health check that dies a second after starting: up at the first poll, it must not
    make the deployment ``running`` when it has to stay up ``DEPLOYMENT_STABLE_SECONDS=2``."""
    client, env = await make_env(db, docker_engine, tmp_path, DEPLOYMENT_STABLE_SECONDS=2)
    try:
        await _exits_soon_after_start(env)
    finally:
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def _exits_soon_after_start(env: Env) -> None:
    stack_id = await env.stack(
        f'services:\n  app:\n    image: {TEST_IMAGE}\n    command: ["sh", "-c", "echo starting; sleep 1; echo bad config >&2; exit 3"]\n',
        name="crashes",
    )
    created = await env.deploy({}, stack_id=stack_id)
    failed = await wait_status(env.client, env.admin.headers, created["id"], {"failed", "running"})
    assert failed["status"] == "failed", failed
    assert "service app exited with code 3" in failed["error_message"]
    assert "bad config" in failed["error_message"], "the container's last lines say why"
    logs = await all_logs(env.client, env.admin.headers, created["id"])
    assert any(l["level"] == "error" and "app | bad config" in l["message"] for l in logs)


def container_states(deployment_id: str) -> dict[str, str]:
    """service name → container state of the deployment's containers."""
    ids = labelled("container", deployment_id)
    if not ids:
        return {}
    out = subprocess.run(
        ["docker", "inspect", "--format", '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}}', *ids],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(line.split() for line in out.stdout.splitlines())


async def test_taken_port_fails_with_clear_message(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        created = await env.deploy({"port": port})
        failed = await wait_status(env.client, env.admin.headers, created["id"], {"failed", "running"})
    assert failed["status"] == "failed"
    assert str(port) in failed["error_message"]
    assert "already" in failed["error_message"] or "in use" in failed["error_message"]
    # compose created the web container, then could not start it, and started the worker concurrently: nothing
    # of a revision that failed for good keeps running, so both are removed (the log says so)
    assert container_states(created["id"]) == {}
    lines = [line["message"] for line in await all_logs(env.client, env.admin.headers, created["id"])]
    assert any(line.startswith("Removing the containers of revision 1") for line in lines), lines
    deleted = await env.client.delete(f"/api/v1/deployments/{created['id']}", headers=env.admin.headers)
    assert deleted.status_code == 202, deleted.text
    await wait_deleted(env.client, env.admin.headers, created["id"])
    assert labelled("container", created["id"]) == []


async def test_invalid_template_refused_before_anything_runs(env, session):
    bad = await env.client.post(
        "/api/v1/stacks",
        json={"name": "bad", "template": "services:\n  web:\n    image: [unclosed\n", "variables": []},
        headers=env.admin.headers,
    )
    assert bad.status_code == 422 and "line" in bad.json()["detail"]
    # Values that render a document the compose tool rejects fail at creation, quoting the tool.
    stack_id = await env.stack(
        'services:\n  web:\n    image: x\n    ports: ["{{ mapping }}"]\n',
        [{"name": "mapping", "type": "string", "default": "127.0.0.1:18080:80"}],
        name="badcompose",
    )
    refused = await env.deploy({"mapping": "not:a:port:mapping"}, stack_id=stack_id, expect=422)
    assert refused["code"] == "invalid_compose"
    assert "docker compose rejected the document" in refused["detail"] and "not:a" in refused["detail"]
    assert (await session.execute(select(Deployment))).scalars().all() == []


async def test_secret_never_in_logs_or_responses(env):
    port = free_port()
    created = await env.deploy({"port": port, "api_key": "s3cr3t-value-never-shown"})
    running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    assert running["status"] == "running", running["error_message"]
    assert running["variables"]["api_key"] == "***"
    texts = [str(created), str(running)]
    texts += [l["message"] for l in await all_logs(env.client, env.admin.headers, created["id"])]
    listing = await env.client.get("/api/v1/deployments", headers=env.admin.headers)
    texts.append(listing.text)
    assert not any("s3cr3t-value-never-shown" in t for t in texts)
    async with database.AsyncSessionLocal() as s:
        row = await s.get(Deployment, created["id"])
        assert "s3cr3t-value-never-shown" not in str(row.variables) and "s3cr3t" not in (row.rendered_compose or "")


async def test_cancel_while_deploying_removes_containers(env):
    slow = await env.stack(
        "services:\n  slow:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "sleep 600"]\n'
        '    healthcheck:\n      test: ["CMD", "false"]\n      interval: 1s\n      retries: 1000\n',
        name="slow",
    )
    created = await env.deploy({}, stack_id=slow)
    await wait_status(env.client, env.admin.headers, created["id"], {"deploying"})
    for _ in range(100):
        if labelled("container", created["id"]):
            break
        await asyncio.sleep(0.2)
    cancelled = await env.client.post(f"/api/v1/deployments/{created['id']}/cancel", headers=env.admin.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    for _ in range(100):
        logs = await all_logs(env.client, env.admin.headers, created["id"])
        if any(l["message"] == "Cancelled" for l in logs):
            break
        await asyncio.sleep(0.2)
    assert labelled("container", created["id"]) == []
    refused = await env.client.post(f"/api/v1/deployments/{created['id']}/cancel", headers=env.admin.headers)
    assert refused.status_code == 409


async def test_rate_limit_on_creation(db, docker_engine, tmp_path):
    client, environment = await make_env(db, docker_engine, tmp_path, DEPLOYMENT_RATE_LIMIT_PER_MINUTE=2)
    try:
        stack_id = await environment.stack("services:\n  a:\n    image: windflow-test/none:0\n", name="rl")
        await environment.deploy({}, stack_id=stack_id)
        await environment.deploy({}, stack_id=stack_id)
        limited = await environment.deploy({}, stack_id=stack_id, expect=429)
        assert "limit" in limited["detail"] and limited["code"] == "rate_limited"
    finally:
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def test_target_concurrency_limit_holds_and_keeps_order(db, docker_engine, tmp_path):
    client, environment = await make_env(db, docker_engine, tmp_path, limit=1)
    try:
        stack_id = await environment.stack(
            "services:\n  app:\n"
            f"    image: {TEST_IMAGE}\n"
            "    init: true\n"
            '    command: ["sh", "-c", "sleep 1; touch /tmp/ready; sleep 600"]\n'
            '    healthcheck:\n      test: ["CMD", "test", "-f", "/tmp/ready"]\n      interval: 1s\n      retries: 30\n',
            name="limited",
        )
        ids = [(await environment.deploy({}, stack_id=stack_id))["id"] for _ in range(3)]
        most = 0
        for _ in range(600):
            listing = (await client.get("/api/v1/deployments", headers=environment.admin.headers)).json()["items"]
            states = {d["id"]: d["status"] for d in listing}
            most = max(most, sum(1 for i in ids if states[i] == "deploying"))
            if all(states[i] in {"running", "failed"} for i in ids):
                break
            await asyncio.sleep(0.1)
        finals = [await wait_status(client, environment.admin.headers, i, {"running", "failed"}) for i in ids]
        assert [f["status"] for f in finals] == ["running"] * 3, [f["error_message"] for f in finals]
        assert most == 1
        assert [f["started_at"] for f in finals] == sorted(f["started_at"] for f in finals)
    finally:
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def test_transient_failures_retry_with_backoff_then_fail(env):
    """An unreachable engine is transient: 3 attempts (each a claim), then failed with the last error."""
    unreachable = await env.client.post(
        "/api/v1/targets",
        json={"name": "down", "type": "docker", "endpoint": "tcp://127.0.0.1:1"},
        headers=env.admin.headers,
    )
    assert unreachable.status_code == 201, unreachable.text
    response = await env.client.post(
        "/api/v1/deployments",
        json={"stack_id": env.stack_id, "target_id": unreachable.json()["id"], "variables": {"port": free_port()}},
        headers=env.admin.headers,
    )
    created = response.json()
    final = await wait_status(env.client, env.admin.headers, created["id"], {"failed", "running"}, timeout=60)
    assert final["status"] == "failed" and final["attempt"] == 3
    assert "127.0.0.1:1" in final["error_message"] or "refused" in final["error_message"].lower()
    history = (await env.client.get(f"/api/v1/deployments/{created['id']}/history", headers=env.admin.headers)).json()
    transitions = [(h["from_status"], h["to_status"]) for h in history]
    assert transitions == [
        (None, "pending"),
        ("pending", "deploying"),
        ("deploying", "pending"),
        ("pending", "deploying"),
        ("deploying", "pending"),
        ("pending", "deploying"),
        ("deploying", "failed"),
    ]
    logs = await all_logs(env.client, env.admin.headers, created["id"])
    assert sum("Transient failure: retrying" in l["message"] for l in logs) == 2
    assert any("Giving up after 3 attempt(s)" in l["message"] for l in logs)


async def test_listing_filters_and_foreign_organization(env):
    created = await env.deploy({"port": free_port()})
    await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    headers = env.admin.headers
    by_stack = (await env.client.get("/api/v1/deployments", params={"stack_id": env.stack_id}, headers=headers)).json()
    assert [d["id"] for d in by_stack["items"]] == [created["id"]] and by_stack["total"] == 1
    none = (await env.client.get("/api/v1/deployments", params={"status": "stopped"}, headers=headers)).json()
    assert none == {"items": [], "total": 0, "total_is_exact": True, "next_cursor": None}
    foreign = await env.client.get(
        "/api/v1/deployments", params={"organization_id": "00000000-0000-0000-0000-000000000000"}, headers=headers
    )
    assert foreign.status_code == 404
    bad = await env.client.get("/api/v1/deployments", params={"status": "exploded"}, headers=headers)
    assert bad.status_code == 422
