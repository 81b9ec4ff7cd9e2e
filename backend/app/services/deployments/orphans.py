"""Orphans: ``deploying`` rows whose executor died (their lease expired), settled after a reality check.

Used by recovery, the reaper, and an executor that receives a dead executor's redelivered message (the
runner), which is why it sits below all three.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.database import end_transaction, utcnow
from backend.app.models import Deployment, DeploymentStatus, LogLevel
from backend.app.services.deployments import history_reasons, revisions
from backend.app.services.deployments.context import load_context
from backend.app.services.deployments.logs import append_logs
from backend.app.services.deployments.state_machine import set_deployment_status

logger = logging.getLogger(__name__)
S = DeploymentStatus
ACTOR = "recovery"


async def log_line(session: AsyncSession, *, deployment_id: str, level: LogLevel, message: str) -> None:
    await append_logs(session, deployment_id=deployment_id, lines=[(level, message, utcnow())])


async def _containers_running(session: AsyncSession, settings: Settings, deployment: Deployment) -> bool | None:
    """Reality check of an orphaned deployment: True if its labelled containers all run, None if unknown."""
    try:
        context = await load_context(session, settings=settings, deployment=deployment)
    except Exception:
        logger.warning("recovery: cannot load deployment %s", deployment.id, exc_info=True)
        return None
    # An engine may take its connect timeout to answer (a remote target that is down): no transaction (on
    # SQLite, no write lock) is held meanwhile. The caller's change is a compare-and-set on the lease.
    await end_transaction(session)
    try:
        states = await context.engine.inspect(context.spec)
    except Exception:
        logger.warning("recovery: cannot inspect deployment %s", deployment.id, exc_info=True)
        return None
    if not states:
        return False
    return all(s.state == "running" and s.health in (None, "healthy") for s in states)


async def reclaim_orphan(session: AsyncSession, *, settings: Settings, deployment: Deployment, actor: str = ACTOR) -> str | None:
    """Settle one ``deploying`` row whose lease expired (its executor died), after checking reality.

    ``running`` if its labelled containers all run and the attempt had reached its last step (the health gate:
    before, the containers are the previous revision's); else back to ``pending`` while attempts remain (the
    caller dispatches it after committing); else, when the deployment has a last good revision to go back to,
    its automatic rollback is queued (``pending``, a new revision: ``"retried"``, dispatched like a retry); else
    ``failed`` (for a rollback revision, with both reasons). Returns ``"settled"``, ``"retried"`` or
    ``"failed"``, or ``None`` when the compare-and-set lost (a renewal, another reaper). The caller commits.
    Used by recovery, the reaper and an executor that receives a dead executor's redelivered message.
    """
    deployment_id = deployment.id
    # Containers found running are this attempt's only once it reached its last step (the health gate): before,
    # they are what the previous revision left running, and the rollout must run again.
    reached_gate = deployment.total_steps > 0 and deployment.current_step >= deployment.total_steps
    running = await _containers_running(session, settings, deployment) if reached_gate else False
    if running:
        result = await set_deployment_status(
            session,
            deployment_id=deployment_id,
            to_status=S.RUNNING,
            reason=history_reasons.text("executor_lost_running"),
            actor=actor,
            require_lease_expired=True,
        )
        counter = "settled"
    elif deployment.attempt < deployment.max_attempts:
        result = await set_deployment_status(
            session,
            deployment_id=deployment_id,
            to_status=S.PENDING,
            reason=history_reasons.text("executor_lost_retrying"),
            actor=actor,
            error_message="executor lost (lease expired); retrying",
            require_lease_expired=True,
        )
        counter = "retried"
    else:
        message = f"executor lost (lease expired) after {deployment.attempt} attempt(s)"
        rollout = await revisions.rollout_of(session, deployment=deployment)
        # the revision failed for good: the last good one is rolled out again, as after a failed gate
        rollback = await revisions.begin_automatic_rollback(
            session, deployment_id=deployment_id, owner=None, message=message, orphaned=True, actor=actor
        )
        if rollback is not None:
            await log_line(
                session,
                deployment_id=deployment_id,
                level=LogLevel.WARNING,
                message=f"[RECOVERY] revision {rollout.number} failed: {message}; rolling back to revision "
                f"{rollback.rollback_of}, the last that passed the health gate, as revision {rollback.number}",
            )
            return "retried"
        result = await set_deployment_status(
            session,
            deployment_id=deployment_id,
            to_status=S.FAILED,
            reason=history_reasons.text("automatic_rollback_failed" if rollout.is_automatic_rollback else "executor_lost_failed"),
            actor=actor,
            error_message=rollout.failure_message(message),
            require_lease_expired=True,
        )
        counter = "failed"
    if not result.accepted:
        return None
    await log_line(session, deployment_id=deployment_id, level=LogLevel.WARNING, message=f"[RECOVERY] {result.reason}")
    return counter
