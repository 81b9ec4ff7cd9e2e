from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from backend.app.schemas.common import PageFields, ResponseModel


class AuditActor(ResponseModel):
    kind: Literal["user", "token", "hook", "anonymous"]
    id: str | None
    name: str | None = Field(description="the user's email, the token's name and owner, the hook's name")


class AuditEntryRead(ResponseModel):
    id: str
    at: datetime
    actor: AuditActor
    organization_id: str | None
    action: str = Field(description="e.g. deployment.stop, target.update, member.role_change, hook.call")
    object_type: str
    object_id: str | None
    summary: dict[str, Any] = Field(description="the fields the request set; secrets only as 'changed'")
    client: str | None = Field(description="the client's address")
    outcome: Literal["success", "denied", "failed"]
    status_code: int


class AuditPage(PageFields):
    items: list[AuditEntryRead]
