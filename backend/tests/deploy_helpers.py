"""Helpers for end-to-end deployment tests against the real Docker engine."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.request

import httpx

from backend.tests.conftest import TEST_IMAGE

WEB_STACK = {
    "name": "web",
    "description": "busybox httpd + a worker",
    "template": (
        "services:\n"
        "  web:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "echo {{ greeting }} > /www/index.html && exec httpd -f -p 80 -h /www"]\n'
        '    ports: ["127.0.0.1:{{ port }}:80"]\n'
        "  worker:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "while true; do sleep 1; done"]\n'
        "    environment:\n"
        '      API_KEY: "{{ api_key }}"\n'
    ),
    "variables": [
        {"name": "port", "type": "integer", "required": True, "min": 1, "max": 65535},
        {"name": "greeting", "type": "string", "default": "hello-windflow"},
        {"name": "api_key", "type": "secret", "default": "{{ generate_password(24) }}"},
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as response:
        return response.read().decode()


def labelled(kind: str, deployment_id: str) -> list[str]:
    """IDs of Docker objects (container/network/volume) labelled with the deployment id."""
    args = {"container": ["ps", "-aq"], "network": ["network", "ls", "-q"], "volume": ["volume", "ls", "-q"]}[kind]
    out = subprocess.run(
        ["docker", *args, "--filter", f"label=windflow.deployment_id={deployment_id}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.split()


def inspect_labelled(deployment_id: str) -> list[dict]:
    """The inspect data of every container labelled with the deployment (running or not).

    A container removed between the listing and the inspect (a rollout replacing it, a stop) is left out: docker
    prints the others and exits 1 with "No such object" for it. Any other failure is raised."""
    ids = labelled("container", deployment_id)
    if not ids:
        return []
    out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=30)
    problems = [line for line in out.stderr.splitlines() if line.strip() and "No such object" not in line]
    if out.returncode != 0 and (problems or not out.stdout.strip()):
        raise subprocess.CalledProcessError(out.returncode, out.args, out.stdout, out.stderr)
    return json.loads(out.stdout or "[]")


def container_labels(deployment_id: str) -> list[dict]:
    return [c["Config"]["Labels"] for c in inspect_labelled(deployment_id)]


def force_cleanup(deployment_id: str) -> None:
    for kind, rm in (("container", ["rm", "-f"]), ("network", ["network", "rm"]), ("volume", ["volume", "rm", "-f"])):
        ids = labelled(kind, deployment_id)
        if ids:
            subprocess.run(["docker", *rm, *ids], capture_output=True, timeout=60)


async def wait_status(client: httpx.AsyncClient, headers, deployment_id: str, statuses: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"deployment {deployment_id} still {body.get('status')} after {timeout}s: {body}")


async def wait_deleted(client: httpx.AsyncClient, headers, deployment_id: str, timeout: float = 90) -> None:
    """Wait for a ``deleting`` deployment's background teardown to drop its row (404); fail if it settles
    otherwise (``failed``: the engine refused)."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)
        if response.status_code == 404:
            return
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "deleting", f"the delete settled {body['status']}: {body.get('error_message')}"
        await asyncio.sleep(0.2)
    raise AssertionError(f"deployment {deployment_id} still there after {timeout}s: {body}")


async def all_logs(client: httpx.AsyncClient, headers, deployment_id: str) -> list[dict]:
    response = await client.get(f"/api/v1/deployments/{deployment_id}/logs", headers=headers, params={"since_seq": 0})
    assert response.status_code == 200, response.text
    return response.json()["items"]
