"""The account and platform lists live over ``WS /api/v1/ws`` (a real backend process, real clients): an API
token's ``RESOURCE_CHANGED`` reaches its owner's connections only, a user's or an organisation's reaches
superusers' only, with no subscription; a user made superuser starts hearing the platform's within the
access refresh, and one demoted stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from backend.tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, Actor, create_user
from backend.tests.realtime_helpers import WS, Server

pytestmark = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)


@pytest.fixture(scope="module")
async def server(db_backend, tmp_path_factory) -> AsyncIterator[Server]:
    started = await Server.start(db_backend.settings.DATABASE_URL, tmp_path_factory.mktemp("realtime-accounts"), EVENT_BUS="postgres")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def http(server: Server, db) -> AsyncIterator[httpx.AsyncClient]:
    async with server.http() as client:
        yield client


def changed(resource: str):
    return lambda f: f["type"] == "RESOURCE_CHANGED" and f["data"]["resource"] == resource


async def nothing(ws: WS, resource: str) -> None:
    with pytest.raises(TimeoutError):
        await ws.next(changed(resource), timeout=1.5)


async def test_account_events_reach_whom_they_concern_and_nobody_else(server, http) -> None:
    setup = await http.post("/api/v1/auth/setup", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": "acme"})
    admin = Actor(ADMIN_EMAIL, ADMIN_PASSWORD, setup.json()["access_token"], setup.json()["refresh_token"])
    ada = await create_user(http, admin, "ada@example.com")
    bob = await create_user(http, admin, "bob@example.com")
    bob_id = (await http.get("/api/v1/auth/me", headers=bob.headers)).json()["id"]
    admin_ws, ada_ws, bob_ws = (
        await WS.open(server, admin.access_token),
        await WS.open(server, ada.access_token),
        await WS.open(server, bob.access_token),
    )
    ada_ws2 = await WS.open(server, ada.access_token)  # another tab of hers

    # Ada's token: her connections hear it (no subscription), nobody else's, not even a superuser's.
    token = (await http.post("/api/v1/tokens", json={"name": "ci"}, headers=ada.headers)).json()
    for ws in (ada_ws, ada_ws2):
        frame = await ws.next(changed("token"))
        assert frame["organization_id"] == "" and frame["data"]["id"] == token["id"], frame
        assert (frame["data"]["action"], frame["data"]["name"]) == ("created", "ci")
    assert (await http.delete(f"/api/v1/tokens/{token['id']}", headers=ada.headers)).status_code == 204
    assert (await ada_ws.next(changed("token")))["data"]["action"] == "updated"
    await nothing(admin_ws, "token")
    await nothing(bob_ws, "token")

    # A user and an organisation: superusers hear them, others do not.
    carol = await http.post("/api/v1/users", json={"email": "carol@example.com", "password": "long-enough-1"}, headers=admin.headers)
    assert (await admin_ws.next(changed("user")))["data"]["id"] == carol.json()["id"]
    org = (await http.post("/api/v1/organizations", json={"name": "research"}, headers=admin.headers)).json()
    assert (await admin_ws.next(changed("organization")))["data"]["id"] == org["id"]
    await nothing(ada_ws, "user")
    await nothing(bob_ws, "organization")

    # Bob made superuser: within the access refresh (2 s) his open connection hears the platform's events.
    assert (await http.patch(f"/api/v1/users/{bob_id}", json={"is_superuser": True}, headers=admin.headers)).status_code == 200
    await admin_ws.next(changed("user"))  # (that change itself)
    for attempt in range(20):  # each new user is an event; the first ones may precede his access refresh
        await http.post("/api/v1/users", json={"email": f"dave{attempt}@example.com", "password": "long-enough-1"}, headers=admin.headers)
        try:
            heard = await bob_ws.next(changed("user"), timeout=0.5)
            break
        except TimeoutError:
            continue
    else:
        raise AssertionError("a new superuser's connection never heard of new users")
    assert heard["data"]["name"].startswith("dave")
    # and demoted again: he stops hearing them
    assert (await http.patch(f"/api/v1/users/{bob_id}", json={"is_superuser": False}, headers=admin.headers)).status_code == 200
    await http.post("/api/v1/users", json={"email": "erin@example.com", "password": "long-enough-1"}, headers=admin.headers)
    await asyncio.sleep(2.5)  # the access refresh
    while True:  # what was queued before the refresh
        try:
            await bob_ws.next(changed("user"), timeout=0.3)
        except TimeoutError:
            break
    await http.post("/api/v1/users", json={"email": "frank@example.com", "password": "long-enough-1"}, headers=admin.headers)
    assert await admin_ws.next(lambda f: changed("user")(f) and f["data"]["name"] == "frank@example.com")
    await nothing(bob_ws, "user")
    for ws in (admin_ws, ada_ws, ada_ws2, bob_ws):
        await ws.close()


async def test_an_organisation_limited_token_subscribes_to_its_organisation_only(server, http) -> None:
    """A superuser's API token limited to ``acme`` (read scope): subscribing to ``acme`` works, to another
    organisation is refused as for an outsider, and it hears no platform event (its owner's superuser rights
    stop at the token's organisation)."""
    setup = await http.post("/api/v1/auth/setup", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": "acme"})
    admin = Actor(ADMIN_EMAIL, ADMIN_PASSWORD, setup.json()["access_token"], setup.json()["refresh_token"])
    orgs = (await http.get("/api/v1/organizations", headers=admin.headers)).json()["items"]
    acme = orgs[0]["id"]
    beta = (await http.post("/api/v1/organizations", json={"name": "beta"}, headers=admin.headers)).json()["id"]
    body = {"name": "ci", "scopes": ["read"], "organization_id": acme}
    token = (await http.post("/api/v1/tokens", json=body, headers=admin.headers)).json()["token"]
    limited, full = await WS.open(server, token), await WS.open(server, admin.access_token)
    assert (await limited.subscribe(organization_id=acme))["type"] == "subscribed"
    refused = await limited.subscribe(organization_id=beta)
    assert (refused["type"], refused["code"]) == ("error", "organization_not_found"), refused
    template = "services:\n  web:\n    image: nginx:alpine\n"
    stack = await http.post("/api/v1/stacks", json={"name": "s", "template": template, "organization_id": acme}, headers=admin.headers)
    assert stack.status_code == 201, stack.text
    assert (await limited.next(changed("stack")))["organization_id"] == acme
    await http.post("/api/v1/users", json={"email": "gil@example.com", "password": "long-enough-1"}, headers=admin.headers)
    assert await full.next(changed("user"))
    await nothing(limited, "user")
    for ws in (limited, full):
        await ws.close()
