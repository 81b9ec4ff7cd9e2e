"""Retention: bound the growth of ``deployment_logs`` and ``deployment_status_history``.

Two rules, both applied to *settled* deployments only (``running``, ``failed``, ``stopped``,
``cancelled``: nobody is writing their logs), and both keeping each deployment's newest
``RETENTION_KEEP_LOG_LINES`` lines whatever happens:

* **age** (``RETENTION_DAYS``): a deployment with no activity (status change, log line, progress) for
  that many days keeps only its newest lines and its newest history row (the one that explains its
  current status);
* **size** (``RETENTION_MAX_LOG_LINES``): any settled deployment keeps at most that many lines.

Deleting a deployment removes its lines and history with it (``ON DELETE CASCADE``).

How it stays cheap and harmless at any size:

* deployments are walked in ``(updated_at, id)`` order (an index) from a position saved in
  ``system_state``, so each run looks only at deployments whose activity crossed the rule's horizon since
  the previous run, never at the whole table; a deployment touched again later comes back in the walk;
* rows are deleted by ``id`` in batches of ``RETENTION_BATCH_SIZE``, each in its own short transaction,
  through the ``(deployment_id, seq)`` and ``(deployment_id, id)`` indexes. A batch locks only the rows it
  deletes (old lines of settled deployments nobody writes), so deployments writing logs meanwhile never
  wait on it on PostgreSQL. SQLite has one writer at a time, and a writer waiting for the lock polls for it
  (its busy handler sleeps up to 100 ms between tries): a prune that started its next batch at once would
  hold the lock nearly all the time and starve them. So on SQLite the prune leaves the lock free for
  ``SQLITE_TURN`` after each batch, longer than that poll: a writer waits at most one batch;
* the bounds are re-checked by the delete itself (the deployment must still be settled, the line must
  still be older than the newest kept ones), so a deployment redeployed mid-run loses nothing new.

This module is a documented exception to "services never commit": like the log writer, it commits each
batch so that no transaction stays open for long. It runs in one process at a time (a leader lock, see
``backend.app.runtime.background``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import aliased

from backend.app import database
from backend.app.config import DatabaseKind, Settings
from backend.app.database import utcnow
from backend.app.models import SETTLED_STATUSES, Deployment, DeploymentLog, DeploymentStatusHistory, SystemState
from backend.app.services.pagination import Ordering

logger = logging.getLogger(__name__)
STATE_KEY = "retention"
#: Deployments examined per step of a walk.
DEPLOYMENTS_PER_STEP = 200
#: The size rule leaves deployments alone for this long after their last activity (a deployment that has
#: just settled may still be read by a client following its logs).
SIZE_RULE_GRACE = timedelta(minutes=5)
#: On SQLite, the pause after each batch: longer than the longest sleep of SQLite's busy handler (100 ms),
#: so that every writer waiting for the lock gets it before the next batch takes it.
SQLITE_TURN = 0.12
_BY_ACTIVITY = Ordering("retention", (Deployment.updated_at, Deployment.id))  # the ix_deployments_updated index


@dataclass
class RetentionReport:
    deployments: int = 0
    log_lines: int = 0
    history_rows: int = 0
    batches: int = 0
    finished_at: str | None = None
    positions: dict[str, list] = field(default_factory=dict)


@dataclass(frozen=True)
class _Batches:
    size: int  # rows per delete transaction
    turn: float  # seconds the write lock is left free after each one (SQLite; 0 on PostgreSQL)

    @classmethod
    def of(cls, settings: Settings) -> _Batches:
        turn = SQLITE_TURN if settings.database_kind is DatabaseKind.SQLITE else 0.0
        return cls(settings.RETENTION_BATCH_SIZE, turn)

    async def committed(self, report: RetentionReport) -> None:
        report.batches += 1
        if self.turn:
            await asyncio.sleep(self.turn)


def _doomed_lines(deployment_id: str, up_to_seq: int, batch: int):
    """Ids of one batch of the deployment's lines up to ``up_to_seq``: one ``(deployment_id, seq)`` index range."""
    return (
        select(DeploymentLog.id)
        .where(DeploymentLog.deployment_id == deployment_id, DeploymentLog.seq <= up_to_seq)
        .order_by(DeploymentLog.seq)
        .limit(batch)
    )


async def _prune_lines(ids: list[str], keep: int, batches: _Batches, report: RetentionReport) -> int:
    """Delete the lines of each settled deployment of ``ids`` older than its newest ``keep``, in batches.

    One deployment per statement (an equality and a range on the unique index), so the plan cannot turn
    into a scan of the table whatever the statistics; the bound is re-read at every batch, so lines written
    meanwhile keep their newest ``keep``.
    """
    deleted = 0
    for deployment_id in ids:
        while True:
            async with database.AsyncSessionLocal() as session:
                row = (
                    await session.execute(select(Deployment.last_log_seq, Deployment.status).where(Deployment.id == deployment_id))
                ).one_or_none()
                if row is None or row.status not in SETTLED_STATUSES or row.last_log_seq - keep < 1:
                    break
                doomed = _doomed_lines(deployment_id, row.last_log_seq - keep, batches.size)
                count = await delete_batch(session, model=DeploymentLog, doomed=doomed)
                await session.commit()
            await batches.committed(report)
            deleted += count
            if count < batches.size:
                break
    return deleted


def _doomed_history(ids: list[str], batch: int):
    """Ids of one batch of history rows of ``ids`` except each one's newest (settled deployments only)."""
    other = aliased(DeploymentStatusHistory)
    owner = aliased(Deployment)
    newest = select(func.max(other.id)).where(other.deployment_id == DeploymentStatusHistory.deployment_id).scalar_subquery()
    settled = select(owner.id).where(owner.id == DeploymentStatusHistory.deployment_id, owner.status.in_(SETTLED_STATUSES))
    return (
        select(DeploymentStatusHistory.id)
        .where(DeploymentStatusHistory.deployment_id.in_(ids), DeploymentStatusHistory.id < newest, settled.exists())
        .limit(batch)
    )


async def delete_batch(session, *, model, doomed) -> int:
    """Delete the rows whose ids ``doomed`` selects: ids first, then a delete by primary key.

    Two statements rather than ``DELETE ... WHERE id IN (SELECT ...)``, which PostgreSQL may plan as a
    hash semi-join scanning the whole table.
    """
    ids = list((await session.execute(doomed)).scalars())
    if ids:
        await session.execute(delete(model).where(model.id.in_(ids)).execution_options(synchronize_session=False))
    return len(ids)


async def _delete_in_batches(model, doomed_for_batch, batches: _Batches, report: RetentionReport) -> int:
    deleted = 0
    while True:
        async with database.AsyncSessionLocal() as session:
            count = await delete_batch(session, model=model, doomed=doomed_for_batch())
            await session.commit()
        await batches.committed(report)
        deleted += count
        if count < batches.size:
            return deleted


async def _load_state() -> dict:
    async with database.AsyncSessionLocal() as session:
        row = await session.get(SystemState, STATE_KEY)
        return dict(row.value) if row is not None else {}


async def _save_state(value: dict) -> None:
    async with database.AsyncSessionLocal() as session:
        row = await session.get(SystemState, STATE_KEY)
        if row is None:
            session.add(SystemState(key=STATE_KEY, value=value))
        else:
            row.value = value
        await session.commit()


async def _walk(
    rule: str,
    horizon: datetime,
    *,
    keep_lines: int,
    prune_history: bool,
    batches: _Batches,
    state: dict,
    report: RetentionReport,
) -> None:
    """Apply one rule to every deployment whose last activity is older than ``horizon``, from the saved position."""
    positions = state.setdefault("positions", {})
    while True:
        query = select(Deployment.id, Deployment.updated_at, Deployment.last_log_seq).where(Deployment.updated_at < horizon)
        if saved := positions.get(rule):
            query = query.where(_BY_ACTIVITY.after([datetime.fromisoformat(saved[0]), saved[1]]))
        async with database.AsyncSessionLocal() as session:
            rows = (await session.execute(query.order_by(Deployment.updated_at, Deployment.id).limit(DEPLOYMENTS_PER_STEP))).all()
        if not rows:
            return
        ids = [row.id for row in rows]
        report.deployments += len(ids)
        # only deployments with more lines than are kept cost a statement each (the bound is re-read there)
        with_lines = [row.id for row in rows if row.last_log_seq > keep_lines]
        report.log_lines += await _prune_lines(with_lines, keep_lines, batches, report)
        if prune_history:
            report.history_rows += await _delete_in_batches(
                DeploymentStatusHistory, lambda ids=ids: _doomed_history(ids, batches.size), batches, report
            )
        positions[rule] = [rows[-1].updated_at.isoformat(), rows[-1].id]
        await _save_state(state)


async def prune(settings: Settings, *, now: datetime | None = None) -> RetentionReport:
    """One retention pass (both rules). Safe to interrupt: it resumes from the saved positions."""
    now = now or utcnow()
    report = RetentionReport()
    state = await _load_state()
    batches = _Batches.of(settings)
    keep = settings.RETENTION_KEEP_LOG_LINES
    if settings.RETENTION_DAYS:
        await _walk(
            "age",
            now - timedelta(days=settings.RETENTION_DAYS),
            keep_lines=keep,
            prune_history=True,
            batches=batches,
            state=state,
            report=report,
        )
    if settings.RETENTION_MAX_LOG_LINES:
        await _walk(
            "size",
            now - SIZE_RULE_GRACE,
            keep_lines=max(keep, settings.RETENTION_MAX_LOG_LINES),
            prune_history=False,
            batches=batches,
            state=state,
            report=report,
        )
    report.finished_at = now.isoformat()
    report.positions = state.get("positions", {})
    state["last"] = {k: v for k, v in asdict(report).items() if k != "positions"}
    await _save_state(state)
    if report.log_lines or report.history_rows:
        logger.info(
            "retention: pruned %d log line(s) and %d history row(s) of %d deployment(s) in %d batch(es)",
            report.log_lines,
            report.history_rows,
            report.deployments,
            report.batches,
        )
    return report
