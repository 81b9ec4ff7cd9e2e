"""The event envelope, its typed payloads, the after-commit queue and the in-process bus.

Every event WindFlow emits has one shape (docs/architecture.md, "The event envelope and the WebSocket protocol")::

    {"type": "DEPLOYMENT_STATUS_CHANGED", "deployment_id": "...", "organization_id": "...",
     "timestamp": "2026-01-01T12:00:00Z", "data": {...}}

``data`` is built from one Pydantic model per type (:data:`DATA_MODELS`); ``backend.app.schemas.events``
wraps them in envelope models for the OpenAPI document, from which clients generate their types.

Services never publish directly: they call :func:`queue_event` on the session that carries the change.
The events are handed to the bus only after that session commits, and dropped if it rolls back, so a
client never sees a change that did not happen.

:class:`LocalEventBus` fans events out to the subscribers of this process. Consumers read
``bus.stream(filter)``: an async iterator over a bounded queue of their own, filled without blocking from
whatever thread committed; a consumer that falls behind its bound gets an :class:`Overflow` marker
instead of the events it lost (and never slows the publisher or the other consumers). Other processes
(Celery workers, other backend replicas) are reached through ``backend.app.runtime.event_transport``, which
installs itself as the bus's *forwarder* and hands remote events back with :meth:`LocalEventBus.deliver`,
which never forwards them again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from backend.app.core.deployment_words import error_words, service_reason_words

logger = logging.getLogger(__name__)

_PENDING_KEY = "windflow_pending_events"
_SENT_KEY = "windflow_events_sent_in_transaction"  # how many of the pending events crossed in the transaction
_SAVEPOINTS_KEY = "windflow_event_savepoints"  # id(SAVEPOINT transaction) -> pending events when it began
#: Events a stream holds for a consumer before it overflows (a WebSocket client that stopped reading).
DEFAULT_STREAM_BOUND = 1000


class EventType(StrEnum):
    DEPLOYMENT_STATUS_CHANGED = "DEPLOYMENT_STATUS_CHANGED"
    DEPLOYMENT_LOGS_UPDATE = "DEPLOYMENT_LOGS_UPDATE"
    DEPLOYMENT_PROGRESS = "DEPLOYMENT_PROGRESS"
    DEPLOYMENT_CREATED = "DEPLOYMENT_CREATED"
    DEPLOYMENT_DELETED = "DEPLOYMENT_DELETED"
    #: a revision failed and WindFlow rolls the deployment back to its last good revision
    DEPLOYMENT_ROLLED_BACK = "DEPLOYMENT_ROLLED_BACK"
    #: where the pull of one of the deployment's images stands (at most 5 a second per deployment; not to lists)
    DEPLOYMENT_PULL_PROGRESS = "DEPLOYMENT_PULL_PROGRESS"
    #: what the watcher sees of a deployment's containers after its health gate changed (a service exited,
    #: restarts, turned unhealthy, or came back)
    DEPLOYMENT_HEALTH_CHANGED = "DEPLOYMENT_HEALTH_CHANGED"
    #: a stack, target or membership of the organisation was created, changed or deleted (``deployment_id`` "");
    #: or, with ``organization_id`` "" too, an account's API token (for that user) or a user or organisation of
    #: the platform (for superusers)
    RESOURCE_CHANGED = "RESOURCE_CHANGED"


#: What an organisation subscription (list views) receives: everything but the log lines.
LIST_EVENTS = frozenset(
    {
        EventType.DEPLOYMENT_STATUS_CHANGED,
        EventType.DEPLOYMENT_PROGRESS,
        EventType.DEPLOYMENT_CREATED,
        EventType.DEPLOYMENT_DELETED,
        EventType.DEPLOYMENT_ROLLED_BACK,
        EventType.DEPLOYMENT_HEALTH_CHANGED,
        EventType.RESOURCE_CHANGED,
    }
)


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- typed payloads --------------------------------------------------------------------------------


#: What the API says of ``error_code`` and ``error_params`` (:mod:`backend.app.core.deployment_words`).
ERROR_CODE = (
    "the stable code of the sentence error_message is (null: a text WindFlow has no code for); its English text stays "
    "in error_message, the lines after its first quoting output (a failed service's last log lines)"
)
ERROR_PARAMS = "the values error_message's sentence quotes (detail, output and probe are other programs' words, in English)"
_LINE_CODE = "the stable code of the sentence when WindFlow wrote the line (absent for a container's output)"


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogLineData(_Data):
    seq: int = Field(description="per-deployment sequence number, from 1, without gaps")
    timestamp: datetime
    level: str = Field(description="debug, info, warning or error")
    message: str
    # absent, not null, for a container's line (no default in the schema: a client's type says it may be missing)
    code: str | None = Field(default=None, description=_LINE_CODE, json_schema_extra=_no_default)
    params: dict[str, str] | None = Field(
        default=None, description="the values the line's sentence quotes (with code)", json_schema_extra=_no_default
    )


class StatusChangedData(_Data):
    new_status: str
    old_status: str | None = Field(description="null for a deployment just created")
    name: str
    error_message: str | None = None
    error_code: str | None = Field(default=None, description=ERROR_CODE)
    error_params: dict[str, str] = Field(default_factory=dict, description=ERROR_PARAMS)
    attempt: int | None = None
    dispatch_latency_seconds: float | None = Field(default=None, description="queued -> claimed, on transitions to deploying")
    revision: int | None = Field(default=None, description="the deployment's current revision (the one running, or being rolled out)")

    @model_validator(mode="after")
    def _error_words(self) -> StatusChangedData:
        if self.error_code is None and self.error_message:
            self.error_code, self.error_params = error_words(self.error_message)
        return self


class LogsUpdateData(_Data):
    logs: list[LogLineData] = Field(description="new persisted lines, in seq order")
    append: bool = True
    timestamp: datetime


class ProgressData(_Data):
    progress: Annotated[int, Field(ge=0, le=100)]
    current_step: int
    total_steps: int
    step_name: str | None = None


class DeletedData(_Data):
    name: str


class RolledBackData(_Data):
    """A revision failed (its health gate, or its deploy for good): the deployment goes back to an older one."""

    from_revision: int = Field(description="the revision that failed")
    to_revision: int = Field(description="the last good revision, whose record (values, pinned images) is re-applied")
    revision: int = Field(description="the new revision that re-applies it (reason automatic_rollback)")
    reason: str = Field(description="why from_revision failed (its error message)")
    reason_code: str | None = Field(default=None, description="the code of reason's sentence, as error_code is error_message's")
    reason_params: dict[str, str] = Field(default_factory=dict, description="the values reason's sentence quotes")

    @model_validator(mode="after")
    def _reason_words(self) -> RolledBackData:
        if self.reason_code is None:
            self.reason_code, self.reason_params = error_words(self.reason)
        return self


class ServiceHealthData(_Data):
    """One service of a deployment as the watcher last saw it."""

    service: str
    state: Literal["up", "done", "starting", "down", "restarting", "unhealthy", "missing"] = Field(
        description="up (every container running, healthy where it has a healthcheck); done (a one-shot job that "
        "exited 0); starting; down (exited, or not started); restarting (restarting, or restarted since the last "
        "look); unhealthy; missing (fewer containers than its revision asks for)"
    )
    expected: int = Field(description="containers its revision asks for")
    running: int = Field(description="its containers running now")
    restarts: int = Field(description="restarts of its containers, as the engine counts them")
    reason: str | None = Field(default=None, description="why it is not up: exit code, probe output (redacted)")
    reason_code: str | None = Field(
        default=None, description="the code of reason's sentence (core/deployment_words.py SERVICE_REASONS), null: none"
    )
    reason_params: dict[str, str] = Field(
        default_factory=dict, description="the values reason's sentence quotes (probe: the healthcheck's words)"
    )

    @model_validator(mode="after")
    def _reason_words(self) -> ServiceHealthData:
        if self.reason_code is None and self.reason:
            self.reason_code, self.reason_params = service_reason_words(self.reason)
        return self


class HealthChangedData(_Data):
    """What the watcher sees of a deployment's containers after its health gate changed."""

    health: Literal["healthy", "degraded", "down"] = Field(
        description="healthy: every service up; degraded: a service is not, others run; down: nothing runs"
    )
    previous: str | None = Field(description="the health before (null: not looked at since the rollout)")
    status: str = Field(description="the deployment's status (a down deployment turns failed at the next look)")
    revision: int
    message: str | None = Field(default=None, description="the services that are not up and why (redacted)")
    services: list[ServiceHealthData]


#: Resources of an organisation (its subscribers receive their events).
ORGANIZATION_RESOURCES = frozenset({"stack", "target", "member"})
#: Resources of the platform: users and organisations, whose lists superusers administer.
PLATFORM_RESOURCES = frozenset({"user", "organization"})


class PullProgressData(_Data):
    """One image's pull: bytes and layers done of the totals known so far (a registry announces the layers
    as the pull goes, so the totals may grow)."""

    image: str = Field(description="the image as the compose document names it")
    status: Literal["pulling", "downloading", "extracting", "pulled"]
    current_bytes: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    layers_done: int = Field(ge=0)
    layers_total: int = Field(ge=0)


class ResourceChangedData(_Data):
    """What changed besides deployments: list views refetch that row (or drop it). A stack, target or member
    of an organisation (its subscribers receive it); an API token (``user_id``: only that user's clients
    receive it); a user or an organisation of the platform (only superusers' clients receive it)."""

    resource: Literal["stack", "target", "registry", "member", "token", "user", "organization"]
    action: Literal["created", "updated", "deleted"]
    id: str = Field(description="the id of the stack, target, token, user or organisation; a member's user id")
    name: str | None = Field(default=None, description="its name (a member's or user's email)")
    user_id: str | None = Field(default=None, description="a token's owner: the only user told of it")


#: The payload model of each type. ``DEPLOYMENT_CREATED`` carries the deployment as
#: ``GET /deployments/{id}`` shows it (``DeploymentRead``, attached by ``backend.app.schemas.events``).
DATA_MODELS: dict[EventType, type[BaseModel] | None] = {
    EventType.DEPLOYMENT_STATUS_CHANGED: StatusChangedData,
    EventType.DEPLOYMENT_LOGS_UPDATE: LogsUpdateData,
    EventType.DEPLOYMENT_PROGRESS: ProgressData,
    EventType.DEPLOYMENT_CREATED: None,
    EventType.DEPLOYMENT_DELETED: DeletedData,
    EventType.DEPLOYMENT_ROLLED_BACK: RolledBackData,
    EventType.DEPLOYMENT_PULL_PROGRESS: PullProgressData,
    EventType.DEPLOYMENT_HEALTH_CHANGED: HealthChangedData,
    EventType.RESOURCE_CHANGED: ResourceChangedData,
}


def resource_changed(organization_id: str, resource: str, action: str, resource_id: str, name: str | None) -> Event:
    """The ``RESOURCE_CHANGED`` event of an organisation (no deployment: ``deployment_id`` is empty)."""
    return Event.of(
        EventType.RESOURCE_CHANGED, "", organization_id, ResourceChangedData(resource=resource, action=action, id=resource_id, name=name)
    )


def token_changed(user_id: str, action: str, token_id: str, name: str) -> Event:
    """A user's API token was created or revoked: for that user's clients only (no organisation)."""
    return Event.of(
        EventType.RESOURCE_CHANGED, "", "", ResourceChangedData(resource="token", action=action, id=token_id, name=name, user_id=user_id)
    )


def platform_changed(resource: str, action: str, resource_id: str, name: str | None) -> Event:
    """A user or an organisation was created or changed: for superusers' clients only (no organisation)."""
    return Event.of(EventType.RESOURCE_CHANGED, "", "", ResourceChangedData(resource=resource, action=action, id=resource_id, name=name))


def audience(evt: Event) -> tuple[str, str | None]:
    """Who may receive a ``RESOURCE_CHANGED`` event: ``("organization", id)`` (its members), ``("user", id)``
    (one account: its tokens) or ``("superusers", None)`` (users and organisations of the platform)."""
    resource = evt.data.get("resource")
    if resource == "token":
        return "user", evt.data.get("user_id")
    if resource in PLATFORM_RESOURCES:
        return "superusers", None
    return "organization", evt.organization_id


@dataclass(frozen=True)
class Event:
    """One event on the bus. ``data`` is the JSON form of the type's payload model (see :meth:`of`)."""

    type: EventType
    deployment_id: str
    organization_id: str
    data: dict[str, Any]
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(
        cls,
        kind: EventType,
        deployment_id: str,
        organization_id: str,
        data: BaseModel,
        timestamp: datetime | None = None,
    ) -> Event:
        """An event whose payload is a typed model (validated now, stored as JSON-ready data)."""
        expected = DATA_MODELS[kind]
        if expected is not None and not isinstance(data, expected):
            raise TypeError(f"{kind} carries {expected.__name__}, not {type(data).__name__}")
        return cls(kind, deployment_id, organization_id, data.model_dump(mode="json"), timestamp or datetime.now(UTC))

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


EventFilter = Callable[[Event], bool]
Subscriber = Callable[[Event], None]


@dataclass(frozen=True)
class Overflow:
    """What a stream yields in place of the events it had to drop (its consumer fell behind), or, ``missed``,
    where events of other processes may be missing (the event bus was disconnected: :meth:`LocalEventBus.missed`)."""

    dropped: int
    missed: bool = False


def deliver_on_loop(loop: asyncio.AbstractEventLoop, thread: int, handle: Callable[[Event], None], evt: Event) -> bool:
    """``handle(evt)`` on ``loop`` (whose thread is ``thread``), from whichever thread published ``evt``: at
    once on the loop's own thread, else scheduled there. False when the loop has closed."""
    if threading.get_ident() == thread:
        handle(evt)
        return True
    try:
        loop.call_soon_threadsafe(handle, evt)
    except RuntimeError:
        return False
    return True


class EventStream:
    """A bounded per-subscriber queue, filled from any thread, read as an async iterator.

    The publisher never waits: an event that finds the queue full is dropped, and the consumer's next
    read returns one :class:`Overflow` (after the events queued before it) so it can resynchronise from
    the database. ``filter`` runs on the publisher's thread: keep it cheap and non-blocking.

    A stream made with ``EventStream(bus, None, maxsize)`` is not subscribed: its owner fills it with
    :meth:`put` (the real-time hub, which indexes its clients' subscriptions itself).
    """

    def __init__(self, bus: LocalEventBus, filter: EventFilter | None, maxsize: int) -> None:
        self._bus = bus
        self.filter = filter
        self.maxsize = maxsize
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._items: deque[Event] = deque()
        self._dropped = 0
        self._missed = False
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.sink = self.offer  # one bound method object: the bus finds it again by identity to remove it

    # publisher side (any thread)
    def offer(self, evt: Event) -> None:
        if self._closed or (self.filter is not None and not self.filter(evt)):
            return
        if not deliver_on_loop(self._loop, self._thread, self.put, evt):  # the consumer's loop has closed
            self._closed = True

    def put(self, evt: Event) -> None:
        """Queue ``evt`` (on the consumer's loop; past ``maxsize`` it is dropped and counted)."""
        if self._closed:
            return
        if len(self._items) >= self.maxsize:
            self._dropped += 1
        else:
            self._items.append(evt)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def mark_missed(self) -> None:
        """Yield an :class:`Overflow` (``missed``) after what is queued: events may have been lost upstream
        (on the consumer's loop)."""
        if self._closed:
            return
        self._missed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # consumer side (its loop)
    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event | Overflow:
        while True:
            if self._items:
                return self._items.popleft()
            if self._dropped or self._missed:
                return self._overflow()
            if self._closed:
                raise StopAsyncIteration
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def get_nowait(self) -> Event | Overflow | None:
        if self._items:
            return self._items.popleft()
        if self._dropped or self._missed:
            return self._overflow()
        return None

    def _overflow(self) -> Overflow:
        overflow = Overflow(self._dropped, self._missed)
        self._dropped, self._missed = 0, False
        return overflow

    def clear(self) -> int:
        """Forget what is queued (a consumer about to resynchronise from the database)."""
        count = len(self._items) + self._dropped
        self._items.clear()
        self._dropped = 0
        self._missed = False
        return count

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self._closed = True
        self._bus._remove(self.sink)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class LocalEventBus:
    """In-process fan-out. Cross-process transports feed it from their listeners.

    ``publish`` is for events that happened in this process: local subscribers get them at once and the
    forwarder (if a transport is running) sends them to the other processes. ``deliver`` is for events
    that arrived from another process: local subscribers only, so nothing is echoed back.
    """

    def __init__(self) -> None:
        # Copy-on-write: publishers (any thread) iterate a snapshot without taking the lock.
        self._subscribers: tuple[tuple[Subscriber, EventFilter | None], ...] = ()
        self._lock = threading.Lock()
        self._forwarder: Subscriber | None = None
        self._missed_callbacks: tuple[Callable[[], None], ...] = ()
        self._transactional_sender: Callable[[Session, list[Event]], bool] | None = None
        self.published = 0
        self.published_by_type: Counter[str] = Counter()

    def stream(self, filter: EventFilter | None = None, *, maxsize: int = DEFAULT_STREAM_BOUND) -> EventStream:
        """Subscribe on the running loop: ``with bus.stream(f) as events: async for evt in events: ...``."""
        stream = EventStream(self, filter, maxsize)
        self._add(stream.sink, filter)
        return stream

    def subscribe(self, callback: Subscriber, filter: EventFilter | None = None) -> Callable[[], None]:
        """A synchronous observer (counters, test recorders), called on the publisher's thread.

        It must not block. Consumers that do I/O use :meth:`stream`.
        """
        wrapped = callback if filter is None else (lambda evt: filter(evt) and callback(evt))
        self._add(wrapped, filter)
        return lambda: self._remove(wrapped)

    def _add(self, sink: Subscriber, filter: EventFilter | None) -> None:
        with self._lock:
            self._subscribers = (*self._subscribers, (sink, filter))

    def _remove(self, sink: Subscriber) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s[0] is not sink)

    def wants(self, evt: Event) -> bool:
        """Whether any local subscriber would receive ``evt`` (spares reading log lines nobody follows)."""
        return any(f is None or f(evt) for _, f in self._subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def set_forwarder(self, forwarder: Subscriber | None) -> None:
        """Install (or remove, with ``None``) the hook that sends published events to other processes.

        The forwarder is called from ``publish``, possibly inside SQLAlchemy's ``after_commit`` hook and
        from any thread, so it must only enqueue, never block.
        """
        self._forwarder = forwarder

    def set_transactional_sender(self, sender: Callable[[Session, list[Event]], bool] | None) -> None:
        """Install (or remove, with ``None``) the hook that sends a transaction's events to other processes
        inside the transaction itself, from ``before_commit`` (PostgreSQL delivers a ``NOTIFY`` at commit,
        atomically with it, without waiting for a sender task). It returns True when it sent them all; else
        they are forwarded after the commit like any other."""
        self._transactional_sender = sender

    def publish(self, evt: Event, *, forward: bool = True) -> None:
        """Deliver an event of this process to local subscribers, then forward it to other processes
        (``forward=False``: it already crossed, in its transaction)."""
        self.published += 1
        self.published_by_type[str(evt.type)] += 1
        self.deliver(evt)
        forwarder = self._forwarder
        if forwarder is not None and forward:
            try:
                forwarder(evt)
            except Exception:
                logger.exception("could not forward %s event to other processes", evt.type)

    def deliver(self, evt: Event) -> None:
        """Deliver to local subscribers only (events received from other processes)."""
        for sink, _ in self._subscribers:
            try:
                sink(evt)
            except Exception:
                logger.exception("event subscriber failed for %s", evt.type)

    def on_missed(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Have ``callback`` called (on the transport's thread: it must not block) by :meth:`missed`;
        returns the function that removes it."""
        with self._lock:
            self._missed_callbacks = (*self._missed_callbacks, callback)

        def remove() -> None:
            with self._lock:
                self._missed_callbacks = tuple(c for c in self._missed_callbacks if c is not callback)

        return remove

    def missed(self) -> None:
        """Events of other processes may have been missed (the transport's listener was disconnected and
        listens again): subscribers that keep state (the real-time hub) resynchronise from the database."""
        for callback in self._missed_callbacks:
            try:
                callback()
            except Exception:
                logger.exception("event bus: a missed-events callback failed")


bus = LocalEventBus()


def queue_event(session: AsyncSession | Session, evt: Event) -> None:
    """Attach ``evt`` to ``session``; it is published after the session's next commit."""
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    sync_session.info.setdefault(_PENDING_KEY, []).append(evt)


# The product guide (docs/architecture.md#the-product-guide) greps the server log for ``emit_`` (``emit_deployment_status_changed: deployment <id>``).
_CHATTY = frozenset({EventType.DEPLOYMENT_LOGS_UPDATE, EventType.DEPLOYMENT_PROGRESS})


# Both hooks also fire when a SAVEPOINT (``begin_nested``) is released: events wait for the real commit.


@event.listens_for(Session, "before_commit")
def _send_in_transaction(session: Session) -> None:
    if session.in_nested_transaction():
        return
    pending = session.info.get(_PENDING_KEY)
    sender = bus._transactional_sender
    if pending and sender is not None and sender(session, pending):
        session.info[_SENT_KEY] = len(pending)


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    session.info.pop(_SAVEPOINTS_KEY, None)
    sent = session.info.pop(_SENT_KEY, 0)
    for number, evt in enumerate(session.info.pop(_PENDING_KEY, [])):
        # status, creation and deletion at INFO (the product guide's `grep "emit_"`), the chatty ones at DEBUG
        logger.log(
            logging.DEBUG if evt.type in _CHATTY else logging.INFO,
            "emit_%s: deployment %s",
            str(evt.type).lower(),
            evt.deployment_id,
        )
        bus.publish(evt, forward=number >= sent)


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction) -> None:
    if transaction.nested:  # what is queued from here on goes if this SAVEPOINT is rolled back
        session.info.setdefault(_SAVEPOINTS_KEY, {})[id(transaction)] = len(session.info.get(_PENDING_KEY, ()))


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_rollback(session: Session, previous_transaction) -> None:
    mark = session.info.get(_SAVEPOINTS_KEY, {}).pop(id(previous_transaction), None)
    if previous_transaction.nested and mark is not None:
        del session.info.get(_PENDING_KEY, [])[mark:]  # the events queued inside the rolled-back SAVEPOINT
        return
    session.info.pop(_PENDING_KEY, None)
    session.info.pop(_SENT_KEY, None)
    session.info.pop(_SAVEPOINTS_KEY, None)


async def sleep_or_event(delay: float, event: asyncio.Event) -> bool:
    """Wait ``delay`` seconds or until ``event`` is set, whichever comes first (True: the event).

    Not ``asyncio.wait_for``: on Python 3.11 it returns the inner result and drops a cancellation that arrives
    as the event is set, and a loop cancelled at that moment went on forever (the app's shutdown, which waits
    for its loops, with it). ``asyncio.wait`` lets the cancellation through."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=delay)
    finally:
        waiter.cancel()
    return bool(done)


async def wait_for(predicate: Callable[[Event], bool], timeout: float) -> Event:
    """Wait for the first bus event matching ``predicate`` (tests and benchmarks use it)."""
    with bus.stream(predicate, maxsize=1) as events:
        async with asyncio.timeout(timeout):
            async for item in events:
                if isinstance(item, Event):
                    return item
    raise TimeoutError("event bus closed")
