"""The swarm driver against the real engine in swarm mode (single node, no routing mesh: host-mode ports)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator

import docker
import pytest

from backend.app.engines import SwarmEngine, engine_for
from backend.app.engines.base import DEPLOYMENT_LABEL, MANAGED_LABEL, EngineError
from backend.app.models.enums import LogLevel, TargetType
from backend.tests.conftest import TEST_IMAGE, require_service
from backend.tests.engine_fixtures import (
    LogCapture,
    assert_all_labelled,
    docker_client,  # noqa: F401 - fixture
    force_cleanup,
    free_port,
    http_get,
    labelled_objects,
    local_connection,
    make_spec,
    objects_named_after,
    two_service_stack,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def swarm_lock(docker_engine: str) -> Iterator[str]:
    """Test sessions sharing this engine take turns at swarm mode: one's `swarm leave` must not pull the
    swarm from under another's deployment."""
    with open(os.path.join(tempfile.gettempdir(), "windflow-swarm-tests.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield docker_engine  # closing the file releases the lock


@pytest.fixture(scope="module")
def swarm(swarm_lock: str) -> Iterator[str]:
    """A swarm manager on the local engine. Initialised here only when the engine is not in a swarm
    yet, and then left again (with --force) at the end; a swarm that already existed is left alone."""
    state = subprocess.run(
        ["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], capture_output=True, text=True, timeout=20
    ).stdout.strip()
    initialised = False
    had_gwbridge = subprocess.run(["docker", "network", "inspect", "docker_gwbridge"], capture_output=True, timeout=20).returncode == 0
    if state != "active":
        init = subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], capture_output=True, text=True, timeout=60)
        if init.returncode != 0:
            require_service("Docker swarm", init.stderr.strip())
        initialised = True
    try:
        yield swarm_lock
    finally:
        if initialised:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=60, check=False)
            if not had_gwbridge:
                subprocess.run(["docker", "network", "rm", "docker_gwbridge"], capture_output=True, timeout=30, check=False)


def swarm_engine(endpoint: str) -> SwarmEngine:
    engine = engine_for(local_connection(endpoint, TargetType.SWARM))
    assert isinstance(engine, SwarmEngine)
    return engine


def service_labels(client: docker.DockerClient, spec) -> dict[str, dict[str, str]]:
    services = client.services.list(filters={"label": f"{DEPLOYMENT_LABEL}={spec.deployment_id}"})
    return {s.name.removeprefix(spec.project + "_"): s.attrs["Spec"].get("Labels") or {} for s in services}


async def test_swarm_driver_refuses_a_non_manager(swarm_lock, tmp_path):
    """On an engine that is not a swarm manager, the swarm driver fails with a clear permanent error."""
    state = subprocess.run(
        ["docker", "info", "--format", "{{.Swarm.ControlAvailable}}"], capture_output=True, text=True, timeout=20
    ).stdout.strip()
    if state == "true":
        pytest.skip("the local engine is a swarm manager (this check needs one that is not)")
    engine = swarm_engine(swarm_lock)
    with pytest.raises(EngineError) as caught:
        await engine.create_resources(make_spec(tmp_path, f"services:\n  a:\n    image: {TEST_IMAGE}\n"), LogCapture())
    assert caught.value.transient is False
    assert "is not a swarm manager" in caught.value.message


async def test_stack_lifecycle_with_host_mode_port(swarm, docker_client, tmp_path):
    engine = swarm_engine(swarm)
    port = free_port()
    spec = make_spec(tmp_path, two_service_stack(port), health_timeout=45)
    log = LogCapture()
    try:
        info = await engine.test_connection()
        assert info["swarm_manager"] is True

        await engine.validate(spec, log)
        # swarm cannot bind 127.0.0.1: it says so, and publishes in host mode instead of through the mesh
        assert any("cannot bind a host IP" in line for line in log.at(LogLevel.WARNING))
        await engine.prepare(spec, log)
        prepared = (spec.workdir / "docker-compose.yml").read_text()
        assert "mode: host" in prepared
        await engine.ensure_images(spec, log)
        await engine.create_resources(spec, log)
        await engine.start_services(spec, log)
        assert any("Creating service" in line for line in log.at(LogLevel.INFO)), log.text()
        await engine.wait_healthy(spec, log)

        assert http_get(port).startswith("hello-")
        states = await engine.inspect(spec)
        assert sorted((s.service, s.state) for s in states) == [("web", "running"), ("worker", "running")]

        # services, task containers, the stack network and the volume carry both labels
        labels = service_labels(docker_client, spec)
        assert set(labels) == {"web", "worker"}
        for service_labels_ in labels.values():
            assert service_labels_[MANAGED_LABEL] == "true"
            assert service_labels_[DEPLOYMENT_LABEL] == spec.deployment_id
        objects = objects_named_after(docker_client, spec)
        assert len(objects["containers"]) == 2
        assert [n["_name"] for n in objects["networks"]] == [f"{spec.project}_default"]
        assert [v["_name"] for v in objects["volumes"]] == [f"{spec.project}_data"]
        assert_all_labelled(objects, spec)

        await engine.stop(spec, log)
        assert docker_client.containers.list(ignore_removed=True, filters={"label": f"{DEPLOYMENT_LABEL}={spec.deployment_id}"}) == []
        assert {name: lbl.get("windflow.replicas") for name, lbl in service_labels(docker_client, spec).items()} == {
            "web": "1",
            "worker": "1",
        }
        with pytest.raises(OSError):
            http_get(port)

        await engine.start(spec, log)
        assert http_get(port).startswith("hello-")
        assert "windflow.replicas" not in service_labels(docker_client, spec)["web"]

        await engine.remove(spec, log)
        assert labelled_objects(docker_client, spec) == {"containers": [], "networks": [], "volumes": []}
        assert service_labels(docker_client, spec) == {}
    finally:
        await engine.remove(spec, LogCapture())
        force_cleanup(docker_client, spec)


async def test_missing_image_in_swarm_is_permanent(swarm, docker_client, tmp_path):
    image = f"windflow-test/missing-{os.urandom(4).hex()}:latest"
    spec = make_spec(
        tmp_path,
        f"""
services:
  ok:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
  broken:
    image: {image}
""",
        health_timeout=45,
    )
    engine = swarm_engine(swarm)
    log = LogCapture()
    try:
        await engine.validate(spec, log)
        await engine.prepare(spec, log)
        await engine.ensure_images(spec, log)  # only a warning: swarm nodes pull for themselves
        assert any(image in line for line in log.at(LogLevel.WARNING))
        await engine.create_resources(spec, log)
        await engine.start_services(spec, log)  # stack deploy itself does not notice
        with pytest.raises(EngineError) as caught:
            await engine.wait_healthy(spec, log)
        assert caught.value.transient is False
        assert caught.value.message.startswith("service broken: task rejected: No such image: " + image)
    finally:
        await engine.remove(spec, log)
        assert labelled_objects(docker_client, spec) == {"containers": [], "networks": [], "volumes": []}
        force_cleanup(docker_client, spec)
