"""Shared plumbing of the benchmarks (not a benchmark itself).

Import this module *before* any ``backend`` module and call :func:`bootstrap`: the backend builds a
module-level ``Settings`` at import time, which must neither read a developer's ``.env`` secrets nor
touch ``./data``. Every benchmark then builds its own ``Settings`` for a throw-away database.

Nothing here changes backend behaviour. The only hooks are the bus subscription (the same one the
WebSocket uses) and, in ``deploy_overhead.py``, timing wrappers around the compose subprocess calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TEST_IMAGE = "windflow-test/busybox:latest"
PG_ADMIN_DSN = os.environ.get("WINDFLOW_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
SECRET_KEY = "bench-" + secrets.token_urlsafe(40)

_bootstrapped = False


def bootstrap() -> Path:
    """Environment for the backend's import-time settings; returns the benchmark's scratch directory."""
    global _bootstrapped, SCRATCH
    if _bootstrapped:
        return SCRATCH
    SCRATCH = Path(tempfile.mkdtemp(prefix="windflow-bench-"))
    os.environ["SECRET_KEY"] = SECRET_KEY
    os.environ["DATABASE_URL"] = f"sqlite+aiosqlite:///{SCRATCH / 'import-time-unused.db'}"
    os.environ["CELERY_ENABLED"] = "false"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    _bootstrapped = True
    return SCRATCH


SCRATCH: Path


# --------------------------------------------------------------------------- interruption

STOP = threading.Event()


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop measuring, clean up, exit."""


def check_stop() -> None:
    if STOP.is_set():
        raise Interrupted("interrupted")


def run_main(factory) -> Any:
    """``asyncio.run(factory())`` where SIGINT/SIGTERM cancel the benchmark *and* set :data:`STOP`, so that a
    cancellation swallowed somewhere still ends the run at the next :func:`check_stop`; clean-up (``finally``
    blocks) always runs. Raises :class:`Interrupted` when interrupted."""

    async def runner():
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal(name: str) -> None:
            if STOP.is_set():
                print(f"{name}: still cleaning up (containers, worker processes, databases), please wait", file=sys.stderr)
                return
            STOP.set()
            print(f"\n{name}: stopping, cleaning up...", file=sys.stderr, flush=True)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        return await factory()

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        raise Interrupted("interrupted") from None
    finally:
        if STOP.is_set():
            raise Interrupted("interrupted")


# --------------------------------------------------------------------------- preflight


def require_docker() -> None:
    problem = None
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20)
        if info.returncode != 0:
            problem = info.stderr.strip() or "docker info failed"
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        sys.exit(f"Docker engine not reachable ({problem}); run: bash scripts/setup-docker.sh")
    image = subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True, timeout=20)
    if image.returncode != 0:
        sys.exit(f"{TEST_IMAGE} is missing; run: bash scripts/setup-docker.sh")
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    if compose.returncode != 0:
        sys.exit("`docker compose` (v2) is missing; run: bash scripts/setup-docker.sh")


def machine_line() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPU(s), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


# --------------------------------------------------------------------------- throw-away databases


class ThrowawayDatabase:
    """A SQLite file in the scratch directory, or a fresh PostgreSQL database dropped at :meth:`drop`."""

    def __init__(self, kind: str, label: str) -> None:
        self.kind = kind
        self.name: str | None = None
        if kind == "sqlite":
            self.url = f"sqlite+aiosqlite:///{SCRATCH / f'{label}.db'}"
            return
        import psycopg

        self.name = f"windflow_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        try:
            with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'CREATE DATABASE "{self.name}"')
        except psycopg.Error as exc:
            sys.exit(f"PostgreSQL not usable at {PG_ADMIN_DSN} ({exc}); set WINDFLOW_BENCH_PG_DSN")
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        self.url = f"{base}/{self.name}"

    def drop(self) -> None:
        if self.name is None:
            return
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.name = None


def make_settings(database_url: str, **overrides):
    from backend.app.config import Settings

    values: dict[str, Any] = dict(
        DATABASE_URL=database_url,
        SECRET_KEY=SECRET_KEY,
        ENVIRONMENT="test",
        CELERY_ENABLED=False,
        RUN_MIGRATIONS_ON_STARTUP=True,
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        DEPLOYMENT_RATE_LIMIT_PER_MINUTE=1_000_000,
        FRONTEND_DIST=SCRATCH / "no-frontend",
        DEPLOYMENTS_WORKDIR=SCRATCH / "deployments",
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


# --------------------------------------------------------------------------- child processes


if str(REPO_ROOT) not in sys.path:  # a benchmark runs as a script: bench/ is on the path, the repository not
    sys.path.insert(0, str(REPO_ROOT))

from backend.tests.processes import Proc, settings_env  # noqa: E402, F401 - shared with the test fixtures

# --------------------------------------------------------------------------- the API, as a client drives it


@dataclass
class ApiEnv:
    client: Any
    headers: dict[str, str]
    target_id: str
    stack_id: str


def _expect(response, status: int, what: str) -> None:
    if response.status_code != status:
        raise RuntimeError(f"{what} answered {response.status_code}: {response.text}")


async def api_setup(client, stack: dict, max_concurrent: int = 100) -> ApiEnv:
    response = await client.post(
        "/api/v1/auth/setup", json={"email": "bench@example.com", "password": "bench-password-123", "organization_name": "bench"}
    )
    _expect(response, 201, "POST /auth/setup")
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    target = await client.post(
        "/api/v1/targets",
        json={
            "name": "bench-engine",
            "type": "docker",
            "endpoint": "unix:///var/run/docker.sock",
            "max_concurrent_deployments": max_concurrent,
        },
        headers=headers,
    )
    _expect(target, 201, "POST /targets")
    created = await client.post("/api/v1/stacks", json=stack, headers=headers)
    _expect(created, 201, "POST /stacks")
    return ApiEnv(client, headers, target.json()["id"], created.json()["id"])


# --------------------------------------------------------------------------- events


@dataclass
class Seen:
    perf: float  # time.perf_counter() when this process's bus delivered it
    wall: float  # time.time() at the same moment
    event: Any


class EventRecorder:
    """Records every bus event by deployment, with the moment it was delivered in this process.

    In-process executors publish from SQLAlchemy's ``after_commit`` hook, so the delivery moment is the
    commit moment (no polling error). Events of Celery workers arrive through the event transport
    (LISTEN/NOTIFY or Redis pub/sub), so their delivery moment includes the transport's delay; their
    ``timestamp`` (set by the worker) does not.
    """

    def __init__(self) -> None:
        self.by_deployment: dict[str, list[Seen]] = defaultdict(list)
        self._cond: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._unsubscribe = None

    def start(self) -> None:
        from backend.app.core.events import bus

        self._loop = asyncio.get_running_loop()
        self._cond = asyncio.Condition()
        self._unsubscribe = bus.subscribe(self._on_event)

    def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_event(self, evt) -> None:
        seen = Seen(time.perf_counter(), time.time(), evt)
        with self._lock:
            self.by_deployment[evt.deployment_id].append(seen)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._notify()))

    async def _notify(self) -> None:
        assert self._cond is not None
        async with self._cond:
            self._cond.notify_all()

    def find(self, deployment_id: str, predicate) -> Seen | None:
        with self._lock:
            for seen in self.by_deployment.get(deployment_id, []):
                if predicate(seen.event):
                    return seen
        return None

    async def wait(self, deployment_id: str, predicate, timeout: float) -> Seen | None:
        assert self._cond is not None
        deadline = time.monotonic() + timeout
        async with self._cond:
            while True:
                found = self.find(deployment_id, predicate)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), min(left, 0.5))


def status_is(*statuses: str):
    def predicate(evt) -> bool:
        return str(evt.type) == "DEPLOYMENT_STATUS_CHANGED" and evt.data.get("new_status") in statuses

    return predicate


# --------------------------------------------------------------------------- statistics and tables


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); ``q`` in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: list[float]) -> float:
    return percentile(values, 50)


def ms(seconds: float, digits: int = 1) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    return f"{seconds * 1000:.{digits}f}"


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one char per column, ``l`` or ``r`` (default: first l, rest r)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]

    def line(cells) -> str:
        out = []
        for i, cell in enumerate(cells):
            cell = str(cell)
            out.append(cell.ljust(widths[i]) if align[i] == "l" else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- docker clean-up


def remove_labelled(label: str) -> int:
    """``docker rm -f`` / ``network rm`` / ``volume rm`` everything carrying ``label`` (key=value)."""
    removed = 0
    for _kind, ls, rm in (
        ("container", ["ps", "-aq"], ["rm", "-f"]),
        ("network", ["network", "ls", "-q"], ["network", "rm"]),
        ("volume", ["volume", "ls", "-q"], ["volume", "rm", "-f"]),
    ):
        out = subprocess.run(["docker", *ls, "--filter", f"label={label}"], capture_output=True, text=True, timeout=60)
        ids = out.stdout.split()
        if ids:
            subprocess.run(["docker", *rm, *ids], capture_output=True, timeout=120)
            removed += len(ids)
    return removed


def remove_scratch() -> None:
    shutil.rmtree(SCRATCH, ignore_errors=True)


@dataclass
class Cleanup:
    """Clean-up actions run in reverse order, each protected, whatever happened before."""

    actions: list = field(default_factory=list)

    def push(self, what: str, fn, *args) -> None:
        self.actions.append((what, fn, args))

    def run_named(self, *prefixes: str) -> list[str]:
        """Run now (in this order) the actions whose name starts with one of ``prefixes``."""
        problems = []
        for prefix in prefixes:
            for index in range(len(self.actions) - 1, -1, -1):
                name, fn, args = self.actions[index]
                if name.startswith(prefix):
                    del self.actions[index]
                    try:
                        fn(*args)
                    except Exception as exc:  # noqa: BLE001 - keep cleaning
                        problems.append(f"clean-up {name}: {exc}")
        return problems

    def run(self) -> list[str]:
        problems = []
        while self.actions:
            what, fn, args = self.actions.pop()
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - keep cleaning
                problems.append(f"{what}: {type(exc).__name__}: {exc}")
        return problems
