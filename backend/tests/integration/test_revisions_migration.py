"""Migration 0009: every existing deployment becomes its revision 1 (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from backend.app.database import build_engine
from backend.app.migrate import upgrade_database
from backend.tests.conftest import PG_ADMIN_DSN, _pg_admin_connect, make_settings, require_service


@pytest.fixture(params=["sqlite", "postgresql"])
async def fresh_database(request, tmp_path):
    if request.param == "sqlite":
        yield make_settings(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
        return
    try:
        admin = _pg_admin_connect()
    except Exception as exc:  # noqa: BLE001
        require_service("PostgreSQL", f"{PG_ADMIN_DSN}: {exc}")
    name = f"windflow_mig_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield make_settings(f"{base}/{name}")
    finally:
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_existing_deployments_become_revision_1(fresh_database):
    settings = fresh_database
    engine = build_engine(settings)
    try:
        await upgrade_database(engine, settings, "0008")
        now = datetime(2026, 1, 1, 10, tzinfo=UTC)
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'org', :t, :t)"), {"t": now}
            )
            await conn.execute(
                text(
                    "INSERT INTO users (id, email, hashed_password, is_active, is_superuser, token_generation, created_at, "
                    "updated_at) VALUES ('u1', 'ann@example.com', 'x', true, false, 0, :t, :t)"
                ),
                {"t": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO targets (id, organization_id, name, type, endpoint, max_concurrent_deployments, is_active, "
                    "created_at, updated_at) VALUES ('t1', 'o1', 'local', 'docker', 'unix:///x', 2, true, :t, :t)"
                ),
                {"t": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO stacks (id, organization_id, name, description, version, template, variables, source, "
                    "created_at, updated_at) VALUES ('s1', 'o1', 'web', NULL, '1.2.0', 'services: {}', '[]', 'user', :t, :t)"
                ),
                {"t": now},
            )
            for deployment_id, status, error in (
                ("d-run", "running", None),
                ("d-stop", "stopped", None),
                ("d-fail", "failed", "boom"),
                ("d-pend", "pending", None),
            ):
                await conn.execute(
                    text(
                        "INSERT INTO deployments (id, organization_id, stack_id, target_id, created_by, name, status, variables, "
                        "rendered_compose, attempt, max_attempts, queued_at, error_message, progress, current_step, "
                        "total_steps, last_log_seq, created_at, updated_at, finished_at) VALUES (:id, 'o1', 's1', 't1', 'u1', "
                        ":id, :status, :variables, 'gAAAA-encrypted', 0, 3, :t, :error, 0, 0, 0, 0, :t, :t, :t)"
                    ),
                    {
                        "id": deployment_id,
                        "status": status,
                        "error": error,
                        "t": now,
                        "variables": '{"port": 8080, "pw": {"__secret__": "gAAAA"}}',
                    },
                )
        await upgrade_database(engine, settings, "0009")
        async with engine.connect() as conn:
            deployments = {
                row.id: row for row in await conn.execute(text("SELECT id, revision, last_good_revision, auto_rollback FROM deployments"))
            }
            revisions = {
                row.deployment_id: row
                for row in await conn.execute(
                    text(
                        "SELECT deployment_id, number, reason, outcome, stack_id, stack_version, stack_template, variables, "
                        "rendered_compose, images, error_message, created_by, finished_at FROM deployment_revisions"
                    )
                )
            }
    finally:
        await engine.dispose()
    assert {d: (r.revision, r.last_good_revision, bool(r.auto_rollback)) for d, r in deployments.items()} == {
        "d-run": (1, 1, True),
        "d-stop": (1, 1, True),
        "d-fail": (1, None, True),
        "d-pend": (1, None, True),
    }
    assert {d: r.outcome for d, r in revisions.items()} == {
        "d-run": "running",
        "d-stop": "running",
        "d-fail": "failed",
        "d-pend": "pending",
    }
    run = revisions["d-run"]
    assert (run.number, run.reason, run.stack_id, run.stack_version, run.stack_template) == (1, "created", "s1", "1.2.0", "services: {}")
    assert run.rendered_compose == "gAAAA-encrypted" and run.created_by == "ann@example.com"
    variables = run.variables if isinstance(run.variables, dict) else json.loads(run.variables)
    assert variables == {"port": 8080, "pw": {"__secret__": "gAAAA"}}
    assert run.images in ([], "[]") and run.error_message is None and run.finished_at is not None
    assert revisions["d-fail"].error_message == "boom" and revisions["d-pend"].finished_at is None
