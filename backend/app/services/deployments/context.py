"""A deployment's context: what one run of it (or one engine action on it) needs, read and decrypted once.

:func:`load_context` reads the deployment's target once, decrypts the target's credentials, its
organisation's registry credentials (the pulls' auth parameter) and the deployment's values once (each
secret is registered with the server log's redaction as it is decrypted), and builds from them the
deployment's redactor, its engine and the :class:`DeploySpec` of its rendered compose snapshot. The runner
then reads "load, check, run": ``load_context``, ``context.check_policy()`` (the target's policy as it is
*now*: it may have been tightened since the deployment was created), the engine steps. The lifecycle actions
(stop, delete) and recovery's reality check of an orphan use the same context; ``DeploymentService`` uses
:func:`check_compose_policy` and :func:`snapshot_compose` directly.

Below the runner, recovery, the lifecycle actions and ``DeploymentService``, so none of them imports
another to reach it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core import security
from backend.app.core.exceptions import NotFound, ServiceUnavailable, ValidationFailed
from backend.app.core.logging import Redactor
from backend.app.engines import engine_for
from backend.app.engines.base import DeploySpec, Engine, TargetConnection
from backend.app.models import Deployment, Target
from backend.app.schemas.compose_policy import ComposePolicy
from backend.app.services.deployments import redaction
from backend.app.services.registries import registry_service
from backend.app.services.targets import compose_policy, placement, target_service

#: the longest timeout a stack may ask for (``x-windflow: {pull_timeout: seconds, up_timeout: seconds}``): a day
MAX_STACK_TIMEOUT = 86400
#: the timeouts a stack's ``x-windflow`` may set, and the setting each one replaces
STACK_TIMEOUTS = {"pull_timeout": "DEPLOYMENT_PULL_TIMEOUT_SECONDS", "up_timeout": "DEPLOYMENT_UP_TIMEOUT_SECONDS"}


def stack_timeout(document: Mapping[str, Any], key: str) -> float | None:
    """A timeout a stack's own document asks for, ``x-windflow: {<key>: seconds}`` (a compose extension field:
    compose and swarm ignore it), or None. ``ValidationFailed`` (422 ``invalid_<key>``, e.g.
    ``invalid_up_timeout``) saying what to fix when it is not a number of seconds between 1 and a day."""
    extension = document.get("x-windflow")
    if extension is None:
        return None
    value = extension.get(key) if isinstance(extension, Mapping) else extension
    if value is None and isinstance(extension, Mapping):
        return None
    valid = isinstance(extension, Mapping) and isinstance(value, int | float) and not isinstance(value, bool)
    if not valid or not 1 <= value <= MAX_STACK_TIMEOUT:
        raise ValidationFailed(
            f"x-windflow.{key} must be a number of seconds between 1 and {MAX_STACK_TIMEOUT} "
            f"(x-windflow is a mapping, e.g. x-windflow: {{{key}: 600}})",
            code=f"invalid_{key}",
            params={"max": MAX_STACK_TIMEOUT},
        )
    return float(value)


def check_compose_policy(rendered: str, target: Target, *, redact: list[str] | tuple[str, ...] = ()) -> None:
    """Raise ``PolicyViolation`` (422) when ``rendered`` breaks the always-refused rules or ``target``'s policy,
    ``ValidationFailed`` when its ``x-windflow`` settings are invalid."""
    document = compose_policy.load(rendered)
    compose_policy.check_target(
        document,
        target_service.policy_of(target),
        target_name=target.name,
        endpoint=target.endpoint,
        redact=redact,
    )
    for key in STACK_TIMEOUTS:
        stack_timeout(document, key)


def snapshot_compose(settings: Settings, deployment: Deployment) -> str:
    """The rendered compose document the runner deploys (stored encrypted: it holds secret values)."""
    if not deployment.rendered_compose:
        raise ValidationFailed("this deployment has no rendered compose snapshot", code="no_snapshot")
    return security.decrypt_secret(settings, deployment.rendered_compose)


def deploy_spec(settings: Settings, deployment: Deployment, *, registry_auth: dict[str, dict[str, str]] | None = None) -> DeploySpec:
    compose = snapshot_compose(settings, deployment)
    document = compose_policy.load(compose)
    up_timeout = stack_timeout(document, "up_timeout")
    return DeploySpec(
        registry_auth=registry_auth or {},
        deployment_id=deployment.id,
        compose=compose,
        workdir=settings.DEPLOYMENTS_WORKDIR / deployment.id,
        health_timeout=settings.DEPLOYMENT_HEALTH_TIMEOUT_SECONDS,
        # each the stack's own (x-windflow.up_timeout / pull_timeout), else the setting's (pulls: 0 is none)
        up_timeout=up_timeout or settings.DEPLOYMENT_UP_TIMEOUT_SECONDS,
        up_timeout_source="x-windflow.up_timeout" if up_timeout else STACK_TIMEOUTS["up_timeout"],
        pull_timeout=stack_timeout(document, "pull_timeout") or settings.DEPLOYMENT_PULL_TIMEOUT_SECONDS or None,
        # never longer than half the wait: a short health timeout must still let a stable service through
        stable_seconds=min(settings.DEPLOYMENT_STABLE_SECONDS, settings.DEPLOYMENT_HEALTH_TIMEOUT_SECONDS / 2),
    )


@dataclass(frozen=True)
class DeploymentContext:
    """One deployment with its target, credentials and values decrypted, its redactor, engine and spec.

    Built by :func:`load_context`; holds no database session or row. The clear material (values, secrets,
    the connection's keys) never shows in a ``repr``.
    """

    deployment_id: str
    target_id: str
    target_name: str
    #: the target's endpoint (may carry a password: ``ssh://user:password@host``)
    endpoint: str = field(repr=False)
    policy: ComposePolicy
    #: how the engine reaches the target (credentials decrypted)
    connection: TargetConnection = field(repr=False)
    #: the deployment's variable values, secrets decrypted
    values: Mapping[str, Any] = field(repr=False)
    #: the clear secret values among ``values``
    secrets: tuple[str, ...] = field(repr=False)
    #: masks this deployment's secrets, its target's credentials and ``SECRET_KEY`` in engine output
    redactor: Redactor = field(repr=False)
    engine: Engine = field(repr=False)
    #: what the engine deploys: the decrypted compose snapshot, the project directory, the timeouts
    spec: DeploySpec = field(repr=False)

    def check_policy(self) -> None:
        """Raise ``PolicyViolation`` when the snapshot breaks the always-refused rules or the target's policy
        as it is now (the deployment's secrets masked in the message)."""
        compose_policy.check_target(
            compose_policy.load(self.spec.compose),
            self.policy,
            target_name=self.target_name,
            endpoint=self.endpoint,
            redact=self.secrets,
        )


async def load_context(session: AsyncSession, *, settings: Settings, deployment: Deployment) -> DeploymentContext:
    """Read ``deployment``'s target and decrypt what a run needs, once. ``NotFound`` when the target is gone;
    a stored value that cannot be decrypted (or a missing snapshot, or no engine tool) raises as it is."""
    target = await session.get(Target, deployment.target_id)
    if target is None:
        raise NotFound("the deployment's target no longer exists", code="target_not_found")
    if not placement.reachable_here(target, settings):
        # the same socket path here is another engine: acting on it would act on the wrong host's containers
        raise ServiceUnavailable(
            f"target {target.name} is the engine of host {target.host}; this process runs on host {settings.host_id} "
            "(its work runs on the workers of that host: WORKER_TARGETS=local)",
            code="target_elsewhere",
            params={"target": target.name, "host": target.host},
        )
    credentials = target_service.credentials(target, settings)
    values, secrets = security.EncryptedValues(deployment.variables).decrypt_with_secrets(settings)
    # the organisation's registry credentials: the pulls' auth parameter, masked like every secret
    registry_auth = await registry_service.auth_configs(session, settings=settings, organization_id=deployment.organization_id)
    redactor = redaction.deployment_redactor(
        settings,
        deployment.id,
        secrets=[*secrets, *redaction.target_secrets(target, credentials), *(auth["password"] for auth in registry_auth.values())],
    )
    connection = target_service.connection_from(target, credentials)
    return DeploymentContext(
        deployment_id=deployment.id,
        target_id=target.id,
        target_name=target.name,
        endpoint=target.endpoint,
        policy=target_service.policy_of(target),
        connection=connection,
        values=values,
        secrets=tuple(secrets),
        redactor=redactor,
        engine=engine_for(connection),
        spec=deploy_spec(settings, deployment, registry_auth=registry_auth),
    )
