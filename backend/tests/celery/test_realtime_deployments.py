"""Real deployments seen live: a Celery worker process runs them, the backend process streams them.

The worker publishes over PostgreSQL NOTIFY (database broker) or Redis pub/sub (Redis broker); a WebSocket
client of the backend must see the five event types in order, follow the containers' output (redacted),
see the end of that stream when the deployment stops and the deletion; ``windflow logs -f`` follows the
deployment from a terminal.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from pydantic import TypeAdapter

from backend.app.schemas.events import ServerFrame
from backend.tests.celery.test_celery_execution import REDIS_TEST_DB, celery_settings
from backend.tests.celery_fixtures import REPO_ROOT, settings_env, start_worker, wait_heartbeat, wait_mode
from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import force_cleanup, free_port, wait_status
from backend.tests.realtime_helpers import WS, Server

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]

TICKER = {
    "name": "ticker",
    "template": (
        "services:\n  app:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        "    network_mode: none\n"  # no network to create: the engine's address pools are shared and finite
        '    command: ["sh", "-c", "i=0; while true; do echo \\"tick $$i key={{ api_key }}\\"; i=$$((i+1)); sleep 0.1; done"]\n'
    ),
    "variables": [{"name": "api_key", "type": "secret", "default": "{{ generate_password(24) }}"}],
}
_frames = TypeAdapter(ServerFrame)


@pytest.fixture(params=["database", "redis"])
def broker(request):
    if request.param == "redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_TEST_DB)
        try:
            client.flushdb()
        except redis.ConnectionError as exc:
            from backend.tests.conftest import require_service

            require_service("Redis", str(exc))
        client.close()
    return request.param


async def test_a_celery_deployment_streams_live_to_a_websocket_client(db, tmp_path, docker_engine, broker):
    settings = celery_settings(db, tmp_path, broker, HOST="127.0.0.1", PORT=free_port(), PROMETHEUS_ENABLED=True)
    assert settings.EVENT_BUS == "auto"  # postgres with the database broker, redis with Redis
    worker = start_worker(settings, tmp_path)
    server = Server(settings, tmp_path)
    deployment_id = None
    try:
        await wait_heartbeat("w1@", worker)
        await server.wait_ready()
        async with server.http() as http:
            setup = await http.post(
                "/api/v1/auth/setup", json={"email": "admin@example.com", "password": "correct-horse-battery", "organization_name": "acme"}
            )
            headers = {"Authorization": f"Bearer {setup.json()['access_token']}"}
            # the backend sees the worker on its next presence check (every few seconds); a deployment created
            # before that runs in-process, and this test is about events crossing from a worker process
            await wait_mode(http, headers, "external")
            me = (await http.get("/api/v1/auth/me", headers=headers)).json()
            org = me["default_organization_id"]
            target = await http.post(
                "/api/v1/targets", headers=headers, json={"name": "engine", "type": "docker", "endpoint": docker_engine}
            )
            stack = await http.post("/api/v1/stacks", headers=headers, json=TICKER)
            assert target.status_code == stack.status_code == 201, (target.text, stack.text)
            api_token = (await http.post("/api/v1/tokens", json={"name": "cli"}, headers=headers)).json()["token"]

            ws = await WS.open(server, api_token)
            assert (await ws.subscribe(organization_id=org))["type"] == "subscribed"
            created = await http.post(
                "/api/v1/deployments",
                headers=headers,
                json={"stack_id": stack.json()["id"], "target_id": target.json()["id"], "name": "ticker-1"},
            )
            assert created.status_code == 201, created.text
            deployment_id = created.json()["id"]
            # the CLI follows it from a terminal, until it settles
            cli = subprocess.Popen(
                [sys.executable, "-m", "backend.app.cli", "logs", "-f", deployment_id, "--url", server.url],
                env={**settings_env(settings), "WINDFLOW_TOKEN": api_token},
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            await ws.send({"type": "subscribe", "deployment_id": deployment_id, "since_seq": 0})
            running = await ws.next(
                lambda f: f["type"] == "DEPLOYMENT_STATUS_CHANGED" and f["data"]["new_status"] in ("running", "failed"), timeout=120
            )
            assert running["data"]["new_status"] == "running", running

            mine = [f for f in ws.frames if f.get("deployment_id") == deployment_id and f["type"].startswith("DEPLOYMENT_")]
            for frame in mine:
                _frames.validate_python(frame)  # every frame matches its OpenAPI model
            kinds = [f["type"] for f in mine]
            assert kinds[0] == "DEPLOYMENT_CREATED" and mine[0]["data"]["name"] == "ticker-1"
            assert mine[0]["data"]["variables"]["api_key"] == "***"
            statuses = [(f["data"]["old_status"], f["data"]["new_status"]) for f in mine if f["type"] == "DEPLOYMENT_STATUS_CHANGED"]
            assert statuses == [("pending", "deploying"), ("deploying", "running")]
            first_progress, first_logs = kinds.index("DEPLOYMENT_PROGRESS"), kinds.index("DEPLOYMENT_LOGS_UPDATE")
            assert kinds.index("DEPLOYMENT_STATUS_CHANGED") < first_progress and first_logs < len(kinds) - 1
            assert kinds[-1] == "DEPLOYMENT_STATUS_CHANGED"
            seqs = [l["seq"] for f in mine if f["type"] == "DEPLOYMENT_LOGS_UPDATE" for l in f["data"]["logs"]]
            assert seqs == list(range(1, len(seqs) + 1)) and seqs  # no gap, no duplicate (catch-up + live)

            out, err = await asyncio.to_thread(cli.communicate, timeout=60)
            assert cli.returncode == 0, err
            # it either saw the status change live or found the deployment already running
            assert "-> running" in err or err.strip() == "-- running", (out, err)
            assert "Deployment is running" in out, (out, err)

            # the containers' own output, labelled and redacted, while it runs
            subscribed = await ws.subscribe(deployment_id=deployment_id, stream="services", tail=3)
            assert subscribed["type"] == "subscribed" and subscribed["stream"] == "services", subscribed
            service_lines = []
            while len(service_lines) < 10:
                frame = await ws.next(lambda f: f["type"] == "SERVICE_LOGS", timeout=30)
                _frames.validate_python(frame)
                service_lines += frame["data"]["lines"]
            assert {l["service"] for l in service_lines} == {"app"}
            assert all(l["message"].startswith("tick ") and l["message"].endswith("key=***") for l in service_lines), service_lines[:3]
            ticks = [int(l["message"].split()[1]) for l in service_lines]
            assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # in order, none lost

            stopped = await http.post(f"/api/v1/deployments/{deployment_id}/stop", headers=headers)
            assert stopped.status_code == 202, stopped.text
            end = await ws.next(lambda f: f["type"] == "SERVICE_LOGS_END", timeout=60)
            assert "stopp" in end["data"]["reason"], end
            # its code and what it quotes, which the UI words in the user's language (the stop runs in the
            # background: the stream ends when the status leaves running, stopping; or the containers' streams
            # end first)
            assert (end["data"]["code"], end["data"]["params"]) in (
                ("deployment_left_running", {"status": "stopping"}),
                ("deployment_left_running", {"status": "stopped"}),
                ("containers_stopped", {}),
            ), end
            _frames.validate_python(end)
            await wait_status(http, headers, deployment_id, {"stopped"})  # the worker finishes the stop
            deleted = await http.delete(f"/api/v1/deployments/{deployment_id}", headers=headers)
            assert deleted.status_code == 202, deleted.text
            gone = await ws.next(lambda f: f["type"] == "DEPLOYMENT_DELETED", timeout=30)
            assert gone["data"] == {"name": "ticker-1"}
            await ws.close()
            metrics = (await http.get("/metrics")).text
            assert 'windflow_events_published_total{type="DEPLOYMENT_CREATED"} 1.0' in metrics
            assert "windflow_event_latency_seconds_bucket" in metrics
        assert "emit_deployment_created: deployment" in server.output()
        assert "WebSocket connected" in server.output()
        assert f"emit_deployment_status_changed: deployment {deployment_id}" in worker.output()
    finally:
        server.stop()
        worker.stop()
        if deployment_id:
            force_cleanup(deployment_id)
