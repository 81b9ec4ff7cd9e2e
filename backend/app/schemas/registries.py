"""Registries: an organisation's credentials for a container registry (server, username, password or token).

The password is write-only: :class:`RegistryRead` says ``has_password``, never the value. Validation messages
never quote a submitted password.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from backend.app.core.image_reference import normalise_server
from backend.app.schemas.common import PageFields, RequestModel, ResponseModel, not_null


def _server(value: str) -> str:
    try:
        return normalise_server(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_server", str(exc)) from None


RegistryName = Annotated[str, Field(min_length=1, max_length=100)]
Server = Annotated[
    str,
    Field(
        min_length=1,
        max_length=255,
        description=(
            "the registry's address as image names write it: registry.example.com, 127.0.0.1:5000, ghcr.io, docker.io "
            "(a scheme or a trailing /v2/ is dropped)"
        ),
    ),
    AfterValidator(_server),
]
Username = Annotated[str, Field(min_length=1, max_length=255)]
Password = Annotated[str, Field(min_length=1, max_length=4096, description="password or access token (stored encrypted, never returned)")]


class RegistryCreate(RequestModel):
    name: RegistryName
    server: Server
    username: Username
    password: Password
    organization_id: str | None = Field(default=None, max_length=64, description="defaults to your default organisation")


class RegistryUpdate(RequestModel):
    """Only the fields sent change; none may be null."""

    name: RegistryName | None = not_null()
    server: Server | None = not_null()
    username: Username | None = not_null()
    password: Password | None = not_null()

    @model_validator(mode="after")
    def _no_null(self) -> RegistryUpdate:
        for field in self.model_fields_set:
            if getattr(self, field) is None:
                raise PydanticCustomError("null_not_allowed", f"{field} cannot be null; omit it to keep the current value")
        return self


class RegistryRead(ResponseModel):
    """A registry as the API shows it: never its password, only that it has one."""

    id: str
    organization_id: str
    name: str
    server: str
    username: str
    has_password: bool
    created_at: datetime
    updated_at: datetime


class RegistryPage(PageFields):
    items: list[RegistryRead]


class RegistryTestCategory(StrEnum):
    """What a registry login test found, as coarse as an operator may know (see ``REGISTRY_TEST_MESSAGES``)."""

    __test__ = False

    OK = "ok"
    AUTHENTICATION = "authentication"
    UNREACHABLE = "unreachable"
    TLS = "tls"
    NOT_REGISTRY = "not_registry"


REGISTRY_TEST_MESSAGES: dict[RegistryTestCategory, str] = {
    RegistryTestCategory.OK: "the registry accepted the credentials",
    RegistryTestCategory.AUTHENTICATION: "the registry refused the username or password",
    RegistryTestCategory.UNREACHABLE: "no registry could be reached at this address (connection refused, closed, "
    "timed out or no such host); check the address, the port and any firewall",
    RegistryTestCategory.TLS: "the registry's TLS certificate could not be verified",
    RegistryTestCategory.NOT_REGISTRY: "something answered at this address, but not a registry API (/v2/)",
}


class RegistryTestResult(ResponseModel):
    """What ``POST /registries/{id}/test`` found: a login that worked, or why it did not (fixed messages)."""

    ok: bool
    category: RegistryTestCategory
    message: str
