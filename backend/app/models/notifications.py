"""Notification channels of an organisation and the deliveries queued for them (persistence only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.app.database import Base, UTCDateTime, utcnow
from backend.app.models.base import IdMixin, TimestampMixin


class NotificationChannel(IdMixin, TimestampMixin, Base):
    """Where an organisation hears about its deployments: a generic webhook (JSON signed with ``secret``),
    a Slack- or Discord-compatible incoming webhook, or an email address. The URL is stored encrypted (a
    Slack or Discord webhook URL is itself a credential); ``events`` are the events it wants."""

    __tablename__ = "notification_channels"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # webhook | slack | discord | email
    url_encrypted: Mapped[str | None] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(String(320))
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON, default=list, nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)


class NotificationDelivery(IdMixin, Base):
    """One event for one channel, delivered at least once: ``pending`` until a sender claims it (a lease),
    then ``delivered``, or ``pending`` again with a later ``next_attempt_at`` after a failure, or ``failed``
    after ``NOTIFY_MAX_ATTEMPTS``. Its ``id`` is the delivery id a receiver deduplicates with."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
        Index("ix_notification_deliveries_channel", "channel_id", "created_at"),
    )

    channel_id: Mapped[str] = mapped_column(ForeignKey("notification_channels.id", ondelete="CASCADE"), nullable=False)
    organization_id: Mapped[str] = mapped_column(String(36), nullable=False)
    event: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), default="pending", nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
