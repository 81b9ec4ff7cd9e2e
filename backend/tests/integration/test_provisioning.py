"""A new organisation starts with the stack catalogue (and the local engine when the host has one)."""

from __future__ import annotations

import httpx

from backend.app.main import create_app
from backend.tests.conftest import make_settings
from backend.tests.helpers import setup_admin


async def test_setup_and_new_organizations_get_the_catalogue(db):
    settings = make_settings(db.settings.DATABASE_URL, STACKS_CATALOG_ENABLED=True)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        admin = await setup_admin(client)
        stacks = (await client.get("/api/v1/stacks", headers=admin.headers)).json()["items"]
        names = {s["name"] for s in stacks}
        assert {"nginx", "postgresql", "redis"} <= names and all(s["source"] == "catalog" for s in stacks)

        org = await client.post("/api/v1/organizations", json={"name": "second"}, headers=admin.headers)
        assert org.status_code == 201, org.text
        second = (await client.get("/api/v1/stacks", params={"organization_id": org.json()["id"]}, headers=admin.headers)).json()["items"]
        assert {s["name"] for s in second} == names
