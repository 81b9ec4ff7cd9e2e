"""The embedded default: SQLite, deployments run inside the backend process, events stay in-process
(``EVENT_BUS=memory``) and still reach its WebSocket clients, in order."""

from __future__ import annotations

import pytest

from backend.tests.celery.test_realtime_deployments import TICKER
from backend.tests.deploy_helpers import force_cleanup
from backend.tests.realtime_helpers import WS, Server

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]


async def test_in_process_deployment_events_reach_a_websocket_client(db, tmp_path, docker_engine):
    server = await Server.start(db.settings.DATABASE_URL, tmp_path, DEPLOYMENTS_WORKDIR=str(tmp_path / "deployments"))
    deployment_id = None
    try:
        async with server.http() as http:
            setup = await http.post("/api/v1/auth/setup", json={
                "email": "admin@example.com", "password": "correct-horse-battery", "organization_name": "acme"})
            headers = {"Authorization": f"Bearer {setup.json()['access_token']}"}
            org = (await http.get("/api/v1/auth/me", headers=headers)).json()["default_organization_id"]
            assert (await http.get("/health")).json()["event_bus"]["transport"] == "memory"
            target = await http.post("/api/v1/targets", headers=headers, json={
                "name": "engine", "type": "docker", "endpoint": docker_engine})
            stack = await http.post("/api/v1/stacks", headers=headers, json=TICKER)
            ws = await WS.open(server, setup.json()["access_token"])
            await ws.subscribe(organization_id=org)
            created = await http.post("/api/v1/deployments", headers=headers, json={
                "stack_id": stack.json()["id"], "target_id": target.json()["id"], "name": "ticker-sqlite"})
            assert created.status_code == 201, created.text
            deployment_id = created.json()["id"]
            await ws.send({"type": "subscribe", "deployment_id": deployment_id, "since_seq": 0})
            done = await ws.next(lambda f: f["type"] == "DEPLOYMENT_STATUS_CHANGED"
                                 and f["data"]["new_status"] in ("running", "failed"), timeout=120)
            assert done["data"]["new_status"] == "running", done["data"]["error_message"]
            kinds = [f["type"] for f in ws.frames if f.get("deployment_id") == deployment_id]
            assert kinds[0] == "DEPLOYMENT_CREATED" and kinds[-1] == "DEPLOYMENT_STATUS_CHANGED"
            assert {"DEPLOYMENT_PROGRESS", "DEPLOYMENT_LOGS_UPDATE"} <= set(kinds)
            seqs = [l["seq"] for f in ws.frames if f["type"] == "DEPLOYMENT_LOGS_UPDATE" for l in f["data"]["logs"]]
            assert seqs == list(range(1, len(seqs) + 1)) and seqs
            assert (await http.post(f"/api/v1/deployments/{deployment_id}/stop", headers=headers)).status_code == 200
            assert (await http.delete(f"/api/v1/deployments/{deployment_id}", headers=headers)).status_code == 204
            assert (await ws.next(lambda f: f["type"] == "DEPLOYMENT_DELETED"))["deployment_id"] == deployment_id
            await ws.close()
    finally:
        server.stop()
        if deployment_id:
            force_cleanup(deployment_id)
