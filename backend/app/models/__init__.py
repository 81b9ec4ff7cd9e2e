"""SQLAlchemy models (persistence only). Importing this package registers every table on ``Base``."""

from backend.app.models.audit import AuditEntry
from backend.app.models.deployment import (
    Deployment,
    DeploymentLog,
    DeploymentRevision,
    DeploymentStatusCount,
    DeploymentStatusHistory,
)
from backend.app.models.enums import (
    ACTIVE_STATUSES,
    SETTLED_STATUSES,
    TEARDOWN_STATUSES,
    DeploymentStatus,
    ExecutorKind,
    LogLevel,
    RevisionOutcome,
    RevisionReason,
    Role,
    TargetType,
)
from backend.app.models.hooks import DeployHook, DeployHookCall
from backend.app.models.identity import ApiToken, Membership, Organization, RefreshToken, User
from backend.app.models.infra import Registry, Stack, Target
from backend.app.models.notifications import NotificationChannel, NotificationDelivery
from backend.app.models.system import BrokerDelivery, SystemState, WorkerHeartbeat

__all__ = [
    "ACTIVE_STATUSES",
    "SETTLED_STATUSES",
    "TEARDOWN_STATUSES",
    "ApiToken",
    "AuditEntry",
    "Deployment",
    "DeploymentLog",
    "DeploymentRevision",
    "DeploymentStatus",
    "DeploymentStatusCount",
    "DeploymentStatusHistory",
    "DeployHook",
    "DeployHookCall",
    "ExecutorKind",
    "LogLevel",
    "Membership",
    "NotificationChannel",
    "NotificationDelivery",
    "Organization",
    "RefreshToken",
    "Registry",
    "RevisionOutcome",
    "RevisionReason",
    "Role",
    "Stack",
    "BrokerDelivery",
    "SystemState",
    "Target",
    "TargetType",
    "User",
    "WorkerHeartbeat",
]
