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

from sqlalchemy import bindparam, update
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


_R = DeploymentRevision.__table__
#: built once, on the table (no ORM bulk-update work at each change): the current revision takes its outcome and
#: returns its reason; the revision that ran before it is retired
_SETTLE = (
    update(_R)
    .where(_R.c.deployment_id == bindparam("b_id"), _R.c.number == bindparam("b_number"))
    .values(
        outcome=bindparam("b_outcome", type_=_R.c.outcome.type),
        finished_at=bindparam("b_finished", type_=_R.c.finished_at.type),
        error_message=bindparam("b_error", type_=_R.c.error_message.type),
    )
    .returning(_R.c.reason)
)
_RETIRE = (
    update(_R)
    .where(_R.c.deployment_id == bindparam("b_id"), _R.c.number != bindparam("b_number"), _R.c.outcome == O.RUNNING)
    .values(outcome=bindparam("b_retired", type_=_R.c.outcome.type))
)


async def follow(session: AsyncSession, *, deployment: Deployment, to_status: DeploymentStatus, now: datetime) -> None:
    """Give the deployment's current revision the outcome of ``to_status`` (and retire the one it replaced)."""
    outcome = _OUTCOME_OF_STATUS.get(to_status)
    if outcome is None:
        return
    this = {"b_id": deployment.id, "b_number": deployment.revision}
    if outcome in (O.PENDING, O.DEPLOYING):
        finished, error = None, None
    elif outcome is O.RUNNING:
        finished, error = now, None
    else:
        finished, error = now, deployment.error_message
    settled = await session.execute(_SETTLE, {**this, "b_outcome": outcome, "b_finished": finished, "b_error": error})
    if outcome in (O.RUNNING, O.FAILED):
        reason = settled.scalar_one_or_none()  # the revision's reason, read by the UPDATE itself (no revision: None)
        retired = O.ROLLED_BACK if reason == RevisionReason.ROLLBACK else O.SUPERSEDED
        await session.execute(_RETIRE, {**this, "b_retired": retired})
