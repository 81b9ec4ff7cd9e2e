"""``GET /deployments/{id}/services``: what a deployment runs, read from the real Docker engine at each call
(in process on SQLite): each service's containers with their state, health, exit code, restarts, image and
published ports; a container killed behind WindFlow's back shows as exited at once."""

from __future__ import annotations

import subprocess

import pytest

from backend.app.runtime import background_tasks
from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import force_cleanup, free_port, wait_status
from backend.tests.docker.test_deployments import make_env
from backend.tests.helpers import add_member, create_user, default_org

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]

#: ``web`` publishes a port and has a healthcheck; ``worker`` has neither.
STACK = (
    "services:\n"
    "  web:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    '    command: ["sh", "-c", "echo hi > /www/index.html && exec httpd -f -p 80 -h /www"]\n'
    '    ports: ["127.0.0.1:{{ port }}:80"]\n'
    "    healthcheck:\n"
    '      test: ["CMD", "test", "-f", "/www/index.html"]\n'
    "      interval: 1s\n"
    "      timeout: 1s\n"
    "      retries: 5\n"
    "  worker:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    '    command: ["sh", "-c", "while true; do sleep 1; done"]\n'
)


@pytest.fixture
async def env(db, docker_engine, tmp_path):
    client, environment = await make_env(db, docker_engine, tmp_path, DEPLOYMENT_STABLE_SECONDS=1.0)
    environment.stack_id = await environment.stack(STACK, [{"name": "port", "type": "integer", "required": True}], name="services")
    try:
        yield environment
    finally:
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def services(env, deployment_id: str, headers=None) -> dict:
    response = await env.client.get(f"/api/v1/deployments/{deployment_id}/services", headers=headers or env.admin.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_each_service_with_its_containers_as_the_engine_reports_them(env):
    port = free_port()
    created = await env.deploy({"port": port})
    running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    assert running["status"] == "running", running["error_message"]

    body = await services(env, created["id"])
    assert body["revision"] == 1
    by_service = {s["service"]: s["containers"] for s in body["items"]}
    assert sorted(by_service) == ["web", "worker"]
    [web], [worker] = by_service["web"], by_service["worker"]
    assert (web["state"], web["health"], web["exit_code"], web["restarts"]) == ("running", "healthy", None, 0)
    assert (worker["state"], worker["health"]) == ("running", None)  # no healthcheck
    assert web["image"] == TEST_IMAGE and web["started_at"]
    assert {"container_port": "80/tcp", "host_ip": "127.0.0.1", "host_port": str(port)} in web["ports"]
    assert worker["ports"] == []
    names = subprocess.run(
        ["docker", "ps", "--filter", f"label=windflow.deployment_id={created['id']}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert sorted(names) == sorted([web["name"], worker["name"]])

    # Killed behind WindFlow's back: the next read says so (the deployment's status does not know yet).
    subprocess.run(["docker", "kill", worker["name"]], capture_output=True, timeout=60, check=True)
    [worker] = {s["service"]: s["containers"] for s in (await services(env, created["id"]))["items"]}["worker"]
    assert worker["state"] == "exited" and worker["exit_code"] == 137, worker

    # A viewer of the organisation reads it too; another organisation's member does not see the deployment.
    viewer = await create_user(env.client, env.admin, "viewer@example.com")
    await add_member(env.client, env.admin, await default_org(env.client, env.admin), viewer, "viewer")
    assert len((await services(env, created["id"], viewer.headers))["items"]) == 2
    outsider = await create_user(env.client, env.admin, "outsider@example.com")
    other = await env.client.get(f"/api/v1/deployments/{created['id']}/services", headers=outsider.headers)
    assert other.status_code == 404, other.text


async def test_a_deployment_without_containers_has_no_service(env):
    created = await env.deploy({"port": free_port()})
    await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    force_cleanup(created["id"])  # gone from the engine
    assert (await services(env, created["id"]))["items"] == []
