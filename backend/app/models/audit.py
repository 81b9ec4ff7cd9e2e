"""The audit trail: one row per change asked through the API or a deploy hook (persistence only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.app.database import Base, UTCDateTime, utcnow
from backend.app.models.base import IdMixin


class AuditEntry(IdMixin, Base):
    """Who asked what, of which object, from where, and how it ended.

    ``organization_id`` is a plain column, not a foreign key: the record of a deleted organisation's or
    deployment's changes outlives it (retention removes it, ``AUDIT_RETENTION_DAYS``). ``summary`` names the
    fields a request changed with their new values where they are harmless, and ``"changed"`` for anything
    secret (passwords, keys, tokens, variable values): never a secret.
    """

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_at", "at", "id"),
        Index("ix_audit_entries_org_at", "organization_id", "at", "id"),
    )

    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    #: ``user``, ``token`` (a personal API token), ``hook`` (a deploy hook) or ``anonymous`` (setup, a failed login)
    actor_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[str | None] = mapped_column(String(36))
    actor_name: Mapped[str | None] = mapped_column(String(320))
    organization_id: Mapped[str | None] = mapped_column(String(36))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    object_type: Mapped[str] = mapped_column(String(32), nullable=False)
    object_id: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    client: Mapped[str | None] = mapped_column(String(64))
    #: ``success`` (2xx/3xx), ``denied`` (401/403) or ``failed`` (any other error)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
