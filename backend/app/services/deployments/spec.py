"""A deployment's frozen inputs: its rendered compose snapshot (its variables, secrets encrypted at rest, are
``core.security.EncryptedValues``), the target's policy check, and the engine and spec the runner, recovery
and the lifecycle actions drive.

Below the runner, recovery and ``DeploymentService`` (all of them use it), so none of them imports another
to reach these.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core import security
from backend.app.core.exceptions import ValidationFailed
from backend.app.engines import engine_for
from backend.app.engines.base import DeploySpec, Engine
from backend.app.models import Deployment, Target
from backend.app.services.targets import compose_policy, target_service

def check_compose_policy(rendered: str, target: Target, *, redact: list[str] | tuple[str, ...] = ()) -> None:
    """Raise ``PolicyViolation`` (422) when ``rendered`` breaks the always-refused rules or ``target``'s policy."""
    compose_policy.check_target(
        compose_policy.load(rendered),
        target_service.policy_of(target),
        target_name=target.name,
        endpoint=target.endpoint,
        redact=redact,
    )


def snapshot_compose(settings: Settings, deployment: Deployment) -> str:
    """The rendered compose document the runner deploys (stored encrypted: it holds secret values)."""
    if not deployment.rendered_compose:
        raise ValidationFailed("this deployment has no rendered compose snapshot", code="no_snapshot")
    text = security.decrypt_secret(settings, deployment.rendered_compose)
    security.EncryptedValues(deployment.variables).decrypt(settings)  # registers its secrets with the log redactor
    return text


def deploy_spec(settings: Settings, deployment: Deployment) -> DeploySpec:
    return DeploySpec(
        deployment_id=deployment.id,
        compose=snapshot_compose(settings, deployment),
        workdir=settings.DEPLOYMENTS_WORKDIR / deployment.id,
        health_timeout=settings.DEPLOYMENT_HEALTH_TIMEOUT_SECONDS,
        # never longer than half the wait: a short health timeout must still let a stable service through
        stable_seconds=min(settings.DEPLOYMENT_STABLE_SECONDS, settings.DEPLOYMENT_HEALTH_TIMEOUT_SECONDS / 2),
    )


async def load_engine(session: AsyncSession, *, settings: Settings, deployment: Deployment) -> tuple[Engine, DeploySpec]:
    target = await session.get(Target, deployment.target_id)
    return engine_for(target_service.connection_for(target, settings)), deploy_spec(settings, deployment)
