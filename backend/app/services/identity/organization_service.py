"""Organisations, memberships and role checks (RBAC)."""

from __future__ import annotations

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.core.events import platform_changed, queue_event, resource_changed
from backend.app.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationFailed
from backend.app.models import Deployment, Membership, Organization, Role, User
from backend.app.schemas.organizations import MemberCreate, OrganizationCreate, OrganizationUpdate
from backend.app.services import pagination


def token_organization(user: User) -> str | None:
    """The one organisation the request's API token may reach (``api/deps.authenticate`` sets it), or ``None``."""
    return getattr(user, "token_organization_id", None)


def platform_wide(user: User) -> bool:
    """A superuser whose credential is not limited to one organisation (an API token's ``organization_id``)."""
    return bool(user.is_superuser) and token_organization(user) is None


async def admin_organization_ids(session: AsyncSession, *, user: User) -> list[str]:
    """The organisations where ``user`` is an admin or owner (as a member; an API token's limit applies)."""
    if (limit := token_organization(user)) is not None:
        role = await role_in(session, user=user, organization_id=limit)
        return [limit] if role is not None and role.at_least(Role.ADMIN) else []
    rows = await session.execute(
        select(Membership.organization_id).where(Membership.user_id == user.id, Membership.role.in_([Role.ADMIN, Role.OWNER]))
    )
    return list(rows.scalars())


async def role_in(session: AsyncSession, *, user: User, organization_id: str) -> Role | None:
    """The user's role in the organisation, ``OWNER`` for superusers, ``None`` for outsiders (and for every
    organisation but its own through an organisation-limited API token)."""
    limit = token_organization(user)
    if limit is not None and organization_id != limit:
        return None
    if user.is_superuser:
        exists = await session.get(Organization, organization_id)
        return Role.OWNER if exists is not None else None
    role = (
        await session.execute(select(Membership.role).where(Membership.user_id == user.id, Membership.organization_id == organization_id))
    ).scalar_one_or_none()
    return Role(role) if role is not None else None


async def require_role(session: AsyncSession, *, user: User, organization_id: str, minimum: Role) -> Role:
    """Check ``user`` holds at least ``minimum`` in the organisation.

    An outsider gets 404 (they must not learn the organisation exists); a member with a weaker role 403.
    """
    role = await role_in(session, user=user, organization_id=organization_id)
    if role is None:
        raise NotFound("organization not found", code="organization_not_found")
    return _at_least(role, minimum)


def _at_least(role: Role, minimum: Role) -> Role:
    if not role.at_least(minimum):
        raise PermissionDenied(
            f"this needs the {minimum} role or higher in the organization; you are {role}",
            code="role_required",
            params={"minimum": str(minimum), "role": str(role)},
        )
    return role


async def get_owned(session: AsyncSession, *, user: User, model, entity_id: str, minimum: Role, noun: str, **options):
    """Load a row an organisation owns (stack, target, deployment) if ``user`` holds ``minimum`` there.

    Missing and foreign rows are the same 404 (an outsider must not learn the id exists); a member with
    a weaker role gets 403.
    """
    entity = await session.get(model, entity_id, **options)
    role = await role_in(session, user=user, organization_id=entity.organization_id) if entity is not None else None
    if entity is None or role is None:
        raise NotFound(f"{noun} not found", code=f"{noun}_not_found")
    if not role.at_least(minimum):
        raise PermissionDenied(
            f"this needs the {minimum} role or higher in the {noun}'s organization; you are {role}",
            code="role_required",
            params={"minimum": str(minimum), "role": str(role)},
        )
    return entity


async def readable_partitions(session: AsyncSession, *, user: User, org_column, organization_id: str | None = None) -> list[list] | None:
    """Restrict a listing to the organisations ``user`` may read, as pagination partitions.

    One partition (``org_column == id``) per readable organisation, so each is one ordered index range
    (see :mod:`backend.app.services.pagination`); ``None`` (no restriction) for a superuser. Filtering on an
    organisation the user does not belong to answers 404, like reading it would.
    """
    ids = await readable_organization_ids(session, user=user, organization_id=organization_id)
    return None if ids is None else [[org_column == org_id] for org_id in ids]


async def readable_organization_ids(session: AsyncSession, *, user: User, organization_id: str | None = None) -> list[str] | None:
    """The organisations ``user`` may read (``None``: all of them, a superuser), or just ``organization_id``
    after checking it (404 for an outsider)."""
    if organization_id is not None:
        await require_role(session, user=user, organization_id=organization_id, minimum=Role.VIEWER)
        return [organization_id]
    if (limit := token_organization(user)) is not None:
        return [limit] if await role_in(session, user=user, organization_id=limit) is not None else []
    if user.is_superuser:
        return None
    ids = await session.execute(select(Membership.organization_id).where(Membership.user_id == user.id))
    return list(ids.scalars())


async def default_organization_id(session: AsyncSession, *, user: User) -> str | None:
    if (limit := token_organization(user)) is not None:
        return limit
    return (
        await session.execute(
            select(Membership.organization_id).where(Membership.user_id == user.id).order_by(Membership.created_at, Membership.id).limit(1)
        )
    ).scalar_one_or_none()


#: a user's first membership (the default organisation) and its role, built once (parameter ``user_id``): every
#: creation without an ``organization_id`` reads it
_DEFAULT_MEMBERSHIP = (
    select(Membership.organization_id, Membership.role)
    .where(Membership.user_id == bindparam("user_id"))
    .order_by(Membership.created_at, Membership.id)
    .limit(1)
)


async def resolve_organization(session: AsyncSession, *, user: User, organization_id: str | None, minimum: Role) -> str:
    """The organisation a create payload targets: the given one, else the caller's default."""
    if organization_id is None and token_organization(user) is None:
        # the default organisation and the caller's role there in one query: a membership row names both (a
        # superuser owns every organisation, and the row's foreign key says this one exists)
        row = (await session.execute(_DEFAULT_MEMBERSHIP, {"user_id": user.id})).first()
        if row is None:
            raise ValidationFailed(
                "you belong to no organization: pass organization_id or ask an admin to add you to one",
                code="no_organization",
            )
        _at_least(Role.OWNER if user.is_superuser else Role(row.role), minimum)
        return row.organization_id
    if organization_id is None:
        organization_id = await default_organization_id(session, user=user)
        if organization_id is None:
            raise ValidationFailed(
                "you belong to no organization: pass organization_id or ask an admin to add you to one",
                code="no_organization",
            )
    await require_role(session, user=user, organization_id=organization_id, minimum=minimum)
    return organization_id


ORGANIZATIONS_BY_NAME = pagination.Ordering("organizations", (Organization.name, Organization.id))
MEMBERS_BY_AGE = pagination.Ordering("members", (Membership.created_at, Membership.id))


async def list_for_user(session: AsyncSession, *, user: User, page: pagination.PageParams) -> pagination.Page:
    """Organisations ``user`` belongs to with their role, by name; every one (as owner) for a superuser."""
    limit = token_organization(user)
    if user.is_superuser:
        query = select(Organization) if limit is None else select(Organization).where(Organization.id == limit)
        result = await pagination.paginate(session, query=query, ordering=ORGANIZATIONS_BY_NAME, params=page)
        result.items = [(org, Role.OWNER) for org in result.items]
        return result
    base = select(Organization, Membership.role).join(Membership).where(Membership.user_id == user.id)
    if limit is not None:
        base = base.where(Organization.id == limit)
    result = await pagination.paginate(
        session, query=base, ordering=ORGANIZATIONS_BY_NAME, params=page, scalars=False, key_of=lambda row: (row[0].name, row[0].id)
    )
    result.items = [(org, Role(role)) for org, role in result.items]
    return result


async def create(session: AsyncSession, *, data: OrganizationCreate, creator: User) -> Organization:
    org = Organization(name=data.name, description=data.description)
    session.add(org)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"an organization named {data.name!r} already exists; pick another name", code="organization_exists", params={"name": data.name}
        ) from exc
    session.add(Membership(user_id=creator.id, organization_id=org.id, role=Role.OWNER))
    await session.flush()
    queue_event(session, platform_changed("organization", "created", org.id, org.name))
    return org


async def update_organization(session: AsyncSession, *, org: Organization, data: OrganizationUpdate) -> Organization:
    for field, value in data.model_dump(exclude_unset=True).items():
        if field == "name" and value is None:
            raise ValidationFailed("name cannot be null", code="not_nullable", params={"field": "name"})
        setattr(org, field, value)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"an organization named {data.name!r} already exists; pick another name", code="organization_exists", params={"name": data.name}
        ) from exc
    queue_event(session, platform_changed("organization", "updated", org.id, org.name))
    return org


#: How many deployment names a refused organisation deletion quotes.
NAMED_DEPLOYMENTS = 20


async def deployments_of(session: AsyncSession, *, organization_id: str) -> list[Deployment]:
    """The organisation's deployments, oldest first: what its deletion must tear down before any row goes."""
    query = select(Deployment).where(Deployment.organization_id == organization_id).order_by(Deployment.created_at, Deployment.id)
    return list((await session.execute(query)).scalars())


def has_deployments(organization: Organization, deployments: list[Deployment]) -> Conflict:
    """The refusal of deleting ``organization`` while it has ``deployments`` (their rows would go, and their
    containers keep running with nothing left to stop them)."""
    names = [d.name for d in deployments[:NAMED_DEPLOYMENTS]]
    more = f" and {len(deployments) - len(names)} more" if len(deployments) > len(names) else ""
    return Conflict(
        f"organization {organization.name!r} still has {len(deployments)} deployment(s): {', '.join(names)}{more}; delete them "
        "first, or pass force=true to tear them all down (containers, networks, volumes) and then delete the organization",
        code="organization_has_deployments",
        params={"count": len(deployments), "deployments": names},
    )


async def delete_organization(session: AsyncSession, *, org: Organization) -> None:
    """Delete ``org`` and what it owns, only when it has no deployment left.

    The organisation's row is locked first (``FOR UPDATE``), so a deployment created meanwhile is either seen
    here (409) or waits for this transaction and then fails on its missing organisation: none is cascaded away
    with its containers still running.
    """
    locked = await session.get(Organization, org.id, with_for_update=True, populate_existing=True)
    if locked is None:
        raise NotFound("organization not found", code="organization_not_found")
    remaining = await deployments_of(session, organization_id=org.id)
    if remaining:
        raise has_deployments(locked, remaining)
    queue_event(session, platform_changed("organization", "deleted", org.id, org.name))
    await session.delete(locked)
    await session.flush()


async def list_members(
    session: AsyncSession,
    *,
    organization_id: str,
    page: pagination.PageParams,
    q: str | None = None,
    role: Role | None = None,
) -> pagination.Page:
    """``(membership, user)`` pairs of the organisation, oldest membership first; ``q``: the email or name
    contains it; ``role``: only that role."""
    base = select(Membership, User).join(User).where(Membership.organization_id == organization_id)
    if q:
        base = base.where(pagination.contains(User.email, q) | pagination.contains(User.full_name, q))
    if role is not None:
        base = base.where(Membership.role == role)
    return await pagination.paginate(
        session, query=base, ordering=MEMBERS_BY_AGE, params=page, scalars=False, key_of=lambda row: (row[0].created_at, row[0].id)
    )


def _check_can_grant(actor_role: Role, target_role: Role) -> None:
    """Admins manage members up to admin; only owners grant or change ownership."""
    if target_role is Role.OWNER and actor_role is not Role.OWNER:
        raise PermissionDenied("only an owner can make someone an owner", code="owner_required")


async def add_member(session: AsyncSession, *, organization_id: str, data: MemberCreate, actor_role: Role) -> tuple[Membership, User]:
    _check_can_grant(actor_role, data.role)
    if data.user_id is not None:
        user = await session.get(User, data.user_id)
        missing = f"no user with id {data.user_id}"
    else:
        user = (await session.execute(select(User).where(User.email == data.email))).scalar_one_or_none()
        missing = f"no user with email {data.email}; a superuser must create the user first"
    if user is None:
        raise NotFound(missing, code="user_not_found", params={"email": data.email, "id": data.user_id})
    email = user.email  # read now: a failed flush expires ``user`` and it cannot be loaded again
    membership = Membership(user_id=user.id, organization_id=organization_id, role=data.role)
    session.add(membership)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(
            f"{email} is already a member; change their role with PATCH instead", code="already_member", params={"email": email}
        ) from exc
    queue_event(session, resource_changed(organization_id, "member", "created", user.id, email))
    return membership, user


async def _get_membership(session: AsyncSession, organization_id: str, user_id: str) -> Membership:
    membership = (
        await session.execute(select(Membership).where(Membership.organization_id == organization_id, Membership.user_id == user_id))
    ).scalar_one_or_none()
    if membership is None:
        raise NotFound("this user is not a member of the organization", code="member_not_found")
    return membership


async def _ensure_an_owner_remains(session: AsyncSession, organization_id: str, leaving: Membership) -> None:
    if leaving.role is not Role.OWNER:
        return
    owners = (
        await session.execute(
            select(func.count()).select_from(Membership).where(Membership.organization_id == organization_id, Membership.role == Role.OWNER)
        )
    ).scalar_one()
    if owners <= 1:
        raise Conflict("an organization must keep at least one owner; make someone else owner first", code="last_owner")


async def change_role(session: AsyncSession, *, organization_id: str, user_id: str, role: Role, actor_role: Role) -> Membership:
    membership = await _get_membership(session, organization_id, user_id)
    _check_can_grant(actor_role, role)
    _check_can_grant(actor_role, membership.role)
    if role is not Role.OWNER:
        await _ensure_an_owner_remains(session, organization_id, membership)
    membership.role = role
    await session.flush()
    queue_event(session, resource_changed(organization_id, "member", "updated", user_id, None))
    return membership


async def remove_member(session: AsyncSession, *, organization_id: str, user_id: str, actor_role: Role) -> None:
    membership = await _get_membership(session, organization_id, user_id)
    _check_can_grant(actor_role, membership.role)
    await _ensure_an_owner_remains(session, organization_id, membership)
    await session.delete(membership)
    await session.flush()
    queue_event(session, resource_changed(organization_id, "member", "deleted", user_id, None))
