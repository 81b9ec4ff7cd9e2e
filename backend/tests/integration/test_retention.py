"""Retention of log lines and status history (issue 10), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, update

from backend.app import database
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentLog, DeploymentStatus, DeploymentStatusHistory, LogLevel
from backend.app.runtime import background
from backend.app.services.deployments import retention
from backend.app.services.deployments.logs import append_logs
from backend.tests.conftest import make_settings
from backend.tests.factories import make_deployment

S = DeploymentStatus
OLD = timedelta(days=45)


def _settings(db, **overrides):
    values = dict(RETENTION_DAYS=30, RETENTION_MAX_LOG_LINES=150, RETENTION_KEEP_LOG_LINES=20, RETENTION_BATCH_SIZE=40)
    values.update(overrides)
    return make_settings(db.settings.DATABASE_URL, **values)


async def _deployment(status: S, *, lines: int, history: int, idle: timedelta = timedelta(0)) -> str:
    """A deployment with ``lines`` log lines and ``history`` status rows, last active ``idle`` ago."""
    async with database.AsyncSessionLocal() as session:
        d = await make_deployment(session, status)
        moment = utcnow() - idle
        if lines:
            await session.execute(
                insert(DeploymentLog),
                [
                    {"deployment_id": d.id, "seq": i, "timestamp": moment, "level": LogLevel.INFO, "message": f"line {i}"}
                    for i in range(1, lines + 1)
                ],
            )
        if history:
            await session.execute(
                insert(DeploymentStatusHistory),
                [
                    {"deployment_id": d.id, "from_status": None, "to_status": status, "reason": f"h{i}", "created_at": moment}
                    for i in range(history)
                ],
            )
        await session.execute(update(Deployment).where(Deployment.id == d.id).values(last_log_seq=lines, updated_at=moment))
        await session.commit()
        return d.id


async def _seqs(deployment_id: str) -> list[int]:
    async with database.AsyncSessionLocal() as session:
        rows = await session.execute(
            select(DeploymentLog.seq).where(DeploymentLog.deployment_id == deployment_id).order_by(DeploymentLog.seq)
        )
        return list(rows.scalars())


async def _history(deployment_id: str) -> list[str]:
    async with database.AsyncSessionLocal() as session:
        rows = await session.execute(
            select(DeploymentStatusHistory.reason)
            .where(DeploymentStatusHistory.deployment_id == deployment_id)
            .order_by(DeploymentStatusHistory.id)
        )
        return list(rows.scalars())


async def test_pruned_rows_go_recent_and_active_ones_stay(db):
    old_failed = await _deployment(S.FAILED, lines=300, history=5, idle=OLD)
    old_running = await _deployment(S.RUNNING, lines=30, history=3, idle=OLD)
    old_deploying = await _deployment(S.DEPLOYING, lines=300, history=4, idle=OLD)  # active: never touched
    old_pending = await _deployment(S.PENDING, lines=300, history=2, idle=OLD)
    recent_failed = await _deployment(S.FAILED, lines=100, history=5, idle=timedelta(days=2))
    recent_big = await _deployment(S.STOPPED, lines=400, history=6, idle=timedelta(hours=1))
    just_settled = await _deployment(S.FAILED, lines=400, history=2, idle=timedelta(seconds=5))

    report = await retention.prune(_settings(db))

    assert await _seqs(old_failed) == list(range(281, 301)), "an old deployment keeps its newest lines only"
    assert await _history(old_failed) == ["h4"], "and its newest history row"
    assert await _seqs(old_running) == list(range(11, 31))
    assert await _history(old_running) == ["h2"]
    assert await _seqs(old_deploying) == list(range(1, 301)) and len(await _history(old_deploying)) == 4
    assert await _seqs(old_pending) == list(range(1, 301)) and len(await _history(old_pending)) == 2
    assert await _seqs(recent_failed) == list(range(1, 101)) and len(await _history(recent_failed)) == 5
    assert await _seqs(recent_big) == list(range(251, 401)), "size rule: the newest RETENTION_MAX_LOG_LINES"
    assert len(await _history(recent_big)) == 6, "the size rule leaves history alone"
    assert await _seqs(just_settled) == list(range(1, 401)), "just settled: a client may still be following it"
    assert report.log_lines == 280 + 10 + 250
    assert report.history_rows == 4 + 2
    assert report.batches > 10, "deleted in many small transactions"

    again = await retention.prune(_settings(db))
    assert (again.deployments, again.log_lines, again.history_rows) == (0, 0, 0), "the walk resumes where it stopped"

    # a deployment active again is revisited once it settles and ages
    async with database.AsyncSessionLocal() as session:
        await append_logs(session, deployment_id=old_failed, lines=[(LogLevel.INFO, f"redeploy {i}", utcnow()) for i in range(200)])
        await session.commit()
    assert len(await _seqs(old_failed)) == 220
    later = await retention.prune(_settings(db), now=utcnow() + timedelta(minutes=10))
    assert await _seqs(old_failed) == list(range(351, 501))
    assert await _seqs(just_settled) == list(range(251, 401)), "settled for more than the grace: size rule applies"
    assert later.log_lines == 70 + 250
    much_later = await retention.prune(_settings(db), now=utcnow() + timedelta(days=31))
    assert await _seqs(old_failed) == list(range(481, 501))
    assert much_later.log_lines >= 130


async def test_disabled_rules_keep_everything(db):
    old = await _deployment(S.FAILED, lines=300, history=5, idle=OLD)
    report = await retention.prune(_settings(db, RETENTION_DAYS=0, RETENTION_MAX_LOG_LINES=0))
    assert report.log_lines == report.history_rows == 0
    assert len(await _seqs(old)) == 300 and len(await _history(old)) == 5


async def test_deleting_a_deployment_removes_its_rows(db):
    doomed = await _deployment(S.FAILED, lines=50, history=3)
    kept = await _deployment(S.FAILED, lines=5, history=1)
    async with database.AsyncSessionLocal() as session:
        await session.delete(await session.get(Deployment, doomed))
        await session.commit()
    assert await _seqs(doomed) == [] and await _history(doomed) == []
    assert len(await _seqs(kept)) == 5 and len(await _history(kept)) == 1


async def test_one_process_at_a_time(db):
    await _deployment(S.FAILED, lines=300, history=5, idle=OLD)
    settings = _settings(db)
    async with background.leader_lock(background.RETENTION_LOCK_KEY) as leader:
        assert leader
        assert await background.retention_once(settings) is None, "another holder of the lock: skipped"
        async with background.leader_lock(background.RECOVERY_LOCK_KEY) as recovery_leader:
            assert recovery_leader, "retention does not stop recovery from running"
    report = await background.retention_once(settings)
    assert report is not None and report.log_lines == 280


async def test_a_long_prune_does_not_block_deployments_writing_logs(db):
    """Writers append lines (to a deployment being pruned and to another) while a long prune runs.

    On SQLite (one writer at a time) the writer gets its turn between any two batches: without the prune's
    pause after each batch, it polled for the lock while batch after batch took it, and could wait for the
    whole prune.
    """
    lines = 6000 if db.kind == "postgresql" else 2000  # SQLite's pauses make each batch slower
    pruned = await _deployment(S.FAILED, lines=lines, history=2, idle=OLD)
    busy = await _deployment(S.DEPLOYING, lines=0, history=0)
    settings = _settings(db, RETENTION_BATCH_SIZE=50, RETENTION_KEEP_LOG_LINES=10)
    prune = asyncio.create_task(retention.prune(settings))
    for _ in range(1000):  # until its first batch is committed (a write to `pruned` before the prune read it
        await asyncio.sleep(0.005)  # would make it recently active, and rightly not pruned)
        if len(await _seqs(pruned)) < lines or prune.done():
            break
    written_while_pruning = i = 0
    while not prune.done() and i < 200:  # write as a running deployment would, for as long as the prune runs
        i += 1
        async with database.AsyncSessionLocal() as session:
            await asyncio.wait_for(append_logs(session, deployment_id=busy, lines=[(LogLevel.INFO, f"busy {i}", utcnow())]), 10)
            await asyncio.wait_for(append_logs(session, deployment_id=pruned, lines=[(LogLevel.INFO, f"late {i}", utcnow())]), 10)
            await asyncio.wait_for(session.commit(), 10)
        written_while_pruning += not prune.done()
    report = await asyncio.wait_for(prune, 120)
    assert report.batches >= lines // 50
    # blocked by a table lock, or on SQLite starved by batch after batch, the writer would have got in once
    # at most, before or after the whole prune; on SQLite it gets in at (nearly) every pause
    wanted = 3 if db.kind == "postgresql" else report.batches // 4
    assert written_while_pruning >= wanted, f"only {written_while_pruning} write(s) committed while the prune ran"

    assert await _seqs(busy) == list(range(1, i + 1))
    # the prune re-reads each deployment's newest line at every batch: what was written meanwhile is either
    # kept or, once older than the newest RETENTION_KEEP_LOG_LINES, pruned like the rest
    assert (await _seqs(pruned))[-10:] == list(range(lines + i - 9, lines + i + 1)), "the newest lines are kept"


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_an_open_prune_batch_locks_rows_not_the_table(db):
    """PostgreSQL: while a prune batch's transaction is open, other deployments (and this one) still log."""
    pruned = await _deployment(S.FAILED, lines=500, history=2, idle=OLD)
    busy = await _deployment(S.DEPLOYING, lines=0, history=0)
    async with database.AsyncSessionLocal() as holder:
        deleted = await retention.delete_batch(holder, model=DeploymentLog, doomed=retention._doomed_lines(pruned, 490, 400))
        assert deleted == 400  # rows locked, transaction open
        for target in (busy, pruned):
            async with database.AsyncSessionLocal() as writer:
                await asyncio.wait_for(append_logs(writer, deployment_id=target, lines=[(LogLevel.INFO, "while pruning", utcnow())]), 5)
                await asyncio.wait_for(writer.commit(), 5)
        async with database.AsyncSessionLocal() as reader:
            count = (
                await reader.execute(select(func.count()).select_from(DeploymentLog).where(DeploymentLog.deployment_id == pruned))
            ).scalar_one()
            assert count == 501, "readers see the committed state, not blocked either"
        await holder.commit()
    assert len(await _seqs(pruned)) == 101 and await _seqs(busy) == [1]
