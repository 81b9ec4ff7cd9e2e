from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from backend.app.core.deployment_words import error_words, line_words
from backend.app.core.events import ERROR_CODE, ERROR_PARAMS, ServiceHealthData
from backend.app.models import DeploymentStatus, ExecutorKind, LogLevel, RevisionOutcome, RevisionReason
from backend.app.schemas.common import PageFields, RequestModel, ResponseModel

_AUTO_ROLLBACK = (
    "when a revision fails (its health gate, or its deploy for good), roll back by itself to the last revision that passed the gate"
)


class DeploymentCreate(RequestModel):
    stack_id: Annotated[str, Field(min_length=1, max_length=36)]
    target_id: Annotated[str, Field(min_length=1, max_length=36)]
    name: Annotated[str | None, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = None
    variables: dict[str, Any] = Field(default_factory=dict)
    organization_id: str | None = None
    auto_rollback: bool | None = Field(default=None, description=_AUTO_ROLLBACK + " (null or left out: on)")


class DeploymentUpdate(RequestModel):
    """``PATCH /deployments/{id}``: the deployment's settings (its inputs change through a new revision)."""

    auto_rollback: bool | None = Field(default=None, description=_AUTO_ROLLBACK)


class DeploymentWaiting(ResponseModel):
    """Why a ``pending`` deployment has not started yet."""

    reason: Literal["target_capacity", "retry_backoff"] = Field(
        description="target_capacity: its target already deploys max_concurrent_deployments at once; retry_backoff: "
        "it waits before its next attempt"
    )
    target_name: str | None = None
    limit: int | None = Field(default=None, description="the target's max_concurrent_deployments")
    deploying: int | None = Field(default=None, description="deployments the target deploys now")
    until: datetime | None = Field(default=None, description="retry_backoff: when the next attempt may start")


class _ErrorWords(ResponseModel):
    """``error_code`` and ``error_params`` read from ``error_message`` (:mod:`backend.app.core.deployment_words`)."""

    @model_validator(mode="after")
    def _error_words(self):  # no return annotation: the JSON schema stays the model's
        if getattr(self, "error_code", None) is None and getattr(self, "error_message", None):
            self.error_code, self.error_params = error_words(self.error_message)
        return self


class DeploymentRead(_ErrorWords):
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
    error_code: str | None = Field(default=None, description=ERROR_CODE)
    error_params: dict[str, str] = Field(default_factory=dict, description=ERROR_PARAMS)
    executor: ExecutorKind | None
    variables: dict[str, Any] = Field(description="the current revision's values; secrets shown as ***")
    revision: int = Field(description="the current revision's number: the one running, or being rolled out")
    last_good_revision: int | None = Field(description="the newest revision that passed the health gate (null: none did yet)")
    auto_rollback: bool = Field(description=_AUTO_ROLLBACK)
    health: Literal["healthy", "degraded", "down"] | None = Field(
        default=None,
        description="what the watcher last saw of its containers after the health gate: healthy, degraded (a service "
        "is not up, others run) or down (nothing runs); null before its first look and while a rollout runs",
    )
    service_health: list[ServiceHealthData] = Field(
        default_factory=list, description="each service as the watcher last saw it (empty before its first look)"
    )
    created_at: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    waiting: DeploymentWaiting | None = Field(
        default=None, description="pending only: why it has not started yet (null: an executor will take it shortly)"
    )
    images: list[RevisionImage] = Field(
        default_factory=list,
        description="what each service of the current revision runs, once its pull resolved it: the image as the "
        "document names it, its digest and size (the same as the revision's; empty before the pull)",
    )


class DeploymentPage(PageFields):
    items: list[DeploymentRead]


class LogLineRead(ResponseModel):
    seq: int
    timestamp: datetime
    level: LogLevel
    message: str
    code: str | None = Field(
        default=None, description="the stable code of the sentence when WindFlow wrote the line (null: a container's output)"
    )
    params: dict[str, str] = Field(default_factory=dict, description="the values the line's sentence quotes")

    @model_validator(mode="after")
    def _words(self) -> LogLineRead:
        if self.code is None:
            self.code, self.params = line_words(self.message)
        return self


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


# --- revisions -----------------------------------------------------------------------------------


class RevisionImage(ResponseModel):
    service: str
    image: str = Field(description="the image as the compose document names it")
    digest: str | None = Field(
        description="what it resolved to after the pull: the registry digest (sha256:...), or the local image id "
        "(sha256:...) for an image no registry knows; null when not recorded (a revision made before "
        "digests were recorded, or whose rollout failed before the pull)"
    )
    size: int | None = Field(
        default=None, description="bytes the image takes on the engine (unpacked, as `docker image ls` counts it); null when not recorded"
    )


class RevisionRead(_ErrorWords):
    number: int
    reason: RevisionReason = Field(
        description="created (the first), update (new values or the stack's latest template), rollback (asked), "
        "automatic_rollback (WindFlow, after a revision failed)"
    )
    rollback_of: int | None = Field(description="rollback and automatic_rollback: the revision re-applied")
    outcome: RevisionOutcome = Field(
        description="pending/deploying (its rollout), running (the deployment runs it), failed, rolled_back (it ran, "
        "then a rollback replaced it), superseded (it ran, then a newer revision replaced it)"
    )
    stack_id: str | None
    stack_version: str | None = Field(description="the stack's version when the revision was made")
    variable_schema: list[dict[str, Any]] | None = Field(
        default=None,
        description="the stack's variable schema as it was when the revision was made (what its values are typed and "
        "validated by, and what a change of this revision is checked against unless it asks for the latest); null: "
        "made without a stack",
    )
    variables: dict[str, Any] = Field(description="its values; secrets shown as ***")
    images: list[RevisionImage]
    error_message: str | None
    error_code: str | None = Field(default=None, description=ERROR_CODE)
    error_params: dict[str, str] = Field(default_factory=dict, description=ERROR_PARAMS)
    created_at: datetime
    created_by: str | None = Field(description="who asked (an email); null for an automatic rollback")
    finished_at: datetime | None = Field(description="when its rollout ended (passed or failed the gate)")


class RevisionPage(PageFields):
    items: list[RevisionRead]


class RevisionCreate(RequestModel):
    """A new revision of the deployment, rolled out behind the health gate."""

    variables: dict[str, Any] | None = Field(
        default=None, description="values merged over the current ones (a secret left out keeps its value); validated like at creation"
    )
    stack_version: Literal["latest"] | None = Field(
        default=None, description="latest: render the stack's current template and variable schema; left out: the current revision's"
    )


class RollbackRequest(RequestModel):
    revision: Annotated[int, Field(ge=1, le=2_147_483_647, description="the revision whose record is re-applied")]


class ContainerPort(ResponseModel):
    container_port: str = Field(description="the container's port and protocol (80/tcp)")
    host_ip: str | None = Field(description="the host address it is published on (0.0.0.0: every address)")
    host_port: str | None = Field(description="the host port it is published on; null: not published")


class ContainerRead(ResponseModel):
    name: str
    state: str = Field(
        description="as the engine says: running, restarting, exited, created, paused, dead, removing "
        "(on a swarm target, the task's state: running, failed, shutdown, ...)"
    )
    health: str | None = Field(description="healthy, unhealthy or starting; null without a healthcheck")
    exit_code: int | None = Field(description="the exit code of a container that is not running; null while it runs")
    restarts: int = Field(description="how many times the engine restarted it (its restart policy)")
    image: str | None = Field(description="the image it was created from (a pinned revision: the exact reference)")
    ports: list[ContainerPort]
    started_at: datetime | None = Field(description="when it last started; null if it never did")


class ServiceRead(ResponseModel):
    service: str
    containers: list[ContainerRead]


class DeploymentServices(ResponseModel):
    """``GET /deployments/{id}/services``: the deployment's containers as its target's engine reports them now."""

    revision: int = Field(description="the deployment's current revision when they were read")
    items: list[ServiceRead] = Field(description="by service name; empty when the deployment has no container")


class RevisionDiff(ResponseModel):
    diff: str = Field(
        description="unified diff from revision a to b: the rendered compose, then the values "
        "(secrets as ***; a changed secret is marked as changed)"
    )
