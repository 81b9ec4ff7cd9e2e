"""Deployments, their persisted log lines and their status history.

Only :mod:`backend.app.services.state_machine` writes ``Deployment.status``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from backend.app.database import Base, UTCDateTime, utcnow
from backend.app.models.base import IdMixin, TimestampMixin
from backend.app.models.enums import DeploymentStatus, ExecutorKind, LogLevel
from backend.app.models.identity import _enum


class Deployment(IdMixin, TimestampMixin, Base):
    __tablename__ = "deployments"
    __table_args__ = (
        # recovery: pending/deploying rows by age and by lease expiry
        Index("ix_deployments_status_queued_at", "status", "queued_at"),
        Index("ix_deployments_status_lease", "status", "lease_expires_at"),
        # listings, newest first (keyset on (created_at, id)): one index per filter the API offers, so that
        # every page is an ordered index range (migration 0006; EXPLAIN-checked in test_query_plans.py)
        Index("ix_deployments_created", "created_at", "id"),
        Index("ix_deployments_org_created", "organization_id", "created_at", "id"),
        Index("ix_deployments_org_status_created", "organization_id", "status", "created_at", "id"),
        Index("ix_deployments_status_created", "status", "created_at", "id"),
        Index("ix_deployments_stack_created", "stack_id", "created_at", "id"),
        Index("ix_deployments_stack_status_created", "stack_id", "status", "created_at", "id"),
        Index("ix_deployments_target_created", "target_id", "created_at", "id"),
        Index("ix_deployments_target_status_created", "target_id", "status", "created_at", "id"),  # and capacity
        # retention walks settled deployments by last activity
        Index("ix_deployments_updated", "updated_at", "id"),
    )

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False)
    stack_id: Mapped[str | None] = mapped_column(ForeignKey("stacks.id", ondelete="SET NULL"))
    target_id: Mapped[str] = mapped_column(ForeignKey("targets.id", ondelete="RESTRICT"), nullable=False)
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(100), nullable=False)

    status: Mapped[DeploymentStatus] = mapped_column(
        _enum(DeploymentStatus, "deployment_status"), default=DeploymentStatus.PENDING, nullable=False
    )
    #: Variable values as given and frozen at creation; secret values are stored encrypted.
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    #: The rendered compose document the runner deploys (the snapshot).
    rendered_compose: Mapped[str | None] = mapped_column(Text)

    attempt: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, nullable=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Earliest time a retry may be claimed (backoff after a transient failure).
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())

    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_message: Mapped[str | None] = mapped_column(Text)

    progress: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    current_step: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    total_steps: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    step_name: Mapped[str | None] = mapped_column(String(200))

    executor: Mapped[ExecutorKind | None] = mapped_column(_enum(ExecutorKind, "executor_kind"))
    task_id: Mapped[str | None] = mapped_column(String(200))
    #: Highest log ``seq`` allocated so far; log writers reserve ranges with an atomic UPDATE.
    last_log_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)


class DeploymentLog(Base):
    __tablename__ = "deployment_logs"
    __table_args__ = (UniqueConstraint("deployment_id", "seq", name="uq_deployment_logs_deployment_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    level: Mapped[LogLevel] = mapped_column(_enum(LogLevel, "log_level"), default=LogLevel.INFO, nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)


class DeploymentStatusHistory(Base):
    __tablename__ = "deployment_status_history"
    __table_args__ = (Index("ix_deployment_status_history_deployment", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False)
    from_status: Mapped[DeploymentStatus | None] = mapped_column(_enum(DeploymentStatus, "deployment_status"))
    to_status: Mapped[DeploymentStatus] = mapped_column(_enum(DeploymentStatus, "deployment_status"), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class DeploymentStatusCount(Base):
    """Deployments per status, maintained by every writer of a status (see ``services/status_counts.py``).

    ``/metrics`` reads these six rows instead of grouping the whole ``deployments`` table at each scrape.
    """

    __tablename__ = "deployment_status_counts"

    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
