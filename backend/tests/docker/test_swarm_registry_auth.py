"""Swarm services on a private registry: the nodes pull with the organisation's credentials, handed over by
``docker stack deploy --with-registry-auth`` from a per-run CLI configuration file. The image is absent from
the node when the stack is deployed (the manager's own pull, ``ensure_images``, is skipped here), so the task
runs only if the node pulled with the credentials. They show in no service inspect, log line or leftover file."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from pathlib import Path

import docker
import pytest

from backend.app.engines.base import DEPLOYMENT_LABEL
from backend.tests.docker.test_private_registry import forget, push
from backend.tests.engine_fixtures import LogCapture, docker_client, force_cleanup, make_spec  # noqa: F401 - fixture
from backend.tests.integration.test_swarm_engine import swarm, swarm_engine, swarm_lock  # noqa: F401 - fixtures
from backend.tests.registry_fixtures import PASSWORD, USERNAME, private_registry  # noqa: F401 - fixture

pytestmark = pytest.mark.docker


def _every_container(client: docker.DockerClient) -> list[dict]:
    """What ``docker inspect`` says of every container on the engine; one that another test removes between
    the list and its inspection is skipped."""
    inspected = []
    for container in client.containers.list(ignore_removed=True, all=True, sparse=True):
        try:
            inspected.append(client.api.inspect_container(container.id))
        except docker.errors.NotFound:
            continue
    return inspected


async def test_swarm_nodes_pull_a_private_image_with_the_organisations_credentials(swarm, private_registry, docker_client, tmp_path):
    reference = push(private_registry, "team/swarm", f"v{os.urandom(3).hex()}")
    compose = f'services:\n  app:\n    image: {reference}\n    init: true\n    command: ["sh", "-c", "while true; do sleep 1; done"]\n'
    spec = make_spec(tmp_path, compose, health_timeout=60)
    spec.registry_auth = {private_registry.server: {"username": USERNAME, "password": PASSWORD, "serveraddress": private_registry.server}}
    engine = swarm_engine(swarm)
    log = LogCapture()
    try:
        await engine.validate(spec, log)
        await engine.prepare(spec, log)
        await engine.create_resources(spec, log)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(reference)  # the node has to pull it itself
        await engine.start_services(spec, log)
        assert "--with-registry-auth" in log.text()
        await engine.wait_healthy(spec, log)  # the task runs: the node pulled the private image
        states = await engine.inspect(spec)
        assert [(s.service, s.state) for s in states] == [("app", "running")]

        token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        services = docker_client.services.list(filters={"label": f"{DEPLOYMENT_LABEL}={spec.deployment_id}"})
        inspected = subprocess.run(["docker", "service", "inspect", *[s.id for s in services]], capture_output=True, text=True, check=True)
        for text in (inspected.stdout, log.text(), json.dumps(_every_container(docker_client))):
            assert PASSWORD not in text and token not in text
        for path in [*Path(tempfile.gettempdir()).glob("windflow-engine-*/**/*"), *spec.workdir.rglob("*")]:
            if path.is_file():  # the per-run configuration went with its run
                assert token.encode() not in path.read_bytes() and PASSWORD.encode() not in path.read_bytes(), path
        host_config = Path.home() / ".docker" / "config.json"
        if host_config.exists():
            assert private_registry.server not in host_config.read_text()
    finally:
        await engine.remove(spec, LogCapture())
        force_cleanup(docker_client, spec)
        forget(reference)
