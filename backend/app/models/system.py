"""Process-level state shared through the database: worker presence and small key/value records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.app.database import Base, UTCDateTime, utcnow


class WorkerHeartbeat(Base):
    """One row per Celery worker node, refreshed every few seconds by the worker itself.

    kombu's SQL transport has no broadcast, so ``celery inspect``/``control.ping`` see nobody on the
    PostgreSQL broker; heartbeats in the database work the same on every broker.
    """

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # celery node name, e.g. celery@host
    kind: Mapped[str] = mapped_column(String(20), nullable=False)  # external | embedded
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    broker: Mapped[str] = mapped_column(String(50), nullable=False)
    concurrency: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False, index=True)
    #: ``healthy``, or ``degraded`` when the worker is alive but does not execute (``problem`` says why); a
    #: degraded worker is no capacity for dispatch and leaves by itself (``runtime/worker_watchdog.py``)
    state: Mapped[str] = mapped_column(String(20), default="healthy", server_default="healthy", nullable=False)
    problem: Mapped[str | None] = mapped_column(String(500), nullable=True)
    #: ``problem`` as codes with the values they quote (``[{"code", "params"}]``), for a client to word them
    problem_codes: Mapped[list[dict] | None] = mapped_column(JSON, nullable=True)
    #: live pool processes at the last beat (the pool's size is ``concurrency``)
    live_processes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: the pool's process ids at the last beat: a deployment whose executor was one of them is orphaned as soon
    #: as this row goes stale (the worker died, its pool with it), not a lease later
    pool_pids: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    #: the targets the worker serves (``WORKER_TARGETS``): their ids, and ``"*"`` when it also consumes the shared
    #: queue of the targets that are not placed; null = the shared queue only (no declaration, as every worker
    #: before placement)
    targets: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class BrokerDelivery(Base):
    """A ``kombu_message`` row taken by a worker process of the PostgreSQL broker and not yet acknowledged.

    kombu's SQL transport hides a message it delivers (``visible = false``) and never shows it again: a
    worker that dies holding it loses it. WindFlow's channel records who took it (host and PID of the
    worker's main process) and forgets it on the ack; the reaper makes the message visible again once its
    taker is gone (``runtime/sql_transport.py``), as Redis does with unacknowledged messages.
    """

    __tablename__ = "broker_deliveries"

    message_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    delivery_tag: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class SystemState(Base):
    """Small named records: the last recovery run and its statistics, cumulative counters."""

    __tablename__ = "system_state"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)
