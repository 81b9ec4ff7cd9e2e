"""The runner reads its claimed deployment without queuing for SQLite's write lock: another writer still
committing (the request that created the deployment writing its audit entry, another runner's log lines) does
not hold up the start of the run (``runner.run_deployment``'s load, a deferred, read-only transaction)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from backend.app import database
from backend.app.engines.base import DeploySpec
from backend.app.models import ExecutorKind
from backend.app.services.deployments import redaction, runner
from backend.tests.factories import make_deployment, plain_context

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)

HELD_SECONDS = 2.0


class _PassingEngine:
    def __getattr__(self, _name):
        async def step(spec, log):
            return None

        return step


async def test_the_run_reads_its_deployment_while_another_writer_holds_the_lock(db, monkeypatch, tmp_path: Path) -> None:
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session)
        await session.commit()
    path = db.settings.sqlite_path
    assert path, "an SQLite file database"
    held = threading.Event()
    released: list[float] = []

    def writer() -> None:  # another connection takes the write lock right after the claim's commit
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(HELD_SECONDS)
        released.append(time.monotonic())
        connection.execute("ROLLBACK")
        connection.close()

    base_redactor = redaction.base_redactor

    def after_claim(settings):  # the runner's first call once its claim is committed
        threading.Thread(target=writer, daemon=True).start()
        assert held.wait(5)
        return base_redactor(settings)

    loaded: list[float] = []

    async def load_context(session, *, settings, deployment):
        loaded.append(time.monotonic())
        return plain_context(
            deployment, _PassingEngine(), DeploySpec(deployment_id=deployment.id, compose="services: {}\n", workdir=tmp_path)
        )

    monkeypatch.setattr(redaction, "base_redactor", after_claim)
    monkeypatch.setattr(runner, "load_context", load_context)
    outcome = await runner.run_deployment(deployment.id, db.settings, executor=ExecutorKind.ASYNCIO)
    assert outcome.status == "running", outcome  # its writes waited for the lock, then went through
    assert loaded and released
    assert loaded[0] < released[0], f"the run's read waited {loaded[0] - released[0] + HELD_SECONDS:.2f} s for the other writer"
