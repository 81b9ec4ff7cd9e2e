"""Recovery: no deployment stays stuck.

Runs at start-up (every ``pending``), periodically (Celery beat, or the backend's asyncio loop when Celery is
unavailable), on demand (``windflow recover``, ``POST /api/v1/system/recovery``, the guide's troubleshooting
snippet). Every change goes through the state machine's compare-and-set, so recovery racing a Celery
delivery, another replica's recovery or a live executor never runs a deployment twice.

Unlike ordinary services, recovery is a top-level operation (like a task): it commits each deployment's
change in its own transaction, so one failure never undoes the others, and dispatches after each commit.
The guide's snippet calls it without committing afterwards, which this makes correct.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app import database
from backend.app.config import Settings, get_settings
from backend.app.core.events import iso_utc
from backend.app.database import utcnow
from backend.app.models import TEARDOWN_STATUSES, Deployment, DeploymentStatus, LogLevel, SystemState
from backend.app.services.deployments import history_reasons, revisions
from backend.app.services.deployments.orphans import ACTOR, log_line, reclaim_orphan
from backend.app.services.deployments.runner import Dispatch, InProcessExecutor
from backend.app.services.deployments.state_machine import claimable_for_target, set_deployment_status
from backend.app.services.targets import placement

logger = logging.getLogger(__name__)
S = DeploymentStatus
STATE_KEY = "recovery"


# The sentences recovery writes (core/deployment_words.py words them: recovery_timed_out, timeout_rolling_back,
# dispatched_again after [RETRY]).
def timeout_message(minutes: float) -> str:
    """A ``pending`` deployment's error when no executor took it in time."""
    return f"Timeout: still pending after {minutes:g} minutes"


def timeout_rollback_line(message: str, *, failed: int, of: int, revision: int) -> str:
    """The log line of a timed-out rollout whose last good revision is rolled out again."""
    return (
        f"{message}: revision {failed} failed; rolling back to revision {of}, the last that passed the health gate, as revision {revision}"
    )


def dispatched_again_line(attempt: int, max_attempts: int) -> str:
    """The log line of a stuck ``pending`` deployment recovery dispatches again."""
    return f"[RETRY] Dispatched again by recovery (attempt {min(attempt + 1, max_attempts)}/{max_attempts})"


async def _dispatch_all(dispatch: Dispatch, deployment_ids: list[str], who: str) -> int:
    """Dispatch each (after the commits that made them ``pending``); returns how many failed."""
    errors = 0
    for deployment_id in deployment_ids:
        try:
            await dispatch(deployment_id)
        except Exception:
            logger.exception("%s: dispatch of %s failed", who, deployment_id)
            errors += 1
    return errors


def _teardowns_to_resume(now, *, settled_before):
    """``stopping``/``deleting`` rows no live executor holds (never claimed, or their executor died: its lease
    expired) whose last change is older than ``settled_before``, out of a retry's backoff: dispatched again, the
    teardown's claim lets one executor through."""
    return select(Deployment.id).where(
        Deployment.status.in_(TEARDOWN_STATUSES),
        Deployment.lease_expires_at.is_(None) | (Deployment.lease_expires_at < now),
        Deployment.updated_at <= settled_before,
        Deployment.not_before.is_(None) | (Deployment.not_before <= now),
    )


async def _stamp(session: AsyncSession, deployment_ids: list[str], now) -> None:
    """Stamp ``updated_at`` of re-dispatched teardowns: each is sent again at most once per timeout."""
    if deployment_ids:
        await session.execute(
            update(Deployment)
            .where(Deployment.id.in_(deployment_ids), Deployment.status.in_(TEARDOWN_STATUSES))
            .values(updated_at=now)
            .execution_options(synchronize_session=False)
        )


async def reap(session: AsyncSession, *, settings: Settings, dispatch: Dispatch) -> dict[str, int]:
    """One pass of the reaper: heals a dead executor's work in seconds, without waiting for recovery.

    Cheap enough to run every ``REAPER_INTERVAL_SECONDS`` (both queries use the ``(status, ...)``
    indexes and touch only rows that need healing):

    1. ``deploying`` rows whose lease expired → :func:`reclaim_orphan` (reality check), and the requeued
       ones are dispatched;
    2. lost dispatches: ``pending`` rows claimable now that nobody claimed within
       ``DISPATCH_TIMEOUT_SECONDS`` (a message lost with a ``kill -9``ed worker, a wake-up that never came)
       on targets with a free slot, oldest first, as many as the free slots → dispatched again (the
       claim's compare-and-set makes a duplicate harmless). Their ``updated_at`` is stamped, so the same
       row is re-dispatched at most once per timeout;
    3. teardowns (``stopping``, ``deleting``) that no live executor holds and nobody claimed within
       ``DISPATCH_TIMEOUT_SECONDS`` (never claimed, or their executor died and its lease expired) →
       dispatched again (``teardowns``).

    Commits each change itself (like recovery). Returns ``{"reclaimed", "settled", "failed", "redispatched", "teardowns", "errors"}``.
    """
    stats = {"reclaimed": 0, "settled": 0, "failed": 0, "redispatched": 0, "teardowns": 0, "errors": 0}
    now = utcnow()
    to_dispatch: list[str] = []
    orphans = (
        (
            await session.execute(
                select(Deployment)
                .where(Deployment.status == S.DEPLOYING, Deployment.lease_expires_at < now)
                .order_by(Deployment.lease_expires_at)
                .limit(100)
            )
        )
        .scalars()
        .all()
    )
    for deployment in orphans:
        try:
            counter = await reclaim_orphan(session, settings=settings, deployment=deployment, actor="reaper")
            await session.commit()
        except Exception:
            await session.rollback()
            logger.exception("reaper: reclaiming deployment %s failed", deployment.id)
            stats["errors"] += 1
            continue
        if counter == "retried":
            stats["reclaimed"] += 1
            to_dispatch.append(deployment.id)
        elif counter is not None:
            stats[counter] += 1

    cutoff = now - timedelta(seconds=settings.DISPATCH_TIMEOUT_SECONDS)
    stale = (
        await session.execute(
            select(Deployment.id, Deployment.target_id).where(
                Deployment.status == S.PENDING,
                Deployment.updated_at < cutoff,
                Deployment.not_before.is_(None) | (Deployment.not_before < cutoff),
            )
        )
    ).all()
    stale_ids = {row.id for row in stale}
    for target_id in sorted({row.target_id for row in stale}):
        for deployment_id in await claimable_for_target(session, target_id=target_id, now=now):
            if deployment_id in stale_ids and deployment_id not in to_dispatch:
                to_dispatch.append(deployment_id)
                stats["redispatched"] += 1
    redispatched = [d for d in to_dispatch if d in stale_ids]
    if redispatched:
        await session.execute(
            update(Deployment)
            .where(Deployment.id.in_(redispatched), Deployment.status == S.PENDING)
            .values(updated_at=now)
            .execution_options(synchronize_session=False)
        )
    teardowns = list((await session.execute(_teardowns_to_resume(now, settled_before=cutoff).limit(100))).scalars())
    await _stamp(session, teardowns, now)
    stats["teardowns"] = len(teardowns)
    to_dispatch.extend(teardowns)
    await session.commit()

    stats["errors"] += await _dispatch_all(dispatch, to_dispatch, "reaper")
    if any(stats.values()):
        logger.info(
            "Reaper: reclaimed=%d settled=%d failed=%d redispatched=%d teardowns=%d errors=%d",
            stats["reclaimed"],
            stats["settled"],
            stats["failed"],
            stats["redispatched"],
            stats["teardowns"],
            stats["errors"],
        )
    return stats


async def recover_pending_deployments(
    session: AsyncSession,
    *,
    max_age_minutes: float = 2,
    timeout_minutes: float = 60,
    settings: Settings | None = None,
    dispatch: Dispatch | None = None,
) -> dict[str, Any]:
    """The guide's algorithm, plus orphaned ``deploying`` rows whose lease expired.

    1. ``pending`` queued more than ``timeout_minutes`` ago → ``failed`` ("Timeout ...").
    2. ``deploying`` whose lease expired (its executor died) → ``running`` if its labelled containers all
       run, else back to ``pending`` while attempts remain, else ``failed``.
    3. ``pending`` queued more than ``max_age_minutes`` ago → a ``[RETRY]`` log line ("dispatched again",
       never "started": only an executor that claims the deployment logs that) and a new dispatch.
    4. ``stopping``/``deleting`` that no live executor holds (its executor died, or it was never claimed) →
       dispatched again (counted as ``retried``), whatever their age: the teardown's claim lets one through.

    ``dispatch`` hands each retried deployment to an executor (the backend passes its dispatcher, which
    picks Celery or the asyncio fallback). Without one (the guide's troubleshooting snippet), the retried
    deployments run in this process and this returns once they have settled; those of a placed target
    (``services/targets/placement.py``) stay ``pending`` for the target's workers.

    Returns ``{"status", "timestamp", "statistics": {"retried", "failed", "skipped", "errors", "settled"}}``.
    """
    settings = settings or get_settings()
    here = InProcessExecutor() if dispatch is None else None
    if here is not None:
        run_here = here.dispatcher(settings)

        async def dispatch(deployment_id: str) -> None:
            # a placed target's work runs only on its workers (this process may not reach its engine): left
            # pending for them, where the reaper sends it
            async with database.AsyncSessionLocal() as reading:  # not the caller's: it must hold no transaction
                placed = await placement.deployment_placed(reading, deployment_id=deployment_id)
            if not placed:
                await run_here(deployment_id)

    stats = {"retried": 0, "failed": 0, "skipped": 0, "errors": 0, "settled": 0}
    now = utcnow()
    to_dispatch: list[str] = []

    # 1. timeouts
    deadline = now - timedelta(minutes=timeout_minutes)
    expired = (
        (await session.execute(select(Deployment.id).where(Deployment.status == S.PENDING, Deployment.queued_at < deadline)))
        .scalars()
        .all()
    )
    for deployment_id in expired:
        try:
            message = timeout_message(timeout_minutes)
            # a change that never started: the last good revision is rolled out again (its own timeout, if no
            # executor takes it either, fails the deployment with both reasons)
            rollback = await revisions.roll_back_timed_out(session, deployment_id=deployment_id, message=message, actor=ACTOR)
            if rollback is not None:
                await log_line(
                    session,
                    deployment_id=deployment_id,
                    level=LogLevel.WARNING,
                    message=timeout_rollback_line(message, failed=rollback.number - 1, of=rollback.rollback_of, revision=rollback.number),
                )
                await session.commit()
                stats["failed"] += 1
                to_dispatch.append(deployment_id)
                continue
            rollout = await revisions.rollout_of(session, deployment=await session.get(Deployment, deployment_id))
            if rollout.is_automatic_rollback:
                message = rollout.failure_message(message)
            result = await set_deployment_status(
                session,
                deployment_id=deployment_id,
                to_status=S.FAILED,
                reason=history_reasons.text("recovery_timeout"),
                actor=ACTOR,
                error_message=message,
                expected_from=S.PENDING,
            )
            if result.accepted:
                await log_line(session, deployment_id=deployment_id, level=LogLevel.ERROR, message=message)
                stats["failed"] += 1
            else:
                stats["skipped"] += 1
            await session.commit()
        except Exception:
            await session.rollback()
            logger.exception("recovery: timeout of deployment %s failed", deployment_id)
            stats["errors"] += 1
    if stats["failed"]:
        logger.warning("Recovery: marked %d deployment(s) FAILED (timeout)", stats["failed"])

    # 2. orphaned deploying rows
    orphans = (
        (await session.execute(select(Deployment).where(Deployment.status == S.DEPLOYING, Deployment.lease_expires_at < now)))
        .scalars()
        .all()
    )
    for deployment in orphans:
        deployment_id = deployment.id
        try:
            counter = await reclaim_orphan(session, settings=settings, deployment=deployment)
            if counter is not None:
                stats[counter] += 1
                if counter == "retried":
                    to_dispatch.append(deployment_id)
            else:
                stats["skipped"] += 1
            await session.commit()
        except Exception:
            await session.rollback()
            logger.exception("recovery: orphan %s failed", deployment_id)
            stats["errors"] += 1

    # 3. stuck pending rows
    threshold = now - timedelta(minutes=max_age_minutes)
    stuck = (
        await session.execute(
            select(Deployment.id, Deployment.not_before, Deployment.attempt, Deployment.max_attempts)
            .where(Deployment.status == S.PENDING, Deployment.queued_at <= threshold)
            .order_by(Deployment.queued_at)
        )
    ).all()
    for deployment_id, not_before, attempt, max_attempts in stuck:
        if deployment_id in to_dispatch:
            continue
        if not_before is not None and not_before > now:
            stats["skipped"] += 1  # waiting for its retry backoff
            continue
        try:
            message = dispatched_again_line(attempt, max_attempts)
            await log_line(session, deployment_id=deployment_id, level=LogLevel.INFO, message=message)
            await session.commit()
            to_dispatch.append(deployment_id)
            stats["retried"] += 1
        except Exception:
            await session.rollback()
            logger.exception("recovery: retry of %s failed", deployment_id)
            stats["errors"] += 1

    # 4. teardowns whose executor died (or that no executor took)
    try:
        teardowns = [d for d in (await session.execute(_teardowns_to_resume(now, settled_before=now))).scalars() if d not in to_dispatch]
        await _stamp(session, teardowns, now)
        await session.commit()
        to_dispatch.extend(teardowns)
        stats["retried"] += len(teardowns)
    except Exception:
        await session.rollback()
        logger.exception("recovery: resuming teardowns failed")
        stats["errors"] += 1

    # the reads above opened a transaction (on SQLite, the write lock): the executors dispatched here need it
    await database.end_transaction(session)
    stats["errors"] += await _dispatch_all(dispatch, to_dispatch, "recovery")
    if here is not None:
        await here.wait()

    report = {"status": "completed", "timestamp": iso_utc(now), "statistics": stats}
    await _record(session, report)
    logger.info(
        "Recovery finished (Recovery terminé): retried=%d failed=%d skipped=%d errors=%d settled=%d",
        stats["retried"],
        stats["failed"],
        stats["skipped"],
        stats["errors"],
        stats["settled"],
    )
    return report


async def _record(session: AsyncSession, report: dict[str, Any]) -> None:
    """Keep the last report and cumulative totals (read by /system/recovery and /metrics)."""
    try:
        row = await session.get(SystemState, STATE_KEY, with_for_update=True)
        totals = dict((row.value or {}).get("totals", {})) if row else {}
        for key, value in report["statistics"].items():
            totals[key] = totals.get(key, 0) + value
        totals["runs"] = totals.get("runs", 0) + 1
        value = {"last": report, "totals": totals}
        if row is None:
            session.add(SystemState(key=STATE_KEY, value=value))
        else:
            row.value = value
        await session.commit()
    except Exception:
        await session.rollback()
        logger.warning("recovery: could not record statistics", exc_info=True)


async def last_report(session: AsyncSession) -> dict[str, Any] | None:
    row = await session.get(SystemState, STATE_KEY)
    return row.value if row else None
