from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from backend.app.api.deps import (
    CurrentUser,
    EntityId,
    OrgAdmin,
    OrgOwner,
    OrgViewer,
    PageDep,
    SessionDep,
    SettingsDep,
    Superuser,
    search_query,
)
from backend.app.api.responses import BACKGROUND_ACTION, errors
from backend.app.core.exceptions import Conflict, ServiceUnavailable
from backend.app.models import DeploymentStatus, Role
from backend.app.runtime import target_actions
from backend.app.schemas.organizations import (
    MemberCreate,
    MemberPage,
    MemberRead,
    MemberUpdate,
    OrganizationCreate,
    OrganizationPage,
    OrganizationRead,
    OrganizationUpdate,
)
from backend.app.services import provisioning
from backend.app.services.identity import organization_service

router = APIRouter(prefix="/organizations", tags=["organizations"])

#: How long a forced delete waits for its deployments' teardowns before answering 503 teardown_in_progress.
ORGANIZATION_TEARDOWN_SECONDS = 180.0

_NAME_TAKEN = errors(conflict=["organization_exists"])
_MEMBER_CHANGE = errors(not_found=["member_not_found"], conflict=["last_owner"], forbidden=["owner_required"])


def _read(org, role) -> OrganizationRead:
    return OrganizationRead(id=org.id, name=org.name, description=org.description, created_at=org.created_at, role=role)


def _member(membership, user) -> MemberRead:
    return MemberRead(user_id=user.id, email=user.email, full_name=user.full_name, role=membership.role, created_at=membership.created_at)


@router.get("", response_model=OrganizationPage)
async def list_organizations(user: CurrentUser, session: SessionDep, page: PageDep) -> OrganizationPage:
    """Organisations you belong to (all of them for a superuser), with your role."""
    result = await organization_service.list_for_user(session, user=user, page=page)
    return OrganizationPage.of(result, [_read(org, role) for org, role in result.items])


@router.post("", response_model=OrganizationRead, status_code=status.HTTP_201_CREATED, responses=_NAME_TAKEN)
async def create_organization(body: OrganizationCreate, admin: Superuser, session: SessionDep, settings: SettingsDep) -> OrganizationRead:
    """Create an organisation (superusers only); the creator becomes its owner."""
    org = await organization_service.create(session, data=body, creator=admin)
    await provisioning.provision_organization(session, settings=settings, organization_id=org.id)
    await session.commit()
    return _read(org, "owner")


@router.get("/{organization_id}", response_model=OrganizationRead)
async def get_organization(access: OrgViewer) -> OrganizationRead:
    """One organisation you belong to."""
    return _read(*access)


@router.patch("/{organization_id}", response_model=OrganizationRead, responses=errors(_NAME_TAKEN, invalid=["not_nullable"]))
async def update_organization(body: OrganizationUpdate, access: OrgAdmin, session: SessionDep) -> OrganizationRead:
    """Rename or describe an organisation (admin or owner)."""
    org, role = access
    await organization_service.update_organization(session, org=org, data=body)
    await session.commit()
    return _read(org, role)


@router.delete(
    "/{organization_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(
        BACKGROUND_ACTION,
        conflict=["organization_has_deployments", "deployment_busy", "teardown_failed"],
        unavailable=["teardown_in_progress"],
    ),
)
async def delete_organization(
    access: OrgOwner,
    _admin: Superuser,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    request: Request,
    force: Annotated[
        bool,
        Query(description="tear down every deployment of the organisation first (containers, networks, volumes), then delete it"),
    ] = False,
) -> None:
    """Delete an organisation and everything it owns (superusers only). While it has deployments this is a 409
    naming them, unless ``force=true``: each is then deleted through its normal path (``deleting``, torn down in
    the background by an executor, its row gone once nothing of it is left; one being deployed is a 409
    ``deployment_busy``: cancel it, then try again), the request waits for them (up to
    ``ORGANIZATION_TEARDOWN_SECONDS``), and the organisation's rows go only once none is left. A teardown the engine
    refused (or never answered) leaves its deployment ``failed`` and the organisation: 409 ``teardown_failed``
    naming them. A teardown that takes longer goes on (an executor that dies is replaced by the reaper): 503 ``teardown_in_progress``, and the
    same request later deletes the organisation."""
    org, _ = access
    deployments = await organization_service.deployments_of(session, organization_id=org.id)
    if deployments and not force:
        raise organization_service.has_deployments(org, deployments)
    busy = [d.name for d in deployments if d.status in (DeploymentStatus.DEPLOYING, DeploymentStatus.STOPPING)]
    if busy:
        raise Conflict(
            f"deployment(s) being deployed or stopped: {', '.join(busy[:20])}; cancel them or let them settle, then delete the organization again",
            code="deployment_busy",
            params={"deployments": busy[:20]},
        )
    dispatcher = request.app.state.dispatcher
    for deployment in deployments:
        # the normal path (to a worker of a placed target): containers, networks and volumes removed, the project
        # directory too, DEPLOYMENT_DELETED sent; each committed on its own
        target = await target_actions.delete(session, settings=settings, deployment=deployment, actor=user.email, keep_volumes=False)
        await dispatcher.dispatch(deployment.id, target=target)
    if deployments:
        left = await target_actions.wait_gone(session, deployment_ids=[d.id for d in deployments], timeout=ORGANIZATION_TEARDOWN_SECONDS)
        failed = [row for row in left if row.status is not DeploymentStatus.DELETING]
        if failed:
            names = [row.name for row in failed[:20]]
            raise Conflict(
                f"deployment(s) {', '.join(names)} could not be torn down ({failed[0].error_message}); the organization and "
                "they are kept: delete it again once their engine answers",
                code="teardown_failed",
                params={"deployments": names},
            )
        if left:
            raise ServiceUnavailable(
                f"{len(left)} deployment(s) of the organization are still being torn down; they go on in the background: "
                "ask again in a moment to delete the organization",
                code="teardown_in_progress",
                params={"count": len(left)},
            )
    await organization_service.delete_organization(session, org=org)
    await session.commit()


@router.get("/{organization_id}/members", response_model=MemberPage)
async def list_members(
    access: OrgViewer,
    session: SessionDep,
    page: PageDep,
    q: search_query("the email or name contains this (any case)") = None,
    role: Annotated[Role | None, Query(description="only members with this role")] = None,
) -> MemberPage:
    """Members of the organisation and their roles."""
    org, _ = access
    result = await organization_service.list_members(session, organization_id=org.id, page=page, q=q, role=role)
    return MemberPage.of(result, [_member(m, u) for m, u in result.items])


@router.post(
    "/{organization_id}/members",
    response_model=MemberRead,
    status_code=status.HTTP_201_CREATED,
    responses=errors(not_found=["user_not_found"], conflict=["already_member"], forbidden=["owner_required"]),
)
async def add_member(body: MemberCreate, access: OrgAdmin, session: SessionDep) -> MemberRead:
    """Add an existing user (by ``user_id`` or ``email``) with a role (admin or owner)."""
    org, role = access
    membership, user = await organization_service.add_member(session, organization_id=org.id, data=body, actor_role=role)
    await session.commit()
    return _member(membership, user)


@router.patch("/{organization_id}/members/{user_id}", response_model=MemberRead, responses=_MEMBER_CHANGE)
async def change_member_role(user_id: EntityId, body: MemberUpdate, access: OrgAdmin, session: SessionDep) -> MemberRead:
    """Change a member's role (admin or owner; only owners grant ownership)."""
    org, role = access
    membership = await organization_service.change_role(session, organization_id=org.id, user_id=user_id, role=body.role, actor_role=role)
    await session.refresh(membership, ["user"])
    await session.commit()
    return _member(membership, membership.user)


@router.delete("/{organization_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_MEMBER_CHANGE)
async def remove_member(user_id: EntityId, access: OrgAdmin, session: SessionDep) -> None:
    """Remove a member (admin or owner; the last owner cannot be removed)."""
    org, role = access
    await organization_service.remove_member(session, organization_id=org.id, user_id=user_id, actor_role=role)
    await session.commit()
