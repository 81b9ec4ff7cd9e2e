from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, EmailStr, Field, field_validator, model_validator

from backend.app.models import Role
from backend.app.schemas.common import PageFields, RequestModel, ResponseModel, not_null

OrgName = Annotated[str, Field(min_length=1, max_length=100)]


class OrganizationCreate(RequestModel):
    name: OrgName
    description: Annotated[str | None, Field(max_length=500)] = None


class OrganizationUpdate(RequestModel):
    name: OrgName | None = not_null()
    description: Annotated[str | None, Field(max_length=500)] = None


class OrganizationRead(ResponseModel):
    id: str
    name: str
    description: str | None
    created_at: datetime
    role: Role | None = None


class OrganizationPage(PageFields):
    items: list[OrganizationRead]


class MemberCreate(RequestModel):
    """A user to add, named by exactly one of ``user_id`` and ``email`` (the ``oneOf`` of the schema)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["user_id"], "properties": {"user_id": {"type": "string"}, "email": {"type": "null"}}},
                {"required": ["email"], "properties": {"email": {"type": "string"}, "user_id": {"type": "null"}}},
            ]
        }
    )

    user_id: Annotated[str | None, Field(max_length=64, description="the user's id (or give email)")] = None
    email: EmailStr | None = Field(default=None, description="the user's email (or give user_id)")
    role: Role

    @field_validator("email")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one_of(self) -> MemberCreate:
        if (self.user_id is None) == (self.email is None):
            raise ValueError("give exactly one of user_id or email")
        return self


class MemberUpdate(RequestModel):
    role: Role


class MemberRead(ResponseModel):
    user_id: str
    email: str
    full_name: str | None
    role: Role
    created_at: datetime


class MemberPage(PageFields):
    items: list[MemberRead]
