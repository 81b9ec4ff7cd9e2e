"""The vocabularies shared by models, services, schemas and the API (lower-case on the wire)."""

from __future__ import annotations

from enum import StrEnum


class DeploymentStatus(StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
    STOPPING = "stopping"  # a stop asked: an executor takes the containers down, then ``stopped``
    DELETING = "deleting"  # a delete asked: an executor tears everything down, then the row goes


#: A teardown in the background (``POST .../stop``, ``DELETE``): an executor holds a lease while it works.
TEARDOWN_STATUSES: frozenset[DeploymentStatus] = frozenset({DeploymentStatus.STOPPING, DeploymentStatus.DELETING})
#: Deployments some executor still has to work on.
ACTIVE_STATUSES: frozenset[DeploymentStatus] = frozenset({DeploymentStatus.PENDING, DeploymentStatus.DEPLOYING}) | TEARDOWN_STATUSES
#: Deployments no executor is working on.
SETTLED_STATUSES: frozenset[DeploymentStatus] = frozenset(
    {DeploymentStatus.RUNNING, DeploymentStatus.FAILED, DeploymentStatus.STOPPED, DeploymentStatus.CANCELLED}
)


class RevisionReason(StrEnum):
    """Why a deployment revision was made."""

    CREATED = "created"  # the deployment's first revision
    UPDATE = "update"  # POST /deployments/{id}/revisions: new values and/or the stack's latest template
    ROLLBACK = "rollback"  # POST /deployments/{id}/rollback: an older revision's record, its images pinned
    AUTOMATIC_ROLLBACK = "automatic_rollback"  # a revision failed: back to the last good one, by WindFlow


class RevisionOutcome(StrEnum):
    """How a revision's rollout ended (or where it is)."""

    PENDING = "pending"  # queued, no executor has taken it yet
    DEPLOYING = "deploying"  # being rolled out
    RUNNING = "running"  # passed the health gate; what the deployment runs now
    FAILED = "failed"  # its rollout failed (the gate, the deploy itself) or was cancelled
    ROLLED_BACK = "rolled_back"  # it ran, then a rollback to an older revision replaced it
    SUPERSEDED = "superseded"  # it ran, then a newer revision (an update) replaced it


class Role(StrEnum):
    """Roles inside one organisation, weakest first."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2, Role.OWNER: 3}


class TargetType(StrEnum):
    DOCKER = "docker"
    SWARM = "swarm"


class ExecutorKind(StrEnum):
    CELERY = "celery"
    ASYNCIO = "asyncio"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
