from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import EmailStr, Field, StringConstraints, field_validator

from backend.app.models import Role
from backend.app.schemas.common import PageFields, RequestModel, ResponseModel, not_null

# Taken verbatim: RequestModel strips strings, but login compares the form value unstripped, so a
# stripped password would lock out anyone whose password starts or ends with a space.
Password = Annotated[str, StringConstraints(strip_whitespace=False, min_length=8, max_length=128), Field(description="8 to 128 characters")]


def _normalise_email(value: str) -> str:
    return value.strip().lower()


class SetupRequest(RequestModel):
    email: EmailStr
    password: Password
    organization_name: Annotated[str, Field(min_length=1, max_length=100)]
    full_name: Annotated[str | None, Field(max_length=200)] = None

    _email = field_validator("email")(_normalise_email)


class SetupStatus(ResponseModel):
    needed: bool = Field(description="true until the first user exists: the UI then shows its setup page")


class TokenPair(ResponseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


class RefreshRequest(RequestModel):
    refresh_token: Annotated[str, Field(min_length=1)]


class LogoutRequest(RequestModel):
    refresh_token: str | None = None


class PasswordChange(RequestModel):
    current_password: Annotated[str, StringConstraints(strip_whitespace=False, max_length=128)]
    new_password: Password


class MembershipRead(ResponseModel):
    organization_id: str
    organization_name: str
    role: Role


class UserRead(ResponseModel):
    id: str
    email: str
    full_name: str | None
    is_active: bool
    is_superuser: bool
    created_at: datetime


class MeRead(UserRead):
    memberships: list[MembershipRead]
    default_organization_id: str | None


class UserCreate(RequestModel):
    email: EmailStr
    password: Password
    full_name: Annotated[str | None, Field(max_length=200)] = None
    is_superuser: bool = False

    _email = field_validator("email")(_normalise_email)


class UserUpdate(RequestModel):
    full_name: Annotated[str | None, Field(max_length=200)] = None
    password: Password | None = not_null()
    is_active: bool | None = not_null()
    is_superuser: bool | None = not_null()


class UserPage(PageFields):
    items: list[UserRead]
