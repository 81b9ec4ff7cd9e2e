from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from backend.app.schemas.common import PageFields, RequestModel, ResponseModel

#: ``read``: GET only; ``deploy``: read, and create and operate deployments (of ``stack_ids``); ``admin``: the
#: owner's rights. Always an intersection with the owner's role (docs/api.md, "Personal API tokens").
TokenScope = Literal["read", "deploy", "admin"]


class ApiTokenCreate(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    expires_in_days: Annotated[int | None, Field(ge=1, le=3650)] = None
    scopes: Annotated[
        list[TokenScope], Field(min_length=1, max_length=3, description="what the token may do; default: its owner's rights (admin)")
    ] = Field(default_factory=lambda: ["admin"])
    organization_id: Annotated[
        str | None, Field(max_length=64, description="the one organisation the token may reach (one you belong to); default: all yours")
    ] = None
    stack_ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
        Field(max_length=100, description="with the deploy scope and an organization_id: the stacks it may deploy; default: all"),
    ] = None


class ApiTokenRead(ResponseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    scopes: list[TokenScope]
    organization_id: str | None
    stack_ids: list[str] | None


class ApiTokenCreated(ApiTokenRead):
    token: str = Field(description="The token itself. Shown only once: store it now.")


class ApiTokenPage(PageFields):
    items: list[ApiTokenRead]
