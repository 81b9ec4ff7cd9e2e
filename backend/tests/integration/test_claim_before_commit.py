"""A deploy task pushed while its deployment's creation commits (on Redis, ``Dispatcher.commit_and_dispatch_new``)
can reach a runner before the row is visible to it. Such a task says so (``sent_before_commit``): its runner
looks for the deployment again until the creation commits, and ends when the creation never does."""

from __future__ import annotations

import asyncio

import pytest

from backend.app import database
from backend.app.models import Deployment, ExecutorKind
from backend.app.services.deployments import runner
from backend.tests.factories import make_deployment, transitions

HELD_SECONDS = 0.5


async def _stop_after_the_claim(*_args, **_kwargs):
    raise RuntimeError("stopped by the test after the claim")


async def test_a_task_sent_before_the_commit_claims_the_deployment_once_it_is_committed(db, monkeypatch):
    monkeypatch.setattr(runner, "load_context", _stop_after_the_claim)  # the run ends at its preparation
    async with database.AsyncSessionLocal() as creation:
        deployment = await make_deployment(creation)  # written, not committed: the POST's commit is on its way
        run = asyncio.create_task(runner.run_deployment(deployment.id, db.settings, executor=ExecutorKind.CELERY, sent_before_commit=True))
        await asyncio.sleep(HELD_SECONDS)
        assert not run.done(), run.result()
        await creation.commit()
    outcome = await asyncio.wait_for(run, 30)
    assert outcome.status is runner.Outcome.FAILED, outcome  # claimed, then failed where the test stopped it
    async with database.AsyncSessionLocal() as session:
        row = await session.get(Deployment, deployment.id)
        assert row.status == "failed" and "stopped by the test after the claim" in row.error_message
    assert await transitions(deployment.id) == [("pending", "deploying"), ("deploying", "failed")]


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_without_the_header_a_deployment_not_found_is_not_waited_for(db, monkeypatch):
    """Any other task (a redelivery, a dispatch after the commit) finds its deployment or ends at once: a
    deployment deleted since then is not looked for again. (On SQLite the open creation holds the write lock,
    which the claim waits for anyway: this is PostgreSQL's case, where the uncommitted row is just invisible.)"""
    monkeypatch.setattr(runner, "load_context", _stop_after_the_claim)
    async with database.AsyncSessionLocal() as creation:
        deployment = await make_deployment(creation)
        outcome = await asyncio.wait_for(runner.run_deployment(deployment.id, db.settings, executor=ExecutorKind.CELERY), 10)
        assert outcome.status is runner.Outcome.SKIPPED and outcome.reason == "deployment not found", outcome
        await creation.commit()
    assert await transitions(deployment.id) == []


async def test_a_task_whose_creation_never_commits_ends_after_the_wait(db, monkeypatch):
    monkeypatch.setattr(runner, "COMMIT_WAIT_SECONDS", 1.0)
    monkeypatch.setattr(runner, "load_context", _stop_after_the_claim)
    async with database.AsyncSessionLocal() as creation:
        deployment = await make_deployment(creation)
        deployment_id = deployment.id
        run = asyncio.create_task(runner.run_deployment(deployment_id, db.settings, executor=ExecutorKind.CELERY, sent_before_commit=True))
        await asyncio.sleep(HELD_SECONDS)
        await creation.rollback()  # the creation failed (its commit refused, the request gone)
    outcome = await asyncio.wait_for(run, 30)
    assert outcome.status is runner.Outcome.SKIPPED and outcome.reason == "deployment not found", outcome
    async with database.AsyncSessionLocal() as session:
        assert await session.get(Deployment, deployment_id) is None
