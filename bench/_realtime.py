"""Plumbing of the real-time benchmarks (not a benchmark itself): a backend process, a deployment row,
this process's event bus as the emitter, and cheap WebSocket clients in a process of their own
(``_wsfarm.py``; with two CPUs or more the backend is pinned to one CPU, the benchmark and its clients to
the others, so that they do not take CPU time from each other).

The backend runs as ``python -m backend.app.main`` (uvicorn) on a fresh PostgreSQL database with
``EVENT_BUS=postgres`` (or ``redis``) and Celery disabled. The deployment row is inserted directly (so
nothing deploys it); this process plays the runner of another process: it commits progress events or log
lines with the backend's own services, and its bus forwards them over NOTIFY / pub/sub.
"""

from __future__ import annotations

import asyncio
import json
import os
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

    def cpu_seconds(self) -> float:
        """CPU time of the backend's main thread, its event loop, so far (Python and the kernel's work in its
        system calls, to the nanosecond: ``/proc/PID/schedstat``). Around one fan-out it tells what the
        delivery cost the server, which a loaded machine changes much less than the latencies."""
        with open(f"/proc/{self.pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9


async def start_backend(label: str, cleanup: c.Cleanup, event_bus: str = "postgres", ws: str = "listener", **overrides) -> Backend:
    """A backend on a throwaway database; its clients connect to ``ws``: "listener" (the WebSocket listener,
    WS_PORT, as behind the production proxy) or "asgi" (uvicorn's route on PORT)."""
    import resource

    import httpx

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the backend: thousands of sockets
    db = c.ThrowawayDatabase("postgresql", label)
    cleanup.push("drop database", db.drop)
    port = c.free_port()
    values = dict(HOST="127.0.0.1", PORT=port, EVENT_BUS=event_bus, LOG_LEVEL="WARNING")
    ws_port = port
    if ws == "listener":
        values["WS_PORT"] = ws_port = c.free_port()
    if event_bus == "redis":
        values["EVENT_BUS_REDIS_URL"] = f"redis://{c.REDIS_HOST}:{c.REDIS_PORT}/0"
    values.update(overrides)
    settings = c.make_settings(db.url, **values)
    proc = c.Proc([str(c.BIN / "python"), "-m", "backend.app.main"], c.settings_env(settings), c.SCRATCH / f"{label}.log")
    cleanup.push("stop backend", proc.stop)
    backend = Backend(db, proc, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{ws_port}/api/v1/ws", settings)
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


async def start_replica(backend: Backend, label: str, cleanup: c.Cleanup) -> Backend:
    """A second backend process on ``backend``'s database (another port, the same settings otherwise): a
    replica, as behind a proxy. It shares the first one's user, token and organisation."""
    import dataclasses

    import httpx

    port = c.free_port()
    ws_port = c.free_port() if backend.settings.WS_PORT else port
    settings = backend.settings.model_copy(update={"PORT": port, "WS_PORT": ws_port if backend.settings.WS_PORT else 0})
    proc = c.Proc([str(c.BIN / "python"), "-m", "backend.app.main"], c.settings_env(settings), c.SCRATCH / f"{label}.log")
    cleanup.push("stop replica", proc.stop)
    replica = dataclasses.replace(
        backend, proc=proc, url=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{ws_port}/api/v1/ws", settings=settings
    )
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as client:
        while True:
            c.check_stop()
            if not proc.alive():
                raise RuntimeError(f"replica exited:\n{proc.tail()}")
            try:
                if (await client.get("/health", timeout=2)).json()["event_bus"]["connected"]:
                    return replica
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica did not start:\n{proc.tail()}")
            await asyncio.sleep(0.3)


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
        row = Deployment(
            id=deployment_id or new_id(),
            organization_id=backend.organization_id,
            stack_id=backend.stack_id,
            target_id=backend.target_id,
            name=f"bench-{int(time.time() * 1000) % 10**8}",
            status=DeploymentStatus(status),
            attempt=1,
            queued_at=utcnow(),
            variables={},
        )
        session.add(row)
        await session.commit()
        return row.id


class Farm:
    """WebSocket clients in a process of their own (``bench/_wsfarm.py``), optionally pinned to other CPUs
    than the backend's, so that reading thousands of frames does not take CPU time from the server."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict) -> None:
        self.proc = proc
        self.info = info
        self.count = 0
        self.retried: list[str] = []

    @classmethod
    async def start(cls, cleanup: c.Cleanup, cpus: set[int] | None = None) -> Farm:
        proc = await asyncio.create_subprocess_exec(
            str(c.BIN / "python"),
            str(c.BENCH_DIR / "_wsfarm.py"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**30,
        )
        if cpus:
            os.sched_setaffinity(proc.pid, cpus)

        def stop() -> None:
            if proc.returncode is None:
                proc.kill()

        cleanup.push("stop WebSocket client farm", stop)
        farm = cls(proc, {})
        farm.info = json.loads(await proc.stdout.readline())
        return farm

    async def ask(self, **cmd) -> dict:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the client farm exited ({await self.proc.wait()})")
        return json.loads(line)

    async def connect(self, backend: Backend | str, count: int, batch: int = 100, **subscribe) -> int:
        """``count`` more clients, ``batch`` at a time (a failed connection is retried twice); ``backend``:
        WindFlow's, or the WebSocket URL of ``_rawfanout.py``."""
        url, token = (backend, "-") if isinstance(backend, str) else (backend.ws_url, backend.token)
        answer = await self.ask(cmd="connect", url=url, token=token, count=count, batch=batch, subscribe=subscribe)
        self.retried += answer["errors"]
        self.count += answer["connected"]
        if "failed" in answer:
            raise RuntimeError(f"client farm: {answer['failed']} ({self.count} connected)")
        return answer["connected"]

    async def progress(self, steps: list[int], per_step: int, timeout: float = 60) -> dict[int, list[float]]:
        answer = await self.ask(cmd="progress", steps=steps, per_step=per_step, timeout=timeout)
        return {int(k): v for k, v in answer["arrivals"].items()}

    async def logs(self, kind: str, last: int, timeout: float = 180) -> dict:
        return await self.ask(cmd="logs", kind=kind, last=last, timeout=timeout)

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.ask(cmd="close"), 30)
            except (TimeoutError, RuntimeError, BrokenPipeError, ConnectionError):
                self.proc.kill()
            await self.proc.wait()


async def raw_fanout(
    cleanup: c.Cleanup, clients: int, events: int, interval: float, pinned: bool, first_step: int = 10**8
) -> tuple[list[float], list[float], list[float], list[float]]:
    """The same fan-out without WindFlow: ``_rawfanout.py`` (on the backend's CPU when pinned) writes one
    frame per event to ``clients`` farm clients. Returns every client's latency, and per event the time
    until the last client had it, the server's time to write them all and the CPU time that took."""
    server = await asyncio.create_subprocess_exec(
        str(c.BIN / "python"), str(c.BENCH_DIR / "_rawfanout.py"), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    cleanup.push("stop the raw fan-out server", lambda: server.returncode is None and server.kill())
    pinned = pinned and (os.cpu_count() or 1) >= 2
    if pinned:  # as pin() places the backend and the clients
        os.sched_setaffinity(server.pid, {0})
    port = json.loads(await server.stdout.readline())["port"]
    farm = await Farm.start(cleanup, set(range(1, os.cpu_count())) if pinned else None)
    try:
        await farm.connect(f"ws://127.0.0.1:{port}/", clients, organization_id="-")
        latencies, lasts, writes, cpu = [], [], [], []
        for step in range(first_step, first_step + events):
            server.stdin.write((json.dumps({"step": step}) + "\n").encode())
            await server.stdin.drain()
            sent = json.loads(await server.stdout.readline())
            arrivals = (await farm.progress([step], clients))[step]
            latencies += [at - sent["sent_at"] for at in arrivals]
            lasts.append(max(arrivals) - sent["sent_at"])
            writes.append(sent["elapsed"])
            cpu.append(sent["cpu"])
            await asyncio.sleep(interval)
        return latencies, lasts, writes, cpu
    finally:
        await farm.close()
        server.kill()
        await server.wait()


def pin(backend: Backend, enabled: bool) -> tuple[set[int] | None, str]:
    """With two CPUs or more: the backend on CPU 0, this process and the client farm on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return None, "not pinned"
    os.sched_setaffinity(backend.pid, {cpus[0]})
    for task in os.listdir(f"/proc/{backend.pid}/task"):  # uvicorn's threads, started already
        os.sched_setaffinity(int(task), {cpus[0]})
    others = set(cpus[1:])
    os.sched_setaffinity(0, others)
    return others, f"backend pinned to CPU {cpus[0]}, benchmark and clients to CPU {','.join(map(str, sorted(others)))}"


async def emit_progress(deployment_id: str, step: int) -> float:
    """Commit one ``DEPLOYMENT_PROGRESS`` (``current_step = step``); returns the ``perf_counter`` of the commit."""
    from backend.app import database
    from backend.app.services.deployments.logs import set_progress

    async with database.AsyncSessionLocal() as session:
        await set_progress(session, deployment_id=deployment_id, owner=None, current_step=step, total_steps=10**9, step_name="bench")
        emitted = time.perf_counter()
        await session.commit()
    return emitted
