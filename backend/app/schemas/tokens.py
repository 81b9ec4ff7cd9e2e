from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from backend.app.schemas.common import PageFields, RequestModel, ResponseModel


class ApiTokenCreate(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    expires_in_days: Annotated[int | None, Field(ge=1, le=3650)] = None


class ApiTokenRead(ResponseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreated(ApiTokenRead):
    token: str = Field(description="The token itself. Shown only once: store it now.")


class ApiTokenPage(PageFields):
    items: list[ApiTokenRead]
