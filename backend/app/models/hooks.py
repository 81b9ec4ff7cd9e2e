"""Deploy hooks (a URL and a secret a CI pipeline calls to roll a deployment out) and their calls."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.app.database import Base, UTCDateTime, utcnow
from backend.app.models.base import IdMixin


class DeployHook(IdMixin, Base):
    """A hook of one deployment, or of one stack (a call rolls out the stack's deployments of the hook's
    organisation: ``services/hooks/hook_service.py``); exactly one of ``deployment_id`` and ``stack_id`` is
    set. Its secret is stored encrypted (the server recomputes the HMAC with it); after a rotation the
    previous secret stays valid until ``previous_valid_until``."""

    __tablename__ = "deploy_hooks"
    __table_args__ = (CheckConstraint("(deployment_id IS NULL) <> (stack_id IS NULL)", name="owner"),)

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True)
    deployment_id: Mapped[str | None] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    stack_id: Mapped[str | None] = mapped_column(ForeignKey("stacks.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    secret_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: the variables a call may change (``{"variables": {...}}``); empty: redeploy only
    allowed_variables: Mapped[list[str]] = mapped_column(JSON, default=list, nullable=False)
    #: GitHub/GitLab push payloads of other branches are ignored; null: every push
    branch: Mapped[str | None] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_called_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeployHookCall(IdMixin, Base):
    """One call of a hook, accepted or refused (the hook's recent calls). ``nonce`` (a delivery id or the
    timestamped signature) is unique per hook: the same signed request twice is a replay."""

    __tablename__ = "deploy_hook_calls"
    __table_args__ = (
        Index("ix_deploy_hook_calls_hook_at", "hook_id", "at"),
        UniqueConstraint("hook_id", "nonce", name="uq_deploy_hook_calls_nonce"),
    )

    hook_id: Mapped[str] = mapped_column(ForeignKey("deploy_hooks.id", ondelete="CASCADE"), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
    code: Mapped[str] = mapped_column(String(64), nullable=False)  # accepted, skipped, or the error's code
    client: Mapped[str | None] = mapped_column(String(64))
    revision: Mapped[int | None] = mapped_column(Integer)
    nonce: Mapped[str | None] = mapped_column(String(128))
