"""When Celery is unusable the backend runs a new deployment itself, and its creation's transaction claims it
(``Dispatcher.commit_and_dispatch_new``): the deployment is ``deploying`` under this process's lease from the
commit on, and the run starts holding that lease. A claim the rules refuse leaves the deployment pending; a
process that dies before its run starts leaves a lease that expires, and the reaper takes the deployment again."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace

from sqlalchemy import update

from backend.app import database
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentStatus, ExecutorKind, Target
from backend.app.runtime import background_tasks
from backend.app.runtime.dispatch import Dispatcher
from backend.app.services.deployments import recovery, runner
from backend.tests.factories import make_deployment, transitions


class _CeleryOff:
    """The backend's execution mode as its manager reports it: no usable Celery, so deployments run here."""

    celery_usable = False
    report = SimpleNamespace(reason="Celery disabled by the test")


async def _row(deployment_id: str) -> Deployment:
    async with database.AsyncSessionLocal() as session:
        return await session.get(Deployment, deployment_id)


def _runs_started(monkeypatch) -> list[tuple[str, str | None]]:
    """The runs the dispatcher starts, recorded and not started (as if the process died right after the commit)."""
    started: list[tuple[str, str | None]] = []

    def record(deployment_id, _settings, *, claimed_by=None):
        started.append((deployment_id, claimed_by))

    monkeypatch.setattr(background_tasks, "create_background_task", record)
    return started


async def _create(db, **fields) -> str:
    """A deployment created and dispatched as ``POST /deployments`` does, Celery off."""
    async with database.AsyncSessionLocal() as creation:
        deployment = await make_deployment(creation, **fields)
        target = await creation.get(Target, deployment.target_id)
        kind = await Dispatcher(db.settings, manager=_CeleryOff()).commit_and_dispatch_new(
            creation, deployment.id, target=target, created=deployment
        )
    assert kind is ExecutorKind.ASYNCIO
    return deployment.id


async def test_the_creation_commits_the_claim_of_this_process(db, monkeypatch):
    started = _runs_started(monkeypatch)
    deployment_id = await _create(db)
    row = await _row(deployment_id)
    assert row.status == DeploymentStatus.DEPLOYING and row.attempt == 1 and row.executor == ExecutorKind.ASYNCIO
    assert row.lease_owner and row.lease_owner.startswith("asyncio:") and row.lease_expires_at > utcnow()
    assert started == [(deployment_id, row.lease_owner)]  # the run is told it holds that lease
    assert await transitions(deployment_id) == [("pending", "deploying")]  # the factory places the row; the claim is a transition


async def test_the_run_holds_the_lease_its_creation_took(db, monkeypatch):
    """The real in-process executor: the run does not claim again (that would be refused: the row is no longer
    pending) and its own transitions, which need the lease, go through."""

    async def stop_at_preparation(*_args, **_kwargs):
        raise RuntimeError("stopped by the test after the claim")

    monkeypatch.setattr(runner, "load_context", stop_at_preparation)
    deployment_id = await _create(db)
    run = background_tasks.running_task(deployment_id)
    assert run is not None
    outcome = await asyncio.wait_for(run, 30)
    assert outcome.status is runner.Outcome.FAILED, outcome
    row = await _row(deployment_id)
    assert row.status == DeploymentStatus.FAILED and "stopped by the test after the claim" in row.error_message
    assert row.attempt == 1  # one claim, one attempt
    assert await transitions(deployment_id) == [("pending", "deploying"), ("deploying", "failed")]


async def test_a_target_at_its_limit_leaves_the_new_deployment_pending(db, monkeypatch):
    started = _runs_started(monkeypatch)
    async with database.AsyncSessionLocal() as session:
        busy = await make_deployment(session, DeploymentStatus.DEPLOYING)
        await session.execute(update(Target).where(Target.id == busy.target_id).values(max_concurrent_deployments=1))
        await session.commit()
    async with database.AsyncSessionLocal() as creation:
        deployment = await make_deployment(creation)
        deployment.target_id = busy.target_id
        await creation.flush()
        target = await creation.get(Target, busy.target_id)
        await Dispatcher(db.settings, manager=_CeleryOff()).commit_and_dispatch_new(
            creation, deployment.id, target=target, created=deployment
        )
    row = await _row(deployment.id)
    assert row.status == DeploymentStatus.PENDING and row.lease_owner is None and row.attempt == 0
    assert started == [(deployment.id, None)]  # dispatched as ever: its run claims it once a slot is free
    assert await transitions(deployment.id) == []


async def test_a_claim_whose_run_never_started_is_taken_again_once_its_lease_expires(db, monkeypatch):
    started = _runs_started(monkeypatch)
    deployment_id = await _create(db)
    assert started == [(deployment_id, (await _row(deployment_id)).lease_owner)]
    async with database.AsyncSessionLocal() as session:  # the process died: nobody renews the lease
        await session.execute(
            update(Deployment).where(Deployment.id == deployment_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    dispatched: list[str] = []

    async def dispatch(again: str) -> None:
        dispatched.append(again)

    async with database.AsyncSessionLocal() as session:
        stats = await recovery.reap(session, settings=db.settings, dispatch=dispatch)
    assert stats["reclaimed"] == 1, stats
    assert dispatched == [deployment_id]
    row = await _row(deployment_id)
    assert row.status == DeploymentStatus.PENDING and row.lease_owner is None
    assert await transitions(deployment_id) == [("pending", "deploying"), ("deploying", "pending")]
