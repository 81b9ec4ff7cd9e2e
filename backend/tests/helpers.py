"""Small helpers that drive the HTTP API the way a client would."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct-horse-battery"


@dataclass
class Actor:
    email: str
    password: str
    access_token: str
    refresh_token: str
    user_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def setup_admin(client: httpx.AsyncClient, organization_name: str = "acme") -> Actor:
    response = await client.post(
        "/api/v1/auth/setup",
        json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": organization_name},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    actor = Actor(ADMIN_EMAIL, ADMIN_PASSWORD, body["access_token"], body["refresh_token"])
    me = await client.get("/api/v1/auth/me", headers=actor.headers)
    actor.user_id = me.json()["id"]
    return actor


async def login(client: httpx.AsyncClient, email: str, password: str) -> Actor:
    response = await client.post("/api/v1/auth/login", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    actor = Actor(email, password, body["access_token"], body["refresh_token"])
    me = await client.get("/api/v1/auth/me", headers=actor.headers)
    actor.user_id = me.json()["id"]
    return actor


async def create_user(client: httpx.AsyncClient, admin: Actor, email: str, password: str = "member-password-1") -> Actor:
    response = await client.post("/api/v1/users", json={"email": email, "password": password}, headers=admin.headers)
    assert response.status_code == 201, response.text
    return await login(client, email, password)


async def default_org(client: httpx.AsyncClient, actor: Actor) -> str:
    me = await client.get("/api/v1/auth/me", headers=actor.headers)
    return me.json()["default_organization_id"]


async def add_member(client: httpx.AsyncClient, admin: Actor, org_id: str, user: Actor, role: str) -> None:
    response = await client.post(f"/api/v1/organizations/{org_id}/members", json={"email": user.email, "role": role}, headers=admin.headers)
    assert response.status_code == 201, response.text
