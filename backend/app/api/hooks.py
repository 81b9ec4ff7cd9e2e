"""Deploy hooks: managed on a deployment, or on a stack (rolling out its deployments), by its organisation's
admins; called by CI with a signature. The two sets of management routes are the same but for the owner."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from backend.app.api.deps import CurrentUser, EntityId, OwnedRow, SessionDep, SettingsDep, client_address
from backend.app.api.responses import TEMPLATE_CHECKS, TRANSITION, errors
from backend.app.core.exceptions import NotFound, RateLimited, WindFlowError
from backend.app.core.ratelimit import RateLimiter
from backend.app.models import DeployHook, DeployHookCall, Deployment, Role, Stack
from backend.app.schemas.hooks import HookCallRead, HookCreate, HookCreated, HookRead, HookRollout, HookSkipped, HookTriggered, HookUpdate
from backend.app.services.audit import audit_service
from backend.app.services.hooks import hook_service

router = APIRouter(prefix="/deployments/{deployment_id}/hooks", tags=["hooks"])
stack_router = APIRouter(prefix="/stacks/{stack_id}/hooks", tags=["hooks"])
public = APIRouter(prefix="/hooks", tags=["hooks"])

AdminDeployment = Annotated[
    Deployment, Depends(OwnedRow(Deployment, Role.ADMIN, param="deployment_id", noun="deployment", populate_existing=True))
]
AdminStack = Annotated[Stack, Depends(OwnedRow(Stack, Role.ADMIN, param="stack_id", noun="stack"))]


#: a hook of the deployment, by its id
_HOOK = errors(not_found=["hook_not_found"])


def hook_url(request: Request, settings, hook: DeployHook) -> str:
    base = settings.PUBLIC_URL.rstrip("/") if settings.PUBLIC_URL else str(request.base_url).rstrip("/")
    return f"{base}/api/v1/hooks/{hook.id}"


def read_model(request: Request, settings, hook: DeployHook) -> HookRead:
    return HookRead(
        id=hook.id,
        deployment_id=hook.deployment_id,
        stack_id=hook.stack_id,
        name=hook.name,
        url=hook_url(request, settings, hook),
        allowed_variables=list(hook.allowed_variables or []),
        branch=hook.branch,
        enabled=hook.enabled,
        created_by=hook.created_by,
        created_at=hook.created_at,
        rotated_at=hook.rotated_at,
        previous_secret_valid_until=hook.previous_valid_until if hook.previous_secret_encrypted else None,
        last_called_at=hook.last_called_at,
    )


# --- management: the same operations on a deployment's hooks and on a stack's ----------------------------


async def _create(owner, body: HookCreate, user, session, settings, request: Request) -> HookCreated:
    hook, secret = await hook_service.create(session, settings=settings, owner=owner, data=body, created_by=user.email)
    await session.commit()
    return HookCreated(**read_model(request, settings, hook).model_dump(), secret=secret)


async def _list(owner, session, settings, request: Request) -> list[HookRead]:
    return [read_model(request, settings, h) for h in await hook_service.list_for(session, owner=owner)]


async def _update(owner, hook_id: str, body: HookUpdate, session, settings, request: Request) -> HookRead:
    hook = await hook_service.update(session, hook=await hook_service.get(session, owner=owner, hook_id=hook_id), data=body)
    await session.commit()
    return read_model(request, settings, hook)


async def _rotate(owner, hook_id: str, session, settings, request: Request) -> HookCreated:
    hook = await hook_service.get(session, owner=owner, hook_id=hook_id)
    secret = await hook_service.rotate(session, settings=settings, hook=hook)
    await session.commit()
    return HookCreated(**read_model(request, settings, hook).model_dump(), secret=secret)


async def _delete(owner, hook_id: str, session) -> None:
    await hook_service.delete(session, hook=await hook_service.get(session, owner=owner, hook_id=hook_id))
    await session.commit()


async def _calls(owner, hook_id: str, session) -> list[HookCallRead]:
    hook = await hook_service.get(session, owner=owner, hook_id=hook_id)
    return [HookCallRead.model_validate(c) for c in await hook_service.recent_calls(session, hook=hook)]


@router.post("", response_model=HookCreated, status_code=status.HTTP_201_CREATED, responses=errors(conflict=["too_many_hooks"]))
async def create_hook(
    body: HookCreate, deployment: AdminDeployment, user: CurrentUser, session: SessionDep, settings: SettingsDep, request: Request
) -> HookCreated:
    """A hook for this deployment: its URL, and its secret, shown in this answer only."""
    return await _create(deployment, body, user, session, settings, request)


@router.get("", response_model=list[HookRead])
async def list_hooks(deployment: AdminDeployment, session: SessionDep, settings: SettingsDep, request: Request) -> list[HookRead]:
    """The deployment's hooks (never their secrets)."""
    return await _list(deployment, session, settings, request)


@router.patch("/{hook_id}", response_model=HookRead, responses=_HOOK)
async def update_hook(
    hook_id: EntityId, body: HookUpdate, deployment: AdminDeployment, session: SessionDep, settings: SettingsDep, request: Request
) -> HookRead:
    """Rename, enable or disable a hook, change the variables it allows or its branch."""
    return await _update(deployment, hook_id, body, session, settings, request)


@router.post("/{hook_id}/rotate", response_model=HookCreated, responses=_HOOK)
async def rotate_hook(
    hook_id: EntityId, deployment: AdminDeployment, session: SessionDep, settings: SettingsDep, request: Request
) -> HookCreated:
    """A new secret, shown in this answer only; the previous one keeps working for ``HOOK_SECRET_GRACE_SECONDS``."""
    return await _rotate(deployment, hook_id, session, settings, request)


@router.delete("/{hook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_HOOK)
async def delete_hook(hook_id: EntityId, deployment: AdminDeployment, session: SessionDep) -> None:
    """Delete a hook: its URL answers 404 from now on."""
    await _delete(deployment, hook_id, session)


@router.get("/{hook_id}/calls", response_model=list[HookCallRead], responses=_HOOK)
async def list_hook_calls(hook_id: EntityId, deployment: AdminDeployment, session: SessionDep) -> list[HookCallRead]:
    """The hook's recent calls, newest first, accepted or refused."""
    return await _calls(deployment, hook_id, session)


@stack_router.post("", response_model=HookCreated, status_code=status.HTTP_201_CREATED, responses=errors(conflict=["too_many_hooks"]))
async def create_stack_hook(
    body: HookCreate, stack: AdminStack, user: CurrentUser, session: SessionDep, settings: SettingsDep, request: Request
) -> HookCreated:
    """A hook for this stack: a call rolls out every deployment of the stack in its organisation (see
    ``POST /hooks/{hook_id}``). Its URL, and its secret, shown in this answer only."""
    return await _create(stack, body, user, session, settings, request)


@stack_router.get("", response_model=list[HookRead])
async def list_stack_hooks(stack: AdminStack, session: SessionDep, settings: SettingsDep, request: Request) -> list[HookRead]:
    """The stack's hooks (never their secrets)."""
    return await _list(stack, session, settings, request)


@stack_router.patch("/{hook_id}", response_model=HookRead, responses=_HOOK)
async def update_stack_hook(
    hook_id: EntityId, body: HookUpdate, stack: AdminStack, session: SessionDep, settings: SettingsDep, request: Request
) -> HookRead:
    """Rename, enable or disable a stack's hook, change the variables it allows or its branch."""
    return await _update(stack, hook_id, body, session, settings, request)


@stack_router.post("/{hook_id}/rotate", response_model=HookCreated, responses=_HOOK)
async def rotate_stack_hook(
    hook_id: EntityId, stack: AdminStack, session: SessionDep, settings: SettingsDep, request: Request
) -> HookCreated:
    """A new secret, shown in this answer only; the previous one keeps working for ``HOOK_SECRET_GRACE_SECONDS``."""
    return await _rotate(stack, hook_id, session, settings, request)


@stack_router.delete("/{hook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_HOOK)
async def delete_stack_hook(hook_id: EntityId, stack: AdminStack, session: SessionDep) -> None:
    """Delete a stack's hook: its URL answers 404 from now on."""
    await _delete(stack, hook_id, session)


@stack_router.get("/{hook_id}/calls", response_model=list[HookCallRead], responses=_HOOK)
async def list_stack_hook_calls(hook_id: EntityId, stack: AdminStack, session: SessionDep) -> list[HookCallRead]:
    """The stack's hook's recent calls, newest first, accepted or refused."""
    return await _calls(stack, hook_id, session)


@public.post(
    "/{hook_id}",
    response_model=HookTriggered,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"model": HookTriggered, "description": "a push of another branch than the hook's: skipped, nothing rolled out"},
        **errors(
            TEMPLATE_CHECKS,
            TRANSITION,
            unauthenticated=["hook_signature_invalid", "hook_timestamp_invalid"],
            forbidden=["hook_disabled"],
            not_found=["hook_not_found"],
            conflict=[
                "hook_replayed",
                "stack_has_no_deployments",
                "too_many_deployments",
                "rollout_in_progress",
                "revision_conflict",
                "stack_deleted",
                "no_template_recorded",
                "target_inactive",
            ],
            invalid=["hook_body_invalid", "hook_variable_not_allowed"],
            too_large=["payload_too_large"],
            rate_limited=["rate_limited", "deployment_rolling_out"],
        ),
    },
)
async def call_hook(hook_id: EntityId, request: Request, response: Response, session: SessionDep, settings: SettingsDep) -> HookTriggered:
    """Roll the hook's deployment out. Signed with ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw
    body>`` (GitHub's form), or ``X-WindFlow-Timestamp`` + ``X-WindFlow-Signature-256`` (the HMAC of
    ``"<timestamp>." + body``, refused outside the replay window), or GitLab's ``X-Gitlab-Token``. Body ``{}``
    redeploys (retries a failed deployment); ``{"variables": {...}}`` changes the variables the hook allows.
    GitHub/GitLab push payloads of another branch than the hook's are skipped (200).

    A stack's hook does it to every deployment of the stack in the hook's organisation: the answer lists the
    ``deployments`` rolled out and those ``skipped`` (already rolling out, target inactive...: each with its
    refusal's code); when none could be, the first one's refusal is the answer and nothing is deployed."""
    hook = await session.get(DeployHook, hook_id)
    if hook is None:
        raise NotFound("hook not found", code="hook_not_found")
    request.state.audit_actor = audit_service.Actor("hook", hook.id, hook.name)
    request.state.audit_organization_id = hook.organization_id
    request.state.audit_object_id = hook.deployment_id or hook.stack_id
    if hook.stack_id is not None:
        request.state.audit_object_type = "stack"
    client = client_address(request)
    limiter: RateLimiter = request.app.state.hook_limiter  # shared by the replicas through Redis when configured
    wait = await limiter.hit(hook.id)
    if wait is not None:
        seconds = max(1, round(wait))
        error: WindFlowError = RateLimited(
            f"too many calls of this hook; the limit is {limiter.limit} per minute, retry in {seconds} s",
            headers=limiter.retry_after_header(wait),
            params={"scope": "hook", "limit": limiter.limit, "seconds": seconds},
        )
        hook_service.record_call(session, hook_id=hook.id, status_code=error.status_code, code=error.code, client=client)
        await session.commit()
        raise error
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        result = await hook_service.trigger(session, settings=settings, hook=hook, headers=headers, body=body, client=client)
        await session.commit()
    except WindFlowError as error:
        await session.rollback()
        recorded = getattr(error, "hook_call_id", None)
        call = await session.get(DeployHookCall, recorded) if recorded else None
        if call is not None:  # committed before the refusal (a change ends its transaction before rendering)
            call.status_code, call.code, call.revision = error.status_code, error.code[:64], None
        else:
            hook_service.record_call(session, hook_id=hook_id, status_code=error.status_code, code=error.code, client=client)
        await session.commit()
        raise
    request.state.audit_summary = {
        "action": result.action,
        "revision": result.revision,
        "variables": {n: "changed" for n in result.variables},
    }
    if result.stack_id is not None:
        request.state.audit_summary["deployments"] = [r.deployment_id for r in result.deployments]
        request.state.audit_summary["skipped"] = [{"deployment_id": s.deployment_id, "code": s.code} for s in result.skipped]
    if not result.dispatch:
        response.status_code = status.HTTP_200_OK
    for deployment_id in result.dispatched:
        await request.app.state.dispatcher.dispatch(deployment_id)
    return HookTriggered(
        deployment_id=result.deployment_id,
        revision=result.revision,
        action=result.action,
        reason=result.reason,
        stack_id=result.stack_id,
        deployments=[HookRollout(**vars(r)) for r in result.deployments],
        skipped=[HookSkipped(**vars(s)) for s in result.skipped],
    )
