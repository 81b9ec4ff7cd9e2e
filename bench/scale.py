"""Request times as the history grows: 10,000 → 100,000 → 1,000,000 deployments (issue 10).

Deployments (90 % running, 5 % failed, 5 % stopped, like one real deployment cloned), their history rows and
log lines are written straight into the database with ``generate_series`` (PostgreSQL) or a recursive CTE
(SQLite), in the application's own schema (migrated by the app), then the tables are ``VACUUM ANALYZE``d
and the status counts rebuilt. Each request of the issue's table, plus a logs page, a history page, a page
read by a member of two organisations (the per-organisation fan-out) and a cursor walk deep into the list, is
then timed through the ASGI app (median of ``--runs`` after one untimed warm-up, and one untimed pass of
every request before the smallest size, whose figures would otherwise include the process's cold caches), and
a growth table printed, with the machine's load average before and after each size.

Targets (PostgreSQL, at the largest size): every request ≤ 20 ms median, and none more than 2× slower than
at the smallest size.

    .venv/bin/python bench/scale.py                              # PG 10k/100k/1M + 10M lines, SQLite 100k
    .venv/bin/python bench/scale.py --sizes 10000,100000 --lines-per-deployment 10 --sqlite-size 0

The databases are thrown away at the end (or on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

c.bootstrap()

import httpx  # noqa: E402

ADMIN = {"email": "bench@example.com", "password": "bench-password-123", "organization_name": "bench"}
VIEWER = {"email": "viewer@example.com", "password": "viewer-password-123"}
#: A realistic row width: the issue cloned a real deployment (rendered compose, variables).
COMPOSE_SNAPSHOT = "services:\n  web:\n    image: nginx:1.27\n    ports: ['18080:80']\n" * 12
STACK = {"name": "web", "template": "services:\n  web:\n    image: nginx\n", "variables": []}
TARGET = {"name": "remote", "type": "docker", "endpoint": "tcp://127.0.0.1:1"}
LOGGED_FRACTION = 100  # one deployment in 100 has log lines
LOG_CHUNK = 1_000_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- seeding


class Seeder:
    """Writes rows straight into the database, continuing the series where the previous size stopped."""

    def __init__(self, database: c.ThrowawayDatabase, ids: dict) -> None:
        self.database = database
        self.ids = ids
        self.rows = 0
        self.lines = 0

    def connect(self):
        if self.database.kind == "postgresql":
            import psycopg

            return psycopg.connect(c.PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{self.database.name}", autocommit=True)
        import sqlite3

        return sqlite3.connect(self.database.url.split(":///", 1)[1], isolation_level=None)

    def grow_to(self, size: int, lines_per_deployment: int) -> None:
        start, self.rows = self.rows, size
        with self.connect() as conn:
            if self.database.kind == "postgresql":
                self._pg(conn, start, size, lines_per_deployment)
            else:
                self._sqlite(conn, start, size, lines_per_deployment)

    # PostgreSQL: generate_series, in chunks so that progress shows and no transaction grows too large
    def _pg(self, conn, start: int, size: int, lines_per_deployment: int) -> None:
        ids = self.ids
        for low in range(start, size, 250_000):
            high = min(size, low + 250_000)
            conn.execute(
                """
                INSERT INTO deployments (id, organization_id, stack_id, target_id, name, status, variables,
                    rendered_compose, attempt, max_attempts, queued_at, started_at, finished_at, progress,
                    current_step, total_steps, last_log_seq, created_at, updated_at)
                SELECT md5('d' || g)::uuid::text, %(org)s, CASE WHEN g %% 2 = 0 THEN %(stack_a)s ELSE %(stack_b)s END,
                       CASE WHEN g %% 3 = 0 THEN %(target_a)s ELSE %(target_b)s END, 'web-' || g,
                       CASE WHEN g %% 20 = 3 THEN 'failed' WHEN g %% 20 = 7 THEN 'stopped' ELSE 'running' END,
                       '{"port": 8080}', %(snapshot)s, 1, 3, t, t, t, 100, 6, 6, 0, t, t
                FROM generate_series(%(low)s::int + 1, %(high)s::int) AS g,
                     LATERAL (SELECT timestamptz '2024-01-01' + make_interval(secs => g * 30) AS t) AS stamp
                """,
                {"low": low, "high": high, "snapshot": COMPOSE_SNAPSHOT, **ids},
            )
            conn.execute(
                "INSERT INTO deployment_status_history (deployment_id, from_status, to_status, reason, actor, created_at) "
                "SELECT md5('d' || g)::uuid::text, NULL, 'pending', 'created', 'bench@example.com', "
                "timestamptz '2024-01-01' + make_interval(secs => g * 30) FROM generate_series(%(low)s::int + 1, %(high)s::int) AS g",
                {"low": low, "high": high},
            )
            log(f"  deployments {high:,}")
        logged = range(start + 1, size + 1, LOGGED_FRACTION)
        total = len(logged) * lines_per_deployment
        per_chunk = max(1, LOG_CHUNK // lines_per_deployment)
        for i in range(0, len(logged), per_chunk):
            chunk = logged[i : i + per_chunk]
            conn.execute(
                "INSERT INTO deployment_logs (deployment_id, seq, timestamp, level, message) "
                "SELECT md5('d' || g)::uuid::text, s, now(), 'info', 'Step ' || s || ': pulling image nginx:1.27 done' "
                "FROM generate_series(%(first)s::int, %(last)s::int, %(step)s::int) AS g, generate_series(1, %(n)s::int) AS s",
                {"first": chunk.start, "last": chunk[-1], "step": LOGGED_FRACTION, "n": lines_per_deployment},
            )
            self.lines += len(chunk) * lines_per_deployment
            log(f"  log lines {self.lines:,} (this size adds {total:,})")
        conn.execute(
            "UPDATE deployments SET last_log_seq = %(n)s WHERE id IN "
            "(SELECT md5('d' || g)::uuid::text FROM generate_series(%(first)s::int, %(last)s::int, %(step)s::int) AS g)",
            {"first": start + 1, "last": size, "step": LOGGED_FRACTION, "n": lines_per_deployment},
        )
        self._finish(conn)
        log("  vacuum analyze, checkpoint")
        for table in ("deployments", "deployment_logs", "deployment_status_history"):
            conn.execute(f"VACUUM ANALYZE {table}")
        # the seeding's dirty pages written out now, not by the checkpointer during the measurements
        conn.execute("CHECKPOINT")

    # SQLite: a recursive CTE counts the rows out
    def _sqlite(self, conn, start: int, size: int, lines_per_deployment: int) -> None:
        ids = self.ids
        series = "WITH RECURSIVE n(g) AS (SELECT :low + 1 UNION ALL SELECT g + 1 FROM n WHERE g < :high) "
        stamp = "strftime('%Y-%m-%d %H:%M:%S', '2024-01-01', '+' || (g * 30) || ' seconds') || '.000000'"
        conn.execute("BEGIN")
        conn.execute(
            series + "INSERT INTO deployments (id, organization_id, stack_id, target_id, name, status, variables, rendered_compose, "
            "attempt, max_attempts, queued_at, started_at, finished_at, progress, current_step, total_steps, last_log_seq, "
            "created_at, updated_at) "
            f"SELECT printf('b%035d', g), :org, CASE WHEN g % 2 = 0 THEN :stack_a ELSE :stack_b END, "
            "CASE WHEN g % 3 = 0 THEN :target_a ELSE :target_b END, 'web-' || g, "
            "CASE WHEN g % 20 = 3 THEN 'failed' WHEN g % 20 = 7 THEN 'stopped' ELSE 'running' END, "
            f"'{{\"port\": 8080}}', :snapshot, 1, 3, {stamp}, {stamp}, {stamp}, 100, 6, 6, "
            f"CASE WHEN g % {LOGGED_FRACTION} = 1 THEN {lines_per_deployment} ELSE 0 END, {stamp}, {stamp} FROM n",
            {"low": start, "high": size, "snapshot": COMPOSE_SNAPSHOT, **ids},
        )
        conn.execute(
            series + "INSERT INTO deployment_status_history (deployment_id, from_status, to_status, reason, actor, created_at) "
            f"SELECT printf('b%035d', g), NULL, 'pending', 'created', 'bench@example.com', {stamp} FROM n",
            {"low": start, "high": size},
        )
        conn.execute(
            f"WITH RECURSIVE n(g) AS (SELECT :low + 1 UNION ALL SELECT g + {LOGGED_FRACTION} FROM n WHERE g + {LOGGED_FRACTION} <= :high), "
            "s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :lines) "
            "INSERT INTO deployment_logs (deployment_id, seq, timestamp, level, message) "
            "SELECT printf('b%035d', g), i, '2024-01-01 00:00:00.000000', 'info', 'Step ' || i || ': pulling image nginx:1.27 done' "
            "FROM n, s",
            {"low": start, "high": size, "lines": lines_per_deployment},
        )
        conn.execute("COMMIT")
        self.lines += len(range(start + 1, size + 1, LOGGED_FRACTION)) * lines_per_deployment
        self._finish(conn)
        conn.execute("ANALYZE")

    def _finish(self, conn) -> None:
        """The status counts /metrics reads (rows were written behind the application's back)."""
        conn.execute("DELETE FROM deployment_status_counts")
        conn.execute("INSERT INTO deployment_status_counts (status, count) SELECT status, count(*) FROM deployments GROUP BY status")

    def deployment_id(self, g: int) -> str:
        if self.database.kind == "sqlite":
            return f"b{g:035d}"
        import hashlib
        import uuid

        return str(uuid.UUID(hashlib.md5(f"d{g}".encode()).hexdigest()))


# --------------------------------------------------------------------------- requests


async def wait_for_quiet(max_load: float, timeout: float) -> float:
    """Wait (at most ``timeout`` s) until the 1-minute load average is at most ``max_load``; return it.

    The machine is shared: a figure measured while others compile or run browsers says little about
    WindFlow. The load seen at the start of the measurements is printed with the results either way.
    """
    import asyncio
    import os

    deadline = time.monotonic() + timeout
    load = os.getloadavg()[0]
    while load > max_load and time.monotonic() < deadline:
        log(f"  load average {load:.2f} > {max_load}: waiting")
        c.check_stop()
        await asyncio.sleep(10)
        load = os.getloadavg()[0]
    return load


class Probe:
    """The SQL one request sends, replayed under ``EXPLAIN (ANALYZE, BUFFERS)`` (PostgreSQL).

    Wall-clock times on a shared 2-CPU machine move with everyone else's load; the database's own execution
    time and, above all, the number of 8 kB pages a request touches do not: they show whether a request's
    cost grows with the table.
    """

    enabled = False
    captured: list | None = None

    @classmethod
    def listen(cls, engine) -> None:
        from sqlalchemy import event

        def capture(_conn, _cursor, statement, parameters, _context, _many):
            if cls.captured is not None and statement.lstrip().upper().startswith(("SELECT", "WITH")):
                cls.captured.append((statement, parameters))

        event.listen(engine.sync_engine, "before_cursor_execute", capture)
        cls.enabled = engine.dialect.name == "postgresql"
        cls.engine = engine

    @classmethod
    async def explain(cls, send) -> tuple[float, int]:
        cls.captured = []
        try:
            await send()
        finally:
            captured, cls.captured = cls.captured, None
        total_ms, pages = 0.0, 0
        async with cls.engine.connect() as conn:
            for statement, parameters in captured:
                result = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters)
                plan = result.scalar_one()
                plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]
                total_ms += plan["Planning Time"] + plan["Execution Time"]
                pages += plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0)
            await conn.rollback()
        return total_ms / 1000, pages


async def timed(client, method: str, url: str, headers: dict, runs: int, *, params=None, expect: int = 200):
    """Median wall time of ``runs`` requests (after one untimed warm-up), and the database probe of one more."""
    samples = []

    async def send() -> None:
        response = await client.request(method, url, params=params, headers=headers)
        if response.status_code != expect:
            raise RuntimeError(f"{method} {url} {params}: {response.status_code} {response.text[:300]}")

    for i in range(runs + 1):
        c.check_stop()
        started = time.perf_counter()
        await send()
        if i:  # the first one warms caches up
            samples.append(time.perf_counter() - started)
    probe = await Probe.explain(send) if Probe.enabled else None
    return c.median(samples), probe


class _Recorder:
    """``recorder[name] = timed(...)`` files the wall time under ``results`` and the probe under ``probes``."""

    def __init__(self, results: dict, probes: dict) -> None:
        self.results, self.probes = results, probes

    def __setitem__(self, name: str, value) -> None:
        if isinstance(value, tuple):
            value, self.probes[name] = value
        self.results[name] = value


async def measure(client, seeder: Seeder, admin: dict, viewer: dict, size: int, runs: int) -> dict[str, float]:
    from backend.app.services.deployment_service import DEPLOYMENTS_NEWEST_FIRST
    from backend.app.services.pagination import MAX_OFFSET

    dep = "/api/v1/deployments"
    results: dict[str, float] = {}
    probes: dict[str, tuple[float, int] | None] = {}
    results_in = _Recorder(results, probes)
    results_in["GET /deployments?limit=50 (first page)"] = await timed(client, "GET", dep, admin, runs, params={"limit": 50})
    results_in["GET /deployments?limit=50&status=failed"] = await timed(
        client, "GET", dep, admin, runs, params={"limit": 50, "status": "failed"}
    )
    results_in["GET /deployments?offset=<n-50> (422 past the bound)"] = await timed(
        client, "GET", dep, admin, runs, params={"limit": 50, "offset": size - 50}, expect=422 if size - 50 > MAX_OFFSET else 200
    )
    results_in["GET /deployments?offset=10000 (the bound)"] = await timed(
        client, "GET", dep, admin, runs, params={"limit": 50, "offset": min(MAX_OFFSET, 10_000)}
    )
    # the row 50 from the end of the list (the oldest ones): the page the offset=999950 asked for
    g = 50
    from datetime import UTC, datetime, timedelta

    created = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=(g + 1) * 30)
    deep = DEPLOYMENTS_NEWEST_FIRST.encode([created, seeder.deployment_id(g + 1)])
    results_in["GET /deployments?cursor=<50 from the end>"] = await timed(
        client, "GET", dep, admin, runs, params={"limit": 50, "cursor": deep}
    )
    results_in["GET /deployments?limit=50 (member of 2 orgs)"] = await timed(client, "GET", dep, viewer, runs, params={"limit": 50})
    results_in["GET /deployments?stack_id=..&status=stopped"] = await timed(
        client, "GET", dep, admin, runs, params={"limit": 50, "stack_id": seeder.ids["stack_a"], "status": "stopped"}
    )

    # a walk of 20 pages from 90 % deep into the list, following next_cursor
    middle = max(1, size // 10)
    cursor = DEPLOYMENTS_NEWEST_FIRST.encode(
        [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=middle * 30), seeder.deployment_id(middle)]
    )
    pages = []
    for _ in range(20):
        started = time.perf_counter()
        response = await client.get(dep, params={"limit": 50, "cursor": cursor}, headers=admin)
        pages.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    results_in["cursor walk at 90 % depth (median page of 20)"] = c.median(pages[1:] or pages)

    logged = seeder.deployment_id(1)
    results_in["GET /deployments/{id}/logs?since_seq=500&limit=200"] = await timed(
        client, "GET", f"{dep}/{logged}/logs", admin, runs, params={"since_seq": 500, "limit": 200}
    )
    results_in["GET /deployments/{id}/history"] = await timed(client, "GET", f"{dep}/{logged}/history", admin, runs)
    results_in["GET /metrics"] = await timed(client, "GET", "/metrics", {}, runs)
    results_in["POST /system/recovery"] = await timed(client, "POST", "/api/v1/system/recovery", admin, runs)
    results_in["GET /health"] = await timed(client, "GET", "/health", {}, runs, expect=200)
    results["_probes"] = probes
    return results


async def run_backend(
    kind: str, sizes: list[int], lines_per_deployment: int, runs: int, quiet: tuple[float, float] = (0, 0)
) -> dict[int, dict[str, float]]:
    from backend.app.main import create_app

    database = c.ThrowawayDatabase(kind, "scale")
    try:
        settings = c.make_settings(
            database.url,
            PROMETHEUS_ENABLED=True,
            RECOVERY_ON_STARTUP=False,
            STACKS_CATALOG_ENABLED=False,
            RETENTION_DAYS=0,  # the retention loop must not run during the measurements
            RETENTION_MAX_LOG_LINES=0,
            LOGIN_RATE_LIMIT_PER_MINUTE=1000,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            from backend.app import database as app_database

            Probe.listen(app_database.get_engine())
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=600) as client:
                setup = await client.post("/api/v1/auth/setup", json=ADMIN)
                assert setup.status_code == 201, setup.text
                admin = {"Authorization": f"Bearer {setup.json()['access_token']}"}
                org = (await client.get("/api/v1/auth/me", headers=admin)).json()["default_organization_id"]
                ids = {"org": org}
                for kind_ in ("a", "b"):
                    stack = await client.post("/api/v1/stacks", json={**STACK, "name": f"web-{kind_}"}, headers=admin)
                    assert stack.status_code == 201, stack.text
                    target = await client.post("/api/v1/targets", json={**TARGET, "name": f"remote-{kind_}"}, headers=admin)
                    assert target.status_code == 201, target.text
                    ids[f"stack_{kind_}"], ids[f"target_{kind_}"] = stack.json()["id"], target.json()["id"]
                other = await client.post("/api/v1/organizations", json={"name": "small"}, headers=admin)
                user = await client.post("/api/v1/users", json=VIEWER, headers=admin)
                for org_id in (org, other.json()["id"]):
                    added = await client.post(
                        f"/api/v1/organizations/{org_id}/members", json={"user_id": user.json()["id"], "role": "viewer"}, headers=admin
                    )
                    assert added.status_code == 201, added.text

                async def log_in(user: dict) -> dict:
                    login = await client.post("/api/v1/auth/login", data={"username": user["email"], "password": user["password"]})
                    assert login.status_code == 200, login.text
                    return {"Authorization": f"Bearer {login.json()['access_token']}"}

                seeder = Seeder(database, ids)
                results = {}
                for size in sizes:
                    log(f"{kind}: seeding up to {size:,} deployments")
                    started = time.perf_counter()
                    seeder.grow_to(size, lines_per_deployment)
                    log(
                        f"{kind}: {size:,} deployments, {seeder.lines:,} log lines seeded in {time.perf_counter() - started:.0f} s; measuring"
                    )
                    load = await wait_for_quiet(*quiet) if quiet[1] else os.getloadavg()[0]
                    # fresh tokens: seeding and waiting for a quiet machine can outlast an access token
                    admin, viewer = await log_in(ADMIN), await log_in(VIEWER)
                    if not results:  # one untimed pass first: the smallest size must not pay for cold caches
                        await measure(client, seeder, admin, viewer, size, 1)
                    results[size] = await measure(client, seeder, admin, viewer, size, runs)
                    results[size]["_load"] = (load, os.getloadavg()[0])
                    results[size]["_lines"] = seeder.lines
        return results
    finally:
        database.drop()


def report(kind: str, results: dict[int, dict[str, float]], *, target_ms: float | None) -> bool:
    sizes = sorted(results)
    first, last = sizes[0], sizes[-1]
    names = [k for k in results[first] if not k.startswith("_")]
    headers = ["request", *(f"{s:,}" for s in sizes)]
    if len(sizes) > 1:
        headers.append(f"{last:,} / {first:,}")
    rows, ok = [], True
    for name in names:
        row = [name, *(c.ms(results[s][name]) for s in sizes)]
        if len(sizes) > 1:
            ratio = results[last][name] / results[first][name]
            row.append(f"{ratio:.2f}×")
            if target_ms is not None and ratio > 2:
                ok = False
        if target_ms is not None and results[last][name] * 1000 > target_ms:
            ok = False
        rows.append(row)
    loads = [f"{results[s]['_load'][0]:.1f} / {results[s]['_load'][1]:.1f}" for s in sizes]
    rows.append(["(1-min load average before / after)", *loads, *([""] if len(sizes) > 1 else [])])
    lines = ", ".join(f"{s:,}: {results[s]['_lines']:,}" for s in sizes)
    print(f"\n{kind}: median ms per request, by number of deployments (log lines {lines})")
    print(c.table(headers, rows))
    if all(results[s].get("_probes") for s in sizes) and any(v for v in results[last]["_probes"].values()):
        rows = []
        for name in names:
            probes = [results[s]["_probes"].get(name) for s in sizes]
            if any(p is None for p in probes):
                continue
            rows.append([name, *(f"{c.ms(p[0])} / {p[1]:,}" for p in probes)])
        print(f"\n{kind}: the same requests seen by the database: EXPLAIN ANALYZE time (ms) / 8 kB pages touched")
        print(c.table(["request", *(f"{s:,}" for s in sizes)], rows))
    if target_ms is not None:
        print(f"target at {last:,}: every request ≤ {target_ms:.0f} ms and ≤ 2× the {first:,} figure: {'MET' if ok else 'NOT MET'}")
    return ok


async def bench(args) -> bool:
    print(c.machine_line())
    ok = True
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        quiet = (args.max_load, args.max_wait)
        pg = await run_backend("postgresql", sizes, args.lines_per_deployment, args.runs, quiet)
        ok &= report("PostgreSQL", pg, target_ms=20)
    if args.sqlite_size:
        lite = await run_backend("sqlite", [args.sqlite_size], args.lines_per_deployment, args.runs, (args.max_load, args.max_wait))
        report("SQLite", lite, target_ms=None)
    print(c.machine_line())
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="PostgreSQL sizes, comma-separated ('' to skip)")
    parser.add_argument("--sqlite-size", type=int, default=100_000, help="SQLite size (0 to skip)")
    parser.add_argument(
        "--lines-per-deployment",
        type=int,
        default=1000,
        help=f"log lines of every {LOGGED_FRACTION}th deployment (1000: 10 million lines at 1,000,000 deployments)",
    )
    parser.add_argument("--runs", type=int, default=5, help="timed requests per figure (median), after one warm-up")
    parser.add_argument(
        "--max-load",
        type=float,
        default=1.5,
        help="before measuring a size, wait until the 1-minute load average is at most this (the machine is shared)",
    )
    parser.add_argument("--max-wait", type=float, default=600, help="seconds to wait for that at most (0: do not wait)")
    args = parser.parse_args()
    try:
        ok = c.run_main(lambda: bench(args))
    except c.Interrupted:
        sys.exit(130)
    finally:
        c.remove_scratch()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
