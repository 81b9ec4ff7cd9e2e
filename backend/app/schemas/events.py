"""Real-time frames: the event envelopes and the WebSocket protocol, as typed models.

They are attached to the OpenAPI document (``components.schemas``) so that a client generates its types
from it; the payload models themselves live with the bus in ``backend.app.core.events``. See
docs/api.md ("Real time") for the protocol.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.app.core.events import (
    DeletedData,
    HealthChangedData,
    LogsUpdateData,
    ProgressData,
    PullProgressData,
    ResourceChangedData,
    RolledBackData,
    StatusChangedData,
)
from backend.app.models import DeploymentStatus
from backend.app.schemas.deployments import DeploymentRead


class _Envelope(BaseModel):
    deployment_id: str
    organization_id: str
    timestamp: datetime


class DeploymentStatusChangedEvent(_Envelope):
    type: Literal["DEPLOYMENT_STATUS_CHANGED"]
    data: StatusChangedData


class DeploymentLogsUpdateEvent(_Envelope):
    type: Literal["DEPLOYMENT_LOGS_UPDATE"]
    data: LogsUpdateData


class DeploymentProgressEvent(_Envelope):
    type: Literal["DEPLOYMENT_PROGRESS"]
    data: ProgressData


class DeploymentCreatedEvent(_Envelope):
    type: Literal["DEPLOYMENT_CREATED"]
    data: DeploymentRead


class DeploymentDeletedEvent(_Envelope):
    type: Literal["DEPLOYMENT_DELETED"]
    data: DeletedData


class DeploymentRolledBackEvent(_Envelope):
    """A revision failed and WindFlow rolls back to the last good one (``DEPLOYMENT_STATUS_CHANGED`` events
    follow as the rollback revision is rolled out)."""

    type: Literal["DEPLOYMENT_ROLLED_BACK"]
    data: RolledBackData


class DeploymentPullProgressEvent(_Envelope):
    """Where the pull of one of the deployment's images stands (deployment subscribers only; at most 5 a
    second per deployment, the last one of each image says ``pulled``)."""

    type: Literal["DEPLOYMENT_PULL_PROGRESS"]
    data: PullProgressData


class DeploymentHealthChangedEvent(_Envelope):
    """What the watcher sees of a running (or failed) deployment's containers changed: a service exited,
    restarts, turned unhealthy, or is up again (deployment and organisation subscribers)."""

    type: Literal["DEPLOYMENT_HEALTH_CHANGED"]
    data: HealthChangedData


class ResourceChangedEvent(BaseModel):
    """A stack, target or member of the organisation changed (organisation subscribers): refetch it."""

    type: Literal["RESOURCE_CHANGED"]
    deployment_id: Literal[""] = Field(description="always empty: the event is about no deployment")
    organization_id: str
    timestamp: datetime
    data: ResourceChangedData


DeploymentEvent = Annotated[
    DeploymentStatusChangedEvent
    | DeploymentLogsUpdateEvent
    | DeploymentProgressEvent
    | DeploymentCreatedEvent
    | DeploymentDeletedEvent
    | DeploymentRolledBackEvent
    | DeploymentPullProgressEvent
    | DeploymentHealthChangedEvent,
    Field(discriminator="type"),
]


# --- service logs (live container output, not persisted) ------------------------------------------


class ServiceLogLine(BaseModel):
    service: str = Field(description="compose service (or swarm service) the container belongs to")
    container: str = Field(description="container name")
    timestamp: datetime | None = None
    message: str = Field(description="one line of output, redacted with the deployment's secrets")


class ServiceLogsData(BaseModel):
    lines: list[ServiceLogLine]


class ServiceLogsEvent(_Envelope):
    """Container output of a running deployment (``subscribe`` with ``"stream": "services"``)."""

    type: Literal["SERVICE_LOGS"]
    data: ServiceLogsData


class ServiceLogsEndData(BaseModel):
    reason: str = Field(description="why the stream ended (the deployment stopped, its containers exited, ...)")
    code: Literal["stopped", "no_container", "deployment_left_running", "containers_stopped", "engine_failed"] | None = Field(
        default=None, description="the reason's stable code, which a client words in its own language"
    )
    params: dict[str, str] = Field(default_factory=dict, description="what the reason quotes (``status``)")


class ServiceLogsEndEvent(_Envelope):
    type: Literal["SERVICE_LOGS_END"]
    data: ServiceLogsEndData


# --- WebSocket control frames ------------------------------------------------------------------


class _ClientFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthFrame(_ClientFrame):
    """First frame (within 10 s), and again before the access token expires."""

    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=4096, description="access JWT or personal API token")]


class SubscribeFrame(_ClientFrame):
    """One deployment (its logs after ``since_seq``, then everything live) or one organisation (list events)."""

    type: Literal["subscribe"]
    deployment_id: Annotated[str | None, Field(max_length=64)] = None
    organization_id: Annotated[str | None, Field(max_length=64)] = None
    since_seq: Annotated[int, Field(ge=0)] = 0
    stream: Literal["events", "services"] = "events"
    tail: Annotated[int, Field(ge=0, le=10_000, description="services stream: lines of history per container")] = 100


class UnsubscribeFrame(_ClientFrame):
    type: Literal["unsubscribe"]
    deployment_id: Annotated[str | None, Field(max_length=64)] = None
    organization_id: Annotated[str | None, Field(max_length=64)] = None
    stream: Literal["events", "services"] = "events"


class PingFrame(_ClientFrame):
    type: Literal["ping"]


ClientFrame = Annotated[AuthFrame | SubscribeFrame | UnsubscribeFrame | PingFrame, Field(discriminator="type")]


class AuthenticatedFrame(BaseModel):
    """Answer to a valid ``auth`` frame."""

    type: Literal["authenticated"]
    user_id: str
    expires_at: datetime | None = Field(description="when the credential expires; send a new auth frame before")


class SubscribedFrame(BaseModel):
    """Answer to a ``subscribe``; for a deployment, ``last_seq`` is the newest persisted line already sent."""

    type: Literal["subscribed"]
    deployment_id: str | None = None
    organization_id: str | None = None
    stream: Literal["events", "services"] = "events"
    last_seq: int | None = None
    #: for a deployment's events: its status once the subscription took effect (every later change arrives
    #: as a ``DEPLOYMENT_STATUS_CHANGED``), so a client that read the status earlier misses no change
    status: DeploymentStatus | None = None


class UnsubscribedFrame(BaseModel):
    type: Literal["unsubscribed"]
    deployment_id: str | None = None
    organization_id: str | None = None
    stream: Literal["events", "services"] = "events"


class ErrorFrame(BaseModel):
    type: Literal["error"]
    code: str
    detail: str
    deployment_id: str | None = None
    organization_id: str | None = None


class ResyncFrame(BaseModel):
    """The client fell behind: events were dropped. Log lines resume after ``last_seq`` (sent next);
    refetch the deployment (or the list, for an organisation) for its status and progress."""

    type: Literal["resync"]
    deployment_id: str | None
    organization_id: str | None = None
    last_seq: int | None


class PongFrame(BaseModel):
    type: Literal["pong"]


class HeartbeatFrame(BaseModel):
    """Sent by the server every ``WS_HEARTBEAT_SECONDS`` so a client notices a dead connection."""

    type: Literal["heartbeat"]
    timestamp: datetime


ServerFrame = Annotated[
    DeploymentStatusChangedEvent
    | DeploymentLogsUpdateEvent
    | DeploymentProgressEvent
    | DeploymentCreatedEvent
    | DeploymentDeletedEvent
    | DeploymentRolledBackEvent
    | DeploymentPullProgressEvent
    | DeploymentHealthChangedEvent
    | ResourceChangedEvent
    | ServiceLogsEvent
    | ServiceLogsEndEvent
    | AuthenticatedFrame
    | SubscribedFrame
    | UnsubscribedFrame
    | ErrorFrame
    | ResyncFrame
    | PongFrame
    | HeartbeatFrame,
    Field(discriminator="type"),
]
