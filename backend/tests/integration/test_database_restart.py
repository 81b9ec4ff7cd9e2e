"""A PostgreSQL restart is an ordinary event for the backend process (issue 17).

Two real backend processes (``python -m backend.app.main``, in-process deployments) on a private PostgreSQL
cluster that the test stops (``pg_ctl stop -m fast``, then ``-m immediate``: a crash) and starts again,
never the shared server. While the database is down, requests that need it answer ``503
database_unavailable`` with ``Retry-After`` and ``/health`` answers 503; once it is back, the same requests
succeed within seconds with no restart of either process, the LISTEN/NOTIFY event bus listens again (a
WebSocket client of one process is told to resynchronise, then gets the event of a deployment created
through the other) and the background loops, which ran into the outage, logged warnings, not tracebacks.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import text

from backend.app import database
from backend.tests import conftest
from backend.tests.helpers import Actor, setup_admin
from backend.tests.realtime_helpers import WS, Server

#: background loops of the listener that must meet the outage and go on (as their warnings name them)
LOOPS = ("reaper pass", "real time: refreshing client access")
RECOVER_WITHIN = 20.0  # seconds from the server's return to normal answers (a loaded 2-core machine)
#: The event bus's backoff after which the test starts the database again: the bus must listen again well
#: before that backoff ends (it is woken by the process's first successful connection to the database).
LONG_BACKOFF = 8.0
BACKOFF_LINE = re.compile(r"event bus: [^\n]*(?:reconnecting|retrying) in (\d+(?:\.\d+)?)s")
STACK_TEMPLATE = "services:\n  web:\n    image: busybox\n"


@dataclass
class Backends:
    cluster: object
    listener: Server  # the process the WebSocket client is connected to
    writer: Server  # the process that creates deployments: its events reach the listener only over NOTIFY
    admin: Actor
    organization_id: str
    stack_id: str
    target_id: str


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory) -> AsyncIterator[object]:
    try:
        from backend.tests.pg_cluster import PrivateCluster

        made = await asyncio.to_thread(PrivateCluster)
    except (FileNotFoundError, RuntimeError) as exc:
        conftest.require_service("a private PostgreSQL cluster (initdb, pg_ctl)", str(exc))
    try:
        yield made
    finally:
        await asyncio.to_thread(made.destroy)


@pytest.fixture(scope="module")
async def backends(cluster, tmp_path_factory) -> AsyncIterator[Backends]:
    log_dir = tmp_path_factory.mktemp("database-restart")
    # Short intervals, so that the reaper (and the access refresh, 2 s) run into the outage.
    options = dict(
        RUN_MIGRATIONS_ON_STARTUP=True, EVENT_BUS="postgres", REAPER_INTERVAL_SECONDS=0.5, DEPLOYMENTS_WORKDIR=str(log_dir / "deployments")
    )
    servers: list[Server] = []
    try:
        servers.append(await Server.start(cluster.async_url, log_dir, name="listener", **options))
        servers.append(await Server.start(cluster.async_url, log_dir, name="writer", **options))
        listener, writer = servers
        async with writer.http() as http:
            admin = await setup_admin(http)
            me = (await http.get("/api/v1/auth/me", headers=admin.headers)).json()
            stack = await http.post("/api/v1/stacks", headers=admin.headers, json={"name": "web", "template": STACK_TEMPLATE})
            assert stack.status_code == 201, stack.text
            # an engine nobody listens on: a deployment there fails fast, which is all this test needs
            target = await http.post(
                "/api/v1/targets", headers=admin.headers, json={"name": "nowhere", "type": "docker", "endpoint": "tcp://127.0.0.1:1"}
            )
            assert target.status_code == 201, target.text
        yield Backends(cluster, listener, writer, admin, me["default_organization_id"], stack.json()["id"], target.json()["id"])
    finally:
        for server in servers:
            server.stop()


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "database_unavailable", body
    assert "database is unreachable" in body["detail"] and "retry" in body["detail"], body
    assert 1 <= int(response.headers["Retry-After"]) <= 30, response.headers


async def _until_ok(http: httpx.AsyncClient, method: str, url: str, expected: int, deadline: float, **kwargs) -> httpx.Response:
    """Repeat the request until it answers ``expected`` (503 meanwhile is what the test allows, nothing else)."""
    while True:
        response = await http.request(method, url, **kwargs)
        if response.status_code == expected:
            return response
        body = response.json()
        assert response.status_code == 503, response.text  # /health says "unavailable", the API its code
        assert body.get("code") == "database_unavailable" or body.get("status") == "unavailable", body
        assert time.monotonic() < deadline, f"{method} {url} still {response.status_code}: {response.text}"
        await asyncio.sleep(0.2)


async def _bus_status(http: httpx.AsyncClient) -> dict:
    return (await http.get("/health")).json()["event_bus"]


async def _long_backoff(server: Server, since: int, deadline: float) -> float:
    """Wait until the server's event bus, unable to connect, logs a backoff of ``LONG_BACKOFF`` s or more (in
    its log after offset ``since``); that backoff in seconds."""
    while True:
        waits = [float(w) for w in BACKOFF_LINE.findall(server.output()[since:])]
        if waits and waits[-1] >= LONG_BACKOFF:
            return waits[-1]
        assert time.monotonic() < deadline, f"no backoff of {LONG_BACKOFF}s or more:\n{server.output()[-3000:]}"
        await asyncio.sleep(0.05)


async def _logged(server: Server, text: str, times: int, deadline: float) -> None:
    """Wait until ``text`` appears ``times`` times in the server's log."""
    while server.output().count(text) < times:
        assert time.monotonic() < deadline, f"{text!r} not logged {times} time(s):\n{server.output()[-3000:]}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_requests_answer_503_while_the_database_is_down_and_everything_resumes_without_a_restart(backends: Backends, mode: str):
    listener, writer, headers = backends.listener, backends.writer, backends.admin.headers
    pids = (listener.proc.pid, writer.proc.pid)
    async with listener.http() as http, writer.http() as writer_http:
        connections = (await _bus_status(http))["connections"]
        skipped, resumed = {}, {}
        for loop in LOOPS:
            skipped[loop] = listener.output().count(f"{loop} skipped: the database is unreachable")
            resumed[loop] = listener.output().count(f"{loop} resumed: the database answers again")
        ws = await WS.open(listener, backends.admin.access_token)
        try:
            subscribed = await ws.subscribe(organization_id=backends.organization_id)
            assert subscribed["type"] == "subscribed", subscribed

            log_offset = len(listener.output())
            await asyncio.to_thread(backends.cluster.stop, mode)
            for server_http in (http, writer_http):
                _assert_unavailable(await server_http.get("/api/v1/deployments", headers=headers))
                _assert_unavailable(
                    await server_http.post("/api/v1/stacks", headers=headers, json={"name": f"down-{mode}", "template": STACK_TEMPLATE})
                )
                _assert_unavailable(
                    await server_http.post(
                        "/api/v1/deployments", headers=headers, json={"stack_id": backends.stack_id, "target_id": backends.target_id}
                    )
                )
                health = await server_http.get("/health")
                assert health.status_code == 503 and health.headers["Retry-After"], health.text
                assert health.json()["status"] == "unavailable" and health.json()["database"]["error"], health.text
            # WebSocket: a frame that needs the database gets an error frame and the socket stays open; a new
            # connection is closed with 1013 (try again later), not with an internal error.
            await ws.send({"type": "subscribe", "organization_id": backends.organization_id})
            refused = await ws.next(lambda f: f["type"] in ("error", "subscribed"))
            assert refused["type"] == "error" and refused["code"] == "database_unavailable", refused
            await ws.send({"type": "ping"})
            assert (await ws.next(lambda f: f["type"] in ("pong", "error")))["type"] == "pong"
            late = await WS.open(listener)
            await late.send({"type": "auth", "token": backends.admin.access_token})
            assert await late.closed_with() == 1013

            # The loops meet the outage (one warning each): the reaper (every 0.5 s), the access refresh (2 s).
            outage_deadline = time.monotonic() + RECOVER_WITHIN
            for loop in LOOPS:
                await _logged(listener, f"{loop} skipped: the database is unreachable", skipped[loop] + 1, outage_deadline)

            # The database stays down until the listener's bus waits out a long backoff; then it returns.
            backoff = await _long_backoff(listener, log_offset, time.monotonic() + 30)
            backoff_ends = time.monotonic() + 0.8 * backoff  # the earliest the backoff (x0.8-1.2) would retry
            await asyncio.to_thread(backends.cluster.start)
            deadline = time.monotonic() + RECOVER_WITHIN
            # The listener listens again (a new connection) before its backoff ends: its /health's own query to the
            # database woke it.
            while not ((status := await _bus_status(http))["connected"] and status["connections"] > connections):
                assert time.monotonic() < backoff_ends, f"the bus waited out its {backoff}s backoff: {status}"
                await asyncio.sleep(0.05)
            for server_http in (http, writer_http):
                await _until_ok(server_http, "GET", "/health", 200, deadline)
                listed = await _until_ok(server_http, "GET", "/api/v1/deployments", 200, deadline, headers=headers)
                assert listed.json()["total"] >= 0
            created_stack = await _until_ok(
                writer_http,
                "POST",
                "/api/v1/stacks",
                201,
                deadline,
                headers=headers,
                json={"name": f"after-{mode}", "template": STACK_TEMPLATE},
            )
            assert created_stack.json()["name"] == f"after-{mode}"

            # The WebSocket client of the listener is told to resynchronise: events may have been missed meanwhile.
            resync = await ws.next(lambda f: f["type"] == "resync", timeout=max(1.0, deadline - time.monotonic()))
            assert resync["organization_id"] == backends.organization_id and resync["deployment_id"] is None, resync

            # An event caused in the other process after the restart reaches the client: NOTIFY -> LISTEN -> socket.
            created = await writer_http.post(
                "/api/v1/deployments", headers=headers, json={"stack_id": backends.stack_id, "target_id": backends.target_id}
            )
            assert created.status_code == 201, created.text
            deployment_id = created.json()["id"]
            event = await ws.next(
                lambda f: f["type"] == "DEPLOYMENT_CREATED" and f["deployment_id"] == deployment_id,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            assert event["organization_id"] == backends.organization_id

            for loop in LOOPS:  # and go on once it is back
                await _logged(listener, f"{loop} resumed: the database answers again", resumed[loop] + 1, deadline)
        finally:
            await ws.close()

    assert (listener.proc.pid, writer.proc.pid) == pids and listener.proc.alive() and writer.proc.alive()
    for server in (listener, writer):
        output = server.output()
        assert "unhandled error" not in output and "Exception in ASGI application" not in output, output[-3000:]
        assert "Traceback" not in output, output[-5000:]  # the loops that met the outage warned, once
        assert "database unavailable on" in output  # the 503s were logged, as one line


async def test_only_connection_failures_count_as_the_database_being_unavailable(backends: Backends):
    """The exceptions asyncpg and SQLAlchemy really raise: a lost or refused connection is an outage; a
    syntax error or a constraint violation is not (it stays a 500, or whatever the service makes of it)."""
    engine = database.build_engine(conftest.make_settings(backends.cluster.async_url))
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception) as syntax:
                await conn.execute(text("SELEC 1"))
            assert not database.is_unavailable(syntax.value)
            await conn.rollback()
            await conn.execute(text("CREATE TEMPORARY TABLE once (id integer PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO once VALUES (1)"))
            with pytest.raises(Exception) as duplicate:
                await conn.execute(text("INSERT INTO once VALUES (1)"))
            assert not database.is_unavailable(duplicate.value)
            await conn.rollback()

        held = await engine.connect()  # a transaction open when the server goes away
        await held.execute(text("SELECT 1"))
        await asyncio.to_thread(backends.cluster.stop, "fast")
        try:
            with pytest.raises(Exception) as in_transaction:
                await held.execute(text("SELECT 2"))
            assert database.is_unavailable(in_transaction.value), repr(in_transaction.value)
            await held.close()
            with pytest.raises(Exception) as refused:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            assert database.is_unavailable(refused.value), repr(refused.value)
            assert not database.is_unavailable(OSError("a Docker engine's socket, not the database's"))
        finally:
            await asyncio.to_thread(backends.cluster.start)
        async with engine.connect() as conn:  # the same engine reconnects by itself
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
