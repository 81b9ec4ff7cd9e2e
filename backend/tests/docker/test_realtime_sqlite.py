"""The embedded default: SQLite, deployments run inside the backend process, events stay in-process
(``EVENT_BUS=memory``) and still reach its WebSocket clients, its SSE streams and ``windflow logs -f``, in
order, while the API keeps answering."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from backend.tests.celery.test_realtime_deployments import TICKER
from backend.tests.celery_fixtures import REPO_ROOT
from backend.tests.deploy_helpers import force_cleanup, wait_status
from backend.tests.realtime_helpers import WS, Server, sse_events

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]


async def test_in_process_deployment_events_reach_a_websocket_client(db, tmp_path, docker_engine):
    server = await Server.start(db.settings.DATABASE_URL, tmp_path, DEPLOYMENTS_WORKDIR=str(tmp_path / "deployments"))
    deployment_id = None
    try:
        async with server.http() as http:
            setup = await http.post(
                "/api/v1/auth/setup", json={"email": "admin@example.com", "password": "correct-horse-battery", "organization_name": "acme"}
            )
            headers = {"Authorization": f"Bearer {setup.json()['access_token']}"}
            org = (await http.get("/api/v1/auth/me", headers=headers)).json()["default_organization_id"]
            assert (await http.get("/health")).json()["event_bus"]["transport"] == "memory"
            target = await http.post(
                "/api/v1/targets", headers=headers, json={"name": "engine", "type": "docker", "endpoint": docker_engine}
            )
            stack = await http.post("/api/v1/stacks", headers=headers, json=TICKER)
            ws = await WS.open(server, setup.json()["access_token"])
            await ws.subscribe(organization_id=org)
            created = await http.post(
                "/api/v1/deployments",
                headers=headers,
                json={"stack_id": stack.json()["id"], "target_id": target.json()["id"], "name": "ticker-sqlite"},
            )
            assert created.status_code == 201, created.text
            deployment_id = created.json()["id"]
            await ws.send({"type": "subscribe", "deployment_id": deployment_id, "since_seq": 0})
            # an SSE stream and the CLI follow it too; neither may hold SQLite's write lock (one connection,
            # BEGIN IMMEDIATE) while it runs: the runner's writes and the API's would wait for it
            api_token = (await http.post("/api/v1/tokens", json={"name": "cli"}, headers=headers)).json()["token"]
            cli = subprocess.Popen(
                [sys.executable, "-m", "backend.app.cli", "logs", "-f", deployment_id, "--url", server.url],
                env={**os.environ, "WINDFLOW_TOKEN": api_token},
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            sse = asyncio.create_task(
                sse_events(
                    http,
                    f"/api/v1/deployments/{deployment_id}/events",
                    headers,
                    timeout=120,
                    stop=lambda evs: any(
                        e["event"] == "DEPLOYMENT_STATUS_CHANGED" and e["data"]["data"]["new_status"] in ("running", "failed") for e in evs
                    ),
                )
            )
            await asyncio.sleep(0.5)
            started = time.monotonic()
            assert (await http.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).status_code == 200
            assert time.monotonic() - started < 5  # not queued behind a stream's transaction
            done = await ws.next(
                lambda f: f["type"] == "DEPLOYMENT_STATUS_CHANGED" and f["data"]["new_status"] in ("running", "failed"), timeout=120
            )
            assert done["data"]["new_status"] == "running", done["data"]["error_message"]
            events = await sse
            assert events[-1]["data"]["data"]["new_status"] == "running"
            sse_seqs = [l["seq"] for e in events if e["event"] == "DEPLOYMENT_LOGS_UPDATE" for l in e["data"]["data"]["logs"]]
            out, err = await asyncio.to_thread(cli.communicate, timeout=60)
            assert cli.returncode == 0, err
            assert "-> running" in err or err.strip() == "-- running", (out, err)
            assert "Deployment is running" in out, (out, err)
            kinds = [f["type"] for f in ws.frames if f.get("deployment_id") == deployment_id]
            assert kinds[0] == "DEPLOYMENT_CREATED" and kinds[-1] == "DEPLOYMENT_STATUS_CHANGED"
            assert {"DEPLOYMENT_PROGRESS", "DEPLOYMENT_LOGS_UPDATE"} <= set(kinds)
            seqs = [l["seq"] for f in ws.frames if f["type"] == "DEPLOYMENT_LOGS_UPDATE" for l in f["data"]["logs"]]
            assert seqs == list(range(1, len(seqs) + 1)) and seqs
            assert sse_seqs == seqs  # the SSE stream had every line the runner wrote, once, in order
            logs = (await http.get(f"/api/v1/deployments/{deployment_id}/logs", headers=headers)).json()
            assert [l["seq"] for l in logs["items"]] == seqs
            assert (await http.post(f"/api/v1/deployments/{deployment_id}/stop", headers=headers)).status_code == 202
            await wait_status(http, headers, deployment_id, {"stopped"})  # the stop finishes in the background
            assert (await http.delete(f"/api/v1/deployments/{deployment_id}", headers=headers)).status_code == 202
            assert (await ws.next(lambda f: f["type"] == "DEPLOYMENT_DELETED"))["deployment_id"] == deployment_id
            await ws.close()
        assert "database is locked" not in server.output() and "could not store" not in server.output()
    finally:
        server.stop()
        if deployment_id:
            force_cleanup(deployment_id)
