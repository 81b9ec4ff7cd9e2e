"""Dispatch latency: ``POST /api/v1/deployments`` → the deployment is claimed (``deploying``).

    .venv/bin/python bench/dispatch_latency.py [--runs N] [--modes asyncio-sqlite,asyncio-postgresql,redis,postgresql]

Modes (each on its own throw-away database, one after the other in this process):

* ``asyncio-sqlite``, ``asyncio-postgresql``: Celery disabled, the backend's in-process executor;
* ``redis``: Celery on Redis; ``postgresql``: Celery on the PostgreSQL (kombu SQL) broker. Both with
  ``CELERY_AUTO_START_WORKER=false`` and one external worker started with the product guide's command (docs/architecture.md#the-product-guide)
  ``celery -A backend.app.celery_app worker --concurrency=4`` (plus ``-n`` to recognise it).

The backend itself runs in this process (``create_app`` + lifespan, ``httpx.ASGITransport``).

What is measured, per deployment (one at a time; each waits for the previous to settle):

* **queued → claim**, the headline figure: ``data.dispatch_latency_seconds`` of the
  ``DEPLOYMENT_STATUS_CHANGED`` → ``deploying`` event, i.e. ``claim time − queued_at`` as WindFlow
  records them. ``queued_at`` is stamped when ``POST`` inserts the row (before its commit); the claim
  time is the ``now`` of the compare-and-set (``started_at``), taken when the executor *starts* its claim
  transaction. It therefore covers: the POST transaction's commit, the dispatch (enqueue to the broker,
  or ``asyncio.create_task``; on Redis the push runs during the commit), broker delivery, worker pick-up
  and the runner's start. The claim's own
  transaction (SELECT, capacity check, UPDATE, history, commit) comes after it and is shown separately
  for the in-process modes (``claim txn``). Cross-checked against the ``started_at``/``queued_at``
  columns. In the in-process modes the creation's own transaction claims the deployment (the backend runs
  it itself: ``Dispatcher.commit_and_dispatch_new``), so the claim starts right after the ``INSERT`` and
  ``claim txn`` is the rest of that transaction, its commit included; **queued → deploying seen** (the claim
  committed and its event delivered) compares every mode, and the in-process modes before and after that
  change, on the same footing.
* **POST RTT**: the HTTP round trip of ``POST /deployments`` (auth, rendering, compose validation,
  insert, commit, dispatch) — the time a client waits for its 201.
* **POST → claim**: claim time − the moment the client sent the POST (same host clock).
* **baseline**: the raw executor hand-off with nothing of WindFlow, on the same broker in the same run:
  for Celery a no-op task of a bench-only app (``bench/_celery_noop.py``; worker with the same settings:
  prefork, concurrency 4, prefetch 1, acks_late, same SQL polling interval) timed from just before
  ``send_task`` to the first line of its body; for asyncio ``create_task`` → first line of the coroutine.
  Samples alternate: one deployment, one baseline task.
* **durable write floor**: one row ``INSERT``ed and ``COMMIT``ted through the raw driver (``aiosqlite`` or
  ``asyncpg``, no SQLAlchemy, no WindFlow) on the mode's own database, one after each sample: the least a
  deployment's creation costs between its ``queued_at`` and the moment a worker may see it (its ``INSERT`` and
  its durable commit; SQLite syncs its write-ahead log at each commit, PostgreSQL its WAL).

The deployments use a stack whose image does not exist, so that each fails right after the claim
(``Check images``, attempt 1/1); each is deleted, and its background teardown waited for, before the next
(not timed). All of them deploy the same
stack with the same (no) values, so from the second one the POST finds its rendering and the compose
verdict already made. Targets (issue 23; median of queued → claim): asyncio ≤ 1 ms, Redis ≤ 1.5 × the raw
no-op task, PostgreSQL broker ≤ 15 ms; POST round trip ≤ 20 ms. After the samples, the idle WindFlow worker's
CPU (its process group: main process and pool) is measured for ``--idle-seconds`` (target ≤ 2 % of one CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

import _common as c

c.bootstrap()

import httpx  # noqa: E402

MODES = ["asyncio-sqlite", "asyncio-postgresql", "redis", "postgresql"]
#: Targets of issue 23 (median queued → claim): an absolute bound in ms, or a ratio to the raw baseline's median.
TARGETS_MS = {"asyncio-sqlite": 1.0, "asyncio-postgresql": 1.0, "postgresql": 15.0}
TARGET_RATIOS = {"redis": 1.5}
#: POST /deployments round trip (the stack and values validated before), ms; idle CPU per Celery worker, %.
POST_RTT_TARGET_MS = 20.0
IDLE_CPU_TARGET_PERCENT = 2.0
NOOP_QUEUE = "wfbench-noop"
WORKER_NAME = "wfbench-wf"

FAILING_STACK = {
    "name": "bench-missing-image",
    "description": "fails at once after the claim (dispatch_latency benchmark)",
    "template": "services:\n  app:\n    image: windflow-test/bench-missing-image:0\n",
    "variables": [],
}


@dataclass
class Sample:
    queued_to_claim: float
    post_rtt: float
    post_to_claim: float
    claim_txn: float | None  # claim start → claim committed (in-process modes only)
    event_seen_after_claim: float  # claim start → event delivered here (includes the event transport for Celery)
    to_dispatch: float  # queued_at → Dispatcher.commit_and_dispatch_new called (the INSERT)
    dispatch_call: float  # its duration: the commit and the dispatch (enqueue, or create_task; on Redis, both at once)
    to_claim: float  # its return → claim start (broker delivery, worker pick-up, runner start; may be < 0 on Redis)


@dataclass
class ModeResult:
    mode: str
    samples: list[Sample] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_send: list[float] = field(default_factory=list)
    durable_floor: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    executor: str = ""
    #: CPU time of the WindFlow worker's process group (main process + pool) while idle, % of one CPU;
    #: and of its main process alone (the consumer)
    idle_cpu: float | None = None
    idle_cpu_main: float | None = None


# --------------------------------------------------------------------------- timing hook (measurement only)

DISPATCHES: dict[str, tuple[float, float]] = {}


def install_probe() -> None:
    """Record when ``Dispatcher.commit_and_dispatch_new`` (the creation's commit and its dispatch) is entered and
    left (wall clock, like ``queued_at``)."""
    from backend.app.runtime.dispatch import Dispatcher

    original = Dispatcher.commit_and_dispatch_new

    async def timed(self, session, deployment_id: str, **kwargs):
        start = time.time()
        try:
            return await original(self, session, deployment_id, **kwargs)
        finally:
            DISPATCHES[deployment_id] = (start, time.time())

    Dispatcher.commit_and_dispatch_new = timed


# --------------------------------------------------------------------------- one deployment


async def poll_deployment(env: c.ApiEnv, deployment_id: str, done, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        response = await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.headers)
        body = response.json()
        if done(body):
            return body
        await asyncio.sleep(0.05)
    raise RuntimeError(f"deployment {deployment_id} stuck: {body}")


async def one_deployment(env: c.ApiEnv, recorder: c.EventRecorder, result: ModeResult, expect_executor: str) -> Sample:
    wall0 = time.time()
    t0 = time.perf_counter()
    response = await env.client.post(
        "/api/v1/deployments", json={"stack_id": env.stack_id, "target_id": env.target_id, "variables": {}}, headers=env.headers
    )
    post_rtt = time.perf_counter() - t0
    if response.status_code != 201:
        raise RuntimeError(f"POST /deployments answered {response.status_code}: {response.text}")
    deployment_id = response.json()["id"]
    claim = await recorder.wait(deployment_id, c.status_is("deploying"), timeout=30)
    settled = await recorder.wait(deployment_id, c.status_is("failed", "running", "cancelled"), timeout=60)
    row = await poll_deployment(env, deployment_id, lambda b: b["status"] in {"failed", "running", "cancelled"}, 60)
    if settled is None:
        result.notes.append(f"{deployment_id}: settle event not seen, status read from the API")
    if row["executor"] != expect_executor:
        raise RuntimeError(
            f"deployment {deployment_id} ran on {row['executor']}, expected {expect_executor}: "
            "the backend fell back to another executor (see the warnings above)"
        )
    from datetime import datetime

    queued_at = datetime.fromisoformat(row["queued_at"].replace("Z", "+00:00"))
    started_at = datetime.fromisoformat(row["started_at"].replace("Z", "+00:00"))
    from_columns = (started_at - queued_at).total_seconds()
    if claim is None:
        result.notes.append(f"{deployment_id}: deploying event not seen, used started_at − queued_at")
        latency, claim_wall, seen_after, txn = from_columns, started_at.timestamp(), float("nan"), None
    else:
        latency = float(claim.event.data["dispatch_latency_seconds"])
        claim_wall = claim.event.timestamp.timestamp()
        seen_after = claim.wall - claim_wall
        txn = seen_after if expect_executor == "asyncio" else None
        if abs(latency - from_columns) > 0.002:
            result.notes.append(f"{deployment_id}: event says {latency * 1000:.1f} ms, columns say {from_columns * 1000:.1f} ms")
    queued_wall = queued_at.timestamp()
    claim_start = queued_wall + latency
    d_start, d_end = DISPATCHES.pop(deployment_id, (float("nan"), float("nan")))
    for _ in range(50):  # tear down (not timed, in the background: 202); 409 while an executor still holds it
        deleted = await env.client.delete(f"/api/v1/deployments/{deployment_id}", headers=env.headers)
        if deleted.status_code == 202:
            break
        if deleted.status_code != 409:
            raise RuntimeError(f"DELETE /deployments/{deployment_id} answered {deleted.status_code}: {deleted.text}")
        await asyncio.sleep(0.1)
    # the teardown runs in the background: wait until it is done (404), so that the next sample's POST and claim
    # do not share the database (on SQLite its write lock) with this one's teardown
    deadline = time.monotonic() + 60
    while (await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.headers)).status_code != 404:
        if time.monotonic() > deadline:
            raise RuntimeError(f"deployment {deployment_id} still there 60 s after its DELETE")
        await asyncio.sleep(0.02)
    c.remove_labelled(f"windflow.deployment_id={deployment_id}")  # nothing is expected: belt and braces
    return Sample(latency, post_rtt, claim_wall - wall0, txn, seen_after, d_start - queued_wall, d_end - d_start, claim_start - d_end)


# --------------------------------------------------------------------------- baselines


async def asyncio_handoff() -> tuple[float, float]:
    started = 0.0

    async def body() -> None:
        nonlocal started
        started = time.perf_counter()

    t0 = time.perf_counter()
    task = asyncio.create_task(body())
    created = time.perf_counter()
    await task
    return started - t0, created - t0


def celery_noop(app) -> tuple[float, float]:
    """(send_task → task body start, send_task call duration), in seconds."""
    sent = time.time()
    result = app.send_task("wfbench.noop", args=(sent,))
    send_call = time.time() - sent
    out = result.get(timeout=60, interval=0.005)
    with contextlib.suppress(Exception):
        result.forget()
    return out["started"] - sent, send_call


class DurableFloor:
    """Times one raw ``INSERT`` + ``COMMIT`` on a database (a table of its own, no SQLAlchemy)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = None
        self.sqlite = url.startswith("sqlite")

    async def open(self) -> None:
        if self.sqlite:
            import aiosqlite

            self.conn = await aiosqlite.connect(self.url.split(":///", 1)[1])
            await self.conn.execute("PRAGMA journal_mode=WAL")  # as WindFlow opens it (database.py)
            await self.conn.execute("CREATE TABLE IF NOT EXISTS bench_durable_floor (id TEXT PRIMARY KEY, payload TEXT)")
            await self.conn.commit()
        else:
            import asyncpg

            self.conn = await asyncpg.connect(self.url.replace("postgresql+asyncpg://", "postgresql://", 1))
            await self.conn.execute("CREATE TABLE IF NOT EXISTS bench_durable_floor (id TEXT PRIMARY KEY, payload TEXT)")

    async def sample(self) -> float:
        row = (os.urandom(16).hex(), "x" * 512)
        started = time.perf_counter()
        if self.sqlite:
            await self.conn.execute("INSERT INTO bench_durable_floor VALUES (?, ?)", row)
            await self.conn.commit()
        else:
            async with self.conn.transaction():
                await self.conn.execute("INSERT INTO bench_durable_floor VALUES ($1, $2)", *row)
        return time.perf_counter() - started

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


# --------------------------------------------------------------------------- idle CPU of a worker


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def group_cpu_seconds(pgid: int) -> tuple[float, float]:
    """(CPU seconds of every live process of group ``pgid``, of ``pgid`` itself): utime + stime."""
    total = main = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            ticks = _cpu_ticks(int(entry))
        except (OSError, ProcessLookupError):
            continue
        total += ticks
        if int(entry) == pgid:
            main = ticks
    hz = os.sysconf("SC_CLK_TCK")
    return total / hz, main / hz


async def idle_cpu(worker: c.Proc, seconds: float) -> tuple[float, float]:
    """% of one CPU the worker's process group (and its main process) used over ``seconds`` with nothing to do."""
    await asyncio.sleep(2)  # the last task's ack and result are done
    total0, main0 = group_cpu_seconds(worker.pid)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    total1, main1 = group_cpu_seconds(worker.pid)
    wall = time.monotonic() - t0
    return (total1 - total0) / wall * 100, (main1 - main0) / wall * 100


# --------------------------------------------------------------------------- Celery plumbing


def pick_redis_db() -> int:
    import redis

    for db in (14, 13, 12, 15):
        client = redis.Redis(host=c.REDIS_HOST, port=c.REDIS_PORT, db=db, socket_connect_timeout=3)
        try:
            if client.dbsize() == 0:
                return db
        except redis.RedisError as exc:
            sys.exit(f"Redis not usable at {c.REDIS_HOST}:{c.REDIS_PORT} ({exc})")
        finally:
            client.close()
    sys.exit("no empty Redis database among 12-15 to use as a throw-away broker")


def flush_redis_db(db: int) -> None:
    import redis

    client = redis.Redis(host=c.REDIS_HOST, port=c.REDIS_PORT, db=db)
    try:
        client.flushdb()
    finally:
        client.close()


def prepare_sql_broker(settings) -> None:
    """Create the SQL broker's tables and queue rows from this one process, before any worker starts.

    kombu's SQL transport creates them on first use (``metadata.create_all``, then one row per queue),
    with no guard against another process doing the same at that moment: with the WindFlow worker, the
    baseline worker and this process all starting on a fresh database, a loser of the race dies
    (``Unrecoverable error: IntegrityError ... pg_class_relname_nsp_index ... queue_id_sequence``). When
    that was the baseline worker, its first task timed out after 90 s and the clean-up dropped the database
    under this process's still-polling result reader ("database windflow_bench_postgresql_... does not
    exist"). Timing decides the race: run alone, the mode rarely lost it.
    """
    broker = settings.celery_broker_url
    if not broker or not broker.startswith("sqla+"):
        return
    from kombu import Connection

    import backend.app.runtime.sql_transport  # noqa: F401 - WindFlow's SQL transport, as the workers use it

    with Connection(broker, transport_options={"polling_interval": settings.CELERY_SQL_POLLING_INTERVAL}) as conn:
        for queue in ("celery", NOOP_QUEUE):
            conn.default_channel.queue_declare(queue=queue)


def start_windflow_worker(settings, label: str) -> c.Proc:
    """The product guide's command, as an external worker."""
    argv = [str(c.BIN / "celery"), "-A", "backend.app.celery_app", "worker", "--concurrency=4", "-n", f"{WORKER_NAME}@%h"]
    return c.Proc(argv, c.settings_env(settings), c.SCRATCH / f"worker-{label}.log")


def start_noop_worker(settings, label: str) -> c.Proc:
    env = c.settings_env(
        settings,
        WFBENCH_BROKER_URL=settings.celery_broker_url,
        WFBENCH_RESULT_BACKEND=settings.celery_result_backend,
        WFBENCH_QUEUE=NOOP_QUEUE,
        WFBENCH_POLLING_INTERVAL=str(settings.CELERY_SQL_POLLING_INTERVAL),
        PYTHONPATH=os.pathsep.join([str(c.BENCH_DIR), str(c.REPO_ROOT)]),
    )
    # The celery CLI takes any CELERY_WORKER_<OPTION> variable as that option's default, and WindFlow's settings
    # export the embedded worker's (CELERY_WORKER_POOL=solo, CELERY_WORKER_LOGLEVEL=info). WindFlow's app drops
    # them when the guide's command starts it (backend/app/celery_app.py); so does this baseline, which otherwise
    # ran a solo pool (no hand-off to a pool process) beside the WindFlow worker's prefork pool.
    env = {name: value for name, value in env.items() if not name.startswith("CELERY_WORKER_")}
    argv = [str(c.BIN / "celery"), "-A", "_celery_noop", "worker", "--concurrency=4", "-Q", NOOP_QUEUE, "-n", "wfbench-noop@%h"]
    return c.Proc(argv, env, c.SCRATCH / f"noop-worker-{label}.log", cwd=c.BENCH_DIR)


async def wait_external(app, worker: c.Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    report = app.state.celery_manager.report
    while time.monotonic() < deadline:
        report = app.state.celery_manager.report
        if str(report.mode) == "external" and any(w["name"].startswith(WORKER_NAME + "@") for w in report.workers):
            return
        if not worker.alive():
            raise RuntimeError(f"the Celery worker exited:\n{worker.tail()}")
        await asyncio.sleep(0.2)
    raise RuntimeError(f"execution mode never became external ({report.mode}: {report.reason}):\n{worker.tail()}")


# --------------------------------------------------------------------------- one mode


async def run_mode(mode: str, args, cleanup: c.Cleanup) -> ModeResult:
    from backend.app.main import create_app
    from backend.app.runtime import background_tasks

    result = ModeResult(mode)
    kind = "sqlite" if mode == "asyncio-sqlite" else "postgresql"
    database = c.ThrowawayDatabase(kind, mode.replace("-", "_"))
    cleanup.push(f"drop database of {mode}", database.drop)
    overrides: dict = dict(
        DEPLOYMENT_MAX_ATTEMPTS=1, DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=30, DEPLOYMENTS_WORKDIR=c.SCRATCH / f"deployments-{mode}"
    )
    if mode in ("redis", "postgresql"):
        overrides.update(CELERY_ENABLED=True, CELERY_AUTO_START_WORKER=False, CELERY_BROKER_TYPE="redis" if mode == "redis" else "database")
        if mode == "redis":
            db = pick_redis_db()
            cleanup.push(f"flush Redis db {db}", flush_redis_db, db)
            overrides.update(
                CELERY_BROKER_URL=f"redis://{c.REDIS_HOST}:{c.REDIS_PORT}/{db}",
                CELERY_RESULT_BACKEND=f"redis://{c.REDIS_HOST}:{c.REDIS_PORT}/{db}",
            )
    settings = c.make_settings(database.url, **overrides)
    celery_mode = settings.celery_unavailable_reason is None
    result.executor = "celery" if celery_mode else "asyncio"

    worker = noop_worker = noop_app = None
    if celery_mode:
        prepare_sql_broker(settings)
        worker = start_windflow_worker(settings, mode)
        cleanup.push(f"stop the WindFlow worker of {mode}", worker.stop)
        noop_worker = start_noop_worker(settings, mode)
        cleanup.push(f"stop the baseline worker of {mode}", noop_worker.stop)
        from _celery_noop import create_noop_app

        noop_app = create_noop_app(
            settings.celery_broker_url, settings.celery_result_backend, NOOP_QUEUE, settings.CELERY_SQL_POLLING_INTERVAL
        )
        cleanup.push(f"close the baseline publisher of {mode}", noop_app.close)

    app = create_app(settings)
    floor = DurableFloor(database.url)
    async with app.router.lifespan_context(app):
        await floor.open()
        recorder = c.EventRecorder()
        recorder.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as client:
                env = await c.api_setup(client, FAILING_STACK)
                if celery_mode:
                    await wait_external(app, worker)
                    try:  # the baseline worker answers
                        await asyncio.wait_for(asyncio.to_thread(celery_noop, noop_app), 90)
                    except TimeoutError:
                        raise RuntimeError(f"the baseline worker did not run its first task within 90 s:\n{noop_worker.tail()}") from None
                    for which, proc in (("WindFlow", worker), ("baseline", noop_worker)):
                        if "(prefork)" not in proc.output():  # Celery's banner: ".> concurrency: 4 (prefork)"
                            raise RuntimeError(f"the {which} worker does not run a prefork pool:\n{proc.tail()}")
                mode_now = str(app.state.celery_manager.mode)
                print(
                    f"[{mode}] execution mode {mode_now}; broker {app.state.celery_manager.report.broker}; "
                    f"{args.warmup} warm-up + {args.runs} samples",
                    file=sys.stderr,
                    flush=True,
                )
                for i in range(args.warmup + args.runs):
                    c.check_stop()
                    sample = await one_deployment(env, recorder, result, result.executor)
                    if celery_mode:
                        base, send_call = await asyncio.to_thread(celery_noop, noop_app)
                    else:
                        base, send_call = await asyncio_handoff()
                    durable = await floor.sample()
                    if i >= args.warmup:
                        result.durable_floor.append(durable)
                        result.samples.append(sample)
                        result.baseline.append(base)
                        result.baseline_send.append(send_call)
                    if (i + 1) % 10 == 0:
                        print(
                            f"[{mode}] {i + 1}/{args.warmup + args.runs}: last queued→claim "
                            f"{c.ms(sample.queued_to_claim)} ms, baseline {c.ms(base)} ms",
                            file=sys.stderr,
                            flush=True,
                        )
                    if worker is not None and not worker.alive():
                        raise RuntimeError(f"the Celery worker exited:\n{worker.tail()}")
                if worker is not None and args.idle_seconds > 0:
                    result.idle_cpu, result.idle_cpu_main = await idle_cpu(worker, args.idle_seconds)
                    print(f"[{mode}] idle worker: {result.idle_cpu:.2f} % CPU ({result.idle_cpu_main:.2f} % main process)", file=sys.stderr)
        finally:
            recorder.stop()
            await floor.close()
            await background_tasks.shutdown()
    # stop the workers and drop the database now, so the next mode starts from a quiet machine
    for what in [
        f"close the baseline publisher of {mode}",
        f"stop the baseline worker of {mode}",
        f"stop the WindFlow worker of {mode}",
        "flush Redis db",
        f"drop database of {mode}",
    ]:
        for index in range(len(cleanup.actions) - 1, -1, -1):
            name, fn, fargs = cleanup.actions[index]
            if name.startswith(what):
                del cleanup.actions[index]
                try:
                    fn(*fargs)
                except Exception as exc:  # noqa: BLE001
                    result.notes.append(f"clean-up {name}: {exc}")
    return result


# --------------------------------------------------------------------------- report


def report(results: list[ModeResult], args) -> None:
    print()
    print(f"dispatch_latency: {args.runs} deployments per mode (+{args.warmup} warm-up), {c.machine_line()}")
    print("times in ms; headline = queued → claim (DEPLOYMENT_STATUS_CHANGED→deploying data.dispatch_latency_seconds)\n")
    rows = []
    for r in results:
        q = [s.queued_to_claim for s in r.samples]
        b = r.baseline
        if r.mode in TARGET_RATIOS:
            target = f"≤ {TARGET_RATIOS[r.mode]:g}x raw"
            met = c.median(b) > 0 and c.median(q) / c.median(b) <= TARGET_RATIOS[r.mode]
        else:
            target = f"≤ {TARGETS_MS[r.mode]:g}"
            met = c.median(q) * 1000 <= TARGETS_MS[r.mode]
        rows.append(
            [
                r.mode,
                c.ms(c.median(q)),
                c.ms(c.percentile(q, 99)),
                target,
                "yes" if met else "NO",
                c.ms(c.median(b), 2),
                c.ms(c.percentile(b, 99), 2),
                f"{c.median(q) / c.median(b):.1f}x" if c.median(b) > 0 else "-",
            ]
        )
    print(c.table(["mode", "median", "p99", "target", "met", "baseline median", "baseline p99", "ratio"], rows))
    print(
        "\nbaseline: asyncio = create_task → coroutine start; Celery = no-op task of a bench-only app on the same broker,"
        "\n          send_task → task body start (same worker settings). ratio = median / baseline median.\n"
    )

    rows = []
    for r in results:
        rtt = [s.post_rtt for s in r.samples]
        p2c = [s.post_to_claim for s in r.samples]
        txn = [s.claim_txn for s in r.samples if s.claim_txn is not None]
        seen = [s.event_seen_after_claim for s in r.samples if s.event_seen_after_claim == s.event_seen_after_claim]
        visible = [s.queued_to_claim + s.event_seen_after_claim for s in r.samples if s.event_seen_after_claim == s.event_seen_after_claim]
        rows.append(
            [
                r.mode,
                c.ms(c.median(rtt)),
                c.ms(c.percentile(rtt, 99)),
                c.ms(c.median(p2c)),
                c.ms(c.percentile(p2c, 99)),
                c.ms(c.median(txn)) if txn else "-",
                c.ms(c.median(seen)) if seen else "-",
                c.ms(c.median(visible)) if visible else "-",
            ]
        )
    for r in results:
        rtt = c.median([s.post_rtt for s in r.samples]) * 1000
        print(
            f"POST RTT [{r.mode}]: median {rtt:.1f} ms, target ≤ {POST_RTT_TARGET_MS:g} ms: {'met' if rtt <= POST_RTT_TARGET_MS else 'NOT met'}"
        )
        if r.idle_cpu is not None:
            print(
                f"idle worker CPU [{r.mode}]: {r.idle_cpu:.2f} % of one CPU (process group: main + pool; main process "
                f"{r.idle_cpu_main:.2f} %) over {args.idle_seconds:g} s, target ≤ {IDLE_CPU_TARGET_PERCENT:g} %: "
                f"{'met' if r.idle_cpu <= IDLE_CPU_TARGET_PERCENT else 'NOT met'}"
            )
    print()
    print(
        c.table(
            [
                "mode",
                "POST RTT median",
                "POST RTT p99",
                "POST→claim median",
                "POST→claim p99",
                "claim txn median",
                "claim→event seen median",
                "queued → deploying seen median",
            ],
            rows,
        )
    )
    print("\nqueued → claim, split at Dispatcher.commit_and_dispatch_new (medians, ms):\n")
    rows = []
    for r in results:
        parts = [[s.to_dispatch for s in r.samples], [s.dispatch_call for s in r.samples], [s.to_claim for s in r.samples]]
        send = c.median(r.baseline_send)
        rows.append(
            [
                r.mode,
                *(c.ms(c.median(p), 2) for p in parts),
                c.ms(c.median([s.queued_to_claim for s in r.samples]), 2),
                c.ms(c.median(r.durable_floor), 2),
                c.ms(send, 2),
                c.ms(c.median(r.baseline) - send, 2),
            ]
        )
    print(
        c.table(
            [
                "mode",
                "queued → commit",
                "commit + dispatch",
                "their return → claim",
                "queued → claim",
                "durable write floor",
                "baseline send",
                "baseline send return → start",
            ],
            rows,
        )
    )
    print(
        "(queued → commit: the deployment's INSERT; commit + dispatch: the creation's commit, then the enqueue (send_task\n"
        " in a thread) or create_task, or on Redis the LPUSH during the commit, or in-process the claim's statements, the\n"
        " commit and create_task; their return → claim: broker, worker pick-up, runner start (negative in-process: the\n"
        " claim starts inside commit_and_dispatch_new; on Redis the worker may claim before the commit's hooks end);\n"
        " durable write floor: one raw INSERT + COMMIT (aiosqlite / asyncpg) on the same database)"
    )
    print(
        "\nPOST→claim = claim time − moment the POST was sent (includes the request's own work, e.g. the "
        "`docker compose config -q` validation);\nclaim txn = claim start → claim committed (in-process modes); "
        "claim→event seen = until this backend received the deploying event (Celery: through the event transport);\n"
        "queued → deploying seen = the two added: until the claim is committed and its event delivered, in every mode."
    )
    for r in results:
        for note in r.notes[:10]:
            print(f"note [{r.mode}]: {note}")
        if len(r.notes) > 10:
            print(f"note [{r.mode}]: ... {len(r.notes) - 10} more")


# --------------------------------------------------------------------------- main


async def bench(args) -> list[ModeResult]:
    install_probe()
    results = []
    cleanup = c.Cleanup()
    try:
        for mode in args.modes:
            results.append(await run_mode(mode, args, cleanup))
    finally:
        for problem in cleanup.run():
            print(f"clean-up problem: {problem}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="deployments per mode (default 50)")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=20,
        help="Celery modes: seconds the idle worker's CPU is measured after the samples (default 20; 0: not)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=8,
        help="untimed deployments first, per mode (default 8: each of the 4 prefork children initialises on its first task)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        parser.error(f"unknown mode(s) {unknown}; choose among {MODES}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    c.require_docker()
    try:
        results = c.run_main(lambda: bench(args))
    except c.Interrupted:
        sys.exit("interrupted; everything this run created was removed")
    finally:
        c.remove_scratch()
    report(results, args)


if __name__ == "__main__":
    main()
