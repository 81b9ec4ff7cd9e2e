"""Deploy hooks of a deployment: management (create, rotate, change, delete, recent calls) and a call's effect.

A call (``POST /api/v1/hooks/{id}``, no user credential) is judged in this order, and nothing is deployed
unless every step passes: the signature (401: ``signature.py``), the replay window and nonce (409), the
hook enabled (403), a push of another branch (skipped, 200), the body (422: only
``{"variables": {...}}`` with variables the hook allows), the deployment free to take a rollout (429 with
``Retry-After`` while one is pending or deploying). Then a body without variables redeploys (a running or
stopped deployment), retries (a failed or cancelled one); variables make a new revision through
``revisions.create_update``, validated like any change.
"""

from __future__ import annotations

import json
import secrets as secrets_module
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core import security
from backend.app.core.exceptions import Conflict, NotFound, PermissionDenied, RateLimited, ValidationFailed
from backend.app.database import utcnow
from backend.app.models import ACTIVE_STATUSES, DeployHook, DeployHookCall, Deployment, DeploymentStatus
from backend.app.schemas.hooks import HookCreate, HookUpdate
from backend.app.services.deployment_service import DeploymentService
from backend.app.services.deployments import revisions
from backend.app.services.hooks import signature

SECRET_PREFIX = "whsec_"
MAX_HOOKS_PER_DEPLOYMENT = 20
RECENT_CALLS = 50
#: a call's record: ``accepted`` or ``skipped``, else the refusal's error code
ACCEPTED, SKIPPED = "accepted", "skipped"
#: ``Retry-After`` of a call refused because the deployment is already rolling out
BUSY_RETRY_SECONDS = 10


def new_secret() -> str:
    return SECRET_PREFIX + secrets_module.token_urlsafe(32)


def actor_name(hook: DeployHook) -> str:
    return f"hook:{hook.name}"


async def create(
    session: AsyncSession, *, settings: Settings, deployment: Deployment, data: HookCreate, created_by: str
) -> tuple[DeployHook, str]:
    count = len((await session.execute(select(DeployHook.id).where(DeployHook.deployment_id == deployment.id))).all())
    if count >= MAX_HOOKS_PER_DEPLOYMENT:
        raise Conflict(
            f"a deployment has at most {MAX_HOOKS_PER_DEPLOYMENT} hooks; delete one first",
            code="too_many_hooks",
            params={"max": MAX_HOOKS_PER_DEPLOYMENT},
        )
    secret = new_secret()
    hook = DeployHook(
        organization_id=deployment.organization_id,
        deployment_id=deployment.id,
        name=data.name,
        secret_encrypted=security.encrypt_secret(settings, secret),
        allowed_variables=list(dict.fromkeys(data.allowed_variables)),
        branch=data.branch,
        enabled=True,
        created_by=created_by,
    )
    session.add(hook)
    await session.flush()
    return hook, secret


async def list_for(session: AsyncSession, *, deployment: Deployment) -> list[DeployHook]:
    rows = await session.execute(
        select(DeployHook).where(DeployHook.deployment_id == deployment.id).order_by(DeployHook.created_at, DeployHook.id)
    )
    return list(rows.scalars())


async def get(session: AsyncSession, *, deployment: Deployment, hook_id: str) -> DeployHook:
    hook = await session.get(DeployHook, hook_id)
    if hook is None or hook.deployment_id != deployment.id:
        raise NotFound("hook not found", code="hook_not_found")
    return hook


async def update(session: AsyncSession, *, hook: DeployHook, data: HookUpdate) -> DeployHook:
    for field in ("name", "branch", "enabled"):
        if field in data.model_fields_set and (field == "branch" or getattr(data, field) is not None):
            setattr(hook, field, getattr(data, field))
    if data.allowed_variables is not None:
        hook.allowed_variables = list(dict.fromkeys(data.allowed_variables))
    await session.flush()
    return hook


async def rotate(session: AsyncSession, *, settings: Settings, hook: DeployHook) -> str:
    """A new secret; the current one stays valid for ``HOOK_SECRET_GRACE_SECONDS`` (the CI switches without
    a refused call). A second rotation within the grace ends the oldest secret at once."""
    secret = new_secret()
    now = utcnow()
    hook.previous_secret_encrypted = hook.secret_encrypted if settings.HOOK_SECRET_GRACE_SECONDS > 0 else None
    hook.previous_valid_until = (
        now + timedelta(seconds=settings.HOOK_SECRET_GRACE_SECONDS) if settings.HOOK_SECRET_GRACE_SECONDS > 0 else None
    )
    hook.secret_encrypted = security.encrypt_secret(settings, secret)
    hook.rotated_at = now
    await session.flush()
    return secret


async def delete(session: AsyncSession, *, hook: DeployHook) -> None:
    await session.delete(hook)
    await session.flush()


async def recent_calls(session: AsyncSession, *, hook: DeployHook, limit: int = RECENT_CALLS) -> list[DeployHookCall]:
    rows = await session.execute(
        select(DeployHookCall)
        .where(DeployHookCall.hook_id == hook.id)
        .order_by(DeployHookCall.at.desc(), DeployHookCall.id.desc())
        .limit(limit)
    )
    return list(rows.scalars())


def valid_secrets(settings: Settings, hook: DeployHook) -> list[str]:
    found = [security.decrypt_secret(settings, hook.secret_encrypted)]
    if hook.previous_secret_encrypted and hook.previous_valid_until and hook.previous_valid_until > utcnow():
        found.append(security.decrypt_secret(settings, hook.previous_secret_encrypted))
    return found


def record_call(
    session: AsyncSession,
    *,
    hook_id: str,
    status_code: int,
    code: str,
    client: str | None,
    revision: int | None = None,
    nonce: str | None = None,
) -> DeployHookCall:
    call = DeployHookCall(
        hook_id=hook_id, status_code=status_code, code=code[:64], client=(client or "")[:64] or None, revision=revision, nonce=nonce
    )
    session.add(call)
    return call


@dataclass(frozen=True)
class Triggered:
    deployment_id: str
    revision: int | None
    action: str  # redeploy | retry | start | change | skipped
    reason: str | None = None
    variables: tuple[str, ...] = ()

    @property
    def dispatch(self) -> bool:
        return self.action != "skipped"


def _push_branch(headers: dict[str, str], payload: Any) -> str | None:
    """The branch a GitHub or GitLab push payload is about (``None``: not a push payload)."""
    event = headers.get("x-github-event") or headers.get("x-gitlab-event")
    if event not in ("push", "Push Hook") or not isinstance(payload, dict):
        return None
    ref = payload.get("ref")
    return ref.removeprefix("refs/heads/") if isinstance(ref, str) else ""


def _variables(hook: DeployHook, payload: Any) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ValidationFailed('the body must be a JSON object: {} or {"variables": {...}}', code="hook_body_invalid")
    unknown = sorted(set(payload) - {"variables"})
    if unknown:
        raise ValidationFailed(
            f'unknown field(s) {", ".join(unknown)[:200]}: a hook takes {{}} or {{"variables": {{...}}}}', code="hook_body_invalid"
        )
    variables = payload.get("variables") or {}
    if not isinstance(variables, dict):
        raise ValidationFailed("variables must be an object of variable names to values", code="hook_body_invalid")
    refused = sorted(str(name)[:100] for name in variables if name not in hook.allowed_variables)
    if refused:
        allowed = ", ".join(hook.allowed_variables) or "none"
        raise ValidationFailed(
            f"this hook may not change {', '.join(refused)}; it allows: {allowed}",
            code="hook_variable_not_allowed",
            params={"names": refused, "allowed": list(hook.allowed_variables)},
        )
    return variables


async def trigger(
    session: AsyncSession, *, settings: Settings, hook: DeployHook, headers: dict[str, str], body: bytes, client: str | None
) -> Triggered:
    """Judge and apply one call (see the module docstring). The call's record, with its nonce, is added in
    the same transaction as its effect: a replayed signature meets the unique nonce and is refused (409)."""
    verified = signature.verify(
        headers, body, secrets=valid_secrets(settings, hook), now=time.time(), window=settings.HOOK_REPLAY_WINDOW_SECONDS
    )
    if not hook.enabled:
        raise PermissionDenied("this hook is disabled; enable it on the deployment's page", code="hook_disabled")
    payload: Any = None
    if body.strip():
        try:
            payload = json.loads(body)
        except ValueError:
            raise ValidationFailed("the body is not valid JSON", code="hook_body_invalid") from None
    branch = _push_branch(headers, payload)
    nonce_row = record_call(session, hook_id=hook.id, status_code=202, code=ACCEPTED, client=client, nonce=verified.nonce)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict("this signed call was already received (a replay); sign a new call", code="hook_replayed") from None
    hook.last_called_at = utcnow()
    if branch is not None or (headers.get("x-github-event") == "ping"):
        if branch is None or (hook.branch is not None and branch != hook.branch):
            nonce_row.status_code, nonce_row.code = 200, SKIPPED
            reason = "ping" if branch is None else f"a push to {branch[:100]}, not {hook.branch}"
            return Triggered(hook.deployment_id, None, "skipped", reason)
        variables: dict[str, Any] = {}  # a push rolls the deployment out again as it is
    else:
        variables = _variables(hook, payload)
    deployment = await session.get(Deployment, hook.deployment_id, populate_existing=True)
    if deployment is None:  # pragma: no cover - the hook is deleted with its deployment
        raise NotFound("hook not found", code="hook_not_found")
    if deployment.status in ACTIVE_STATUSES:
        raise RateLimited(
            f"the deployment is {deployment.status} (revision {deployment.revision}): retry once it has settled",
            code="deployment_rolling_out",
            headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
            params={"status": str(deployment.status), "seconds": BUSY_RETRY_SECONDS},
        )
    actor = actor_name(hook)
    if variables:
        revision = await revisions.create_update(
            session, settings=settings, deployment=deployment, user=None, actor=actor, variables=variables, stack_version=None
        )
        result = Triggered(deployment.id, revision.number, "change", variables=tuple(sorted(variables)))
    else:
        action = {DeploymentStatus.FAILED: "retry", DeploymentStatus.CANCELLED: "retry"}.get(deployment.status, "redeploy")
        await DeploymentService.requeue(session, deployment=deployment, action=action, actor=actor, settings=settings)
        result = Triggered(deployment.id, deployment.revision, action)
    nonce_row.revision = result.revision
    return result


async def prune_calls(session: AsyncSession, *, settings: Settings, batch: int = 1000) -> int:
    """Delete up to ``batch`` hook calls older than ``RETENTION_DAYS`` (0: keep all); the caller commits and
    calls again while it returns ``batch``. A call's nonce is no longer needed by then: a timestamped
    signature is refused past ``HOOK_REPLAY_WINDOW_SECONDS`` (at most a day) whatever the calls kept."""
    if settings.RETENTION_DAYS <= 0:
        return 0
    horizon = utcnow() - timedelta(days=settings.RETENTION_DAYS)
    ids = list((await session.execute(select(DeployHookCall.id).where(DeployHookCall.at < horizon).limit(batch))).scalars())
    if ids:
        await session.execute(sql_delete(DeployHookCall).where(DeployHookCall.id.in_(ids)))
    return len(ids)
