from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

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
)
from backend.app.models import Role
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


def _read(org, role) -> OrganizationRead:
    return OrganizationRead(id=org.id, name=org.name, description=org.description, created_at=org.created_at, role=role)


def _member(membership, user) -> MemberRead:
    return MemberRead(user_id=user.id, email=user.email, full_name=user.full_name, role=membership.role, created_at=membership.created_at)


@router.get("", response_model=OrganizationPage)
async def list_organizations(user: CurrentUser, session: SessionDep, page: PageDep) -> OrganizationPage:
    """Organisations you belong to (all of them for a superuser), with your role."""
    result = await organization_service.list_for_user(session, user=user, page=page)
    return OrganizationPage.of(result, [_read(org, role) for org, role in result.items])


@router.post("", response_model=OrganizationRead, status_code=status.HTTP_201_CREATED)
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


@router.patch("/{organization_id}", response_model=OrganizationRead)
async def update_organization(body: OrganizationUpdate, access: OrgAdmin, session: SessionDep) -> OrganizationRead:
    """Rename or describe an organisation (admin or owner)."""
    org, role = access
    await organization_service.update_organization(session, org=org, data=body)
    await session.commit()
    return _read(org, role)


@router.delete("/{organization_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_organization(access: OrgOwner, _admin: Superuser, session: SessionDep) -> None:
    """Delete an organisation and everything it owns (superusers only)."""
    org, _ = access
    await session.delete(org)
    await session.commit()


@router.get("/{organization_id}/members", response_model=MemberPage)
async def list_members(
    access: OrgViewer,
    session: SessionDep,
    page: PageDep,
    q: Annotated[str | None, Query(max_length=100, description="the email or name contains this (any case)")] = None,
    role: Annotated[Role | None, Query(description="only members with this role")] = None,
) -> MemberPage:
    """Members of the organisation and their roles."""
    org, _ = access
    result = await organization_service.list_members(session, organization_id=org.id, page=page, q=q, role=role)
    return MemberPage.of(result, [_member(m, u) for m, u in result.items])


@router.post("/{organization_id}/members", response_model=MemberRead, status_code=status.HTTP_201_CREATED)
async def add_member(body: MemberCreate, access: OrgAdmin, session: SessionDep) -> MemberRead:
    """Add an existing user (by ``user_id`` or ``email``) with a role (admin or owner)."""
    org, role = access
    membership, user = await organization_service.add_member(session, organization_id=org.id, data=body, actor_role=role)
    await session.commit()
    return _member(membership, user)


@router.patch("/{organization_id}/members/{user_id}", response_model=MemberRead)
async def change_member_role(user_id: EntityId, body: MemberUpdate, access: OrgAdmin, session: SessionDep) -> MemberRead:
    """Change a member's role (admin or owner; only owners grant ownership)."""
    org, role = access
    membership = await organization_service.change_role(session, organization_id=org.id, user_id=user_id, role=body.role, actor_role=role)
    await session.refresh(membership, ["user"])
    await session.commit()
    return _member(membership, membership.user)


@router.delete("/{organization_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(user_id: EntityId, access: OrgAdmin, session: SessionDep) -> None:
    """Remove a member (admin or owner; the last owner cannot be removed)."""
    org, role = access
    await organization_service.remove_member(session, organization_id=org.id, user_id=user_id, actor_role=role)
    await session.commit()
