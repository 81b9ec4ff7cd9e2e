from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status

from backend.app.api import audit_trail
from backend.app.api.deps import CurrentUser, EntityQueryId, OwnedRow, PageDep, SessionDep, SettingsDep
from backend.app.api.responses import (
    BACKGROUND_ACTION,
    ENGINE_ACTION,
    FILTERED_BY_ORGANIZATION,
    IN_ORGANIZATION,
    RATE_LIMITED,
    TEMPLATE_CHECKS,
    TRANSITION,
    errors,
)
from backend.app.core.exceptions import RateLimited
from backend.app.database import end_transaction
from backend.app.models import Deployment, DeploymentStatus, Role, Target
from backend.app.runtime import target_actions
from backend.app.schemas.deployments import (
    DeploymentCompose,
    DeploymentCreate,
    DeploymentPage,
    DeploymentRead,
    DeploymentServices,
    DeploymentUpdate,
    HistoryRead,
    LogLineRead,
    LogPage,
    RevisionCreate,
    RevisionDiff,
    RevisionPage,
    RevisionRead,
    RollbackRequest,
)
from backend.app.services.deployment_service import DeploymentService, masked_compose, read_models
from backend.app.services.deployments import history_reasons, log_text, revisions, service_states
from backend.app.services.deployments.logs import MAX_SEQ, read_log_page
from backend.app.services.deployments.redaction import public_actor

router = APIRouter(prefix="/deployments", tags=["deployments"])

#: start, redeploy, retry: a refused transition, or a deployment without its rendered snapshot
_REQUEUE = errors(TRANSITION, conflict=["no_snapshot"], not_found=["no_snapshot"])
#: a new revision (a change or a rollback) is validated like a creation and refused during another rollout
_ROLLOUT = errors(
    TRANSITION,
    TEMPLATE_CHECKS,
    RATE_LIMITED,
    conflict=["rollout_in_progress", "revision_conflict", "stack_deleted", "no_template_recorded", "target_inactive", "no_snapshot"],
)
_REVISION = errors(not_found=["revision_not_found"])


DeploymentDep = Annotated[
    Deployment, Depends(OwnedRow(Deployment, Role.VIEWER, param="deployment_id", noun="deployment", populate_existing=True))
]
OperableDeployment = Annotated[
    Deployment, Depends(OwnedRow(Deployment, Role.OPERATOR, param="deployment_id", noun="deployment", populate_existing=True))
]


async def _check_rate(request: Request, user: CurrentUser) -> None:
    limiter = request.app.state.deployment_limiter
    wait = await limiter.hit(user.id)
    if wait is not None:
        seconds = max(1, round(wait))
        raise RateLimited(
            f"too many deployments created; the limit is {limiter.limit} per minute, retry in {seconds} s",
            headers=limiter.retry_after_header(wait),
            params={"scope": "deployments", "limit": limiter.limit, "seconds": seconds},
        )


@router.post(
    "",
    response_model=DeploymentRead,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(_check_rate)],
    responses=errors(
        IN_ORGANIZATION, TEMPLATE_CHECKS, RATE_LIMITED, not_found=["stack_not_found", "target_not_found"], conflict=["target_inactive"]
    ),
)
async def create_deployment(
    body: DeploymentCreate, request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> DeploymentRead:
    """Create a deployment of a stack on a target; it starts asynchronously (status ``pending``)."""
    # The session's identity map holds its rows weakly: the target the creation loads (and checks: its
    # organisation, whether it is active) would be gone once it returns, and the dispatch below would read it
    # again, between the deployment's queued_at and its claim. Held here, the creation's own
    # lookup finds it loaded (the same single query) and the dispatch reads none.
    held_target = await session.get(Target, body.target_id)

    async def audit_entry(deployment_id: str, organization_id: str) -> None:
        await audit_trail.write_with_change(
            request, session, status_code=status.HTTP_201_CREATED, object_id=deployment_id, organization_id=organization_id
        )

    deployment, shown = await DeploymentService.create_read(
        session,
        settings=settings,
        user=user,
        stack_id=body.stack_id,
        target_id=body.target_id,
        name=body.name,
        variables=body.variables,
        organization_id=body.organization_id,
        auto_rollback=body.auto_rollback,
        before_insert=audit_entry,  # the entry commits with the deployment (api/audit_trail.py)
    )
    target = await session.get(Target, deployment.target_id)  # held above and checked by the creation: no query
    del held_target
    await request.app.state.dispatcher.commit_and_dispatch_new(session, deployment.id, target=target, created=deployment)
    # as committed (a new deployment's revision has no images yet; why it waits was read in its transaction): the
    # answer reads nothing after the commit, when the claim or the run that just started wants the database
    if deployment.status == DeploymentStatus.DEPLOYING:  # claimed by its creation: this process runs it
        claimed = {"attempt": deployment.attempt, "executor": deployment.executor, "started_at": deployment.started_at}
        shown = shown.model_copy(update={"status": DeploymentStatus.DEPLOYING, "waiting": None, **claimed})
    return shown


@router.get("", response_model=DeploymentPage, responses=FILTERED_BY_ORGANIZATION)
async def list_deployments(
    user: CurrentUser,
    session: SessionDep,
    page: PageDep,
    status_filter: Annotated[list[DeploymentStatus] | None, Query(alias="status")] = None,
    stack_id: EntityQueryId | None = None,
    target_id: EntityQueryId | None = None,
    organization_id: EntityQueryId | None = None,
) -> DeploymentPage:
    """Deployments of your organisations, newest first."""
    result = await DeploymentService.list_for_user(
        session,
        user=user,
        page=page,
        status=status_filter,
        stack_id=stack_id,
        target_id=target_id,
        organization_id=organization_id,
    )
    return DeploymentPage.of(result, await read_models(session, deployments=result.items))


@router.get("/{deployment_id}", response_model=DeploymentRead)
async def get_deployment(deployment: DeploymentDep, session: SessionDep) -> DeploymentRead:
    """One deployment; a pending one says why it waits (``waiting``)."""
    return (await read_models(session, deployments=[deployment]))[0]


@router.get("/{deployment_id}/logs", response_model=LogPage)
async def get_logs(
    deployment: DeploymentDep,
    session: SessionDep,
    since_seq: Annotated[int, Query(ge=0, le=MAX_SEQ, description="return lines after this sequence number")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    cursor: Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page")] = None,
    strip: Annotated[bool, Query(description="plain text: without the colour sequences (ANSI SGR) the lines keep")] = False,
) -> LogPage:
    """Persisted log lines after ``since_seq`` (or ``cursor``), in order; ``strip=true`` for plain text."""
    lines, next_cursor = await read_log_page(session, deployment_id=deployment.id, since_seq=since_seq, cursor=cursor, limit=limit)
    items = [LogLineRead(**l.__dict__) for l in lines]
    if strip:
        for item in items:
            item.message = log_text.plain(item.message)
    return LogPage(items=items, last_seq=deployment.last_log_seq, next_cursor=next_cursor)


@router.get("/{deployment_id}/compose", response_model=DeploymentCompose)
async def get_compose(deployment: DeploymentDep, settings: SettingsDep) -> DeploymentCompose:
    """The rendered compose document of the deployment, secret values masked."""
    return DeploymentCompose(compose=masked_compose(settings, deployment))


@router.get("/{deployment_id}/services", response_model=DeploymentServices, responses=errors(ENGINE_ACTION))
async def get_services(deployment: DeploymentDep, session: SessionDep, settings: SettingsDep) -> DeploymentServices:
    """The deployment's containers by service, as its target's engine reports them now: state, health, exit
    code, restarts, image, published ports. ``503 engine_unavailable`` when the engine does not answer."""
    return await service_states.read(session, settings=settings, deployment=deployment)


@router.get("/{deployment_id}/history", response_model=list[HistoryRead])
async def get_history(
    deployment: DeploymentDep,
    session: SessionDep,
    user: CurrentUser,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    cursor: Annotated[str | None, Query(max_length=1024, description="the X-Next-Cursor of the previous page")] = None,
) -> list[HistoryRead]:
    """Status changes of the deployment, oldest first; when more follow, ``X-Next-Cursor`` holds the cursor.
    Executors are shown without host or PID, except to platform superusers."""
    rows, next_cursor = await DeploymentService.history_page(session, deployment_id=deployment.id, limit=limit, cursor=cursor)
    if next_cursor is not None:
        response.headers["X-Next-Cursor"] = next_cursor
    entries = []
    for h in rows:
        code, params = history_reasons.classify(h.reason)
        if code == "claimed":  # the executor is the actor: shown (or hidden) as the actor is
            params = {"executor": public_actor(params["executor"], superuser=user.is_superuser) or ""}
        entries.append(
            HistoryRead.model_validate(h).model_copy(
                update={
                    "actor": public_actor(h.actor, superuser=user.is_superuser),
                    "reason_code": code,
                    "reason_params": params,
                    "reason": history_reasons.text(code, **params) if code == "claimed" else h.reason,
                }
            )
        )
    return entries


async def _requeue(action: str, deployment: Deployment, user, session, request: Request, settings) -> DeploymentRead:
    await DeploymentService.requeue(session, deployment=deployment, action=action, actor=user.email, settings=settings)
    await session.commit()
    await request.app.state.dispatcher.dispatch(deployment.id)
    await session.refresh(deployment)
    return (await read_models(session, deployments=[deployment]))[0]


@router.post("/{deployment_id}/start", response_model=DeploymentRead, responses=_REQUEUE)
async def start_deployment(
    deployment: OperableDeployment, user: CurrentUser, session: SessionDep, request: Request, settings: SettingsDep
) -> DeploymentRead:
    """Start a stopped deployment again."""
    return await _requeue("start", deployment, user, session, request, settings)


@router.post("/{deployment_id}/redeploy", response_model=DeploymentRead, responses=_REQUEUE)
async def redeploy(
    deployment: OperableDeployment, user: CurrentUser, session: SessionDep, request: Request, settings: SettingsDep
) -> DeploymentRead:
    """Deploy the same snapshot again (running or stopped deployments)."""
    return await _requeue("redeploy", deployment, user, session, request, settings)


@router.post("/{deployment_id}/retry", response_model=DeploymentRead, responses=_REQUEUE)
async def retry(
    deployment: OperableDeployment, user: CurrentUser, session: SessionDep, request: Request, settings: SettingsDep
) -> DeploymentRead:
    """Try a failed or cancelled deployment again, with a fresh attempt budget."""
    return await _requeue("retry", deployment, user, session, request, settings)


@router.post("/{deployment_id}/cancel", response_model=DeploymentRead, responses=TRANSITION)
async def cancel(deployment: OperableDeployment, user: CurrentUser, session: SessionDep) -> DeploymentRead:
    """Cancel a pending or deploying deployment; what it created is removed."""
    await DeploymentService.cancel(session, deployment=deployment, actor=user.email)
    await session.commit()
    await session.refresh(deployment)
    return (await read_models(session, deployments=[deployment]))[0]


@router.post(
    "/{deployment_id}/stop",
    response_model=DeploymentRead,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(TRANSITION, BACKGROUND_ACTION),
)
async def stop(
    deployment: OperableDeployment, user: CurrentUser, session: SessionDep, settings: SettingsDep, request: Request
) -> DeploymentRead:
    """Stop a running deployment's containers (they are kept; ``start`` resumes them). Answers at once with the
    deployment ``stopping``; it becomes ``stopped`` once its containers are down (``DEPLOYMENT_STATUS_CHANGED``),
    or ``failed`` with the engine's message."""
    target = await target_actions.stop(session, settings=settings, deployment=deployment, actor=user.email)
    await session.refresh(deployment)
    answer = (await read_models(session, deployments=[deployment]))[0]
    await end_transaction(session)  # read only: no transaction (on SQLite, no lock) while the executor starts
    await request.app.state.dispatcher.dispatch(deployment.id, target=target)
    return answer


@router.delete(
    "/{deployment_id}",
    response_model=DeploymentRead,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(BACKGROUND_ACTION, conflict=["deployment_busy"]),
)
async def delete(
    deployment: OperableDeployment,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    keep_volumes: Annotated[bool, Query(description="keep the deployment's named volumes")] = False,
) -> DeploymentRead:
    """Tear down the deployment's containers and networks (and volumes), then delete it. Answers at once with
    the deployment ``deleting``; once nothing of it is left on its engine the row goes (``DEPLOYMENT_DELETED``;
    then 404), or it becomes ``failed`` with the engine's message (delete it again)."""
    target = await target_actions.delete(session, settings=settings, deployment=deployment, actor=user.email, keep_volumes=keep_volumes)
    await session.refresh(deployment)
    answer = (await read_models(session, deployments=[deployment]))[0]
    await end_transaction(session)  # read only: no transaction (on SQLite, no lock) while the executor starts
    await request.app.state.dispatcher.dispatch(deployment.id, target=target)
    return answer


@router.patch("/{deployment_id}", response_model=DeploymentRead)
async def update_settings(body: DeploymentUpdate, deployment: OperableDeployment, session: SessionDep) -> DeploymentRead:
    """Change the deployment's settings (``auto_rollback``). Its values and template change through a new
    revision (``POST /deployments/{id}/revisions``)."""
    await DeploymentService.update_settings(session, deployment=deployment, auto_rollback=body.auto_rollback)
    await session.commit()
    await session.refresh(deployment)
    return (await read_models(session, deployments=[deployment]))[0]


RevisionNumber = Annotated[int, Path(ge=1, le=2_147_483_647, description="a revision number")]


@router.get("/{deployment_id}/revisions", response_model=RevisionPage)
async def list_revisions(deployment: DeploymentDep, session: SessionDep, page: PageDep) -> RevisionPage:
    """The deployment's revisions, newest first (secrets shown as ***)."""
    result = await revisions.page(session, deployment=deployment, params=page)
    return RevisionPage.of(result, [revisions.read_model(r) for r in result.items])


@router.post(
    "/{deployment_id}/revisions",
    response_model=RevisionRead,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(_check_rate)],
    responses=_ROLLOUT,
)
async def create_revision(
    body: RevisionCreate,
    deployment: OperableDeployment,
    user: CurrentUser,
    session: SessionDep,
    request: Request,
    settings: SettingsDep,
) -> RevisionRead:
    """Change the deployment: new values merged over the current ones (a secret left out keeps its value)
    and/or the stack's latest template (``stack_version: "latest"``), validated like a creation. The new
    revision is rolled out behind the health gate; 409 while another rollout is in progress."""
    revision = await revisions.create_update(
        session, settings=settings, deployment=deployment, user=user, variables=body.variables, stack_version=body.stack_version
    )
    await session.commit()
    target = await session.get(Target, deployment.target_id)  # loaded by the validation: no query, nor for its route
    await request.app.state.dispatcher.dispatch(deployment.id, target=target)
    return revisions.read_model(revision)


@router.post(
    "/{deployment_id}/rollback",
    response_model=RevisionRead,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(_check_rate)],
    responses=errors(_ROLLOUT, not_found=["revision_not_found"]),
)
async def rollback(
    body: RollbackRequest,
    deployment: OperableDeployment,
    user: CurrentUser,
    session: SessionDep,
    request: Request,
    settings: SettingsDep,
) -> RevisionRead:
    """Roll back to revision ``revision``: a new revision re-applying its record (values, compose, and the
    image digests it recorded), rolled out behind the health gate; 409 while another rollout is in progress."""
    revision = await revisions.create_rollback(session, settings=settings, deployment=deployment, user=user, number=body.revision)
    await session.commit()
    await request.app.state.dispatcher.dispatch(deployment.id)
    return revisions.read_model(revision)


@router.get("/{deployment_id}/revisions/{number}", response_model=RevisionRead, responses=_REVISION)
async def get_revision(deployment: DeploymentDep, number: RevisionNumber, session: SessionDep) -> RevisionRead:
    """One revision of the deployment."""
    return revisions.read_model(await revisions.get(session, deployment_id=deployment.id, number=number))


@router.get("/{deployment_id}/revisions/{a}/diff/{b}", response_model=RevisionDiff, responses=_REVISION)
async def diff_revisions(
    deployment: DeploymentDep,
    a: RevisionNumber,
    b: RevisionNumber,
    session: SessionDep,
    settings: SettingsDep,
) -> RevisionDiff:
    """Unified diff from revision ``a`` to ``b``: the rendered compose, then the values (secrets as ***, a
    changed secret marked ``(changed)``)."""
    first = await revisions.get(session, deployment_id=deployment.id, number=a)
    second = await revisions.get(session, deployment_id=deployment.id, number=b)
    return RevisionDiff(diff=revisions.diff(settings, first, second))
