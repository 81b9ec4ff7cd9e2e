"""``WS /api/v1/ws`` and the SSE stream, against a real backend process and real clients.

The backend runs as ``python -m backend.app.main`` (uvicorn) on a free port, on the session's PostgreSQL
database. This test process plays the runner of another process: it writes log lines and status changes
with the same services and commits, its event bus sends them over PostgreSQL NOTIFY, and the clients
connected to the backend must receive them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
import websockets

from backend.app import database
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentStatus, LogLevel
from backend.app.runtime.event_transport import event_bus_status, flush_events, start_event_bus, stop_event_bus
from backend.app.runtime.realtime.client import SEND_TIMEOUT_SECONDS
from backend.app.services.deployments.logs import append_logs
from backend.app.services.deployments.state_machine import set_deployment_status
from backend.tests import conftest
from backend.tests.deploy_helpers import free_port
from backend.tests.factories import make_deployment
from backend.tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, Actor, create_user, default_org
from backend.tests.realtime_helpers import WS, RawWS, Server, sse_events

pytestmark = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
#: the server's WS_REAUTH_GRACE_SECONDS: a socket whose token expired is closed this long after the warning (the
#: default 10 s made the renewal test wait out two grace periods, 23 s per run)
REAUTH_GRACE = 3.0


@pytest.fixture(scope="module", params=["asgi", "listener"])
async def server(request, db_backend, tmp_path_factory) -> AsyncIterator[Server]:
    """Every test twice: the clients on uvicorn's ASGI route, then on the WebSocket listener (WS_PORT)."""
    listener = {"WS_PORT": free_port()} if request.param == "listener" else {}
    started = await Server.start(
        db_backend.settings.DATABASE_URL,
        tmp_path_factory.mktemp("realtime"),
        EVENT_BUS="postgres",
        WS_REAUTH_GRACE_SECONDS=REAUTH_GRACE,
        **listener,
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def bus(db):
    """This process's bus on PostgreSQL, like a worker's: what it commits reaches the backend."""
    await start_event_bus(conftest.make_settings(db.settings.DATABASE_URL, EVENT_BUS="postgres"), listen=False)
    deadline = time.monotonic() + 20
    while not event_bus_status()["connected"]:
        assert time.monotonic() < deadline, event_bus_status()
        await asyncio.sleep(0.05)
    yield
    await stop_event_bus()


@pytest.fixture
async def http(server: Server, db) -> AsyncIterator[httpx.AsyncClient]:
    async with server.http() as client:
        yield client


async def _admin(http: httpx.AsyncClient) -> Actor:
    response = await http.post("/api/v1/auth/setup", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": "acme"})
    assert response.status_code == 201, response.text
    body = response.json()
    actor = Actor(ADMIN_EMAIL, ADMIN_PASSWORD, body["access_token"], body["refresh_token"])
    actor.user_id = (await http.get("/api/v1/auth/me", headers=actor.headers)).json()["id"]
    return actor


async def _deployment_in(organization_id: str, status: DeploymentStatus = DeploymentStatus.DEPLOYING) -> Deployment:
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session, status)
        deployment.organization_id = organization_id
        await session.commit()
        return deployment


async def _write_lines(deployment_id: str, count: int, prefix: str = "line", batch: int = 500, per_commit: int = 1) -> None:
    """Append ``count`` lines, ``batch`` per event (as the runner's writer does), ``per_commit`` events per commit."""
    starts = list(range(0, count, batch))
    for first in range(0, len(starts), per_commit):
        async with database.AsyncSessionLocal() as session:
            for start in starts[first : first + per_commit]:
                await append_logs(
                    session,
                    deployment_id=deployment_id,
                    lines=[(LogLevel.INFO, f"{prefix} {start + i}", utcnow()) for i in range(min(batch, count - start))],
                )
            await session.commit()
    assert await flush_events(20)


# --- authentication -----------------------------------------------------------------------------------


async def test_unauthenticated_bad_expired_and_revoked_tokens_are_closed_with_4401(server, http, bus):
    admin = await _admin(http)
    expired = jwt.encode(
        {"sub": admin.user_id, "typ": "access", "jti": "x", "exp": datetime.now(UTC) - timedelta(minutes=1)},
        conftest.TEST_SECRET_KEY,
        algorithm="HS256",
    )
    created = await http.post("/api/v1/tokens", json={"name": "ci"}, headers=admin.headers)
    assert created.status_code == 201, created.text
    api_token, token_id = created.json()["token"], created.json()["id"]
    assert (await http.delete(f"/api/v1/tokens/{token_id}", headers=admin.headers)).status_code == 204

    async def refused(first: dict | str | None) -> int | None:
        ws = await WS.open(server)
        if first is not None:
            await ws.conn.send(first if isinstance(first, str) else __import__("json").dumps(first))
        return await ws.closed_with(timeout=15)

    started = time.monotonic()
    codes = await asyncio.gather(
        refused(None),  # says nothing: closed after 10 s
        refused("not json"),
        refused({"type": "subscribe", "organization_id": "x"}),
        refused({"type": "auth", "token": "wf_not-a-real-token"}),
        refused({"type": "auth", "token": "garbage.jwt.value"}),
        refused({"type": "auth", "token": expired}),
        refused({"type": "auth", "token": api_token}),
    )
    assert codes == [4401] * 7
    assert 9 < time.monotonic() - started < 14  # the silent one waited for the 10 s limit
    assert "token=" not in server.output() and admin.access_token not in server.output()


async def test_an_api_token_works_and_revoking_it_closes_the_socket(server, http, bus):
    admin = await _admin(http)
    created = (await http.post("/api/v1/tokens", json={"name": "ci"}, headers=admin.headers)).json()
    ws = await WS.open(server, created["token"])
    org = await default_org(http, admin)
    assert (await ws.subscribe(organization_id=org))["type"] == "subscribed"
    assert (await http.delete(f"/api/v1/tokens/{created['id']}", headers=admin.headers)).status_code == 204
    started = time.monotonic()
    assert await ws.closed_with(timeout=10) == 4401
    assert time.monotonic() - started < 6


async def test_signing_out_everywhere_closes_the_sockets_of_access_tokens_only(server, http, bus):
    """``POST /auth/logout-all`` (or a password change) bumps the token generation: a socket authenticated with
    an access token of the old generation closes with 4401 within seconds; one authenticated with a personal
    API token (a separate credential, revoked under /tokens) stays."""
    admin = await _admin(http)
    created = (await http.post("/api/v1/tokens", json={"name": "ci"}, headers=admin.headers)).json()
    org = await default_org(http, admin)
    session_ws = await WS.open(server, admin.access_token)
    token_ws = await WS.open(server, created["token"])
    for ws in (session_ws, token_ws):
        assert (await ws.subscribe(organization_id=org))["type"] == "subscribed"
    assert (await http.post("/api/v1/auth/logout-all", headers=admin.headers)).status_code == 204
    started = time.monotonic()
    assert await session_ws.closed_with(timeout=10) == 4401
    assert time.monotonic() - started < 6
    await token_ws.send({"type": "ping"})
    assert (await token_ws.next(lambda f: f["type"] == "pong"))["type"] == "pong"
    await token_ws.close()


async def test_expiring_access_token_is_renewed_with_a_new_auth_frame(server, http, bus):
    admin = await _admin(http)

    def token(seconds: float) -> str:
        return jwt.encode(
            {"sub": admin.user_id, "typ": "access", "jti": f"j{seconds}", "exp": datetime.now(UTC) + timedelta(seconds=seconds)},
            conftest.TEST_SECRET_KEY,
            algorithm="HS256",
        )

    ws = await WS.open(server, token(2))
    warning = await ws.next(lambda f: f["type"] == "error", timeout=10)
    assert warning["code"] == "token_expired"
    await ws.send({"type": "auth", "token": token(600)})
    assert (await ws.next(lambda f: f["type"] == "authenticated"))["expires_at"]
    await asyncio.sleep(REAUTH_GRACE + 1)  # past the grace period of the first token: still open
    await ws.send({"type": "ping"})
    assert (await ws.next(lambda f: f["type"] == "pong"))["type"] == "pong"

    other = await WS.open(server, token(1))
    await other.next(lambda f: f["type"] == "error", timeout=10)
    assert await other.closed_with(timeout=15) == 4401  # not renewed


# --- subscriptions and access ------------------------------------------------------------------------


async def test_cross_organisation_subscriptions_get_an_error_frame(server, http, bus):
    admin = await _admin(http)
    outsider = await create_user(http, admin, "outsider@example.com")
    org = await default_org(http, admin)
    deployment = await _deployment_in(org)
    ws = await WS.open(server, outsider.access_token)
    refused = await ws.subscribe(deployment_id=deployment.id, since_seq=0)
    assert (refused["type"], refused["code"], refused["deployment_id"]) == ("error", "deployment_not_found", deployment.id)
    refused = await ws.subscribe(organization_id=org)
    assert (refused["type"], refused["code"]) == ("error", "organization_not_found")
    refused = await ws.subscribe(deployment_id="nope", since_seq=0)
    assert refused["code"] == "deployment_not_found"
    await _write_lines(deployment.id, 3)
    await ws.send({"type": "ping"})
    assert (await ws.next(lambda f: True))["type"] == "pong"  # nothing of the foreign deployment came first


async def test_membership_removal_stops_events_within_seconds(server, http, bus):
    admin = await _admin(http)
    member = await create_user(http, admin, "member@example.com")
    org = await default_org(http, admin)
    added = await http.post(f"/api/v1/organizations/{org}/members", json={"email": member.email, "role": "viewer"}, headers=admin.headers)
    assert added.status_code == 201, added.text
    deployment = await _deployment_in(org)
    ws = await WS.open(server, member.access_token)
    assert (await ws.subscribe(organization_id=org))["type"] == "subscribed"
    assert (await ws.subscribe(deployment_id=deployment.id, since_seq=0))["type"] == "subscribed"
    await _write_lines(deployment.id, 2)
    assert [l["seq"] for l in await ws.lines_until(deployment.id, 2)] == [1, 2]
    # (the catch-up of the subscription had nothing: lines 1 and 2 came live)

    removed = await http.delete(f"/api/v1/organizations/{org}/members/{member.user_id}", headers=admin.headers)
    assert removed.status_code == 204, removed.text
    started = time.monotonic()
    revoked = [await ws.next(lambda f: f["type"] == "error", timeout=10) for _ in range(2)]
    assert {f["code"] for f in revoked} == {"access_revoked"}
    assert time.monotonic() - started < 6
    await _write_lines(deployment.id, 2)
    async with database.AsyncSessionLocal() as session:
        await set_deployment_status(session, deployment_id=deployment.id, to_status=DeploymentStatus.RUNNING, lease_owner="worker-1")
        await session.commit()
    await flush_events(10)
    await asyncio.sleep(1)
    await ws.send({"type": "ping"})
    assert (await ws.next(lambda f: True))["type"] == "pong"  # no log line, no status after the removal


# --- log lines: catch-up, resume, volume ----------------------------------------------------------------


async def test_resume_with_since_seq_gets_exactly_the_missing_lines(server, http, bus):
    admin = await _admin(http)
    deployment = await _deployment_in(await default_org(http, admin))
    await _write_lines(deployment.id, 5, "before")
    ws = await WS.open(server, admin.access_token)
    subscribed = await ws.subscribe(deployment_id=deployment.id, since_seq=0)
    assert subscribed["last_seq"] == 5 and subscribed["status"] == "deploying"
    assert [l["message"] for l in await ws.lines_until(deployment.id, 5)] == [f"before {i}" for i in range(5)]
    await _write_lines(deployment.id, 3, "live")
    live = await ws.lines_until(deployment.id, 8)
    assert [l["seq"] for l in live] == [6, 7, 8]
    await ws.close()  # disconnects mid-deployment

    await _write_lines(deployment.id, 4, "missed")
    again = await WS.open(server, admin.access_token)
    subscribed = await again.subscribe(deployment_id=deployment.id, since_seq=8)
    caught_up = await again.lines_until(deployment.id, 12)
    assert [(l["seq"], l["message"]) for l in caught_up] == [(9 + i, f"missed {i}") for i in range(4)]
    assert subscribed["last_seq"] == 12
    await _write_lines(deployment.id, 2, "after")
    assert [l["seq"] for l in await again.lines_until(deployment.id, 14)] == [13, 14]

    # the same over SSE, resumed with Last-Event-ID
    url = f"/api/v1/deployments/{deployment.id}/events"
    events = await sse_events(
        http, url, {**admin.headers, "Last-Event-ID": "10"}, stop=lambda evs: any(int(e.get("id", 0)) >= 14 for e in evs)
    )
    sse_lines = [l for e in events if e["event"] == "DEPLOYMENT_LOGS_UPDATE" for l in e["data"]["data"]["logs"]]
    assert [l["seq"] for l in sse_lines] == [11, 12, 13, 14]
    assert events[-1]["id"] == "14"
    bad = await http.get(url, headers={**admin.headers, "Last-Event-ID": "abc"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_last_event_id"


async def test_a_stream_opened_after_the_last_change_still_learns_the_status(server, http, bus):
    """A client reads a deployment (deploying), then opens its stream after it settled: no change event will
    come, so the ``subscribed`` frame says the status as of the subscription (``windflow logs -f`` relies on it)."""
    admin = await _admin(http)
    deployment = await _deployment_in(await default_org(http, admin), DeploymentStatus.RUNNING)
    await _write_lines(deployment.id, 3, "done")
    events = await sse_events(
        http, f"/api/v1/deployments/{deployment.id}/events", admin.headers, stop=lambda evs: any(e["event"] == "subscribed" for e in evs)
    )
    assert [e["event"] for e in events] == ["DEPLOYMENT_LOGS_UPDATE", "subscribed"]
    assert events[-1]["data"]["status"] == "running" and events[-1]["data"]["last_seq"] == 3


async def test_fifty_thousand_lines_arrive_complete_and_in_order(server, http, bus):
    admin = await _admin(http)
    deployment = await _deployment_in(await default_org(http, admin))
    live = await WS.open(server, admin.access_token)
    await live.subscribe(deployment_id=deployment.id, since_seq=0)
    writer = asyncio.create_task(_write_lines(deployment.id, 50_000, "bulk", batch=1000))
    await asyncio.sleep(0.5)
    late = await WS.open(server, admin.access_token)  # joins mid-way: catch-up, then live
    await late.subscribe(deployment_id=deployment.id, since_seq=0)
    received = await asyncio.gather(
        live.lines_until(deployment.id, 50_000, timeout=120), late.lines_until(deployment.id, 50_000, timeout=120)
    )
    await writer
    for lines in received:
        assert [l["seq"] for l in lines] == list(range(1, 50_001))
        assert lines[49_999]["message"] == "bulk 49999"


async def test_a_stalled_client_does_not_delay_another_and_is_resynchronised(server, http, bus):
    LINES = 2000
    admin = await _admin(http)
    deployment = await _deployment_in(await default_org(http, admin))
    stalled = await RawWS.open(server, admin.access_token)
    await stalled.subscribe(deployment_id=deployment.id, since_seq=0)
    reader = await WS.open(server, admin.access_token)
    await reader.subscribe(deployment_id=deployment.id, since_seq=0)

    started = time.monotonic()

    async def write() -> None:
        # 8 MB of text, more than the kernel's socket buffers absorb, so that the server's sends to the
        # stalled client block; then 1,000 one-line events, more than a client's queue holds.
        await _write_lines(deployment.id, 1000, "x" * 8000, batch=50)
        await _write_lines(deployment.id, LINES - 1000, "y", batch=1, per_commit=100)

    writer = asyncio.create_task(write())
    lines = await reader.lines_until(deployment.id, LINES, timeout=120)
    reader_done = time.monotonic() - started
    await writer
    written = time.monotonic() - started
    assert [l["seq"] for l in lines] == list(range(1, LINES + 1))
    assert reader_done < written + 15, (reader_done, written)  # kept up with the writer (on a loaded machine)

    stalled_for = time.monotonic() - started
    if stalled_for >= SEND_TIMEOUT_SECONDS - 5:
        # A loaded machine made the stall last about as long as the server waits for a client that does not
        # read (runtime/realtime/client.py): the server may close it, which is the other half of the contract.
        try:
            resync = await stalled.next(lambda f: f["type"] == "resync", timeout=60)
        except (websockets.exceptions.ConnectionClosed, ConnectionError):  # closed, or reset while our socket wrote
            await stalled.close()
            return
    else:
        # The stalled client reads again: a resync frame, then every line after its last seq, no gap.
        resync = await stalled.next(lambda f: f["type"] == "resync", timeout=60)
    assert resync["deployment_id"] == deployment.id and resync["last_seq"] >= 0
    before = [l["seq"] for l in stalled.logs.pop(deployment.id, [])]
    after = await stalled.lines_until(deployment.id, LINES, timeout=60)
    assert before == list(range(1, resync["last_seq"] + 1))
    assert [l["seq"] for l in after] == list(range(resync["last_seq"] + 1, LINES + 1))
    await stalled.close()
    metrics = (await http.get("/metrics")).text
    assert 'windflow_event_resyncs_total{transport="websocket"}' in metrics


async def test_organisation_subscription_gets_list_events_but_no_log_lines(server, http, bus):
    admin = await _admin(http)
    org = await default_org(http, admin)
    ws = await WS.open(server, admin.access_token)
    await ws.subscribe(organization_id=org)
    deployment = await _deployment_in(org, DeploymentStatus.PENDING)
    await _write_lines(deployment.id, 3)  # log lines are not list events
    async with database.AsyncSessionLocal() as session:
        await set_deployment_status(session, deployment_id=deployment.id, to_status=DeploymentStatus.CANCELLED, actor="test")
        await session.commit()
    await flush_events(10)
    status = await ws.next(lambda f: f["type"] != "heartbeat")
    assert status["type"] == "DEPLOYMENT_STATUS_CHANGED", status
    assert (status["data"]["old_status"], status["data"]["new_status"]) == ("pending", "cancelled")
    await ws.send({"type": "unsubscribe", "organization_id": org})
    assert (await ws.next(lambda f: True))["type"] == "unsubscribed"


async def test_each_client_gets_the_events_it_follows_once_and_no_others(server, http, bus):
    """The hub hands an event only to the clients following its deployment or its organisation, and once to
    a client following both; a client of another organisation, or of another deployment, gets none of it."""
    admin = await _admin(http)
    org = await default_org(http, admin)
    created = await http.post("/api/v1/organizations", json={"name": "other"}, headers=admin.headers)
    assert created.status_code == 201, created.text
    other_org = created.json()["id"]
    followed, sibling, elsewhere = (await _deployment_in(org), await _deployment_in(org), await _deployment_in(other_org))

    both = await WS.open(server, admin.access_token)  # the deployment and its organisation
    assert (await both.subscribe(deployment_id=followed.id))["type"] == "subscribed"
    assert (await both.subscribe(organization_id=org))["type"] == "subscribed"
    other = await WS.open(server, admin.access_token)  # the other organisation only
    assert (await other.subscribe(organization_id=other_org))["type"] == "subscribed"
    one = await WS.open(server, admin.access_token)  # one deployment of the first organisation
    assert (await one.subscribe(deployment_id=sibling.id))["type"] == "subscribed"

    async with database.AsyncSessionLocal() as session:
        for deployment in (followed, sibling, elsewhere):
            await set_deployment_status(session, deployment_id=deployment.id, to_status=DeploymentStatus.RUNNING, actor="test")
        await session.commit()
    assert await flush_events(10)

    async def received(ws: WS, expected: int) -> list[str]:
        frames = []
        while len(frames) < expected:
            frames.append(await ws.next(lambda f: f["type"] == "DEPLOYMENT_STATUS_CHANGED"))
        with pytest.raises(TimeoutError):  # and nothing more
            await ws.next(lambda f: f["type"] == "DEPLOYMENT_STATUS_CHANGED", timeout=1.5)
        return sorted(f["deployment_id"] for f in frames)

    assert await received(both, 2) == sorted([followed.id, sibling.id])
    assert await received(other, 1) == [elsewhere.id]
    assert await received(one, 1) == [sibling.id]
    for ws in (both, other, one):
        await ws.close()


async def test_two_backend_processes_both_deliver(server, http, bus, db, tmp_path):
    second = await Server.start(db.settings.DATABASE_URL, tmp_path, "second", EVENT_BUS="postgres")
    try:
        admin = await _admin(http)
        deployment = await _deployment_in(await default_org(http, admin))
        clients = [await WS.open(s, admin.access_token) for s in (server, second)]
        for ws in clients:
            await ws.subscribe(deployment_id=deployment.id, since_seq=0)
        await _write_lines(deployment.id, 300)
        for ws in clients:
            assert [l["seq"] for l in await ws.lines_until(deployment.id, 300)] == list(range(1, 301))
        metrics = (await http.get("/metrics")).text
        # this test's client is connected to this server (a socket an earlier test closed may still be counted
        # for an instant: the server decrements when its side of the close is done)
        gauge = [l for l in metrics.splitlines() if l.startswith("windflow_websocket_connections ")]
        assert gauge and float(gauge[0].split()[-1]) >= 1, gauge
        # the fan-out fast path served them: frames sent through the ASGI send during the hub's delivery
        direct = [l for l in metrics.splitlines() if l.startswith('windflow_event_frames_total{path="direct",transport="websocket"}')]
        assert direct and float(direct[0].split()[-1]) >= 1, [l for l in metrics.splitlines() if "frames" in l]
    finally:
        second.stop()


async def test_with_per_message_deflate_frames_are_compressed_per_connection(server, http, bus, db, tmp_path):
    """WS_PER_MESSAGE_DEFLATE=true: the client negotiates compression; the hub still sends each event's one
    encoded text through the ASGI send from its delivery, and the server compresses it per connection:
    complete and in order. (The ASGI route's: the listener negotiates no compression.)"""
    if server.ws_port != server.port:
        pytest.skip("uvicorn's compression: once, with the ASGI route's server (this test starts its own)")
    compressed = await Server.start(db.settings.DATABASE_URL, tmp_path, "deflate", EVENT_BUS="postgres", WS_PER_MESSAGE_DEFLATE=True)
    try:
        admin = await _admin(http)
        org = await default_org(http, admin)
        deployment = await _deployment_in(org)
        ws = await WS.open(compressed, admin.access_token)
        assert ws.conn.response.headers.get("Sec-WebSocket-Extensions", "").startswith("permessage-deflate")
        await ws.subscribe(deployment_id=deployment.id, since_seq=0)
        await _write_lines(deployment.id, 1200, batch=100)
        assert [l["seq"] for l in await ws.lines_until(deployment.id, 1200)] == list(range(1, 1201))
        async with compressed.http() as client:
            metrics = (await client.get("/metrics")).text
        frames = {
            l.split("{")[1].split("}")[0]: float(l.split()[-1])
            for l in metrics.splitlines()
            if l.startswith("windflow_event_frames_total{")
        }
        assert frames.get('path="direct",transport="websocket"', 0) >= 1, frames
        await ws.conn.close()
    finally:
        compressed.stop()
