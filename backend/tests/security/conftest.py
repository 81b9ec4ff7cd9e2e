"""A hostile tenant's world: a superuser, an organisation admin and an operator in one organisation, the
host's engine as target ``local`` (owned by that organisation, its policy by the superuser)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from backend.app.main import create_app
from backend.app.runtime import background_tasks
from backend.app.services.stacks.templating import documents
from backend.tests.conftest import make_settings
from backend.tests.deploy_helpers import force_cleanup
from backend.tests.helpers import Actor, add_member, create_user, default_org, setup_admin


@dataclass
class World:
    client: httpx.AsyncClient
    settings: object
    superuser: Actor
    org_admin: Actor
    operator: Actor
    org_id: str
    local_id: str
    created: list[str]

    async def stack(self, template: str, variables: list | None = None, *, name: str = "s", expect: int = 201) -> dict:
        response = await self.client.post(
            "/api/v1/stacks",
            json={"name": name, "template": template, "variables": variables or []},
            headers=self.operator.headers,
        )
        assert response.status_code == expect, response.text
        return response.json()

    async def deploy(self, stack_id: str, variables: dict | None = None, *, expect: int = 201) -> dict:
        response = await self.client.post(
            "/api/v1/deployments",
            json={"stack_id": stack_id, "target_id": self.local_id, "variables": variables or {}},
            headers=self.operator.headers,
        )
        assert response.status_code == expect, response.text
        body = response.json()
        if expect == 201:
            self.created.append(body["id"])
        return body

    async def set_policy(self, policy: dict | None, actor: Actor | None = None, target_id: str | None = None) -> httpx.Response:
        return await self.client.patch(
            f"/api/v1/targets/{target_id or self.local_id}",
            json={"compose_policy": policy},
            headers=(actor or self.superuser).headers,
        )


@pytest.fixture
async def world(db, tmp_path):
    settings = make_settings(
        db.settings.DATABASE_URL,
        DEPLOYMENTS_WORKDIR=tmp_path / "deployments",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=30,
        DEPLOYMENT_RETRY_BACKOFF_SECONDS=0.2,
    )
    app = create_app(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    superuser = await setup_admin(client)
    org_id = await default_org(client, superuser)
    org_admin = await create_user(client, superuser, "org-admin@example.com")
    operator = await create_user(client, superuser, "operator@example.com")
    await add_member(client, superuser, org_id, org_admin, "admin")
    await add_member(client, superuser, org_id, operator, "operator")
    targets = (await client.get("/api/v1/targets", headers=superuser.headers)).json()["items"]
    local = next((t for t in targets if t["name"] == "local"), None)
    if local is None:  # setup creates it when the host has a Docker socket; make sure of it either way
        made = await client.post(
            "/api/v1/targets",
            json={"name": "local", "endpoint": "unix:///var/run/docker.sock"},
            headers=superuser.headers,
        )
        assert made.status_code == 201, made.text
        local = made.json()
    environment = World(client, settings, superuser, org_admin, operator, org_id, local["id"], [])
    try:
        yield environment
    finally:
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


@pytest.fixture
def tool_runs(monkeypatch) -> list[str]:
    """The documents the compose tool was run on (``docker compose config``), in order."""
    runs: list[str] = []
    original = documents.check_document

    async def counting(document, **kwargs):
        runs.append(document)
        return await original(document, **kwargs)

    monkeypatch.setattr(documents, "check_document", counting)
    return runs
