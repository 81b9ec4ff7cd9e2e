from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from backend.app.models import DeploymentStatus, ExecutorKind, LogLevel
from backend.app.schemas.common import PageFields, RequestModel, ResponseModel


class DeploymentCreate(RequestModel):
    stack_id: Annotated[str, Field(min_length=1, max_length=36)]
    target_id: Annotated[str, Field(min_length=1, max_length=36)]
    name: Annotated[str | None, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = None
    variables: dict[str, Any] = Field(default_factory=dict)
    organization_id: str | None = None


class DeploymentWaiting(ResponseModel):
    """Why a ``pending`` deployment has not started yet."""

    reason: Literal["target_capacity", "retry_backoff"] = Field(
        description="target_capacity: its target already deploys max_concurrent_deployments at once; retry_backoff: "
                    "it waits before its next attempt")
    target_name: str | None = None
    limit: int | None = Field(default=None, description="the target's max_concurrent_deployments")
    deploying: int | None = Field(default=None, description="deployments the target deploys now")
    until: datetime | None = Field(default=None, description="retry_backoff: when the next attempt may start")


class DeploymentRead(ResponseModel):
    id: str
    name: str
    status: DeploymentStatus
    stack_id: str | None
    target_id: str
    organization_id: str
    attempt: int
    max_attempts: int
    progress: int
    current_step: int
    total_steps: int
    step_name: str | None
    error_message: str | None
    executor: ExecutorKind | None
    variables: dict[str, Any] = Field(description="frozen values; secrets shown as ***")
    created_at: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    waiting: DeploymentWaiting | None = Field(
        default=None, description="pending only: why it has not started yet (null: an executor will take it shortly)")


class DeploymentPage(PageFields):
    items: list[DeploymentRead]


class LogLineRead(ResponseModel):
    seq: int
    timestamp: datetime
    level: LogLevel
    message: str


class LogPage(ResponseModel):
    items: list[LogLineRead]
    last_seq: int = Field(description="highest seq allocated so far for this deployment")
    next_cursor: str | None = Field(
        default=None, description="pass as cursor for the lines after this page; null when this page reached the end"
    )


class HistoryRead(ResponseModel):
    from_status: DeploymentStatus | None
    to_status: DeploymentStatus
    reason: str | None = Field(description="why, in English")
    reason_code: str | None = Field(default=None, description="the reason's stable code (null for a free-form one)")
    reason_params: dict[str, str] = Field(default_factory=dict, description="the values the reason quotes")
    actor: str | None
    created_at: datetime


class DeploymentCompose(ResponseModel):
    compose: str = Field(description="the rendered compose document the deployment runs; secret values shown as ***")
