"""Rows for tests that work below the HTTP API (state machine, recovery, runner)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app import database
from backend.app.core.logging import Redactor
from backend.app.database import utcnow
from backend.app.engines.base import DeploySpec, Engine, TargetConnection
from backend.app.models import Deployment, DeploymentStatus, DeploymentStatusHistory, Organization, Stack, Target, TargetType
from backend.app.models.base import new_id
from backend.app.schemas.compose_policy import ComposePolicy
from backend.app.services.deployments.context import DeploymentContext


class ShownDeployment(BaseModel):
    """The deployment as the API shows it, in short: a ``snapshot`` for ``state_machine.record_creation`` (which
    stamps its ``queued_at``)."""

    id: str
    queued_at: datetime

    @classmethod
    def of(cls, deployment: Deployment) -> ShownDeployment:
        return cls(id=deployment.id, queued_at=deployment.queued_at)


async def make_org_target_stack(session: AsyncSession, name: str = "org") -> tuple[Organization, Target, Stack]:
    org = Organization(name=f"{name}-{new_id()[:8]}")
    session.add(org)
    await session.flush()
    target = Target(organization_id=org.id, name="local", type=TargetType.DOCKER, endpoint="unix:///var/run/docker.sock")
    stack = Stack(organization_id=org.id, name="web", template="services: {}\n", variables=[])
    session.add_all([target, stack])
    await session.flush()
    return org, target, stack


async def make_deployment(
    session: AsyncSession,
    status: DeploymentStatus = DeploymentStatus.PENDING,
    *,
    attempt: int | None = None,
    lease_owner: str | None = None,
    queued_minutes_ago: float = 0,
    **fields,
) -> Deployment:
    """A deployment row *placed* in ``status`` (test set-up, not a transition)."""
    org, target, stack = await make_org_target_stack(session)
    if attempt is None:
        attempt = 1 if status is not DeploymentStatus.PENDING else 0
    if status in (DeploymentStatus.DEPLOYING, DeploymentStatus.STOPPING, DeploymentStatus.DELETING) and lease_owner is None:
        lease_owner = "worker-1"
    now = utcnow()
    deployment = Deployment(
        organization_id=org.id,
        stack_id=stack.id,
        target_id=target.id,
        name=f"dep-{new_id()[:6]}",
        status=status,
        attempt=attempt,
        lease_owner=lease_owner,
        lease_expires_at=now + timedelta(seconds=60) if lease_owner else None,
        queued_at=now - timedelta(minutes=queued_minutes_ago),
        **fields,
    )
    session.add(deployment)
    await session.flush()
    return deployment


async def transitions(deployment_id: str) -> list[tuple[str | None, str]]:
    """The deployment's status history as ``(from, to)`` pairs, oldest first (read in a session of its own)."""
    async with database.AsyncSessionLocal() as session:
        rows = await session.execute(
            select(DeploymentStatusHistory)
            .where(DeploymentStatusHistory.deployment_id == deployment_id)
            .order_by(DeploymentStatusHistory.id)
        )
        return [(h.from_status, h.to_status) for h in rows.scalars()]


def plain_context(
    deployment: Deployment, engine: Engine, spec: DeploySpec, *, endpoint: str = "tcp://203.0.113.9:2376", target_name: str = "t"
) -> DeploymentContext:
    """What ``runner.load_context`` would give for ``deployment`` on a Docker target at ``endpoint``, with the
    engine and the spec given: no variables, no secrets, the default policy."""
    return DeploymentContext(
        deployment_id=deployment.id,
        target_id=deployment.target_id,
        target_name=target_name,
        endpoint=endpoint,
        policy=ComposePolicy(),
        connection=TargetConnection(type=TargetType.DOCKER, endpoint=endpoint),
        values={},
        secrets=(),
        redactor=Redactor([]),
        engine=engine,
        spec=spec,
    )
