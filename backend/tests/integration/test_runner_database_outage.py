"""A database that goes away under a run is an outage, not a crash of the executor.

A deployment on an engine nobody listens on (``tcp://127.0.0.1:1``: a transient failure) runs through the real
runner and the asyncio executor while the database is "restarting" at the worst moments: when the run writes its
retry (the settle), and when the executor claims it. The run waits for the database and settles with the
engine's reason in ``error_message`` and its log, or the executor runs it again once the database answers; never
"deployment ... crashed" with a traceback, never a deployment left ``deploying`` for the reaper.

The outage is injected where the runner meets it (``set_deployment_status``, ``claim_deployment``), as the
exception SQLAlchemy raises when the connection is lost (``connection_invalidated``): a real PostgreSQL restart
around a run is ``integration/test_database_restart.py``, whose flaky failure this reproduces deterministically.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from backend.app import database
from backend.app.core import security
from backend.app.models import Deployment, DeploymentLog, DeploymentStatus, Target
from backend.app.services.deployments import runner
from backend.tests.factories import make_deployment

COMPOSE = "services:\n  web:\n    image: busybox\n"
NOWHERE = "tcp://127.0.0.1:1"


def _connection_lost() -> DBAPIError:
    """What SQLAlchemy raises when the server goes away in the middle of a transaction."""
    return DBAPIError(
        "UPDATE deployments ...",
        None,
        ConnectionResetError("connection was closed in the middle of operation"),
        connection_invalidated=True,
    )


def _unavailable_for(calls: int, real, when=lambda **kwargs: True):
    """``real`` that first raises the lost connection ``calls`` times (for the calls ``when`` selects)."""
    left = [calls]

    async def flaky(session, **kwargs):
        if left[0] > 0 and when(**kwargs):
            left[0] -= 1
            raise _connection_lost()
        return await real(session, **kwargs)

    flaky.left = left
    return flaky


async def _deployment_nowhere(db) -> str:
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session, rendered_compose=security.encrypt_secret(db.settings, COMPOSE))
        target = await session.get(Target, deployment.target_id)
        target.endpoint = NOWHERE
        await session.commit()
        return deployment.id


async def _row(deployment_id: str) -> Deployment:
    async with database.AsyncSessionLocal() as session:
        return await session.get(Deployment, deployment_id)


async def _log_lines(deployment_id: str) -> list[str]:
    async with database.AsyncSessionLocal() as session:
        query = select(DeploymentLog.message).where(DeploymentLog.deployment_id == deployment_id).order_by(DeploymentLog.seq)
        return list((await session.execute(query)).scalars())


def _assert_no_crash(caplog: pytest.LogCaptureFixture) -> None:
    crashed = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
    assert not crashed, crashed
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks


async def test_a_retry_written_while_the_database_restarts_lands_with_the_engines_reason(db, monkeypatch, caplog, tmp_path: Path):
    settings = db.settings.model_copy(update={"DEPLOYMENTS_WORKDIR": tmp_path, "DEPLOYMENT_RETRY_BACKOFF_SECONDS": 300.0})
    deployment_id = await _deployment_nowhere(db)
    # the database is unreachable for the settle's first two tries (deploying -> pending, the retry)
    flaky = _unavailable_for(2, runner.set_deployment_status, lambda **kw: kw["to_status"] is DeploymentStatus.PENDING)
    monkeypatch.setattr(runner, "set_deployment_status", flaky)
    monkeypatch.setattr(runner, "DATABASE_RETRY_SECONDS", 0.05, raising=False)
    executor = runner.InProcessExecutor()
    caplog.set_level(logging.INFO)
    try:
        outcome = await executor.submit(deployment_id, settings)
    finally:
        await executor.shutdown()
    assert flaky.left == [0], "the settle did not meet the outage"
    assert outcome is not None and outcome.status is runner.Outcome.REQUEUED, outcome
    _assert_no_crash(caplog)
    row = await _row(deployment_id)
    assert row.status == DeploymentStatus.PENDING and row.attempt == 1 and row.lease_owner is None, (row.status, row.attempt)
    assert row.not_before is not None  # the retry's backoff, as without the outage
    assert "cannot reach Docker engine tcp://127.0.0.1:1" in (row.error_message or ""), row.error_message
    lines = await _log_lines(deployment_id)
    assert any("cannot reach Docker engine tcp://127.0.0.1:1" in line for line in lines), lines
    assert any("Transient failure: retrying in 300s (attempt 2/3)" in line for line in lines), lines
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"settling deployment {deployment_id} as pending skipped: the database is unreachable" in m for m in messages), messages
    assert any(f"settling deployment {deployment_id} as pending resumed" in m for m in messages), messages


async def test_a_claim_that_meets_the_outage_runs_again_once_the_database_answers(db, monkeypatch, caplog, tmp_path: Path):
    settings = db.settings.model_copy(update={"DEPLOYMENTS_WORKDIR": tmp_path, "DEPLOYMENT_RETRY_BACKOFF_SECONDS": 300.0})
    deployment_id = await _deployment_nowhere(db)
    flaky = _unavailable_for(1, runner.claim_deployment)
    monkeypatch.setattr(runner, "claim_deployment", flaky)
    monkeypatch.setattr(runner, "DATABASE_RETRY_SECONDS", 0.05, raising=False)
    executor = runner.InProcessExecutor()
    caplog.set_level(logging.INFO)
    try:
        assert await executor.submit(deployment_id, settings) is None  # the claim met the outage
        deadline = time.monotonic() + 30
        while (row := await _row(deployment_id)).attempt == 0 or row.status != DeploymentStatus.PENDING:  # run again by itself
            assert time.monotonic() < deadline, (row.status, row.attempt)
            await asyncio.sleep(0.05)
    finally:
        await executor.shutdown()
    assert flaky.left == [0]
    _assert_no_crash(caplog)
    row = await _row(deployment_id)
    assert row.status == DeploymentStatus.PENDING and row.attempt == 1, (row.status, row.attempt, row.error_message)
    assert "cannot reach Docker engine tcp://127.0.0.1:1" in (row.error_message or ""), row.error_message
    messages = [r.getMessage() for r in caplog.records]
    assert any("asyncio executor: running deployments" in m and "the database is unreachable" in m for m in messages), messages
