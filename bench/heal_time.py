"""Heal time: N deployments while K random ``kill -9`` hit the executors; how long until everything settles.

    .venv/bin/python bench/heal_time.py [--deployments 16] [--kills 6] [--brokers postgresql,redis] [--seed S]
                                        [--db-restarts 2] [--child-bursts 2] [--deployments-timeout S]

Per broker (each on its own throw-away PostgreSQL database; Redis on an empty database among 12–15):

* the backend runs as ``python -m backend.app.main`` (a real process, so that it can be killed), with
  ``CELERY_AUTO_START_WORKER=false`` and two external workers ``celery -A backend.app.celery_app worker
  --pool=prefork --concurrency=2``; every timing setting at its **default** (lease 30 s, heartbeat 5 s,
  reaper every 5 s, dispatch timeout 15 s, recovery every 5 minutes);
* the stack: two services, one of which only becomes healthy 3 s after it starts, so that kills land in
  the middle of deployments;
* ``N`` deployments are created over ``N × 1.5`` s through the API while ``K`` kills are spread over that
  window, each chosen at random: a worker's **main process** (``kill -9`` of the main pid alone; its pool
  follows by Celery's parent-death signal; restarted 1–3 s later), a **pool child** (preferably one
  holding a deployment's lease; Celery replaces it), or the **backend** (restarted 1–3 s later; POSTs
  during the outage are retried). Nobody calls ``POST /system/recovery``.
* ``--child-bursts B`` adds B bursts of rapid pool-child kills: three ``kill -9`` of pool children 1.5 s apart
  (a pool that must refill while its replacements are killed again).
* ``--db-restarts R`` runs the whole cluster on a private PostgreSQL server (``backend/tests/pg_cluster.py``)
  and adds R database restarts: the server stopped (``pg_ctl stop``, ``-m fast`` and ``-m immediate`` in turn),
  down 5 s, started again. Every process must reconnect by itself; POSTs during the outage are retried
  (the API answers 503 then).

Printed per broker: seconds from the last kill until every deployment is settled (``running`` or
``failed``, nothing ``pending``/``deploying``), with the longest creation → running; **stuck** (not
``running`` after ``--settle-timeout``, 300 s), **duplicated** (a deployment with more container creations than services,
counted from ``docker events``), **lost** (log lines missing from a deployment's ``seq`` sequence).
Target: ≤ 90 s, 0 stuck, 0 duplicated, 0 lost; with ``--db-restarts`` or ``--child-bursts``: settled ≤ 30 s after
the last fault (issue 17), 0 stuck, 0 duplicated, 0 lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import _common as c

c.bootstrap()

import httpx  # noqa: E402

SERVICES = 2
STACK = {
    "name": "heal",
    "description": "an app healthy after 3 s + a sidecar; no network (the shared engine's address pools are finite)",
    "template": (
        "services:\n"
        "  app:\n"
        f"    image: {c.TEST_IMAGE}\n"
        "    init: true\n"
        "    network_mode: none\n"
        "    command: [\"sh\", \"-c\", \"sleep 3; touch /tmp/ready; exec sleep 3600\"]\n"
        "    healthcheck:\n      test: [\"CMD\", \"test\", \"-f\", \"/tmp/ready\"]\n      interval: 1s\n      retries: 60\n"
        "  sidecar:\n"
        f"    image: {c.TEST_IMAGE}\n"
        "    init: true\n"
        "    network_mode: none\n"
        "    command: [\"sh\", \"-c\", \"exec sleep 3600\"]\n"
    ),
    "variables": [],
}


@dataclass
class Result:
    broker: str
    deployments: int = 0
    kills: Counter = field(default_factory=Counter)
    heal_seconds: float | None = None
    slowest_to_running: float | None = None
    stuck: int = 0
    duplicated: int = 0
    lost_lines: int = 0
    creations: int = 0
    healed_by: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


class CreationCounter:
    """``docker events`` for container creations labelled ``windflow.managed=true``, by deployment id."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.proc = subprocess.Popen(
            ["docker", "events", "--filter", "type=container", "--filter", "event=create",
             "--filter", "label=windflow.managed=true", "--format", "{{json .}}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError, KeyError):
                event = json.loads(line)
                self.counts[event["Actor"]["Attributes"]["windflow.deployment_id"]] += 1

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Cluster:
    """The backend and two workers as real processes, each restartable after a kill."""

    def __init__(self, settings, label: str, port: int) -> None:
        self.settings = settings
        self.label = label
        self.port = port
        self.generation = Counter()
        self.backend = self._start_backend()
        self.workers = {name: self._start_worker(name) for name in ("wfheal-a", "wfheal-b")}

    def _start_backend(self) -> c.Proc:
        self.generation["backend"] += 1
        env = c.settings_env(self.settings, HOST="127.0.0.1", PORT=str(self.port))
        return c.Proc([sys.executable, "-m", "backend.app.main"], env,
                      c.SCRATCH / f"backend-{self.label}-{self.generation['backend']}.log")

    def _start_worker(self, name: str) -> c.Proc:
        self.generation[name] += 1
        argv = [str(c.BIN / "celery"), "-A", "backend.app.celery_app", "worker", "--pool=prefork", "--concurrency=2",
                "-n", f"{name}@%h"]
        return c.Proc(argv, c.settings_env(self.settings), c.SCRATCH / f"{name}-{self.label}-{self.generation[name]}.log")

    def restart_left(self, result: Result) -> None:
        """What a supervisor (compose ``restart:``, systemd) does: a worker that left because it was degraded
        (exit 75, ``runtime/worker_watchdog.py``) is started again. Killed workers are restarted by the killer."""
        from backend.app.runtime.worker_watchdog import EXIT_DEGRADED

        for name, proc in list(self.workers.items()):
            if proc.popen.poll() == EXIT_DEGRADED:
                proc.stop()
                result.healed_by["worker left degraded, restarted"] += 1
                print(f"[{self.label}] {name} left (degraded): restarted", file=sys.stderr, flush=True)
                self.workers[name] = self._start_worker(name)

    def all(self) -> list[c.Proc]:
        return [self.backend, *self.workers.values()]

    def stop(self) -> None:
        for proc in self.all():
            proc.stop()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


async def lease_holders(db) -> set[int]:
    from sqlalchemy import text

    async with db.connect() as conn:
        owners = (await conn.execute(text("SELECT lease_owner FROM deployments WHERE status = 'deploying'"))).scalars()
        return {int(o.split(":")[2]) for o in owners if o and o.startswith("celery:")}


async def kill_one(cluster: Cluster, kind: str, db, rng: random.Random, result: Result, pg=None) -> None:
    if kind.startswith("db-"):
        pg.stop(kind.removeprefix("db-"))
        await asyncio.sleep(5)
        pg.start()
    elif kind == "burst":
        for i in range(3):
            if i:
                await asyncio.sleep(1.5)
            await kill_one(cluster, "pool", db, rng, result)
        return
    elif kind == "backend":
        os.kill(cluster.backend.popen.pid, signal.SIGKILL)
        cluster.backend.popen.wait(10)
        cluster.backend.stop()
        await asyncio.sleep(rng.uniform(1, 3))
        cluster.backend = cluster._start_backend()
    elif kind == "worker":
        name = rng.choice(sorted(cluster.workers))
        proc = cluster.workers[name]
        os.kill(proc.popen.pid, signal.SIGKILL)  # the main process alone
        proc.popen.wait(10)
        proc.stop()
        await asyncio.sleep(rng.uniform(1, 3))
        cluster.workers[name] = cluster._start_worker(name)
    else:
        pool = [pid for proc in cluster.workers.values() if proc.alive() for pid in children(proc.popen.pid)]
        holders: set[int] = set()
        with contextlib.suppress(Exception):  # the database may be restarting
            holders = await lease_holders(db)
        busy = [pid for pid in pool if pid in holders]
        if not (busy or pool):
            result.notes.append("a pool-child kill found no pool child")
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(rng.choice(busy or pool), signal.SIGKILL)
    result.kills[kind] += 1


async def wait_http(cluster: Cluster, client: httpx.AsyncClient, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/health")).status_code in (200, 503):
                return
        if not cluster.backend.alive():
            raise RuntimeError(f"the backend exited:\n{cluster.backend.tail()}")
        await asyncio.sleep(0.3)
    raise RuntimeError("the backend did not answer")


async def post_retrying(cluster, client, path: str, **kwargs) -> httpx.Response:
    deadline = time.monotonic() + 120
    while True:
        try:
            response = await client.post(path, **kwargs)
            if response.status_code < 500:
                return response
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"POST {path} kept failing")
        await asyncio.sleep(0.5)


async def run_broker(broker: str, args, cleanup: c.Cleanup) -> Result:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    result = Result(broker)
    rng = random.Random(f"{args.seed}-{broker}")
    pg = None
    if args.db_restarts:
        from backend.tests.pg_cluster import PrivateCluster

        pg = PrivateCluster()
        cleanup.push(f"drop database of {broker}", pg.destroy)
        database_url = pg.async_url
    else:
        database = c.ThrowawayDatabase("postgresql", f"heal_{broker}")
        cleanup.push(f"drop database of {broker}", database.drop)
        database_url = database.url
    overrides: dict = dict(CELERY_ENABLED=True, CELERY_AUTO_START_WORKER=False, DEPLOYMENTS_WORKDIR=c.SCRATCH / f"deployments-{broker}",
                           CELERY_BROKER_TYPE="redis" if broker == "redis" else "database", LOG_LEVEL="INFO",
                           DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=60)
    if broker == "redis":
        from dispatch_latency import flush_redis_db, pick_redis_db

        db_number = pick_redis_db()
        cleanup.push(f"flush Redis db {db_number}", flush_redis_db, db_number)
        overrides.update(CELERY_BROKER_URL=f"redis://{c.REDIS_HOST}:{c.REDIS_PORT}/{db_number}",
                         CELERY_RESULT_BACKEND=f"redis://{c.REDIS_HOST}:{c.REDIS_PORT}/{db_number}")
    settings = c.make_settings(database_url, **overrides)
    db = create_async_engine(database_url, pool_pre_ping=True)
    events = CreationCounter()
    cleanup.push(f"stop docker events of {broker}", events.stop)
    cluster = Cluster(settings, broker, c.free_port())
    cleanup.push(f"stop the processes of {broker}", cluster.stop)
    created: list[str] = []
    created_at: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cluster.port}", timeout=30) as client:
            await wait_http(cluster, client)
            env = await c.api_setup(client, STACK, max_concurrent=4)
            # both workers heartbeat before the first deployment
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                body = (await client.get("/api/v1/system/workers", headers=env.headers)).json()
                if sum(1 for w in body.get("workers", []) if w["name"].startswith("wfheal-") and w["alive"]) >= 2:
                    break
                await asyncio.sleep(0.5)
            window = args.deployments * 1.5
            kinds = [rng.choice(["worker", "pool", "backend"]) for _ in range(args.kills)]
            if args.kills >= 3:  # every kind at least once
                kinds[:3] = ["worker", "pool", "backend"]
            kinds += ["burst"] * args.child_bursts + [("db-fast", "db-immediate")[i % 2] for i in range(args.db_restarts)]
            kill_times = sorted(rng.uniform(1.0, window) for _ in kinds)
            rng.shuffle(kinds)
            print(f"[{broker}] {args.deployments} deployments over {window:.0f}s, kills at "
                  + ", ".join(f"{t:.1f}s {k}" for t, k in zip(kill_times, kinds)), file=sys.stderr, flush=True)
            start = time.monotonic()
            last_kill = start

            async def killer() -> None:
                nonlocal last_kill
                for at, kind in zip(kill_times, kinds):
                    await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                    c.check_stop()
                    await kill_one(cluster, kind, db, rng, result, pg)
                    last_kill = time.monotonic()
                    what = f"restart the database ({kind})" if kind.startswith("db-") else f"kill -9 {kind}"
                    print(f"[{broker}] {last_kill - start:6.1f}s {what}", file=sys.stderr, flush=True)

            async def supervisor() -> None:
                while True:
                    await asyncio.sleep(1)
                    cluster.restart_left(result)

            supervise_task = asyncio.create_task(supervisor())
            cleanup.push(f"stop the supervisor of {broker}", supervise_task.cancel)
            kill_task = asyncio.create_task(killer())
            for i in range(args.deployments):
                await asyncio.sleep(max(0.0, start + i * 1.5 - time.monotonic()))
                c.check_stop()
                response = await post_retrying(cluster, client, "/api/v1/deployments",
                                               json={"stack_id": env.stack_id, "target_id": env.target_id}, headers=env.headers)
                if response.status_code != 201:
                    raise RuntimeError(f"POST /deployments answered {response.status_code}: {response.text}")
                created.append(response.json()["id"])
                created_at[created[-1]] = time.time()
            await kill_task

            settled_at = None
            while time.monotonic() - last_kill < args.settle_timeout:
                c.check_stop()
                try:
                    async with db.connect() as conn:
                        counts = dict((await conn.execute(text("SELECT status, count(*) FROM deployments GROUP BY status"))).all())
                except Exception:  # noqa: BLE001 - the database is restarting; look again
                    await asyncio.sleep(0.5)
                    continue
                # >= : a POST whose answer was lost with a killed backend, then retried, made one more
                if not counts.get("pending") and not counts.get("deploying") and sum(counts.values()) >= len(created):
                    settled_at = time.monotonic()
                    break
                await asyncio.sleep(0.5)
            result.deployments = len(created)
            result.heal_seconds = None if settled_at is None else settled_at - last_kill
            await asyncio.sleep(2)  # late docker events
            async with db.connect() as conn:
                rows = (await conn.execute(text("SELECT id, status, finished_at FROM deployments"))).all()
                for deployment_id, status, finished_at in rows:
                    result.statuses[status] += 1
                    if status != "running":
                        result.stuck += 1
                    elif finished_at is not None:
                        took = finished_at.timestamp() - created_at.get(deployment_id, finished_at.timestamp())
                        result.slowest_to_running = max(result.slowest_to_running or 0.0, took)
                    result.creations += events.counts[deployment_id]
                    if events.counts[deployment_id] > SERVICES:
                        result.duplicated += 1
                gaps = (await conn.execute(text(
                    "SELECT d.id, d.last_log_seq, count(l.seq), coalesce(max(l.seq), 0) FROM deployments d "
                    "LEFT JOIN deployment_logs l ON l.deployment_id = d.id GROUP BY d.id, d.last_log_seq"
                ))).all()
                result.lost_lines = sum(max(0, top - n) for _id, _last, n, top in gaps)
                result.healed_by.update(dict((await conn.execute(text(
                    "SELECT actor, count(*) FROM deployment_status_history WHERE from_status = 'deploying' "
                    "AND actor IN ('reaper', 'reclaim', 'recovery') GROUP BY actor"
                ))).all()))
    finally:
        await db.dispose()
        for deployment_id in created:
            c.remove_labelled(f"windflow.deployment_id={deployment_id}")
    for log in c.SCRATCH.glob(f"backend-{broker}-*.log"):  # the reaper's re-dispatches of lost messages
        for match in re.finditer(r"Reaper: .* redispatched=(\d+)", log.read_text(errors="replace")):
            result.healed_by["reaper re-dispatch"] += int(match.group(1))
    # stop the processes and drop the database now, so the next broker starts from a quiet machine
    result.notes += cleanup.run_named(f"stop the supervisor of {broker}", f"stop the processes of {broker}", f"stop docker events of {broker}", "flush Redis db",
                                      f"drop database of {broker}")
    return result


def report(results: list[Result], args) -> None:
    target = 30 if (args.db_restarts or args.child_bursts) else 90
    print()
    print(f"heal_time: {args.deployments} deployments, {args.kills} kills, {args.child_bursts} child-kill bursts, "
          f"{args.db_restarts} database restarts per broker, seed {args.seed}; defaults "
          f"(lease 30 s, heartbeat 5 s, reaper 5 s, dispatch timeout 15 s); {c.machine_line()}")
    rows = []
    for r in results:
        rows.append([
            r.broker, str(r.deployments), ", ".join(f"{k} {v}" for k, v in sorted(r.kills.items())),
            "-" if r.heal_seconds is None else f"{r.heal_seconds:.1f}",
            "-" if r.slowest_to_running is None else f"{r.slowest_to_running:.1f}",
            f"{r.creations}/{sum(r.statuses.values()) * SERVICES}", str(r.stuck), str(r.duplicated), str(r.lost_lines),
            "ok" if r.heal_seconds is not None and r.heal_seconds <= target and not (r.stuck or r.duplicated or r.lost_lines) else "MISSED",
        ])
    print(c.table(["broker", "deployments", "kills", "last kill → settled (s)", "slowest create → running (s)",
                   "containers created/expected", "stuck", "duplicated", "lost lines", f"target ≤ {target} s, 0/0/0"], rows))
    for r in results:
        print(f"{r.broker}: dead executors' deployments settled by " + (", ".join(f"{k} {v}" for k, v in sorted(r.healed_by.items())) or "nobody")
              + " (reaper: a lease reclaimed by the reaper; reaper re-dispatch: a lost message sent again; reclaim: a redelivered"
              " message reclaimed its dead executor's deployment; recovery: start-up recovery of a restarted backend)")
        if r.stuck:
            print(f"{r.broker}: final statuses {dict(r.statuses)}")
        for note in r.notes:
            print(f"{r.broker}: {note}")


async def bench(args, cleanup: c.Cleanup) -> list[Result]:
    results = []
    for broker in args.brokers:
        results.append(await run_broker(broker, args, cleanup))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=16)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--brokers", default="postgresql,redis", type=lambda s: [b for b in s.split(",") if b])
    parser.add_argument("--seed", default=str(int(time.time())))
    parser.add_argument("--db-restarts", type=int, default=0, help="database restarts (a private PostgreSQL server)")
    parser.add_argument("--child-bursts", type=int, default=0, help="bursts of three pool-child kills 1.5 s apart")
    parser.add_argument("--settle-timeout", type=float, default=300.0, help="give up (stuck) after this long")
    parser.add_argument("--keep-logs", action="store_true", help="keep the scratch directory (process logs)")
    args = parser.parse_args()
    for broker in args.brokers:
        if broker not in ("postgresql", "redis"):
            sys.exit(f"unknown broker {broker!r}: postgresql or redis")
    c.require_docker()
    cleanup = c.Cleanup()
    results: list[Result] = []
    try:
        results = c.run_main(lambda: bench(args, cleanup))
    except c.Interrupted:
        print("interrupted", file=sys.stderr)
    finally:
        for problem in cleanup.run():
            print(f"clean-up: {problem}", file=sys.stderr)
        if args.keep_logs:
            print(f"logs kept in {c.SCRATCH}", file=sys.stderr)
        else:
            c.remove_scratch()
    if results:
        report(results, args)


if __name__ == "__main__":
    main()
