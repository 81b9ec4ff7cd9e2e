"""An automatic rollback as a WebSocket client and an SSE stream see it: a backend process on SQLite (events
in process), a revision that crashes at start, ``DEPLOYMENT_ROLLED_BACK`` and every status with its
revision, on both."""

from __future__ import annotations

import asyncio

import pytest

from backend.tests.deploy_helpers import force_cleanup, free_port
from backend.tests.realtime_helpers import WS, Server, sse_events
from backend.tests.revision_helpers import REV_STACK

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]


def _rolled_back_and_running(frames: list[dict], revision: int) -> bool:
    return any(
        f["type"] == "DEPLOYMENT_STATUS_CHANGED" and f["data"]["revision"] == revision and f["data"]["new_status"] in ("running", "failed")
        for f in frames
    )


async def test_an_automatic_rollback_reaches_websocket_and_sse_clients(db, tmp_path, docker_engine):
    server = await Server.start(db.settings.DATABASE_URL, tmp_path, DEPLOYMENTS_WORKDIR=str(tmp_path / "deployments"))
    deployment_id = None
    try:
        async with server.http() as http:
            setup = await http.post(
                "/api/v1/auth/setup", json={"email": "admin@example.com", "password": "correct-horse-battery", "organization_name": "acme"}
            )
            headers = {"Authorization": f"Bearer {setup.json()['access_token']}"}
            org = (await http.get("/api/v1/auth/me", headers=headers)).json()["default_organization_id"]
            target = await http.post(
                "/api/v1/targets", headers=headers, json={"name": "engine", "type": "docker", "endpoint": docker_engine}
            )
            stack = await http.post("/api/v1/stacks", headers=headers, json=REV_STACK)
            created = await http.post(
                "/api/v1/deployments",
                headers=headers,
                json={"stack_id": stack.json()["id"], "target_id": target.json()["id"], "variables": {"port": free_port()}},
            )
            assert created.status_code == 201, created.text
            deployment_id = created.json()["id"]
            ws = await WS.open(server, setup.json()["access_token"])
            await ws.subscribe(organization_id=org)
            await ws.subscribe(deployment_id=deployment_id)
            await ws.next(lambda f: f["type"] == "DEPLOYMENT_STATUS_CHANGED" and f["data"]["new_status"] == "running", timeout=90)

            sse = asyncio.create_task(
                sse_events(
                    http,
                    f"/api/v1/deployments/{deployment_id}/events?since_seq=999999",
                    headers,
                    timeout=120,
                    stop=lambda evs: _rolled_back_and_running([e["data"] for e in evs], 3),
                )
            )
            await asyncio.sleep(0.5)
            changed = await http.post(
                f"/api/v1/deployments/{deployment_id}/revisions", headers=headers, json={"variables": {"mode": "crash"}}
            )
            assert changed.status_code == 201, changed.text
            await ws.next(lambda f: _rolled_back_and_running([f], 3), timeout=120)
            streamed = [e["data"] for e in await sse]

            for frames in (ws.frames, streamed):
                mine = [f for f in frames if f.get("deployment_id") == deployment_id]
                (rolled_back,) = [f for f in mine if f["type"] == "DEPLOYMENT_ROLLED_BACK"]
                data = rolled_back["data"]
                assert (data["from_revision"], data["to_revision"], data["revision"]) == (2, 1, 3)
                assert data["reason"].startswith("service web exited with code 3")
                statuses = [(f["data"]["revision"], f["data"]["new_status"]) for f in mine if f["type"] == "DEPLOYMENT_STATUS_CHANGED"]
                tail = statuses[statuses.index((2, "pending")) :] if (2, "pending") in statuses else statuses
                assert tail == [(2, "pending"), (2, "deploying"), (3, "pending"), (3, "deploying"), (3, "running")], statuses
                assert (
                    mine.index(rolled_back)
                    < [i for i, f in enumerate(mine) if f["type"] == "DEPLOYMENT_STATUS_CHANGED" and f["data"]["new_status"] == "running"][
                        -1
                    ]
                )
            await ws.close()
    finally:
        server.stop()
        if deployment_id:
            force_cleanup(deployment_id)
