"""Helpers for the Docker driver tests (real engine): unique specs, captured logs, label checks."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from backend.app.engines.base import DEPLOYMENT_LABEL, MANAGED_LABEL, DeploySpec, TargetConnection
from backend.app.models.enums import LogLevel, TargetType
from backend.tests.conftest import TEST_IMAGE

HTTPD = 'sh -c "echo hello-$$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www"'


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LogCapture:
    """An async log sink that keeps every line."""

    lines: list[tuple[LogLevel, str]] = field(default_factory=list)

    async def __call__(self, level: LogLevel, message: str) -> None:
        self.lines.append((level, message))

    def text(self) -> str:
        return "\n".join(message for _, message in self.lines)

    def at(self, level: LogLevel) -> list[str]:
        return [message for lvl, message in self.lines if lvl == level]


def make_spec(tmp_path: Path, compose: str, *, health_timeout: float = 30.0, stable_seconds: float = 0.0) -> DeploySpec:
    deployment_id = str(uuid.uuid4())
    return DeploySpec(
        deployment_id=deployment_id,
        compose=compose,
        workdir=tmp_path / deployment_id,
        health_timeout=health_timeout,
        stable_seconds=stable_seconds,
    )


def local_connection(endpoint: str, kind: TargetType = TargetType.DOCKER) -> TargetConnection:
    return TargetConnection(type=kind, endpoint=endpoint)


def two_service_stack(port: int) -> str:
    """busybox httpd publishing ``port`` on 127.0.0.1 with a named volume, plus a worker that reaches it
    by service name (so the deployment network and its DNS are exercised)."""
    return f"""
services:
  web:
    image: {TEST_IMAGE}
    init: true
    command: {HTTPD}
    ports:
      - "127.0.0.1:{port}:80"
    labels:
      - "com.example.role=frontend"
    volumes:
      - data:/data
    healthcheck:
      test: ["CMD", "sh", "-c", "test -f /www/index.html"]
      interval: 1s
      retries: 30
  worker:
    image: {TEST_IMAGE}
    init: true
    command: ["sh", "-c", "while true; do wget -q -O /tmp/page http://web/ ; sleep 1; done"]
    labels:
      com.example.role: worker
    depends_on:
      - web
volumes:
  data:
    labels:
      com.example.keep: "yes"
"""


def http_get(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def docker_client(docker_engine: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_engine, version="auto")
    try:
        yield client
    finally:
        client.close()


def labelled_objects(client: docker.DockerClient, spec: DeploySpec) -> dict[str, list[str]]:
    flt = {"label": f"{DEPLOYMENT_LABEL}={spec.deployment_id}"}
    return {
        "containers": [c.name for c in client.containers.list(ignore_removed=True, all=True, filters=flt)],
        "networks": [n.name for n in client.networks.list(filters=flt)],
        "volumes": [v.name for v in client.volumes.list(filters=flt)],
    }


def objects_named_after(client: docker.DockerClient, spec: DeploySpec) -> dict[str, list[dict[str, str]]]:
    """Every container, network and volume whose name carries the project name, with its labels: what a
    deployment created, whether or not it remembered to label it."""
    prefix = spec.project
    # filtered by the engine: the SDK inspects each listed object, and another test's may be gone by then
    by_name = {"name": prefix}
    containers = [c for c in client.containers.list(ignore_removed=True, all=True, filters=by_name) if c.name.startswith(prefix)]
    networks = [client.networks.get(n.id) for n in client.networks.list(filters=by_name) if n.name.startswith(prefix)]
    volumes = [v for v in client.volumes.list() if v.name.startswith(prefix)]
    return {
        "containers": [dict(c.labels, _name=c.name) for c in containers],
        "networks": [dict(n.attrs.get("Labels") or {}, _name=n.name) for n in networks],
        "volumes": [dict(v.attrs.get("Labels") or {}, _name=v.name) for v in volumes],
    }


def assert_all_labelled(objects: dict[str, list[dict[str, str]]], spec: DeploySpec) -> None:
    for kind, items in objects.items():
        for labels in items:
            assert labels.get(MANAGED_LABEL) == "true", (kind, labels)
            assert labels.get(DEPLOYMENT_LABEL) == spec.deployment_id, (kind, labels)


def force_cleanup(client: docker.DockerClient, spec: DeploySpec) -> None:
    """Last-resort cleanup after a test, independent of the driver under test."""
    flt = {"label": f"{DEPLOYMENT_LABEL}={spec.deployment_id}"}
    for service in client.services.list(filters=flt) if _swarm_active(client) else []:
        service.remove()
    for container in client.containers.list(ignore_removed=True, all=True, filters=flt):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=flt):
        subprocess.run(["docker", "network", "rm", network.id], capture_output=True, check=False)
    for volume in client.volumes.list(filters=flt):
        subprocess.run(["docker", "volume", "rm", "-f", volume.name], capture_output=True, check=False)


def _swarm_active(client: docker.DockerClient) -> bool:
    return bool((client.info().get("Swarm") or {}).get("ControlAvailable"))
