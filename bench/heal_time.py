"""Heal time: N deployments while K random ``kill -9`` hit the executors; how long until everything settles.

    .venv/bin/python bench/heal_time.py [--deployments 16] [--kills 6] [--brokers postgresql,redis] [--seed S]
                                        [--db-restarts 2] [--child-bursts 2] [--deployments-timeout S] [--hosts 2]
                                        [--kill-kinds worker,pool,backend]

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

``--kill-kinds worker,pool`` restricts what the kills pick from (default: all three).

``--hosts 2``: workers on two "hosts" with no shared disk. Host A is this machine's engine; host B a second
``dockerd`` in a network namespace of its own (``backend/tests/remote_docker.py``), reached through its unix
socket. Each host runs two workers declaring ``WORKER_TARGETS=local`` with its own ``HOST_ID`` and engine, each
worker its own ``DEPLOYMENTS_WORKDIR`` (a restarted worker gets a new, empty one); each host's engine is its
own placed target (``local@<host>``), and the deployments alternate between the two. A worker kill hits any of
the four; the backend runs no worker. Also printed: **misplaced** (a deployment with a container on the other
host's engine). Target: settled ≤ 30 s after the last kill, 0 stuck, 0 duplicated, 0 lost, 0 misplaced.

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
import shutil
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
        '    command: ["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 3600"]\n'
        '    healthcheck:\n      test: ["CMD", "test", "-f", "/tmp/ready"]\n      interval: 1s\n      retries: 60\n'
        "  sidecar:\n"
        f"    image: {c.TEST_IMAGE}\n"
        "    init: true\n"
        "    network_mode: none\n"
        '    command: ["sh", "-c", "exec sleep 3600"]\n'
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
    hosts: int = 1
    misplaced: int = 0
    per_host: Counter = field(default_factory=Counter)  # host -> deployments running there


@dataclass(frozen=True)
class Host:
    """One "host" of ``--hosts 2``: its HOST_ID, its engine as its workers reach it, the docker CLI's flags for it."""

    name: str
    endpoint: str
    docker: tuple[str, ...] = ()


class CreationCounter:
    """``docker events`` for container creations labelled ``windflow.managed=true``, by deployment id."""

    def __init__(self, docker: tuple[str, ...] = ()) -> None:
        self.counts: Counter = Counter()
        self.proc = subprocess.Popen(
            [
                "docker",
                *docker,
                "events",
                "--filter",
                "type=container",
                "--filter",
                "event=create",
                "--filter",
                "label=windflow.managed=true",
                "--format",
                "{{json .}}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
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
    """The backend and two workers (two per host with ``hosts``) as real processes, each restartable after a kill."""

    def __init__(self, settings, label: str, port: int, hosts: list[Host] | None = None) -> None:
        self.settings = settings
        self.label = label
        self.port = port
        self.generation = Counter()
        self.host_of: dict[str, Host] = {f"wfheal-{h.name}-{i}": h for h in hosts or [] for i in (1, 2)}
        self.backend = self._start_backend()
        self.workers: dict[str, c.Proc] = {}
        if not hosts:
            self.start_workers()

    def start_workers(self) -> None:
        """The workers; with hosts, after the setup (a worker declaring ``local`` registers its host's engine in
        the first organisation, and stops when there is none)."""
        for name in list(self.host_of) or ["wfheal-a", "wfheal-b"]:
            self.workers[name] = self._start_worker(name)

    def _start_backend(self) -> c.Proc:
        self.generation["backend"] += 1
        env = c.settings_env(self.settings, HOST="127.0.0.1", PORT=str(self.port))
        return c.Proc([sys.executable, "-m", "backend.app.main"], env, c.SCRATCH / f"backend-{self.label}-{self.generation['backend']}.log")

    def _start_worker(self, name: str) -> c.Proc:
        self.generation[name] += 1
        argv = [str(c.BIN / "celery"), "-A", "backend.app.celery_app", "worker", "--pool=prefork", "--concurrency=2", "-n", f"{name}@%h"]
        settings = self.settings
        host = self.host_of.get(name)
        if host is not None:
            # no disk shared with anyone: its own directory, a new empty one each time it starts
            previous = c.SCRATCH / f"workdir-{self.label}-{name}-{self.generation[name] - 1}"
            shutil.rmtree(previous, ignore_errors=True)
            settings = settings.model_copy(
                update={
                    "WORKER_TARGETS": "local",
                    "HOST_ID": host.name,
                    "LOCAL_DOCKER_ENDPOINT": host.endpoint,
                    "DEPLOYMENTS_WORKDIR": c.SCRATCH / f"workdir-{self.label}-{name}-{self.generation[name]}",
                }
            )
        return c.Proc(argv, c.settings_env(settings), c.SCRATCH / f"{name}-{self.label}-{self.generation[name]}.log")

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


def remove_labelled_on(host: Host, label: str) -> None:
    """What ``c.remove_labelled`` does, on ``host``'s engine (containers only: the stack has no network)."""
    out = subprocess.run(["docker", *host.docker, "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True, timeout=60)
    if out.stdout.split():
        subprocess.run(["docker", *host.docker, "rm", "-f", *out.stdout.split()], capture_output=True, timeout=120)


async def host_targets(client: httpx.AsyncClient, headers, hosts: list[Host]) -> dict[str, str]:
    """host name -> the id of its engine's target (``local@<host>``, registered by its workers), its capacity
    raised to the benchmark's 4."""
    listed = (await client.get("/api/v1/targets", headers=headers, params={"limit": 100})).json()["items"]
    by_name = {t["name"]: t for t in listed}
    found = {}
    for host in hosts:
        target = by_name.get(f"local@{host.name}")
        if target is None or not target["placed"] or target["host"] != host.name:
            raise RuntimeError(f"host {host.name}'s workers registered no target: {sorted(by_name)}")
        response = await client.patch(f"/api/v1/targets/{target['id']}", json={"max_concurrent_deployments": 4}, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"PATCH /targets answered {response.status_code}: {response.text}")
        found[host.name] = target["id"]
    return found


async def run_broker(broker: str, args, cleanup: c.Cleanup, hosts: list[Host] | None = None) -> Result:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    result = Result(broker, hosts=len(hosts or []) or 1)
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
    overrides: dict = dict(
        CELERY_ENABLED=True,
        CELERY_AUTO_START_WORKER=False,
        DEPLOYMENTS_WORKDIR=c.SCRATCH / f"deployments-{broker}",
        CELERY_BROKER_TYPE="redis" if broker == "redis" else "database",
        LOG_LEVEL="INFO",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=60,
    )
    if broker == "redis":
        from dispatch_latency import flush_redis_db, pick_redis_db

        db_number = pick_redis_db()
        cleanup.push(f"flush Redis db {db_number}", flush_redis_db, db_number)
        overrides.update(
            CELERY_BROKER_URL=f"redis://{c.REDIS_HOST}:{c.REDIS_PORT}/{db_number}",
            CELERY_RESULT_BACKEND=f"redis://{c.REDIS_HOST}:{c.REDIS_PORT}/{db_number}",
        )
    settings = c.make_settings(database_url, **overrides)
    db = create_async_engine(database_url, pool_pre_ping=True)
    engines = hosts or [Host("this machine", "unix:///var/run/docker.sock")]
    counters = {host.name: CreationCounter(host.docker) for host in engines}
    cleanup.push(f"stop docker events of {broker}", lambda: [counter.stop() for counter in counters.values()])
    cluster = Cluster(settings, broker, c.free_port(), hosts)
    cleanup.push(f"stop the processes of {broker}", cluster.stop)
    created: list[str] = []
    created_at: dict[str, float] = {}
    placed_on: dict[str, str] = {}  # deployment id -> the host whose target it was created on
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cluster.port}", timeout=30) as client:
            await wait_http(cluster, client)
            env = await c.api_setup(client, STACK, max_concurrent=4)
            if hosts:
                cluster.start_workers()
            # both workers heartbeat before the first deployment
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                body = (await client.get("/api/v1/system/workers", headers=env.headers)).json()
                if sum(1 for w in body.get("workers", []) if w["name"].startswith("wfheal-") and w["alive"]) >= len(cluster.workers):
                    break
                for name, proc in cluster.workers.items():
                    if not proc.alive():
                        raise RuntimeError(f"worker {name} exited at start:\n{proc.tail()}")
                await asyncio.sleep(0.5)
            targets = await host_targets(client, env.headers, hosts) if hosts else {engines[0].name: env.target_id}
            rotation = list(targets.items())
            window = args.deployments * 1.5
            kinds = [rng.choice(args.kill_kinds) for _ in range(args.kills)]
            if args.kills >= len(args.kill_kinds):  # every kind at least once
                kinds[: len(args.kill_kinds)] = args.kill_kinds
            kinds += ["burst"] * args.child_bursts + [("db-fast", "db-immediate")[i % 2] for i in range(args.db_restarts)]
            kill_times = sorted(rng.uniform(1.0, window) for _ in kinds)
            rng.shuffle(kinds)
            print(
                f"[{broker}] {args.deployments} deployments over {window:.0f}s, kills at "
                + ", ".join(f"{t:.1f}s {k}" for t, k in zip(kill_times, kinds, strict=False)),
                file=sys.stderr,
                flush=True,
            )
            start = time.monotonic()
            last_kill = start

            async def killer() -> None:
                nonlocal last_kill
                for at, kind in zip(kill_times, kinds, strict=False):
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
                host_name, target_id = rotation[i % len(rotation)]
                response = await post_retrying(
                    cluster, client, "/api/v1/deployments", json={"stack_id": env.stack_id, "target_id": target_id}, headers=env.headers
                )
                if response.status_code != 201:
                    raise RuntimeError(f"POST /deployments answered {response.status_code}: {response.text}")
                created.append(response.json()["id"])
                created_at[created[-1]] = time.time()
                placed_on[created[-1]] = host_name
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
                    made = {name: counter.counts[deployment_id] for name, counter in counters.items()}
                    result.creations += sum(made.values())
                    if sum(made.values()) > SERVICES:
                        result.duplicated += 1
                    # a deployment that POST created twice (an answer lost with a killed backend) has no host here
                    home = placed_on.get(deployment_id)
                    if home is not None and any(n for name, n in made.items() if name != home):
                        result.misplaced += 1
                    if status == "running" and home is not None:
                        result.per_host[home] += 1
                gaps = (
                    await conn.execute(
                        text(
                            "SELECT d.id, d.last_log_seq, count(l.seq), coalesce(max(l.seq), 0) FROM deployments d "
                            "LEFT JOIN deployment_logs l ON l.deployment_id = d.id GROUP BY d.id, d.last_log_seq"
                        )
                    )
                ).all()
                result.lost_lines = sum(max(0, top - n) for _id, _last, n, top in gaps)
                result.healed_by.update(
                    dict(
                        (
                            await conn.execute(
                                text(
                                    "SELECT actor, count(*) FROM deployment_status_history WHERE from_status = 'deploying' "
                                    "AND actor IN ('reaper', 'reclaim', 'recovery') GROUP BY actor"
                                )
                            )
                        ).all()
                    )
                )
    finally:
        await db.dispose()
        for deployment_id in created:
            c.remove_labelled(f"windflow.deployment_id={deployment_id}")
            for host in engines:
                if host.docker:
                    remove_labelled_on(host, f"windflow.deployment_id={deployment_id}")
    for log in c.SCRATCH.glob(f"backend-{broker}-*.log"):  # the reaper's re-dispatches of lost messages
        for match in re.finditer(r"Reaper: .* redispatched=(\d+)", log.read_text(errors="replace")):
            result.healed_by["reaper re-dispatch"] += int(match.group(1))
    # stop the processes and drop the database now, so the next broker starts from a quiet machine
    result.notes += cleanup.run_named(
        f"stop the supervisor of {broker}",
        f"stop the processes of {broker}",
        f"stop docker events of {broker}",
        "flush Redis db",
        f"drop database of {broker}",
    )
    return result


def report(results: list[Result], args) -> None:
    target = 30 if (args.db_restarts or args.child_bursts or args.hosts > 1) else 90
    print()
    hosts = f", {args.hosts} hosts (2 workers each, WORKER_TARGETS=local, own workdirs)" if args.hosts > 1 else ""
    print(
        f"heal_time: {args.deployments} deployments, {args.kills} kills ({'/'.join(args.kill_kinds)}), "
        f"{args.child_bursts} child-kill bursts, "
        f"{args.db_restarts} database restarts per broker{hosts}, seed {args.seed}; defaults "
        f"(lease 30 s, heartbeat 5 s, reaper 5 s, dispatch timeout 15 s); {c.machine_line()}"
    )
    rows = []
    for r in results:
        rows.append(
            [
                r.broker,
                str(r.deployments),
                ", ".join(f"{k} {v}" for k, v in sorted(r.kills.items())),
                "-" if r.heal_seconds is None else f"{r.heal_seconds:.1f}",
                "-" if r.slowest_to_running is None else f"{r.slowest_to_running:.1f}",
                f"{r.creations}/{sum(r.statuses.values()) * SERVICES}",
                str(r.stuck),
                str(r.duplicated),
                str(r.lost_lines),
                *([str(r.misplaced)] if args.hosts > 1 else []),
                "ok"
                if r.heal_seconds is not None and r.heal_seconds <= target and not (r.stuck or r.duplicated or r.lost_lines or r.misplaced)
                else "MISSED",
            ]
        )
    print(
        c.table(
            [
                "broker",
                "deployments",
                "kills",
                "last kill → settled (s)",
                "slowest create → running (s)",
                "containers created/expected",
                "stuck",
                "duplicated",
                "lost lines",
                *(["misplaced"] if args.hosts > 1 else []),
                f"target ≤ {target} s, 0/0/0{'/0' if args.hosts > 1 else ''}",
            ],
            rows,
        )
    )
    for r in results:
        if args.hosts > 1:
            print(f"{r.broker}: running per host: " + ", ".join(f"{h} {n}" for h, n in sorted(r.per_host.items())))
    for r in results:
        print(
            f"{r.broker}: dead executors' deployments settled by "
            + (", ".join(f"{k} {v}" for k, v in sorted(r.healed_by.items())) or "nobody")
            + " (reaper: a lease reclaimed by the reaper; reaper re-dispatch: a lost message sent again; reclaim: a redelivered"
            " message reclaimed its dead executor's deployment; recovery: start-up recovery of a restarted backend)"
        )
        if r.stuck:
            print(f"{r.broker}: final statuses {dict(r.statuses)}")
        for note in r.notes:
            print(f"{r.broker}: {note}")


async def bench(args, cleanup: c.Cleanup) -> list[Result]:
    results = []
    if args.hosts == 1:
        for broker in args.brokers:
            results.append(await run_broker(broker, args, cleanup))
        return results
    with second_host() as host_b:
        hosts = [Host("heal-host-a", "unix:///var/run/docker.sock"), host_b]
        for broker in args.brokers:
            results.append(await run_broker(broker, args, cleanup, hosts))
    return results


@contextlib.contextmanager
def second_host():
    """Host B: a second dockerd in a network namespace of its own (``backend/tests/remote_docker.py``), with the
    test image loaded; its workers reach it through its unix socket."""
    from backend.tests.remote_docker import start_remote_docker

    with start_remote_docker() as engine:
        socket_url = f"unix://{engine.workdir / 'docker.sock'}"
        host = Host("heal-host-b", socket_url, ("-H", socket_url))
        saved = subprocess.run(["docker", "save", c.TEST_IMAGE], capture_output=True, timeout=120, check=True)
        subprocess.run(["docker", *host.docker, "load"], input=saved.stdout, capture_output=True, timeout=120, check=True)
        print(
            f"host B: dockerd in network namespace {engine.netns} ({engine.startup_seconds:.1f} s to start), {c.TEST_IMAGE} loaded",
            file=sys.stderr,
            flush=True,
        )
        yield host


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
    parser.add_argument(
        "--kill-kinds",
        default="worker,pool,backend",
        type=lambda s: [k for k in s.split(",") if k],
        help="what the kills pick from: worker (main process), pool (a pool child), backend",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        default=1,
        choices=(1, 2),
        help="2: workers on two hosts (a second dockerd in its own network namespace), no shared disk",
    )
    args = parser.parse_args()
    for broker in args.brokers:
        if broker not in ("postgresql", "redis"):
            sys.exit(f"unknown broker {broker!r}: postgresql or redis")
    if not args.kill_kinds or set(args.kill_kinds) - {"worker", "pool", "backend"}:
        sys.exit(f"--kill-kinds: worker, pool and/or backend, not {args.kill_kinds}")
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
