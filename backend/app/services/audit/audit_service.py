"""Recording and reading the audit trail.

Entries are written by the API's audit middleware (``api/audit_trail.py``) once a route has answered, so that a
refused or failed request is recorded as well as a successful one; a route on a hot path writes its success's
entry in its change's own transaction instead (``audit_trail.write_with_change``: ``POST /deployments``). Reading
is for an organisation's owners and admins (its entries) and for platform superusers (every entry, also
those of no organisation: users, logins).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.exceptions import PermissionDenied
from backend.app.database import utcnow
from backend.app.models import AuditEntry, Role, User
from backend.app.services import pagination
from backend.app.services.audit import summary as summary_module
from backend.app.services.identity import organization_service

logger = logging.getLogger(__name__)

AUDIT_BY_TIME = pagination.Ordering("audit", (AuditEntry.at, AuditEntry.id), descending=True)
ACTOR_KINDS = ("user", "token", "hook", "anonymous")


def outcome_of(status_code: int) -> str:
    if status_code < 400:
        return "success"
    if status_code in (401, 403):
        return "denied"
    return "failed"


@dataclass(frozen=True)
class Actor:
    kind: str
    id: str | None = None
    name: str | None = None


def record(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str | None,
    organization_id: str | None,
    summary: dict[str, Any],
    client: str | None,
    status_code: int,
) -> AuditEntry:
    """Add one entry to ``session`` (the caller commits)."""
    clean = summary_module.clean
    entry = AuditEntry(
        actor_kind=actor.kind,
        actor_id=actor.id,
        actor_name=clean(actor.name or "")[:320] or None,
        organization_id=organization_id,
        action=action[:64],
        object_type=object_type[:32],
        object_id=clean(object_id or "")[:64] or None,
        summary=summary,
        client=clean(client or "")[:64] or None,
        outcome=outcome_of(status_code),
        status_code=status_code,
    )
    session.add(entry)
    return entry


@dataclass(frozen=True)
class AuditFilters:
    organization_id: str | None = None
    actor: str | None = None  # an actor's id or name (exact)
    action: str | None = None  # exact, or a prefix ending in '.' ("deployment.")
    object_type: str | None = None
    object_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def _admin_organizations(session: AsyncSession, *, user: User) -> list[str]:
    return await organization_service.admin_organization_ids(session, user=user)


async def page(session: AsyncSession, *, user: User, filters: AuditFilters, params: pagination.PageParams) -> pagination.Page:
    """A page of entries, newest first, that ``user`` may read."""
    query = select(AuditEntry)
    partitions = None
    if filters.organization_id is not None:
        await organization_service.require_role(session, user=user, organization_id=filters.organization_id, minimum=Role.ADMIN)
        query = query.where(AuditEntry.organization_id == filters.organization_id)
    elif not organization_service.platform_wide(user):
        orgs = await _admin_organizations(session, user=user)
        if not orgs:
            raise PermissionDenied(
                "the audit trail is for organisation owners and admins; you are neither in any organisation",
                code="role_required",
                params={"minimum": str(Role.ADMIN)},
            )
        partitions = [[AuditEntry.organization_id == org] for org in orgs]
    if filters.actor:
        query = query.where(or_(AuditEntry.actor_id == filters.actor, AuditEntry.actor_name == filters.actor))
    if filters.action:
        if filters.action.endswith("."):
            query = query.where(AuditEntry.action.startswith(filters.action, autoescape=True))
        else:
            query = query.where(AuditEntry.action == filters.action)
    if filters.object_type:
        query = query.where(AuditEntry.object_type == filters.object_type)
    if filters.object_id:
        query = query.where(AuditEntry.object_id == filters.object_id)
    if filters.since is not None:
        query = query.where(AuditEntry.at >= filters.since)
    if filters.until is not None:
        query = query.where(AuditEntry.at < filters.until)
    return await pagination.paginate(session, query=query, ordering=AUDIT_BY_TIME, params=params, partitions=partitions)


async def prune(session: AsyncSession, *, settings: Settings, batch: int = 1000) -> int:
    """Delete up to ``batch`` entries older than ``AUDIT_RETENTION_DAYS`` (0: keep all); the caller commits
    and calls again while it returns ``batch``."""
    if settings.AUDIT_RETENTION_DAYS <= 0:
        return 0
    horizon = utcnow() - timedelta(days=settings.AUDIT_RETENTION_DAYS)
    ids = list((await session.execute(select(AuditEntry.id).where(AuditEntry.at < horizon).order_by(AuditEntry.at).limit(batch))).scalars())
    if ids:
        await session.execute(delete(AuditEntry).where(AuditEntry.id.in_(ids)))
    return len(ids)
