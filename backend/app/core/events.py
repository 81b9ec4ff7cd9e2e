"""The event envelope and the after-commit event queue.

Every event WindFlow emits has one shape (DESIGN.md, "Events and real time")::

    {"type": "DEPLOYMENT_STATUS_CHANGED", "deployment_id": "...", "organization_id": "...",
     "timestamp": "2026-01-01T12:00:00Z", "data": {...}}

Services never publish directly: they call :func:`queue_event` on the session that carries the change.
The events are handed to the bus only after that session commits, and dropped if it rolls back, so a
client never sees a change that did not happen.

:class:`LocalEventBus` fans events out to the subscribers of this process. Other processes (Celery
workers, other backend replicas) are reached through ``backend.app.core.event_transport``, which installs
itself as the bus's *forwarder* when it is started and hands remote events back with
:meth:`LocalEventBus.deliver`, which never forwards them again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

_PENDING_KEY = "windflow_pending_events"


class EventType(StrEnum):
    DEPLOYMENT_STATUS_CHANGED = "DEPLOYMENT_STATUS_CHANGED"
    DEPLOYMENT_LOGS_UPDATE = "DEPLOYMENT_LOGS_UPDATE"
    DEPLOYMENT_PROGRESS = "DEPLOYMENT_PROGRESS"


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    type: EventType
    deployment_id: str
    organization_id: str
    data: dict[str, Any]
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": str(self.type),
            "deployment_id": self.deployment_id,
            "organization_id": self.organization_id,
            "timestamp": iso_utc(self.timestamp),
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Event:
        return cls(
            type=EventType(raw["type"]),
            deployment_id=raw["deployment_id"],
            organization_id=raw["organization_id"],
            data=raw.get("data") or {},
            timestamp=datetime.fromisoformat(raw["timestamp"].replace("Z", "+00:00")),
        )


Subscriber = Callable[[Event], None]


class LocalEventBus:
    """In-process fan-out. Cross-process transports feed it from their listeners.

    ``publish`` is for events that happened in this process: local subscribers get them at once and the
    forwarder (if a transport is running) sends them to the other processes. ``deliver`` is for events
    that arrived from another process: local subscribers only, so nothing is echoed back.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._forwarder: Subscriber | None = None
        self.published = 0

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def set_forwarder(self, forwarder: Subscriber | None) -> None:
        """Install (or remove, with ``None``) the hook that sends published events to other processes.

        The forwarder is called from ``publish``, possibly inside SQLAlchemy's ``after_commit`` hook and
        from any thread, so it must only enqueue, never block.
        """
        self._forwarder = forwarder

    def publish(self, evt: Event) -> None:
        """Deliver an event of this process to local subscribers, then forward it to other processes."""
        self.published += 1
        self.deliver(evt)
        forwarder = self._forwarder
        if forwarder is not None:
            try:
                forwarder(evt)
            except Exception:  # noqa: BLE001 - local delivery already happened; never fail a commit hook
                logger.exception("could not forward %s event to other processes", evt.type)

    def deliver(self, evt: Event) -> None:
        """Deliver to local subscribers only (events received from other processes)."""
        for callback in list(self._subscribers):
            try:
                callback(evt)
            except Exception:  # noqa: BLE001 - one broken subscriber must not starve the others
                logger.exception("event subscriber failed for %s", evt.type)


bus = LocalEventBus()


def queue_event(session: AsyncSession | Session, evt: Event) -> None:
    """Attach ``evt`` to ``session``; it is published after the session's next commit."""
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    sync_session.info.setdefault(_PENDING_KEY, []).append(evt)


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    for evt in session.info.pop(_PENDING_KEY, []):
        # status events at INFO (the guide's `grep "emit_"`), the chatty ones at DEBUG
        logger.log(
            logging.INFO if evt.type is EventType.DEPLOYMENT_STATUS_CHANGED else logging.DEBUG,
            "emit_%s: deployment %s", str(evt.type).lower(), evt.deployment_id,
        )
        bus.publish(evt)


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_rollback(session: Session, _previous_transaction) -> None:
    session.info.pop(_PENDING_KEY, None)


async def wait_for(predicate: Callable[[Event], bool], timeout: float) -> Event:
    """Wait for the first bus event matching ``predicate`` (tests and the CLI use it)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Event] = loop.create_future()

    def on_event(evt: Event) -> None:
        if not future.done() and predicate(evt):
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(evt))

    unsubscribe = bus.subscribe(on_event)
    try:
        return await asyncio.wait_for(future, timeout)
    finally:
        unsubscribe()
