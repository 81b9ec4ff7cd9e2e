from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from backend.app.api.deps import CurrentUser, EntityQueryId, PageDep, SessionDep
from backend.app.api.responses import FILTERED_BY_ORGANIZATION, errors
from backend.app.models import AuditEntry
from backend.app.schemas.audit import AuditActor, AuditEntryRead, AuditPage
from backend.app.services.audit import audit_service

router = APIRouter(prefix="/audit", tags=["audit"])


def read_model(entry: AuditEntry) -> AuditEntryRead:
    return AuditEntryRead(
        id=entry.id,
        at=entry.at,
        actor=AuditActor(kind=entry.actor_kind, id=entry.actor_id, name=entry.actor_name),
        organization_id=entry.organization_id,
        action=entry.action,
        object_type=entry.object_type,
        object_id=entry.object_id,
        summary=entry.summary or {},
        client=entry.client,
        outcome=entry.outcome,
        status_code=entry.status_code,
    )


@router.get("", response_model=AuditPage, responses=errors(FILTERED_BY_ORGANIZATION, forbidden=["role_required"]))
async def list_audit(
    user: CurrentUser,
    session: SessionDep,
    page: PageDep,
    organization_id: EntityQueryId | None = None,
    actor: Annotated[str | None, Query(max_length=320, description="an actor's id or name (email, token or hook name)")] = None,
    action: Annotated[
        str | None,
        Query(max_length=64, pattern=r"^[a-z_.]+$", description="an action (deployment.stop), or a prefix ending in '.' (deployment.)"),
    ] = None,
    object_type: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_]+$")] = None,
    object_id: EntityQueryId | None = None,
    since: Annotated[datetime | None, Query(description="entries at or after this time (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="entries before this time (ISO 8601)")] = None,
) -> AuditPage:
    """The audit trail, newest first: an organisation's entries for its owners and admins, every entry
    (also those of no organisation: users, logins, tokens) for platform superusers."""
    since, until = (t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (since, until))
    filters = audit_service.AuditFilters(
        organization_id=organization_id, actor=actor, action=action, object_type=object_type, object_id=object_id, since=since, until=until
    )
    result = await audit_service.page(session, user=user, filters=filters, params=page)
    return AuditPage.of(result, [read_model(e) for e in result.items])
