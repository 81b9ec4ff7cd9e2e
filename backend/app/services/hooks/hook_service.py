"""Deploy hooks of a deployment or of a stack: management (create, rotate, change, delete, recent calls) and a
call's effect.

A call (``POST /api/v1/hooks/{id}``, no user credential) is judged in this order, and nothing is deployed
unless every step passes: the signature (401: ``signature.py``), the replay window and nonce (409), the
hook enabled (403), a push of another branch (skipped, 200), the body (422: only
``{"variables": {...}}`` with variables the hook allows), the deployment free to take a rollout (429 with
``Retry-After`` while one is pending or deploying). Then a body without variables redeploys (a running or
stopped deployment), retries (a failed or cancelled one); variables make a new revision through
``revisions.create_update``, validated like any change.

A stack's hook does the same to every deployment of that stack in the hook's organisation (its
organisation's admins made it, and may deploy all of them), at most :data:`MAX_STACK_HOOK_DEPLOYMENTS`,
oldest first, one after the other. A deployment that cannot take the rollout (one
already rolling out, an inactive target, a value its revision's schema refuses...) is skipped and listed
with its refusal's code; the others are rolled out, and one ``202`` lists both. When none can, the call is
refused with the first deployment's refusal (its status and code; ``params.skipped`` lists them all) and
nothing is deployed; a stack without deployments is ``409 stack_has_no_deployments``.
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
from backend.app.core.exceptions import Conflict, NotFound, PermissionDenied, RateLimited, ValidationFailed, WindFlowError
from backend.app.database import utcnow
from backend.app.models import ACTIVE_STATUSES, DeployHook, DeployHookCall, Deployment, DeploymentStatus, Stack
from backend.app.schemas.hooks import HookCreate, HookUpdate
from backend.app.services.deployment_service import DeploymentService
from backend.app.services.deployments import revisions
from backend.app.services.hooks import signature

SECRET_PREFIX = "whsec_"
MAX_HOOKS_PER_DEPLOYMENT = 20  # and per stack
#: a stack's hook rolls out at most this many deployments (a stack with more is refused: use their own hooks)
MAX_STACK_HOOK_DEPLOYMENTS = 100
RECENT_CALLS = 50
#: a call's record: ``accepted`` or ``skipped``, else the refusal's error code
ACCEPTED, SKIPPED = "accepted", "skipped"
#: ``Retry-After`` of a call refused because the deployment is already rolling out
BUSY_RETRY_SECONDS = 10


def new_secret() -> str:
    return SECRET_PREFIX + secrets_module.token_urlsafe(32)


def actor_name(hook: DeployHook) -> str:
    return f"hook:{hook.name}"


Owner = Deployment | Stack


def _owned_by(owner: Owner):
    return DeployHook.stack_id == owner.id if isinstance(owner, Stack) else DeployHook.deployment_id == owner.id


async def create(session: AsyncSession, *, settings: Settings, owner: Owner, data: HookCreate, created_by: str) -> tuple[DeployHook, str]:
    """A hook of ``owner`` (a deployment, or a stack: its deployments)."""
    count = len((await session.execute(select(DeployHook.id).where(_owned_by(owner)))).all())
    if count >= MAX_HOOKS_PER_DEPLOYMENT:
        noun = "stack" if isinstance(owner, Stack) else "deployment"
        raise Conflict(
            f"a {noun} has at most {MAX_HOOKS_PER_DEPLOYMENT} hooks; delete one first",
            code="too_many_hooks",
            params={"max": MAX_HOOKS_PER_DEPLOYMENT},
        )
    secret = new_secret()
    hook = DeployHook(
        organization_id=owner.organization_id,
        deployment_id=None if isinstance(owner, Stack) else owner.id,
        stack_id=owner.id if isinstance(owner, Stack) else None,
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


async def list_for(session: AsyncSession, *, owner: Owner) -> list[DeployHook]:
    rows = await session.execute(select(DeployHook).where(_owned_by(owner)).order_by(DeployHook.created_at, DeployHook.id))
    return list(rows.scalars())


async def get(session: AsyncSession, *, owner: Owner, hook_id: str) -> DeployHook:
    hook = await session.get(DeployHook, hook_id)
    owner_id = None if hook is None else hook.stack_id if isinstance(owner, Stack) else hook.deployment_id
    if hook is None or owner_id != owner.id:
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
class Rollout:
    """One deployment a stack's hook rolled out."""

    deployment_id: str
    name: str
    revision: int | None
    action: str  # redeploy | retry | start | change


@dataclass(frozen=True)
class Skipped:
    """One deployment a stack's hook could not roll out, and why (the refusal's code and detail)."""

    deployment_id: str
    name: str
    code: str
    detail: str


@dataclass(frozen=True)
class Triggered:
    deployment_id: str | None  # None for a stack's hook
    revision: int | None
    action: str  # redeploy | retry | start | change | skipped
    reason: str | None = None
    variables: tuple[str, ...] = ()
    stack_id: str | None = None
    deployments: tuple[Rollout, ...] = ()  # a stack's hook: what it rolled out
    skipped: tuple[Skipped, ...] = ()

    @property
    def dispatch(self) -> bool:
        return self.action != "skipped"

    @property
    def dispatched(self) -> list[str]:
        """The deployments to hand to the dispatcher."""
        if not self.dispatch:
            return []
        return [r.deployment_id for r in self.deployments] if self.stack_id else [self.deployment_id or ""]


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
    try:
        return await _apply(session, settings=settings, hook=hook, headers=headers, payload=payload, branch=branch, nonce_row=nonce_row)
    except WindFlowError as error:
        # A change commits the call's record before its slow rendering (revisions.render_for_target): the
        # route then updates that record with the refusal instead of adding a second one.
        error.hook_call_id = nonce_row.id  # type: ignore[attr-defined]
        raise


async def _apply(
    session: AsyncSession,
    *,
    settings: Settings,
    hook: DeployHook,
    headers: dict[str, str],
    payload: Any,
    branch: str | None,
    nonce_row: DeployHookCall,
) -> Triggered:
    if branch is not None or (headers.get("x-github-event") == "ping"):
        if branch is None or (hook.branch is not None and branch != hook.branch):
            nonce_row.status_code, nonce_row.code = 200, SKIPPED
            reason = "ping" if branch is None else f"a push to {branch[:100]}, not {hook.branch}"
            return Triggered(hook.deployment_id, None, "skipped", reason, stack_id=hook.stack_id)
        variables: dict[str, Any] = {}  # a push rolls the deployment out again as it is
    else:
        variables = _variables(hook, payload)
    if hook.stack_id is not None:
        return await _trigger_stack(session, settings=settings, hook=hook, variables=variables)
    deployment = await session.get(Deployment, hook.deployment_id, populate_existing=True)
    if deployment is None:  # pragma: no cover - the hook is deleted with its deployment
        raise NotFound("hook not found", code="hook_not_found")
    revision, action = await _roll_out(session, settings=settings, hook=hook, deployment=deployment, variables=variables)
    nonce_row.revision = revision
    return Triggered(deployment.id, revision, action, variables=tuple(sorted(variables)))


async def _roll_out(
    session: AsyncSession, *, settings: Settings, hook: DeployHook, deployment: Deployment, variables: dict[str, Any]
) -> tuple[int | None, str]:
    """Roll one deployment out for a hook: (the revision, the action); 429 while it is already rolling out."""
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
        return revision.number, "change"
    action = {DeploymentStatus.FAILED: "retry", DeploymentStatus.CANCELLED: "retry"}.get(deployment.status, "redeploy")
    await DeploymentService.requeue(session, deployment=deployment, action=action, actor=actor, settings=settings)
    return deployment.revision, action


async def _trigger_stack(session: AsyncSession, *, settings: Settings, hook: DeployHook, variables: dict[str, Any]) -> Triggered:
    """A stack's hook: every deployment of the stack in the hook's organisation (see the module docstring)."""
    deployments = list(
        (
            await session.execute(
                select(Deployment)
                .where(Deployment.stack_id == hook.stack_id, Deployment.organization_id == hook.organization_id)
                .order_by(Deployment.created_at, Deployment.id)
                .limit(MAX_STACK_HOOK_DEPLOYMENTS + 1)
                .execution_options(populate_existing=True)
            )
        ).scalars()
    )
    if not deployments:
        raise Conflict("the hook's stack has no deployment to roll out", code="stack_has_no_deployments")
    if len(deployments) > MAX_STACK_HOOK_DEPLOYMENTS:
        raise Conflict(
            f"the stack has more than {MAX_STACK_HOOK_DEPLOYMENTS} deployments: a stack's hook rolls out at most "
            f"{MAX_STACK_HOOK_DEPLOYMENTS}; use hooks of the deployments",
            code="too_many_deployments",
            params={"max": MAX_STACK_HOOK_DEPLOYMENTS},
        )
    rolled: list[Rollout] = []
    skipped: list[tuple[Skipped, WindFlowError]] = []
    for deployment in deployments:
        # No savepoint: a change ends the transaction before its slow rendering (revisions.render_for_target),
        # so what came before is committed by then. A refusal comes before its deployment's first write
        # (status checks, rendering, policy, the compare-and-set that writes nothing when it fails), so a
        # refused deployment leaves nothing behind and the session goes on with the next one.
        try:
            revision, action = await _roll_out(session, settings=settings, hook=hook, deployment=deployment, variables=variables)
        except WindFlowError as error:
            skipped.append((Skipped(deployment.id, deployment.name, error.code, error.detail[:500]), error))
            continue
        rolled.append(Rollout(deployment.id, deployment.name, revision, action))
    if not rolled:
        first = skipped[0][1]
        raise type(first)(
            f"none of the stack's {len(deployments)} deployment(s) could be rolled out; {skipped[0][0].name}: {first.detail}",
            code=first.code,
            headers=first.headers,
            params={
                **first.params,
                "skipped": [{"deployment_id": s.deployment_id, "name": s.name, "code": s.code} for s, _ in skipped],
            },
        )
    return Triggered(
        None,
        None,
        "change" if variables else "redeploy",
        variables=tuple(sorted(variables)),
        stack_id=hook.stack_id,
        deployments=tuple(rolled),
        skipped=tuple(s for s, _ in skipped),
    )


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
