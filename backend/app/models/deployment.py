"""Deployments, their persisted log lines and their status history.

Only :mod:`backend.app.services.deployments.state_machine` writes ``Deployment.status``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from backend.app.database import Base, UTCDateTime, utcnow
from backend.app.models.base import IdMixin, TimestampMixin
from backend.app.models.enums import DeploymentStatus, ExecutorKind, LogLevel, RevisionOutcome, RevisionReason
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
    #: The current revision's variable values (secret values encrypted): a copy of its record.
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    #: The current revision's rendered compose document (encrypted): the snapshot the runner deploys.
    rendered_compose: Mapped[str | None] = mapped_column(Text)
    #: The current revision's number: the one running, or being rolled out (``DeploymentRevision.number``).
    revision: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    #: The newest revision that passed the health gate: where an automatic rollback goes back to.
    last_good_revision: Mapped[int | None] = mapped_column(Integer)
    #: Roll back to ``last_good_revision`` by itself when a revision fails.
    auto_rollback: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)

    #: What the watcher (``services/deployments/watch.py``) last saw of the containers of a ``running`` (or
    #: ``failed``) deployment: ``healthy``, ``degraded`` (a service is down, the others run) or ``down``
    #: (nothing runs); null before it looked, and while a rollout runs.
    health: Mapped[str | None] = mapped_column(String(16))
    #: Per service, as the watcher saw it: ``{service, state, expected, running, restarts, reason}`` (and the
    #: restart count of each container, to see a restart between two passes).
    service_health: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: When the watcher last saw the health change.
    health_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The watcher leaves the deployment alone until then: a stop or delete is taking its containers down.
    watch_hold_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    attempt: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, nullable=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Earliest time a retry may be claimed (backoff after a transient failure).
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: A ``deleting`` deployment's teardown keeps its named volumes (``DELETE ...?keep_volumes=true``).
    teardown_keep_volumes: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), nullable=False)

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


class DeploymentRevision(Base):
    """One immutable record of what a deployment deployed: its inputs as they were, the images as they
    resolved, who asked and why. Only ``outcome``, ``images``, ``error_message`` and ``finished_at`` change,
    as its rollout goes."""

    __tablename__ = "deployment_revisions"

    #: deferrable (checked at the commit when a transaction asks): a deployment's creation writes its revision 1
    #: before the deployment itself (``state_machine.record_creation``; migration 0020)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE", deferrable=True, initially="IMMEDIATE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    reason: Mapped[RevisionReason] = mapped_column(_enum(RevisionReason, "revision_reason"), nullable=False)
    #: rollback and automatic_rollback: the revision whose record this one re-applies
    rollback_of: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[RevisionOutcome] = mapped_column(
        _enum(RevisionOutcome, "revision_outcome"), default=RevisionOutcome.PENDING, nullable=False
    )
    #: the stack as it was when the revision was made (the stack may change or go since)
    stack_id: Mapped[str | None] = mapped_column(ForeignKey("stacks.id", ondelete="SET NULL"))
    stack_version: Mapped[str | None] = mapped_column(String(50))
    stack_template: Mapped[str | None] = mapped_column(Text)
    stack_variables: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    #: variable values, secret values encrypted (``core.security.EncryptedValues``)
    variables: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    #: the rendered compose document (encrypted: it holds secret values)
    rendered_compose: Mapped[str | None] = mapped_column(Text)
    #: ``[{"service", "image", "digest"}]``: each service's image as resolved after the pull; a rollout of a
    #: rollback revision runs these exact images
    images: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, nullable=False)
    error_message: Mapped[str | None] = mapped_column(Text)
    #: who asked (an email), or null for WindFlow itself (an automatic rollback)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


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
    #: deferrable, as the revision's: a creation writes its ``None -> pending`` row before the deployment
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE", deferrable=True, initially="IMMEDIATE"), nullable=False
    )
    from_status: Mapped[DeploymentStatus | None] = mapped_column(_enum(DeploymentStatus, "deployment_status"))
    to_status: Mapped[DeploymentStatus] = mapped_column(_enum(DeploymentStatus, "deployment_status"), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class DeploymentStatusCount(Base):
    """Deployments per status, maintained by every writer of a status (see ``services/deployments/status_counts.py``).

    ``/metrics`` reads these six rows instead of grouping the whole ``deployments`` table at each scrape.
    """

    __tablename__ = "deployment_status_counts"

    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
