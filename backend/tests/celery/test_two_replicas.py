"""Two backend replicas behind nginx, a Celery worker running the deployments, clients on both replicas.

nginx runs the production proxy's own configuration (deploy/nginx.conf: WebSocket upgrade, unbuffered
streams, the next replica for a connection that fails), with the two replicas as its upstream instead of
Docker's DNS name. A Chromium page and WebSocket clients connect through it and land on both replicas; the
deployments run on a separate Celery worker process, so every event reaches a replica over the event bus
(PostgreSQL NOTIFY). Then the replica the browser is on is killed (``kill -9``) while the deployments write
their logs: its clients reconnect through the proxy to the other replica and resume by ``seq``. Every
client must end with exactly the persisted lines of every deployment (none lost, none twice), each
deployment must have run once and be running, and the replicas share their login limits (Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from backend.app import database
from backend.app.models import Deployment, DeploymentStatusHistory
from backend.tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, DIST
from backend.tests.celery.test_celery_execution import REDIS_TEST_DB, celery_settings
from backend.tests.celery.test_realtime_deployments import TICKER
from backend.tests.celery_fixtures import start_worker, wait_heartbeat, wait_mode
from backend.tests.conftest import require_service
from backend.tests.deploy_helpers import force_cleanup, free_port
from backend.tests.nginx_proxy import NGINX, Proxy
from backend.tests.realtime_helpers import Server

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]

EMAIL, PASSWORD = "admin@example.com", "correct-horse-battery"
#: the UI's first reconnection comes after 1 s (frontend/src/realtime/socket.ts): these clients wait as long,
#: so that the worker writes lines while they are away
RECONNECT_DELAY = 1.0


class Follower:
    """A WebSocket client through the proxy that follows the organisation and every deployment in it, as the UI
    does: it subscribes to each deployment it learns of (a creation event, or the list read after a
    reconnection) from ``seq`` 0, and after a lost connection it reconnects and subscribes again from the last
    ``seq`` it saw. It keeps every line it receives, duplicates included: nothing here hides a server's fault."""

    def __init__(self, proxy: Proxy, token: str, organization_id: str) -> None:
        self.proxy, self.token, self.organization_id = proxy, token, organization_id
        self.lines: dict[str, list[dict]] = defaultdict(list)
        self.statuses: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.created: list[str] = []
        self.connections = 0
        self.dropped_at: list[float] = []
        self.reconnected_at: list[float] = []
        self.resyncs: list[dict] = []
        self.live = asyncio.Event()
        self.gate = asyncio.Event()  # a lost connection is opened again once this is set (and RECONNECT_DELAY)
        self.gate.set()
        self._conn = None
        self._task = asyncio.create_task(self._run())

    def last_seq(self, deployment_id: str) -> int:
        lines = self.lines.get(deployment_id)
        return lines[-1]["seq"] if lines else 0

    async def _follow(self, deployment_id: str) -> None:
        if deployment_id not in self.lines:
            self.lines[deployment_id] = []
            await self._conn.send(json.dumps({"type": "subscribe", "deployment_id": deployment_id, "since_seq": 0}))

    async def _run(self) -> None:
        while True:
            try:
                async with connect(self.proxy.ws_url, open_timeout=10) as conn:
                    await conn.send(json.dumps({"type": "auth", "token": self.token}))
                    assert json.loads(await conn.recv())["type"] == "authenticated"
                    self._conn = conn
                    self.connections += 1
                    if self.connections > 1:
                        self.reconnected_at.append(time.time())
                    await conn.send(json.dumps({"type": "subscribe", "organization_id": self.organization_id}))
                    for deployment_id in list(self.lines):
                        frame = {"type": "subscribe", "deployment_id": deployment_id, "since_seq": self.last_seq(deployment_id)}
                        await conn.send(json.dumps(frame))
                    if self.connections > 1:  # what was created while away (the UI re-reads its list the same way)
                        async with httpx.AsyncClient(base_url=self.proxy.url, timeout=30) as http:
                            page = await http.get("/api/v1/deployments", headers={"Authorization": f"Bearer {self.token}"})
                        for item in page.json()["items"]:
                            await self._follow(item["id"])
                    self.live.set()
                    async for raw in conn:
                        frame = json.loads(raw)
                        kind, deployment_id = frame["type"], frame.get("deployment_id")
                        if kind == "DEPLOYMENT_CREATED":
                            self.created.append(deployment_id)
                            await self._follow(deployment_id)
                        elif kind == "DEPLOYMENT_LOGS_UPDATE":
                            self.lines[deployment_id].extend(frame["data"]["logs"])
                        elif kind == "DEPLOYMENT_STATUS_CHANGED":
                            self.statuses[deployment_id].append((frame["data"]["old_status"], frame["data"]["new_status"]))
                        elif kind == "resync":
                            self.resyncs.append(frame)
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
                pass
            self.live.clear()
            self.dropped_at.append(time.time())
            await asyncio.sleep(RECONNECT_DELAY)
            await self.gate.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def websocket_connections(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    match = re.search(r"^windflow_websocket_connections (\S+)$", text, re.M)
    return int(float(match.group(1))) if match else 0


async def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


#: the ws-badge's states, in order, as the page shows them (armed before the page's own scripts)
BADGE_RECORDER = """
window.__badge = [];
new MutationObserver(() => {
  const el = document.querySelector('[data-testid=ws-badge]');
  const state = el && el.dataset.state;
  if (state && window.__badge[window.__badge.length - 1] !== state) window.__badge.push(state);
}).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'] });
"""


async def test_two_replicas_behind_nginx_lose_and_double_nothing_when_one_is_killed(db, tmp_path, docker_engine):
    if not Path(NGINX).exists():
        require_service("nginx", f"{NGINX} is missing (bash scripts/ensure-services.sh installs it)")
    if not Path(CHROMIUM).exists() or not (DIST / "index.html").is_file():
        require_service("Chromium and the built UI", "/usr/bin/chromium and frontend/dist (make frontend)")
    import redis
    from playwright.async_api import async_playwright

    redis_url = f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
    try:
        redis.Redis.from_url(redis_url).ping()
    except redis.ConnectionError as exc:
        require_service("Redis", str(exc))

    common = dict(
        PROMETHEUS_ENABLED=True,
        FRONTEND_DIST=DIST,
        FORWARDED_ALLOW_IPS="127.0.0.1",  # the proxy's X-Forwarded-For is believed
        RATE_LIMIT_REDIS_URL=redis_url,
        LOGIN_FAILURES_PER_ACCOUNT=3,
        LOGIN_RATE_LIMIT_PER_MINUTE=1000,  # the address (127.0.0.1) is every test's on this Redis
        RECOVERY_ON_STARTUP=True,
        # the production default (tests use 1 s): the deployments still write lines a few seconds after their
        # first ones, when the replica is killed
        DEPLOYMENT_STABLE_SECONDS=3.0,
    )
    # each replica with its WebSocket listener (WS_PORT), where the proxy sends /api/v1/ws, as in production
    settings = [
        celery_settings(db, tmp_path, "database", HOST="127.0.0.1", PORT=free_port(), WS_PORT=free_port(), **common) for _ in range(2)
    ]
    worker = start_worker(settings[0], tmp_path)
    replicas = [Server(s, tmp_path, name=f"replica-{i}") for i, s in enumerate(settings)]
    proxy = Proxy([r.port for r in replicas], tmp_path / "nginx", ws_ports=[r.ws_port for r in replicas])
    followers: list[Follower] = []
    deployment_ids: list[str] = []
    try:
        async with async_playwright() as playwright, httpx.AsyncClient(base_url=proxy.url, timeout=30) as http:
            launching = asyncio.create_task(playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS))
            await asyncio.gather(wait_heartbeat("w1@", worker), *(r.wait_ready() for r in replicas))
            await asyncio.to_thread(proxy.wait_ready)
            setup = await http.post("/api/v1/auth/setup", json={"email": EMAIL, "password": PASSWORD, "organization_name": "acme"})
            assert setup.status_code == 201, setup.text
            headers = {"Authorization": f"Bearer {setup.json()['access_token']}"}

            async def on_both_replicas() -> None:
                for replica in replicas:
                    async with replica.http() as direct:
                        # a token issued by one replica works on the other; both send deployments to the worker
                        assert (await direct.get("/api/v1/auth/me", headers=headers)).status_code == 200
                        await wait_mode(direct, headers, "external")
                # Login limits are shared (Redis): failed logins of one account alternating replicas, three in all.
                account = f"nobody-{uuid.uuid4().hex[:8]}@example.com"  # its own count on a Redis other runs share
                statuses = []
                for attempt in range(4):
                    async with replicas[attempt % 2].http() as direct:
                        response = await direct.post("/api/v1/auth/login", data={"username": account, "password": "wrong"})
                    statuses.append(response.status_code)
                assert statuses == [401, 401, 401, 429], statuses

            async def resources() -> tuple[str, str, str, str]:
                org = (await http.get("/api/v1/auth/me", headers=headers)).json()["default_organization_id"]
                stack = await http.post("/api/v1/stacks", headers=headers, json=TICKER)
                assert stack.status_code == 201, stack.text
                targets = (await http.get("/api/v1/targets", headers=headers)).json()["items"]
                assert [t["name"] for t in targets] == ["local"], targets  # setup's own target: the form picks it
                token = await http.post("/api/v1/tokens", json={"name": "ws"}, headers=headers)
                return org, stack.json()["id"], targets[0]["id"], token.json()["token"]

            async def browser_logged_in():
                browser = await launching
                context = await browser.new_context(viewport={"width": 1280, "height": 800})
                await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=proxy.url)
                context.set_default_timeout(60_000)
                page = await context.new_page()
                await page.add_init_script(BADGE_RECORDER)
                await page.goto(f"{proxy.url}/login")
                await page.fill("input[name=email]", EMAIL)
                await page.fill("input[name=password]", PASSWORD)
                await page.click("[data-testid=login-submit]")
                await page.get_by_test_id("deployment-count").wait_for()
                return page

            _, (org, stack_id, target_id, api_token), page = await asyncio.gather(on_both_replicas(), resources(), browser_logged_in())
            await page.goto(f"{proxy.url}/deployments/new?stack={stack_id}")  # a new page: a new socket
            await page.fill("input[name=deployment-name]", "from-browser")
            # the browser's socket is the only one yet: the replica it landed on is the one to kill
            counts = await wait_until(
                lambda: (c := [websocket_connections(r.port) for r in replicas]) and sum(c) == 1 and c, 30, "the browser's socket"
            )
            doomed, survivor = (replicas[0], replicas[1]) if counts[0] == 1 else (replicas[1], replicas[0])

            # WebSocket clients through the proxy until each replica has two of them
            while min(websocket_connections(doomed.port) - 1, websocket_connections(survivor.port)) < 2:
                assert len(followers) < 12, [websocket_connections(r.port) for r in replicas]
                followers.append(Follower(proxy, api_token, org))
                await asyncio.wait_for(followers[-1].live.wait(), 30)
            on_doomed = websocket_connections(doomed.port) - 1

            # The browser deploys from the form (through the proxy) and watches its logs; one more by the API.
            await page.get_by_test_id("deploy-submit").click()
            await page.wait_for_url("**/deployments?logs=*")
            deployment_ids.append(page.url.split("logs=")[1].split("&")[0])
            created = await http.post(
                "/api/v1/deployments", headers=headers, json={"stack_id": stack_id, "target_id": target_id, "name": "api-1"}
            )
            assert created.status_code == 201, created.text
            deployment_ids.append(created.json()["id"])
            # mid-stream: every client has lines of both, and neither is running yet
            await wait_until(lambda: all(f.lines.get(d) for f in followers for d in deployment_ids), 60, "the first lines")
            await page.get_by_test_id("log-line").first.wait_for()
            for follower in followers:
                follower.gate.clear()  # who loses its connection stays away until the worker wrote more lines
            killed_at = time.time()
            doomed.proc.kill9()
            await wait_until(lambda: sum(bool(f.dropped_at) for f in followers) == on_doomed, 30, "the killed replica's clients to notice")
            dropped = [f for f in followers if f.dropped_at]
            seen = {d: max(f.last_seq(d) for f in dropped) for d in deployment_ids}

            async def written_while_away() -> bool:
                for d in deployment_ids:
                    body = (await http.get(f"/api/v1/deployments/{d}/logs?since_seq={seen[d]}", headers=headers)).json()
                    if body["items"]:
                        return True
                return False

            await wait_until(written_while_away, 60, "lines written while the killed replica's clients are away")
            for follower in followers:
                follower.gate.set()
            # one more deployment after the kill: the proxy sends it to the replica left
            created = await http.post(
                "/api/v1/deployments", headers=headers, json={"stack_id": stack_id, "target_id": target_id, "name": "api-2"}
            )
            assert created.status_code == 201, created.text
            deployment_ids.append(created.json()["id"])

            async def all_running() -> bool:
                states = [(await http.get(f"/api/v1/deployments/{d}", headers=headers)).json()["status"] for d in deployment_ids]
                assert not set(states) & {"failed", "cancelled"}, states
                return states == ["running"] * len(deployment_ids)

            await wait_until(all_running, 120, "every deployment running", interval=0.5)
            persisted = {}
            for deployment_id in deployment_ids:
                body = await http.get(f"/api/v1/deployments/{deployment_id}/logs?since_seq=0&limit=5000", headers=headers)
                persisted[deployment_id] = body.json()["items"]
                assert persisted[deployment_id], deployment_id

            # Every client ends with exactly the persisted lines of every deployment: none lost, none twice.
            def caught_up() -> bool:
                return all(
                    [l["seq"] for l in f.lines.get(d, [])][-1:] == [persisted[d][-1]["seq"]] for f in followers for d in deployment_ids
                )

            await wait_until(caught_up, 30, "every client caught up")
            for number, follower in enumerate(followers):
                for deployment_id in deployment_ids:
                    got = [(l["seq"], l["message"]) for l in follower.lines[deployment_id]]
                    assert got == [(l["seq"], l["message"]) for l in persisted[deployment_id]], (number, deployment_id)
                    transitions = follower.statuses[deployment_id]
                    assert len(transitions) == len(set(transitions)), transitions  # no status event twice
                assert not follower.resyncs, follower.resyncs
                # the creations before the kill came live from whichever replica took the POST
                assert set(deployment_ids[:2]) <= set(follower.created), (number, follower.created)
            assert 1 <= len(dropped) == on_doomed  # the killed replica's clients, and only them, lost their connection
            assert all(f.connections == 2 for f in dropped) and all(f.connections == 1 for f in followers if f not in dropped)
            # they were away while the worker wrote lines, and got them through since_seq on the other replica
            away = [
                line
                for f in dropped
                for d in deployment_ids[:2]
                for line in f.lines[d]
                if killed_at < _epoch(line["timestamp"]) < f.reconnected_at[0]
            ]
            assert away, "no line was written while the killed replica's clients were away"
            assert websocket_connections(survivor.port) == len(followers) + 1  # everyone is on the replica left

            # The browser: its badge left "live" and came back; its drawer holds every line once.
            await page.wait_for_function("window.__badge.length >= 3 && window.__badge[window.__badge.length - 1] === 'live'")
            badge = await page.evaluate("window.__badge")
            assert badge[-1] == "live" and "live" in badge[:-1] and set(badge[badge.index("live") + 1 : -1]) - {"live"}, badge
            await page.get_by_test_id("copy-logs").click()
            await page.wait_for_timeout(300)
            copied = await page.evaluate("navigator.clipboard.readText()")
            rows = [re.match(r"^\S+ \[(\w+)\] (.*)$", row).groups() for row in copied.splitlines()]
            assert rows == [(l["level"].upper(), l["message"]) for l in persisted[deployment_ids[0]]]
            await (await launching).close()

        # Each deployment ran once (one claim, one attempt), and none is left behind.
        async with database.AsyncSessionLocal() as session:
            rows = (await session.execute(select(Deployment).where(Deployment.id.in_(deployment_ids)))).scalars().all()
            claims = (
                await session.execute(
                    select(DeploymentStatusHistory.deployment_id).where(
                        DeploymentStatusHistory.deployment_id.in_(deployment_ids), DeploymentStatusHistory.to_status == "deploying"
                    )
                )
            ).all()
        assert sorted((r.status, r.attempt) for r in rows) == [("running", 1)] * len(deployment_ids)
        assert sorted(c[0] for c in claims) == sorted(deployment_ids)
        assert "Traceback" not in survivor.output() + worker.output()
    finally:
        for follower in followers:
            await follower.close()
        proxy.stop()
        for replica in replicas:
            replica.stop()
        worker.stop()
        for deployment_id in deployment_ids:
            force_cleanup(deployment_id)


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
