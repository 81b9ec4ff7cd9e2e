"""The WebSocket listener (``WS_PORT``, ``api/realtime_listener.py``) where it differs from uvicorn's route.

The protocol itself (authentication, subscriptions filtered by organisation and role, resume by ``seq``,
backpressure, revocation) runs against the listener in test_realtime.py and test_realtime_accounts.py, whose
server fixture serves every test once on the ASGI route and once on the listener. Here: its path, messages
in fragments, binary and oversized messages, the proxy's route to it, and its end when the server stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend.tests.conftest import require_service
from backend.tests.deploy_helpers import free_port
from backend.tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, Actor, create_user
from backend.tests.nginx_proxy import NGINX, Proxy
from backend.tests.realtime_helpers import TIMEOUT, WS, Server, established

pytestmark = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)


@pytest.fixture(scope="module")
async def server(db_backend, tmp_path_factory) -> AsyncIterator[Server]:
    started = await Server.start(
        db_backend.settings.DATABASE_URL, tmp_path_factory.mktemp("listener"), EVENT_BUS="postgres", WS_PORT=free_port()
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def http(server: Server, db) -> AsyncIterator[httpx.AsyncClient]:
    async with server.http() as client:
        yield client


async def _admin(http: httpx.AsyncClient) -> Actor:
    response = await http.post("/api/v1/auth/setup", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": "acme"})
    assert response.status_code == 201, response.text
    body = response.json()
    return Actor(ADMIN_EMAIL, ADMIN_PASSWORD, body["access_token"], body["refresh_token"])


async def test_the_listener_serves_only_the_websocket_path(server, http):
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{server.ws_port}/api/v1/other", open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 404
    # the route's query string does not matter, as on uvicorn
    async with connect(f"{server.ws_url}?v=1", open_timeout=TIMEOUT) as conn:
        await conn.send(json.dumps({"type": "auth", "token": "nope"}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(conn.recv(), TIMEOUT)
    assert closed.value.rcvd.code == 4401


async def test_messages_in_fragments_binary_and_oversized_messages(server, http):
    admin = await _admin(http)
    async with connect(server.ws_url, open_timeout=TIMEOUT, max_size=None) as conn:
        auth = json.dumps({"type": "auth", "token": admin.access_token})
        await conn.send([auth[:10], auth[10:20], auth[20:]])  # one message in three frames
        assert json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))["type"] == "authenticated"
        await conn.send(['{"type"', ': "ping"}'])
        assert json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT)) == {"type": "pong"}
        await conn.send(b'{"type": "ping"}')
        error = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
        assert (error["type"], error["code"]) == ("error", "bad_frame") and "binary" in error["detail"]
        await conn.send("x" * 20_000)  # over the protocol's 16,384 characters: refused, the connection stays
        error = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
        assert error["code"] == "bad_frame" and "too large" in error["detail"]
        await conn.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT)) == {"type": "pong"}
        await conn.send(["a" * 600_000, "b" * 600_000])  # over 1 MiB in fragments: closed with 1009
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(conn.recv(), TIMEOUT)
    assert closed.value.rcvd.code == 1009
    # a text frame that is not UTF-8 closes with 1007 (not an error in the server's log)
    async with connect(server.ws_url, open_timeout=TIMEOUT) as conn:
        await conn.send(b'{"type": "auth", "token": "\xff\xfe"}', text=True)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(conn.recv(), TIMEOUT)
    assert closed.value.rcvd.code == 1007
    assert "Traceback" not in server.output()


async def test_through_the_proxy_the_websocket_reaches_the_listener(server, http, tmp_path):
    """deploy/nginx.conf routes /api/v1/ws to the listener (WS_PORT), the rest to uvicorn: a socket through the
    proxy is one more connection on the listener's port, and events and access checks work through it."""
    if not Path(NGINX).exists():
        require_service("nginx", f"{NGINX} is missing (bash scripts/ensure-services.sh installs it)")
    admin = await _admin(http)
    member = await create_user(http, admin, "member@example.com")
    proxy = Proxy([server.port], tmp_path / "nginx", ws_ports=[server.ws_port])
    try:
        await asyncio.to_thread(proxy.wait_ready)
        before = established(server.ws_port)
        admin_ws = await WS.open(proxy, admin.access_token)
        member_ws = await WS.open(proxy, member.access_token)
        assert established(server.ws_port) == before + 2  # nginx's connections to the listener
        # a platform event (an organisation created through the proxy) reaches the superuser, not the member
        async with httpx.AsyncClient(base_url=proxy.url, timeout=TIMEOUT) as through:
            created = await through.post("/api/v1/organizations", json={"name": "elsewhere"}, headers=admin.headers)
        assert created.status_code == 201, created.text
        frame = await admin_ws.next(lambda f: f["type"] == "RESOURCE_CHANGED" and f["data"]["resource"] == "organization")
        assert frame["data"]["id"] == created.json()["id"]
        # the member cannot follow an organisation he is not in
        refused = await member_ws.subscribe(organization_id=created.json()["id"])
        assert (refused["type"], refused["code"]) == ("error", "organization_not_found")
        with pytest.raises(TimeoutError):
            await member_ws.next(lambda f: f["type"] == "RESOURCE_CHANGED", timeout=1.5)
        await admin_ws.close()
        await member_ws.close()
    finally:
        proxy.stop()


async def test_stopping_the_server_closes_the_listener_sockets(db, tmp_path):
    own = await Server.start(db.settings.DATABASE_URL, tmp_path, "stopping", EVENT_BUS="postgres", WS_PORT=free_port())
    try:
        async with own.http() as http:
            admin = await _admin(http)
        ws = await WS.open(own, admin.access_token)
        started = time.monotonic()
        await asyncio.to_thread(own.stop)
        assert await ws.closed_with(timeout=10) in (1001, 1012)
        assert time.monotonic() - started < 15
        assert "WebSocket closed" in own.output(), own.output()[-2000:]
    finally:
        own.stop()
