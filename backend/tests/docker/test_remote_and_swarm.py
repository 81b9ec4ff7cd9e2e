"""Deployments end to end on the two other kinds of target: a remote engine over TCP + mutual TLS, and a
swarm manager. HTTP API → asyncio executor → runner → real engine (no mocks).

* Remote: the second dockerd of ``remote_docker``, a host of its own (network namespace; no iptables, no
  userland proxy, so the stack publishes no port). The test image is loaded into it first: nothing can be
  pulled here.
* Swarm: the local engine in swarm mode (``swarm`` fixture of the swarm driver tests, with its lock), where
  the driver publishes ports in host mode.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import docker
import docker.tls
import httpx
import pytest

from backend.app.config import Settings
from backend.app.engines.base import DEPLOYMENT_LABEL, MANAGED_LABEL, project_name
from backend.app.main import create_app
from backend.app.runtime import background_tasks
from backend.tests.conftest import TEST_IMAGE, make_settings
from backend.tests.deploy_helpers import WEB_STACK, all_logs, free_port, http_get, labelled, wait_deleted, wait_status
from backend.tests.helpers import Actor, setup_admin
from backend.tests.integration.test_swarm_engine import swarm, swarm_lock  # noqa: F401 - fixtures
from backend.tests.remote_docker import RemoteDocker, remote_docker  # noqa: F401 - fixture

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]


@dataclass
class Api:
    """An API client that keeps the body of every response it received (for the no-secret checks)."""

    client: httpx.AsyncClient
    admin: Actor
    bodies: list[str] = field(default_factory=list)
    settings: Settings | None = None  # the app's

    async def post(self, url: str, body: dict | None = None, expect: int = 200) -> dict:
        response = await self.client.post(url, json=body, headers=self.admin.headers)
        assert response.status_code == expect, response.text
        return response.json()

    async def create(self, kind: str, body: dict) -> dict:
        return await self.post(f"/api/v1/{kind}", body, expect=201)

    async def wait(self, deployment_id: str, statuses: set[str], timeout: float = 60) -> dict:
        return await wait_status(self.client, self.admin.headers, deployment_id, statuses, timeout=timeout)


@pytest.fixture
async def api(db, tmp_path) -> AsyncIterator[Api]:
    settings = make_settings(
        db.settings.DATABASE_URL,
        DEPLOYMENTS_WORKDIR=tmp_path / "deployments",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=30,
        DEPLOYMENT_RETRY_BACKOFF_SECONDS=0.2,
    )
    bodies: list[str] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        bodies.append(response.text)

    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings)), base_url="http://testserver", event_hooks={"response": [keep]}
    )
    try:
        yield Api(client, await setup_admin(client), bodies, settings)
    finally:
        await background_tasks.shutdown()
        await client.aclose()


def by_label(deployment_id: str) -> dict[str, str]:
    return {"label": f"{DEPLOYMENT_LABEL}={deployment_id}"}


# --------------------------------------------------------------------------- remote engine over TLS


@pytest.fixture(scope="module")
def remote_client(remote_docker: RemoteDocker) -> Iterator[docker.DockerClient]:
    """The remote engine through mutual TLS, with the test image loaded into it."""
    certs = remote_docker.workdir / "certs"
    tls = docker.tls.TLSConfig(client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")), ca_cert=str(certs / "ca.pem"), verify=True)
    client = docker.DockerClient(base_url=remote_docker.endpoint, tls=tls, version=remote_docker.api_version)
    # requests would let REQUESTS_CA_BUNDLE (set on these machines) replace the CA given above.
    client.api.trust_env = False
    try:
        local = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto")
        try:
            archive = b"".join(local.images.get(TEST_IMAGE).save(named=True))
        finally:
            local.close()
        client.images.load(archive)
        assert client.images.get(TEST_IMAGE)
        yield client
    finally:
        client.close()


def remote_objects(client: docker.DockerClient, deployment_id: str) -> dict[str, list[str]]:
    flt = by_label(deployment_id)
    return {
        "containers": sorted(c.name for c in client.containers.list(ignore_removed=True, all=True, filters=flt)),
        "networks": sorted(n.name for n in client.networks.list(filters=flt)),
        "volumes": sorted(v.name for v in client.volumes.list(filters=flt)),
    }


def remote_cleanup(client: docker.DockerClient, deployment_id: str) -> None:
    flt = by_label(deployment_id)
    for container in client.containers.list(ignore_removed=True, all=True, filters=flt):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=flt):
        network.remove()
    for volume in client.volumes.list(filters=flt):
        volume.remove(force=True)


# A writer that puts a file in a shared volume (healthy once it is there) and a reader that waits for it.
# No published port: the remote engine has no iptables and no userland proxy.
REMOTE_STACK = (
    "services:\n"
    "  writer:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    '    command: ["sh", "-c", "echo {{ greeting }} > /shared/greeting && exec sleep 600"]\n'
    '    volumes: ["shared:/shared"]\n'
    "    healthcheck:\n"
    '      test: ["CMD", "test", "-s", "/shared/greeting"]\n'
    "      interval: 1s\n"
    "      retries: 20\n"
    "  reader:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    '    command: ["sh", "-c", "cat /shared/greeting > /tmp/seen && exec sleep 600"]\n'
    '    volumes: ["shared:/shared:ro"]\n'
    "    depends_on:\n"
    "      writer:\n"
    "        condition: service_healthy\n"
    "volumes:\n"
    "  shared: {}\n"
)


async def test_remote_tls_target_deploys_on_the_remote_engine_only(
    api: Api, remote_docker: RemoteDocker, remote_client: docker.DockerClient
):
    key = remote_docker.client.key
    deployment_id = None
    try:
        target = await api.create(
            "targets",
            {
                "name": "remote-tls",
                "type": "docker",
                "endpoint": remote_docker.endpoint,
                "tls_ca": remote_docker.ca,
                "tls_cert": remote_docker.client.cert,
                "tls_key": key,
            },
        )
        assert target["has_tls"] is True
        tested = await api.post(f"/api/v1/targets/{target['id']}/test")
        assert tested["ok"] is True and tested["version"] == remote_docker.version, tested
        stack = await api.create(
            "stacks",
            {
                "name": "remote",
                "template": REMOTE_STACK,
                "variables": [{"name": "greeting", "type": "string", "default": "hello-remote"}],
            },
        )
        created = await api.create("deployments", {"stack_id": stack["id"], "target_id": target["id"], "variables": {}})
        deployment_id = created["id"]

        running = await api.wait(deployment_id, {"running", "failed"})
        assert running["status"] == "running", running["error_message"]
        assert running["executor"] == "asyncio" and running["attempt"] == 1

        # On the remote engine, labelled; the reader got the writer's file through the shared volume.
        containers = remote_client.containers.list(ignore_removed=True, filters=by_label(deployment_id))
        services = {c.labels["com.docker.compose.service"]: c for c in containers}
        assert sorted(services) == ["reader", "writer"]
        for container in containers:
            assert container.labels[MANAGED_LABEL] == "true"
            assert container.labels[DEPLOYMENT_LABEL] == deployment_id
            assert container.status == "running"
        assert services["writer"].attrs["State"]["Health"]["Status"] == "healthy"
        seen = services["reader"].exec_run(["cat", "/tmp/seen"])
        assert (seen.exit_code, seen.output.decode().strip()) == (0, "hello-remote")
        # --bridge=none only drops the default docker0 bridge: compose's own bridge network still works.
        objects = remote_objects(remote_client, deployment_id)
        assert objects["networks"] == [f"{project_name(deployment_id)}_default"]
        for container in containers:
            assert list(container.attrs["NetworkSettings"]["Networks"]) == objects["networks"]
        assert objects["volumes"] == [f"{project_name(deployment_id)}_shared"]
        # ... and not on the local engine.
        assert labelled("container", deployment_id) == []
        assert labelled("network", deployment_id) == []
        assert labelled("volume", deployment_id) == []

        logs = await all_logs(api.client, api.admin.headers, deployment_id)
        # written before the status said running (the line after it, "Deployment is running", may lag)
        assert "all services are running: reader, writer" in [line["message"] for line in logs]

        deleted = await api.client.delete(f"/api/v1/deployments/{deployment_id}", headers=api.admin.headers)
        assert deleted.status_code == 202, deleted.text
        await wait_deleted(api.client, api.admin.headers, deployment_id)
        assert remote_objects(remote_client, deployment_id) == {"containers": [], "networks": [], "volumes": []}
        gone = await api.client.get(f"/api/v1/deployments/{deployment_id}", headers=api.admin.headers)
        assert gone.status_code == 404

        # The client key never came back: not in a response, not in a log line (read before the delete).
        for url in (f"/api/v1/targets/{target['id']}", "/api/v1/targets", "/api/v1/deployments"):
            assert (await api.client.get(url, headers=api.admin.headers)).status_code == 200
        key_lines = [line for line in key.splitlines() if line and not line.startswith("-----")]
        assert key_lines
        texts = api.bodies + [line["message"] for line in logs]
        leaks = [text[:200] for text in texts if any(part in text for part in key_lines)]
        assert leaks == []
    finally:
        await background_tasks.shutdown()
        if deployment_id is not None:
            remote_cleanup(remote_client, deployment_id)


# --------------------------------------------------------------------------- swarm manager


@pytest.fixture
def local_client(swarm: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=swarm, version="auto")
    try:
        yield client
    finally:
        client.close()


def swarm_cleanup(client: docker.DockerClient, deployment_id: str) -> None:
    subprocess.run(["docker", "stack", "rm", project_name(deployment_id)], capture_output=True, timeout=60)
    flt = by_label(deployment_id)
    for service in client.services.list(filters=flt):
        service.remove()
    for container in client.containers.list(ignore_removed=True, all=True, filters=flt):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=flt):
        subprocess.run(["docker", "network", "rm", network.id], capture_output=True, timeout=30)
    for volume in client.volumes.list(filters=flt):
        subprocess.run(["docker", "volume", "rm", "-f", volume.name], capture_output=True, timeout=30)


def stack_names() -> list[str]:
    out = subprocess.run(["docker", "stack", "ls", "--format", "{{.Name}}"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def replicas(client: docker.DockerClient, deployment_id: str) -> dict[str, int]:
    services = client.services.list(filters=by_label(deployment_id))
    return {s.name.removeprefix(project_name(deployment_id) + "_"): s.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] for s in services}


async def test_swarm_target_lifecycle_and_missing_image(api: Api, swarm: str, local_client: docker.DockerClient):
    created_ids: list[str] = []
    try:
        target = await api.create("targets", {"name": "swarm", "type": "swarm", "endpoint": swarm})
        tested = await api.post(f"/api/v1/targets/{target['id']}/test")
        assert tested["ok"] is True and tested["swarm_manager"] is True, tested
        stack = await api.create("stacks", WEB_STACK)
        port = free_port()
        created = await api.create("deployments", {"stack_id": stack["id"], "target_id": target["id"], "variables": {"port": port}})
        deployment_id = created["id"]
        created_ids.append(deployment_id)
        headers = api.admin.headers

        running = await api.wait(deployment_id, {"running", "failed"})
        assert running["status"] == "running", running["error_message"]
        assert running["executor"] == "asyncio" and running["attempt"] == 1
        assert http_get(port).strip() == "hello-windflow"
        logs = await all_logs(api.client, headers, deployment_id)
        assert any("cannot bind a host IP" in line["message"] and line["level"] == "warning" for line in logs)

        services = local_client.services.list(filters=by_label(deployment_id))
        assert sorted(s.name for s in services) == sorted(f"{project_name(deployment_id)}_{n}" for n in ("web", "worker"))
        for service in services:
            assert service.attrs["Spec"]["Labels"][MANAGED_LABEL] == "true"
            assert service.attrs["Spec"]["Labels"][DEPLOYMENT_LABEL] == deployment_id
            published = service.attrs["Spec"].get("EndpointSpec", {}).get("Ports", [])
            assert all(p["PublishMode"] == "host" for p in published)
        assert len(labelled("container", deployment_id)) == 2, "the task containers carry the labels too"

        assert (await api.post(f"/api/v1/deployments/{deployment_id}/stop", expect=202))["status"] == "stopping"
        stopped = await api.wait(deployment_id, {"stopped", "failed"})
        assert stopped["status"] == "stopped", stopped["error_message"]
        assert replicas(local_client, deployment_id) == {"web": 0, "worker": 0}
        assert local_client.containers.list(ignore_removed=True, filters=by_label(deployment_id)) == []
        with pytest.raises(OSError):
            http_get(port, timeout=1)

        started = await api.post(f"/api/v1/deployments/{deployment_id}/start")
        assert started["status"] in {"pending", "deploying"}
        running = await api.wait(deployment_id, {"running", "failed"})
        assert running["status"] == "running", running["error_message"]
        assert replicas(local_client, deployment_id) == {"web": 1, "worker": 1}
        assert http_get(port).strip() == "hello-windflow"

        deleted = await api.client.delete(f"/api/v1/deployments/{deployment_id}", headers=headers)
        assert deleted.status_code == 202, deleted.text
        await wait_deleted(api.client, headers, deployment_id)
        assert project_name(deployment_id) not in stack_names()
        assert local_client.services.list(filters=by_label(deployment_id)) == []
        for kind in ("container", "network", "volume"):
            assert labelled(kind, deployment_id) == [], kind

        # A missing image: the swarm rejects the task; the deployment fails at once, naming the image.
        image = f"windflow-test/missing-{os.urandom(4).hex()}:latest"
        missing = await api.create("stacks", {"name": "missing", "template": f"services:\n  broken:\n    image: {image}\n"})
        created = await api.create("deployments", {"stack_id": missing["id"], "target_id": target["id"], "variables": {}})
        created_ids.append(created["id"])
        failed = await api.wait(created["id"], {"failed", "running"})
        assert failed["status"] == "failed"
        assert image in failed["error_message"], failed["error_message"]
        assert failed["attempt"] == 1, "a missing image is permanent: no retry"
        logs = await all_logs(api.client, headers, created["id"])
        assert any(line["level"] == "error" and image in line["message"] for line in logs)
    finally:
        await background_tasks.shutdown()
        for deployment_id in created_ids:
            swarm_cleanup(local_client, deployment_id)


async def test_the_watcher_sees_swarm_services_scaled_down_by_hand(api: Api, swarm: str, local_client: docker.DockerClient):
    """The watcher on a swarm target (one engine call per deployment: ``SwarmEngine.inspect``): a service scaled
    to 0 by hand shows on the deployment at the next look (``degraded``, the service missing its container); with
    nothing left running, two looks fail the deployment, saying why."""
    from backend.app.runtime import background

    settings = api.settings
    deployment_id = None
    try:
        target = await api.create("targets", {"name": "swarm", "type": "swarm", "endpoint": swarm})
        stack = await api.create("stacks", WEB_STACK)
        created = await api.create("deployments", {"stack_id": stack["id"], "target_id": target["id"], "variables": {"port": free_port()}})
        deployment_id = created["id"]
        running = await api.wait(deployment_id, {"running", "failed"})
        assert running["status"] == "running", running["error_message"]

        async def look(until) -> dict:
            deadline = time.monotonic() + 30
            while True:
                await background.watch_once(settings)
                read = (await api.client.get(f"/api/v1/deployments/{deployment_id}", headers=api.admin.headers)).json()
                if until(read) or time.monotonic() > deadline:
                    return read
                await asyncio.sleep(0.5)

        healthy = await look(lambda d: d["health"] == "healthy")
        assert healthy["health"] == "healthy" and {s["service"]: s["state"] for s in healthy["service_health"]} == {
            "web": "up",
            "worker": "up",
        }

        def scale(service: str) -> None:
            subprocess.run(
                ["docker", "service", "scale", "--detach", f"{project_name(deployment_id)}_{service}=0"],
                capture_output=True,
                timeout=60,
                check=True,
            )

        scale("web")
        degraded = await look(lambda d: d["health"] == "degraded")
        assert degraded["status"] == "running" and degraded["health"] == "degraded", degraded
        web = next(s for s in degraded["service_health"] if s["service"] == "web")
        assert web["state"] in {"missing", "down"} and web["running"] == 0, web

        scale("worker")
        failed = await look(lambda d: d["status"] == "failed")
        assert failed["status"] == "failed" and failed["health"] == "down", failed
        assert failed["error_message"].startswith("nothing of revision 1 runs any more"), failed["error_message"]
    finally:
        await background_tasks.shutdown()
        if deployment_id is not None:
            swarm_cleanup(local_client, deployment_id)
