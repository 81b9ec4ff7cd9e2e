"""Migrations on an existing database (SQLite and PostgreSQL): 0009, every deployment becomes its revision 1;
0020, the keys a creation defers."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from backend.app.config import DatabaseKind
from backend.app.database import build_engine
from backend.app.migrate import alembic_config, upgrade_database
from backend.app.models import Deployment, DeploymentRevision, RevisionReason
from backend.app.services.deployments.state_machine import record_creation
from backend.tests.conftest import PG_ADMIN_DSN, _pg_admin_connect, make_settings, require_service
from backend.tests.factories import ShownDeployment


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


CREATION_KEYS = ("fk_deployment_status_history_deployment_id_deployments", "fk_deployment_revisions_deployment_id_deployments")


async def test_the_creation_keys_become_deferrable_on_an_existing_database(fresh_database):
    """Migration 0020 on a database with a deployment: on PostgreSQL the history and revision keys to
    ``deployments`` become DEFERRABLE INITIALLY IMMEDIATE (checked at each statement unless a transaction defers
    them), and NOT DEFERRABLE again after the downgrade; SQLite's schema is left as it was. The rows stay, and a
    deployment is then created with its rows written before it."""
    settings = fresh_database
    postgresql = settings.database_kind is DatabaseKind.POSTGRESQL
    engine = build_engine(settings)

    async def schema() -> object:
        async with engine.connect() as conn:
            if postgresql:
                rows = await conn.execute(
                    text("SELECT conname, condeferrable, condeferred FROM pg_constraint WHERE conname = ANY(:names)"),
                    {"names": list(CREATION_KEYS)},
                )
                return {name: (deferrable, deferred) for name, deferrable, deferred in rows}
            rows = await conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name IN ('deployment_status_history', 'deployment_revisions')")
            )
            return sorted(sql for (sql,) in rows)

    def downgrade(connection, revision: str) -> None:
        config = alembic_config(settings)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    try:
        await upgrade_database(engine, settings, "0019")
        now = datetime(2026, 1, 1, 10, tzinfo=UTC)
        async with engine.begin() as conn:
            for statement in (
                "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'org', :t, :t)",
                "INSERT INTO users (id, email, hashed_password, is_active, is_superuser, token_generation, created_at, updated_at) "
                "VALUES ('u1', 'ann@example.com', 'x', true, false, 0, :t, :t)",
                "INSERT INTO targets (id, organization_id, name, type, endpoint, max_concurrent_deployments, is_active, created_at, "
                "updated_at) VALUES ('t1', 'o1', 'local', 'docker', 'unix:///x', 2, true, :t, :t)",
                "INSERT INTO stacks (id, organization_id, name, description, version, template, variables, source, created_at, "
                "updated_at) VALUES ('s1', 'o1', 'web', NULL, '1.2.0', 'services: {}', '[]', 'user', :t, :t)",
                "INSERT INTO deployments (id, organization_id, stack_id, target_id, created_by, name, status, variables, attempt, "
                "max_attempts, queued_at, progress, current_step, total_steps, last_log_seq, created_at, updated_at) VALUES "
                "('d1', 'o1', 's1', 't1', 'u1', 'd1', 'pending', '{}', 0, 3, :t, 0, 0, 0, 0, :t, :t)",
                "INSERT INTO deployment_status_history (deployment_id, to_status, created_at) VALUES ('d1', 'pending', :t)",
                "INSERT INTO deployment_revisions (deployment_id, number, reason, outcome, variables, images, created_at) "
                "VALUES ('d1', 1, 'created', 'pending', '{}', '[]', :t)",
            ):
                await conn.execute(text(statement), {"t": now})
        before = await schema()
        await upgrade_database(engine, settings)
        if postgresql:
            assert before == {name: (False, False) for name in CREATION_KEYS}
            assert await schema() == {name: (True, False) for name in CREATION_KEYS}
        else:
            assert await schema() == before
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        async with sessions() as session:
            deployment = Deployment(
                id="d2", organization_id="o1", stack_id="s1", target_id="t1", created_by="u1", name="d2", variables={}, revision=1
            )
            first = DeploymentRevision(deployment_id="d2", number=1, reason=RevisionReason.CREATED)
            await record_creation(session, deployment=deployment, actor="ann@example.com", snapshot=ShownDeployment.of, children=[first])
            await session.commit()
        async with engine.connect() as conn:
            for table in ("deployment_status_history", "deployment_revisions"):
                counts = await conn.execute(
                    text(f"SELECT deployment_id, count(*) FROM {table} GROUP BY deployment_id ORDER BY deployment_id")
                )
                assert [tuple(row) for row in counts] == [("d1", 1), ("d2", 1)], table
        if postgresql:
            async with engine.begin() as conn:
                await conn.run_sync(downgrade, "0019")
            assert await schema() == before
    finally:
        await engine.dispose()
