"""A stack whose variables change what its container serves, or break it on purpose, for the revision tests
(in-process on SQLite, and with real Celery workers on PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import httpx

from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import http_get, inspect_labelled

#: ``mode``: ok; crash (prints a line, exits 3 a second after it starts); unhealthy (its healthcheck never
#: passes); poison (writes a mark in its volume, then crashes: every revision started after it crashes too).
#: ``delay``: seconds before it serves (its healthcheck passes only then).
REV_STACK = {
    "name": "rev",
    "description": "busybox httpd serving {{ greeting }}, breakable on purpose",
    "template": (
        "services:\n"
        "  web:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        "    command:\n"
        "      - sh\n"
        "      - -c\n"
        "      - >-\n"
        "        if [ -f /data/poison ]; then echo 'fatal: the volume is poisoned'; exit 4; fi;\n"
        "        {{ \"echo 'fatal: DATABASE_URL is not set'; sleep 1; exit 3;\" if mode == 'crash' else '' }}\n"
        "        {{ \"touch /data/poison; echo 'fatal: poisoning'; sleep 1; exit 3;\" if mode == 'poison' else '' }}\n"
        "        sleep {{ delay }}; echo {{ greeting }} > /www/index.html && exec httpd -f -p 80 -h /www\n"
        '    ports: ["127.0.0.1:{{ port }}:80"]\n'
        '    volumes: ["data:/data"]\n'
        "    healthcheck:\n"
        '      test: ["CMD", "sh", "-c", "{% if mode == \'unhealthy\' %}echo \'GET /health 503\'; exit 1'
        '{% else %}test -f /www/index.html{% endif %}"]\n'
        "      interval: 1s\n"
        "      timeout: 2s\n"
        "      retries: 2\n"
        "      start_period: {{ delay }}s\n"
        "  worker:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "while true; do sleep 1; done"]\n'
        "    environment:\n"
        '      API_KEY: "{{ api_key }}"\n'
        "volumes:\n"
        "  data: {}\n"
    ),
    "variables": [
        {"name": "port", "type": "integer", "required": True, "min": 1, "max": 65535},
        {"name": "greeting", "type": "string", "default": "v1"},
        {"name": "mode", "type": "enum", "options": ["ok", "crash", "unhealthy", "poison"], "default": "ok"},
        {"name": "delay", "type": "integer", "default": 0, "min": 0, "max": 60},
        {"name": "api_key", "type": "secret", "default": "{{ generate_password(24) }}"},
    ],
}


async def wait_revision(
    client: httpx.AsyncClient, headers, deployment_id: str, revision: int, statuses: set[str], timeout: float = 90
) -> dict:
    """The deployment once it is at ``revision`` in one of ``statuses``."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["revision"] == revision and body["status"] in statuses:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"deployment {deployment_id} not at revision {revision} in {statuses} after {timeout}s: {body}")


async def revisions(client: httpx.AsyncClient, headers, deployment_id: str) -> list[dict]:
    response = await client.get(f"/api/v1/deployments/{deployment_id}/revisions", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def serves(port: int, timeout: float = 10.0) -> str:
    """What the web service answers (waits a little for a container being replaced)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(port).strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def containers(deployment_id: str) -> dict[str, dict]:
    """Every container labelled with the deployment (running or not): id -> its inspect data."""
    return {c["Id"]: c for c in inspect_labelled(deployment_id)}


def running_services(deployment_id: str) -> dict[str, str]:
    """``service -> container id`` of the deployment's running containers."""
    return {
        c["Config"]["Labels"].get("com.docker.compose.service", "?"): cid
        for cid, c in containers(deployment_id).items()
        if c["State"]["Status"] == "running"
    }


def env_of(container: dict, name: str) -> str | None:
    for entry in container["Config"]["Env"] or []:
        key, _, value = entry.partition("=")
        if key == name:
            return value
    return None
