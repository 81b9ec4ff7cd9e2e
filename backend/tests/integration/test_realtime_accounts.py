"""The account and platform lists live over ``WS /api/v1/ws`` (a real backend process, real clients): an API
token's ``RESOURCE_CHANGED`` reaches its owner's connections only, a user's or an organisation's reaches
superusers' only, with no subscription; a user made superuser starts hearing the platform's within the
access refresh, and one demoted stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from backend.tests.deploy_helpers import free_port
from backend.tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, Actor, create_user
from backend.tests.realtime_helpers import WS, Server

pytestmark = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)


@pytest.fixture(scope="module", params=["asgi", "listener"])
async def server(request, db_backend, tmp_path_factory) -> AsyncIterator[Server]:
    """Every test twice: the clients on uvicorn's ASGI route, then on the WebSocket listener (WS_PORT)."""
    listener = {"WS_PORT": free_port()} if request.param == "listener" else {}
    started = await Server.start(
        db_backend.settings.DATABASE_URL, tmp_path_factory.mktemp("realtime-accounts"), EVENT_BUS="postgres", **listener
    )
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


@pytest.fixture
async def bus(db):
    """This process's bus on PostgreSQL, like a worker's: what it commits reaches the backend process."""
    from backend.app.runtime.event_transport import event_bus_status, start_event_bus, stop_event_bus
    from backend.tests.conftest import make_settings

    await start_event_bus(make_settings(db.settings.DATABASE_URL, EVENT_BUS="postgres"), listen=False)
    deadline = asyncio.get_running_loop().time() + 20
    while not event_bus_status()["connected"]:
        assert asyncio.get_running_loop().time() < deadline, event_bus_status()
        await asyncio.sleep(0.05)
    yield
    await stop_event_bus()


async def test_a_stack_limited_token_hears_its_stacks_only(server, http, bus) -> None:
    """A deploy token limited to one stack (``stack_ids``), subscribed to its organisation, receives the events
    of that stack's deployments and that stack's changes, never another stack's (which a full token of the
    same user receives); a deployment of another stack is refused on the WebSocket and over SSE (404)."""
    from backend.app import database
    from backend.app.core.events import Event, EventType, StatusChangedData, queue_event
    from backend.app.models import DeploymentStatus
    from backend.app.runtime.event_transport import flush_events
    from backend.tests.factories import make_deployment
    from backend.tests.realtime_helpers import sse_events

    setup = await http.post("/api/v1/auth/setup", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": "acme"})
    admin = Actor(ADMIN_EMAIL, ADMIN_PASSWORD, setup.json()["access_token"], setup.json()["refresh_token"])
    acme = (await http.get("/api/v1/organizations", headers=admin.headers)).json()["items"][0]["id"]
    template = "services:\n  web:\n    image: nginx:alpine\n"
    stacks = {}
    for name in ("mine", "other"):
        created = await http.post(
            "/api/v1/stacks", json={"name": name, "template": template, "organization_id": acme}, headers=admin.headers
        )
        assert created.status_code == 201, created.text
        stacks[name] = created.json()["id"]
    body = {"name": "ci", "scopes": ["deploy"], "organization_id": acme, "stack_ids": [stacks["mine"]]}
    created = await http.post("/api/v1/tokens", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    deployments = {}
    async with database.AsyncSessionLocal() as session:
        for name in ("mine", "other"):
            row = await make_deployment(session, DeploymentStatus.RUNNING)
            row.organization_id, row.stack_id = acme, stacks[name]
            deployments[name] = row.id
        await session.commit()

    limited, full = await WS.open(server, created.json()["token"]), await WS.open(server, admin.access_token)
    for ws in (limited, full):
        assert (await ws.subscribe(organization_id=acme))["type"] == "subscribed"

    async def status_event(name: str, status: str) -> None:
        async with database.AsyncSessionLocal() as session:
            data = StatusChangedData(new_status=status, old_status="running", name=name)
            queue_event(session, Event.of(EventType.DEPLOYMENT_STATUS_CHANGED, deployments[name], acme, data))
            await session.commit()
        assert await flush_events(20)

    def status_of(frame: dict) -> bool:
        return frame["type"] == "DEPLOYMENT_STATUS_CHANGED"

    # the other stack's event first, then its own: the first one the limited token gets is its own
    await status_event("other", "stopped")
    await status_event("mine", "stopped")
    assert [(await full.next(status_of))["deployment_id"] for _ in range(2)] == [deployments["other"], deployments["mine"]]
    assert (await limited.next(status_of))["deployment_id"] == deployments["mine"]
    # the stacks' changes: the other stack's is not for it
    for name in ("other", "mine"):
        changed_stack = await http.patch(f"/api/v1/stacks/{stacks[name]}", json={"description": "v2"}, headers=admin.headers)
        assert changed_stack.status_code == 200, changed_stack.text
    assert [(await full.next(changed("stack")))["data"]["id"] for _ in range(2)] == [stacks["other"], stacks["mine"]]
    assert (await limited.next(changed("stack")))["data"]["id"] == stacks["mine"]
    # a deployment of the other stack: refused as if it did not exist; its own works
    refused = await limited.subscribe(deployment_id=deployments["other"])
    assert (refused["type"], refused["code"]) == ("error", "deployment_not_found"), refused
    assert (await limited.subscribe(deployment_id=deployments["mine"]))["type"] == "subscribed"
    token_headers = {"Authorization": f"Bearer {created.json()['token']}"}
    sse_refused = await http.get(f"/api/v1/deployments/{deployments['other']}/events", headers=token_headers)
    assert sse_refused.status_code == 404 and sse_refused.json()["code"] == "deployment_not_found", sse_refused.text
    events = await sse_events(
        http, f"/api/v1/deployments/{deployments['mine']}/events", token_headers, stop=lambda evs: evs[-1]["event"] == "subscribed"
    )
    assert events[-1]["data"]["deployment_id"] == deployments["mine"]
    for ws in (limited, full):
        await ws.close()
