from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field

from backend.app.models import DeploymentStatus, ExecutorKind, LogLevel
from backend.app.schemas.common import PageFields, RequestModel, ResponseModel


class DeploymentCreate(RequestModel):
    stack_id: Annotated[str, Field(min_length=1, max_length=36)]
    target_id: Annotated[str, Field(min_length=1, max_length=36)]
    name: Annotated[str | None, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = None
    variables: dict[str, Any] = Field(default_factory=dict)
    organization_id: str | None = None


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
    reason: str | None
    actor: str | None
    created_at: datetime


class DeploymentCompose(ResponseModel):
    compose: str = Field(description="the rendered compose document the deployment runs; secret values shown as ***")
