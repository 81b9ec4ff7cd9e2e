"""A revision's outcome follows its deployment's status: the state machine calls :func:`follow` with every
change it makes, in the same transaction, so that no writer of a status (the runner, recovery, the reaper,
a user's cancel) can leave the two disagreeing.

The deployment's current revision (``Deployment.revision``) takes the rollout's state: ``pending``,
``deploying``, then ``running`` or ``failed`` (a cancelled rollout is ``failed`` too). When it settles, the
revision that ran before it is no longer what runs: ``superseded`` (replaced by an update, or by a revision
that failed: its containers were replaced all the same), or ``rolled_back`` when a rollback replaced it.
``stopped`` changes nothing: the revision ran.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.models import Deployment, DeploymentRevision, DeploymentStatus, RevisionOutcome, RevisionReason

S = DeploymentStatus
O = RevisionOutcome

_OUTCOME_OF_STATUS = {
    S.PENDING: O.PENDING,
    S.DEPLOYING: O.DEPLOYING,
    S.RUNNING: O.RUNNING,
    S.FAILED: O.FAILED,
    S.CANCELLED: O.FAILED,
}


async def follow(session: AsyncSession, *, deployment: Deployment, to_status: DeploymentStatus, now: datetime) -> None:
    """Give the deployment's current revision the outcome of ``to_status`` (and retire the one it replaced)."""
    outcome = _OUTCOME_OF_STATUS.get(to_status)
    if outcome is None:
        return
    this = (DeploymentRevision.deployment_id == deployment.id, DeploymentRevision.number == deployment.revision)
    values: dict = {"outcome": outcome}
    if outcome in (O.PENDING, O.DEPLOYING):
        values.update(finished_at=None, error_message=None)
    elif outcome is O.RUNNING:
        values.update(finished_at=now, error_message=None)
    else:
        values.update(finished_at=now, error_message=deployment.error_message)
    settled = await session.execute(
        update(DeploymentRevision)
        .where(*this)
        .values(**values)
        .returning(DeploymentRevision.reason)
        .execution_options(synchronize_session=False)
    )
    if outcome in (O.RUNNING, O.FAILED):
        reason = settled.scalar_one_or_none()  # the revision's reason, read by the UPDATE itself (no revision: None)
        retired = O.ROLLED_BACK if reason == RevisionReason.ROLLBACK else O.SUPERSEDED
        await session.execute(
            update(DeploymentRevision)
            .where(
                DeploymentRevision.deployment_id == deployment.id,
                DeploymentRevision.number != deployment.revision,
                DeploymentRevision.outcome == O.RUNNING,
            )
            .values(outcome=retired)
            .execution_options(synchronize_session=False)
        )
