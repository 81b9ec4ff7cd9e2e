"""Every listing query reads a bounded number of rows through the index of its filter (PostgreSQL, issue 10).

What a user cares about is that a page, its ``total`` and the other listings cost the same whatever the size of
the history, so that is what is asserted, on the plans PostgreSQL really executes (``EXPLAIN (ANALYZE,
BUFFERS)`` of every statement the API sends while serving each request, with its own parameters):

* **bounded reads**: no scan of ``deployments``, ``deployment_logs`` or ``deployment_status_history`` reads
  more rows than the request's budget (twice the rows it may legitimately need: ``limit + 1`` per page, the
  ``total`` cap + 1, the skipped keys of an ``offset``). A scan that stops after its ``LIMIT`` fits; one that
  reads the table, or sorts it, does not: the table holds 100 times the budget;
* **the filter's index**: the ordered statements of a filtered listing (the page, the capped count, the keys
  of an offset) are index scans of an index whose leading columns are the filter's columns, followed by the
  sort key (``created_at`` for deployments, ``seq`` for log lines, ``id`` for history).

The data is shaped like the issue's (90 % running, 5 % failed, 5 % stopped; one organisation holding 90 % of
the rows, interleaved with a small one; stacks and targets spread over them) and seeded with set-based SQL,
then ``VACUUM ANALYZE``d as autovacuum would have done in an installation that grew to this size (without it
the planner must assume every index entry costs a random heap read, which a real table is not like). The
``total`` cap is lowered to 1,000 for 100,000 rows: the same 1 % ratio as the real cap (10,000) at 1,000,000
deployments, the size the targets are set for, so the planner weighs the same choices at a tenth of the seeding.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import event, select, text

from backend.app import database
from backend.app.main import create_app
from backend.app.models import Deployment, Stack, Target, TargetType
from backend.app.services import pagination
from backend.app.services.deployment_service import DEPLOYMENTS_NEWEST_FIRST
from backend.app.services.deployments import retention
from backend.tests.conftest import make_settings
from backend.tests.helpers import add_member, create_user, default_org, setup_admin

pytestmark = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)

BIG_TABLES = {"deployments", "deployment_logs", "deployment_status_history"}
DEPLOYMENTS = 100_000
CAP = 1_000
LOGGED = 200  # deployments with 1,000 log lines each
SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan", "Bitmap Heap Scan"}
INDEX_SCANS = {"Index Scan", "Index Only Scan"}


async def _seed(session, big_org: str, small_org: str) -> dict:
    ids = {}
    for org, key in ((big_org, "big"), (small_org, "small")):
        for kind in ("a", "b"):
            stack = Stack(organization_id=org, name=f"stack-{kind}", template="services: {}\n", variables=[])
            target = Target(organization_id=org, name=f"target-{kind}", type=TargetType.DOCKER, endpoint="tcp://127.0.0.1:1")
            session.add_all([stack, target])
            await session.flush()
            ids[f"{key}_stack_{kind}"], ids[f"{key}_target_{kind}"] = stack.id, target.id
    await session.execute(
        text(
            """
            INSERT INTO deployments (id, organization_id, stack_id, target_id, name, status, variables, attempt,
                max_attempts, queued_at, progress, current_step, total_steps, last_log_seq, created_at, updated_at)
            SELECT gen_random_uuid()::text,
                   CASE WHEN g % 10 = 0 THEN :small_org ELSE :big_org END,
                   CASE WHEN g % 10 = 0 THEN :small_stack WHEN g % 2 = 0 THEN :big_stack_a ELSE :big_stack_b END,
                   CASE WHEN g % 10 = 0 THEN :small_target WHEN g % 3 = 0 THEN :big_target_a ELSE :big_target_b END,
                   'd-' || g,
                   CASE WHEN g % 20 = 3 THEN 'failed' WHEN g % 20 = 7 THEN 'stopped' ELSE 'running' END,
                   '{}', 1, 3, t, 100, 6, 6, 0, t, t
            FROM generate_series(1, :n) AS g, LATERAL (SELECT now() - make_interval(secs => :n - g) AS t) AS stamp
            """
        ),
        {
            "n": DEPLOYMENTS,
            "small_org": small_org,
            "big_org": big_org,
            "small_stack": ids["small_stack_a"],
            "big_stack_a": ids["big_stack_a"],
            "big_stack_b": ids["big_stack_b"],
            "small_target": ids["small_target_a"],
            "big_target_a": ids["big_target_a"],
            "big_target_b": ids["big_target_b"],
        },
    )
    logged = list((await session.execute(text("SELECT id FROM deployments ORDER BY created_at LIMIT :n"), {"n": LOGGED})).scalars())
    await session.execute(
        text(
            "INSERT INTO deployment_logs (deployment_id, seq, timestamp, level, message) "
            "SELECT d, s, now(), 'info', 'line ' || s FROM unnest(CAST(:ids AS varchar[])) AS d, generate_series(1, 1000) AS s"
        ),
        {"ids": logged},
    )
    await session.execute(
        text("UPDATE deployments SET last_log_seq = 1000, updated_at = now() - interval '90 days' WHERE id = ANY(CAST(:ids AS varchar[]))"),
        {"ids": logged},
    )
    await session.execute(
        text(
            "INSERT INTO deployment_status_history (deployment_id, from_status, to_status, reason, created_at) "
            "SELECT id, NULL, status, 'seeded', created_at FROM deployments"
        )
    )
    await session.execute(
        text(
            "INSERT INTO deployment_status_history (deployment_id, from_status, to_status, reason, created_at) "
            "SELECT d, 'running', 'running', 'step ' || s, now() FROM unnest(CAST(:ids AS varchar[])) AS d, generate_series(1, 50) AS s"
        ),
        {"ids": logged},
    )
    await session.commit()
    ids["logged"] = logged[0]
    return ids


async def _vacuum_analyze(engine) -> None:
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in sorted(BIG_TABLES):
            await conn.exec_driver_sql(f"VACUUM ANALYZE {table}")


async def _indexes(engine) -> dict[str, tuple[str, list[str]]]:
    """Index name → its table and columns, in order (from the catalogue: the indexes as they really are)."""
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(
            "SELECT i.relname, t.relname, array_agg(a.attname ORDER BY k.ord) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
            "CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
            "WHERE t.relname = ANY($1) GROUP BY i.relname, t.relname",
            (list(BIG_TABLES),),
        )
        return {name: (table, list(columns)) for name, table, columns in rows}


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _rows_read(node: dict) -> float:
    """Rows a scan node looked at, over all its loops (kept + filtered out + rechecked away)."""
    per_loop = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
    return per_loop * node.get("Actual Loops", 1)


class Capture:
    """The statements touching the big tables, captured from the app's engine while ``active``."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, object]] | None = None

    def __call__(self, _conn, _cursor, statement, parameters, _context, _many) -> None:
        if self.statements is None or statement.lstrip().upper().startswith(("EXPLAIN", "INSERT", "VACUUM")):
            return
        if any(f" {t}" in statement for t in BIG_TABLES) and (statement, parameters) not in self.statements:
            self.statements.append((statement, parameters))

    @contextmanager
    def active(self):
        self.statements = []
        try:
            yield self.statements
        finally:
            self.statements = None


@dataclass
class Check:
    name: str
    budget: int  # rows any one scan of a big table may read
    leading: tuple[str, ...] | None  # the filter's columns then the sort key: how the ordered statements' index starts
    order_marker: str  # how the ordered statements are recognised
    #: False for a filter that 10 % of the rows or more pass (an organisation, a stack, a target, running):
    #: reading the sort key's index and filtering is then as cheap as the filter's index (here fewer pages:
    #: the heap is in ``created_at`` order, a stack's rows are scattered), and PostgreSQL picks either, so
    #: any index starting with a subset of the filter's columns then the sort key is accepted; the row
    #: budget still holds the read to the page. The selective filters (5 % and less) must use their index.
    exact: bool = True

    def accepts(self, columns: list[str]) -> bool:
        assert self.leading is not None
        if self.exact:
            return tuple(columns[: len(self.leading)]) == self.leading
        *filters, sort_key = self.leading
        if sort_key not in columns:
            return False
        return set(columns[: columns.index(sort_key)]) <= set(filters)


def _table(node: dict, indexes: dict[str, tuple[str, list[str]]]) -> str | None:
    if "Relation Name" in node:
        return node["Relation Name"]
    return indexes.get(node.get("Index Name", ""), (None, []))[0]  # a Bitmap Index Scan names only its index


def _sample(statements: list[tuple[str, object]], per_text: int = 3) -> list[tuple[str, object]]:
    """At most ``per_text`` executions of each distinct SQL text (a retention pass repeats a few shapes)."""
    seen: dict[str, int] = {}
    kept = []
    for statement, parameters in statements:
        seen[statement] = seen.get(statement, 0) + 1
        if seen[statement] <= per_text:
            kept.append((statement, parameters))
    return kept


async def _explain(engine, statements, check: Check, indexes: dict[str, tuple[str, list[str]]]) -> list[str]:
    problems: list[str] = []
    ordered_seen = 0
    async with engine.connect() as conn:
        for statement, parameters in statements:
            # ANALYZE executes the statement: inside a transaction rolled back below, so a DELETE deletes nothing
            result = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters)
            raw = result.scalar_one()
            plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
            buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
            sql = re.sub(r"^SELECT .+? FROM ", "SELECT ... FROM ", " ".join(statement.split()), count=1)
            where = f"{check.name}: {sql[:300]!r} ({buffers} pages)"
            scans = [n for n in _nodes(plan) if n["Node Type"] in SCANS and _table(n, indexes) in BIG_TABLES]
            for node in scans:
                table = _table(node, indexes)
                if _rows_read(node) > check.budget:
                    problems.append(f"{where}: {node['Node Type']} on {table} read {_rows_read(node):.0f} rows > {check.budget}")
            if check.leading is None or check.order_marker not in statement:
                continue
            ordered_seen += 1
            big = [n for n in scans if "Relation Name" in n]
            for node in big:
                columns = indexes.get(node.get("Index Name", ""), (None, []))[1]
                if node["Node Type"] not in INDEX_SCANS or not check.accepts(columns):
                    problems.append(
                        f"{where}: {node['Node Type']} {node.get('Index Name', '')} {columns}, expected an index on {check.leading}"
                    )
            if not big:
                problems.append(f"{where}: no scan of a big table in the plan")
        await conn.rollback()
    if check.leading is not None and not ordered_seen:
        problems.append(f"{check.name}: no ordered statement captured (marker {check.order_marker!r})")
    return problems


async def test_listing_queries_read_bounded_index_ranges(client, db, monkeypatch):
    monkeypatch.setattr(pagination, "COUNT_CAP", CAP)
    admin = await setup_admin(client)
    big_org = await default_org(client, admin)
    other = await client.post("/api/v1/organizations", json={"name": "small"}, headers=admin.headers)
    small_org = other.json()["id"]
    viewer = await create_user(client, admin, "viewer@example.com")
    await add_member(client, admin, big_org, viewer, "viewer")
    await add_member(client, admin, small_org, viewer, "viewer")
    async with database.AsyncSessionLocal() as session:
        ids = await _seed(session, big_org, small_org)
        middle = (
            await session.execute(
                select(Deployment.created_at, Deployment.id).order_by(Deployment.created_at).offset(DEPLOYMENTS // 2).limit(1)
            )
        ).one()
    await _vacuum_analyze(db.engine)
    indexes = await _indexes(db.engine)
    deep_cursor = DEPLOYMENTS_NEWEST_FIRST.encode([middle.created_at, middle.id])

    listing = 2 * (CAP + 1)
    by_date = "ORDER BY deployments.created_at DESC"
    org, status, created = "organization_id", "status", "created_at"
    requests = [
        (admin, "/api/v1/deployments", {"limit": 50}, Check("first page", listing, None, by_date)),
        (viewer, "/api/v1/deployments", {"limit": 50}, Check("member's first page", listing, (org, created), by_date, exact=False)),
        (admin, "/api/v1/deployments", {"limit": 50, "status": "failed"}, Check("status", listing, (status, created), by_date)),
        (
            viewer,
            "/api/v1/deployments",
            {"limit": 50, "status": ["failed", "stopped"]},
            Check("member's statuses", listing, (org, status, created), by_date),
        ),
        (
            admin,
            "/api/v1/deployments",
            {"limit": 50, "organization_id": big_org, "status": "running"},
            Check("organisation + status", listing, (org, status, created), by_date, exact=False),
        ),
        (
            admin,
            "/api/v1/deployments",
            {"limit": 50, "stack_id": ids["big_stack_a"]},
            Check("stack of 45 %", listing, ("stack_id", created), by_date, exact=False),
        ),
        (
            viewer,
            "/api/v1/deployments",
            {"limit": 50, "stack_id": ids["small_stack_a"]},
            Check("stack of 10 %", listing, ("stack_id", created), by_date, exact=False),
        ),
        (
            admin,
            "/api/v1/deployments",
            {"limit": 50, "stack_id": ids["big_stack_b"], "status": "failed"},
            Check("stack + status", listing, ("stack_id", status, created), by_date),
        ),
        (
            viewer,
            "/api/v1/deployments",
            {"limit": 50, "target_id": ids["big_target_b"]},
            Check("target of 60 %", listing, ("target_id", created), by_date, exact=False),
        ),
        (
            viewer,
            "/api/v1/deployments",
            {"limit": 50, "target_id": ids["small_target_a"]},
            Check("target of 10 %", listing, ("target_id", created), by_date, exact=False),
        ),
        (
            viewer,
            "/api/v1/deployments",
            {"limit": 50, "target_id": ids["big_target_a"], "status": "stopped"},
            Check("target + status", listing, ("target_id", status, created), by_date),
        ),
        (admin, "/api/v1/deployments", {"limit": 50, "cursor": deep_cursor}, Check("deep cursor", listing, None, by_date)),
        (
            viewer,
            "/api/v1/deployments",
            {"limit": 50, "cursor": deep_cursor, "status": "failed"},
            Check("member's deep cursor + status", listing, (org, status, created), by_date),
        ),
        (admin, "/api/v1/deployments", {"limit": 50, "offset": 3000}, Check("offset", 2 * (3000 + 51), None, by_date)),
        (
            viewer,
            f"/api/v1/deployments/{ids['logged']}/logs",
            {"limit": 200, "since_seq": 500},
            Check("logs page", 2 * 201, ("deployment_id", "seq"), "ORDER BY deployment_logs.seq"),
        ),
        (
            viewer,
            f"/api/v1/deployments/{ids['logged']}/history",
            {"limit": 10},
            Check("history page", 2 * 11, ("deployment_id", "id"), "ORDER BY deployment_status_history.id"),
        ),
    ]
    capture = Capture()
    sync_engine = db.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", capture)
    problems: list[str] = []
    explained = 0
    try:
        for actor, url, params, check in requests:
            with capture.active() as statements:
                response = await client.get(url, params=params, headers=actor.headers)
            assert response.status_code == 200, (url, params, response.text)
            if url.endswith("/deployments"):
                page = response.json()
                assert len(page["items"]) == 50 and (page["total"], page["total_is_exact"]) == (CAP, False), (check.name, page["total"])
            explained += len(statements)
            problems += await _explain(db.engine, statements, check, indexes)

        metrics_app = create_app(make_settings(db.settings.DATABASE_URL, PROMETHEUS_ENABLED=True))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=metrics_app), base_url="http://t") as m:
            with capture.active() as statements:
                assert (await m.get("/metrics")).status_code == 200
        explained += len(statements)
        problems += await _explain(db.engine, statements, Check("/metrics", 0, None, ""), indexes)

        settings = make_settings(db.settings.DATABASE_URL, RETENTION_BATCH_SIZE=500, RETENTION_MAX_LOG_LINES=0)
        with capture.active() as statements:
            report = await retention.prune(settings)
        assert report.log_lines == LOGGED * (1000 - 100) and report.history_rows == LOGGED * 50
        explained += len(statements)
        problems += await _explain(db.engine, _sample(statements), Check("retention", 2 * 500, None, ""), indexes)
    finally:
        event.remove(sync_engine, "before_cursor_execute", capture)
        async with db.engine.begin() as conn:  # so that the next test's wipe has little to delete
            await conn.exec_driver_sql("TRUNCATE deployments, deployment_logs, deployment_status_history CASCADE")

    assert explained > 40
    assert not problems, "\n".join(problems)
