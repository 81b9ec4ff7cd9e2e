"""Plumbing of the real-time benchmarks (not a benchmark itself): a backend process, a deployment row,
this process's event bus as the emitter, and light WebSocket clients.

The backend runs as ``python -m backend.app.main`` (uvicorn) on a fresh PostgreSQL database with
``EVENT_BUS=postgres`` (or ``redis``) and Celery disabled. The deployment row is inserted directly (so
nothing deploys it); this process plays the runner of another process: it commits progress events or log
lines with the backend's own services, and its bus forwards them over NOTIFY / pub/sub.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import _common as c


@dataclass
class Backend:
    db: c.ThrowawayDatabase
    proc: c.Proc
    url: str
    ws_url: str
    settings: object
    headers: dict[str, str] = field(default_factory=dict)
    token: str = ""
    organization_id: str = ""
    target_id: str = ""
    stack_id: str = ""

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


async def start_backend(label: str, cleanup: c.Cleanup, event_bus: str = "postgres", **overrides) -> Backend:
    import httpx

    db = c.ThrowawayDatabase("postgresql", label)
    cleanup.push("drop database", db.drop)
    port = c.free_port()
    values = dict(HOST="127.0.0.1", PORT=port, EVENT_BUS=event_bus, LOG_LEVEL="WARNING")
    if event_bus == "redis":
        values["EVENT_BUS_REDIS_URL"] = f"redis://{c.REDIS_HOST}:{c.REDIS_PORT}/0"
    values.update(overrides)
    settings = c.make_settings(db.url, **values)
    proc = c.Proc([str(c.BIN / "python"), "-m", "backend.app.main"], c.settings_env(settings), c.SCRATCH / f"{label}.log")
    cleanup.push("stop backend", proc.stop)
    backend = Backend(db, proc, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/api/v1/ws", settings)
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient(base_url=backend.url, timeout=30) as client:
        while True:
            c.check_stop()
            if not proc.alive():
                raise RuntimeError(f"backend exited:\n{proc.tail()}")
            try:
                health = (await client.get("/health", timeout=2)).json()
                if health["event_bus"]["connected"]:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"backend did not start:\n{proc.tail()}")
            await asyncio.sleep(0.3)
        env = await c.api_setup(client, {"name": "bench", "template": "services:\n  app:\n    image: x\n", "variables": []})
        backend.headers, backend.target_id, backend.stack_id = env.headers, env.target_id, env.stack_id
        # An API token (no expiry): connecting thousands of clients on a loaded machine outlasts an access token.
        token = await client.post("/api/v1/tokens", json={"name": "bench"}, headers=env.headers)
        backend.token = token.json()["token"]
        backend.organization_id = (await client.get("/api/v1/auth/me", headers=env.headers)).json()["default_organization_id"]
    return backend


async def start_emitter(backend: Backend) -> None:
    """This process's database binding and event bus (sending only), on the backend's database."""
    from backend.app import database
    from backend.app.runtime.event_transport import event_bus_status, start_event_bus

    database.configure(backend.settings)
    await start_event_bus(backend.settings, listen=False)
    deadline = time.monotonic() + 30
    while not event_bus_status()["connected"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"event bus did not connect: {event_bus_status()}")
        await asyncio.sleep(0.05)


async def insert_deployment(backend: Backend, status: str = "deploying", deployment_id: str | None = None) -> str:
    """A deployment row placed in ``status`` (nothing runs it)."""
    from backend.app import database
    from backend.app.database import utcnow
    from backend.app.models import Deployment, DeploymentStatus
    from backend.app.models.base import new_id

    async with database.AsyncSessionLocal() as session:
        row = Deployment(id=deployment_id or new_id(), organization_id=backend.organization_id, stack_id=backend.stack_id,
                         target_id=backend.target_id, name=f"bench-{int(time.time() * 1000) % 10**8}",
                         status=DeploymentStatus(status), attempt=1, queued_at=utcnow(), variables={})
        session.add(row)
        await session.commit()
        return row.id


class Client:
    """A WebSocket client that records when each frame arrived (``time.perf_counter()``)."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.seen: list[tuple[float, dict]] = []
        self.task: asyncio.Task | None = None
        self.waiters: list[tuple[callable, asyncio.Future]] = []

    @classmethod
    async def connect(cls, backend: Backend, **subscribe) -> Client:
        from websockets.asyncio.client import connect

        conn = await connect(backend.ws_url, open_timeout=60, max_size=None, ping_interval=None)
        await conn.send(json.dumps({"type": "auth", "token": backend.token}))
        assert json.loads(await conn.recv())["type"] == "authenticated"
        await conn.send(json.dumps({"type": "subscribe", **subscribe}))
        while True:
            frame = json.loads(await conn.recv())
            if frame["type"] == "subscribed":
                break
            if frame["type"] == "error":
                raise RuntimeError(frame)
        client = cls(conn)
        client.task = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                now = time.perf_counter()
                frame = json.loads(raw)
                self.seen.append((now, frame))
                for predicate, future in list(self.waiters):
                    if not future.done() and predicate(frame):
                        future.set_result(now)
        except Exception:  # noqa: BLE001 - closed at the end of the run
            pass

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
        await self.conn.close()


RETRIED: list[str] = []  # connections that failed once (reported by the benchmarks)


async def connect_many(backend: Backend, count: int, batch: int = 100, **subscribe) -> list[Client]:
    """``count`` subscribed clients, ``batch`` at a time; a connection that fails is retried (twice)."""
    clients: list[Client] = []
    for start in range(0, count, batch):
        c.check_stop()
        results = await asyncio.gather(*(Client.connect(backend, **subscribe) for _ in range(min(batch, count - start))),
                                       return_exceptions=True)
        for result in results:
            for attempt in range(2):
                if not isinstance(result, BaseException):
                    break
                RETRIED.append(f"{type(result).__name__}: {result}")
                await asyncio.sleep(0.5)
                try:
                    result = await Client.connect(backend, **subscribe)
                except Exception as exc:  # noqa: BLE001 - retried once more, then raised
                    result = exc
            if isinstance(result, BaseException):
                raise result
            clients.append(result)
    return clients


async def emit_progress(deployment_id: str, step: int) -> float:
    """Commit one ``DEPLOYMENT_PROGRESS`` (``current_step = step``); returns the ``perf_counter`` of the commit."""
    from backend.app import database
    from backend.app.services.deployment_logs import set_progress

    async with database.AsyncSessionLocal() as session:
        await set_progress(session, deployment_id=deployment_id, owner=None, current_step=step, total_steps=10**9, step_name="bench")
        emitted = time.perf_counter()
        await session.commit()
    return emitted


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
