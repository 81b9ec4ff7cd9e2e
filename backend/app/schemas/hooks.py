from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from backend.app.schemas.common import RequestModel, ResponseModel

VariableName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Branch = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\s~^:?*\[\\]+$")]


class HookCreate(RequestModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    allowed_variables: list[VariableName] = Field(
        default_factory=list, max_length=100, description="the variables a call may change; empty: a call only redeploys"
    )
    branch: Branch | None = Field(default=None, description="GitHub/GitLab push payloads of other branches are ignored")


class HookUpdate(RequestModel):
    """Only the fields sent change."""

    name: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    allowed_variables: list[VariableName] | None = Field(default=None, max_length=100)
    branch: Branch | None = None
    enabled: bool | None = Field(default=None, description="a disabled hook answers 403 and deploys nothing")


class HookRead(ResponseModel):
    id: str
    deployment_id: str | None = Field(description="the hook's deployment (null for a stack's hook)")
    stack_id: str | None = Field(default=None, description="a stack's hook: it rolls out the stack's deployments")
    name: str
    url: str = Field(description="POST here, signed with the secret")
    allowed_variables: list[str]
    branch: str | None
    enabled: bool
    created_by: str | None
    created_at: datetime
    rotated_at: datetime | None
    previous_secret_valid_until: datetime | None = Field(description="after a rotation, the old secret works until then")
    last_called_at: datetime | None


class HookCreated(HookRead):
    secret: str = Field(description="The hook's secret. Shown only once: store it in your CI now.")


class HookCallRead(ResponseModel):
    id: str
    at: datetime
    status_code: int
    code: str = Field(description="accepted, skipped, or the refusal's error code")
    client: str | None
    revision: int | None


class HookRollout(ResponseModel):
    deployment_id: str
    name: str
    revision: int | None = Field(description="the revision being rolled out")
    action: Literal["redeploy", "retry", "start", "change"]


class HookSkipped(ResponseModel):
    deployment_id: str
    name: str
    code: str = Field(description="why it was not rolled out: the refusal's error code (e.g. deployment_rolling_out)")
    detail: str


class HookTriggered(ResponseModel):
    deployment_id: str | None = Field(description="the hook's deployment (null for a stack's hook)")
    revision: int | None = Field(description="the revision being rolled out (null when skipped, and for a stack's hook)")
    action: Literal["redeploy", "retry", "start", "change", "skipped"]
    reason: str | None = Field(default=None, description="why a call was skipped (a push to another branch, a ping)")
    stack_id: str | None = Field(default=None, description="a stack's hook: its stack")
    deployments: list[HookRollout] = Field(default_factory=list, description="a stack's hook: the deployments rolled out")
    skipped: list[HookSkipped] = Field(
        default_factory=list, description="a stack's hook: its deployments that could not be rolled out, and why"
    )
