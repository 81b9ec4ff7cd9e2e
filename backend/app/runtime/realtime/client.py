"""A real-time client: one per WebSocket connection or SSE stream (see the package's docstring for the invariants).

:class:`Client` holds the client's subscriptions, its :class:`~backend.app.runtime.realtime.access.Access`,
one bounded queue (an :class:`~backend.app.core.events.EventStream`, filled by the loop's
:class:`~backend.app.runtime.realtime.hub.Hub`) and one *pump* task that sends what is queued: log lines
after a subscription's ``last_seq`` (caught up from the database when a live batch starts beyond it),
``resync`` frames and the missing lines after an overflow, the other events as they are. The transports
(WebSocket, SSE) subclass it in ``api/realtime.py`` with their :meth:`Client.send_text`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from backend.app import database
from backend.app.core.events import Event, EventStream, EventType, Overflow, audience, bus
from backend.app.models import Deployment
from backend.app.runtime import metrics
from backend.app.runtime.realtime import eager
from backend.app.runtime.realtime.access import Access, registry, stack_of
from backend.app.runtime.realtime.frames import dumps, encode_event, latency, logs_frame
from backend.app.runtime.realtime.hub import Hub
from backend.app.services.deployments.logs import read_logs

logger = logging.getLogger(__name__)

CATCH_UP_PAGE = 2000  # persisted lines per frame when catching up
CLIENT_QUEUE_BOUND = 500  # events a client may have waiting before it is resynchronised
HEARTBEAT_SECONDS = 15.0
SEND_TIMEOUT_SECONDS = 30.0
CLOSE_UNAUTHORIZED = 4401


@dataclass
class DeploymentSubscription:
    deployment_id: str
    organization_id: str
    last_seq: int


class _Exclusive:
    """``async with client.exclusive``: the client's lock, with ``client.busy`` counting its holders (one
    attribute read for the hub instead of a call on the lock)."""

    __slots__ = ("client",)

    def __init__(self, client: Client) -> None:
        self.client = client

    async def __aenter__(self) -> None:
        await self.client.lock.acquire()
        self.client.busy += 1

    async def __aexit__(self, *_exc) -> None:
        self.client.busy -= 1
        self.client.lock.release()


class Client(ABC):
    """A WebSocket connection or SSE stream: its subscriptions, its bounded queue (filled by the hub) and its pump."""

    def __init__(self, access: Access, transport: str) -> None:
        self.access = access
        self.transport = transport
        self.deployments: dict[str, DeploymentSubscription] = {}
        self.organizations: set[str] = set()
        self.lock = asyncio.Lock()  # the pump's, and a subscription's while it catches up (see exclusive)
        self.send_lock = asyncio.Lock()  # one frame at a time, whoever sends it: pump, answers, heartbeats, hub
        self.exclusive = _Exclusive(self)
        self.stream: EventStream | None = None  # filled by the loop's hub from start() until stop()
        self.hub: Hub | None = None
        # Read by the hub for every event (:meth:`Hub.fan_out`): plain attributes of this object, so a fan-out to
        # thousands of clients touches as little memory per client as it can.
        self.direct = False  # the hub may send events itself, from the delivery (a WebSocket sets it; not SSE)
        self.write_frame: Callable[[bytes], object] | None = None  # (see Member.write_frame in hub.py)
        self.writing = False  # a send the hub began waits for the socket (see send_now)
        self.sending = 0  # frames being sent through send_lock or waiting for it (pump, answers, heartbeats)
        self.busy = 0  # > 0 while ``lock`` is held through ``exclusive``
        self.idle = False  # the pump waits on an empty queue
        self.pump_task: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self.close_code = 1000
        self._tasks: set[asyncio.Task] = set()
        self._send_latency = metrics.EVENT_SEND_LATENCY.labels(transport)
        self._frames_queued = metrics.EVENT_FRAMES.labels(transport, "queued")

    # --- transport ------------------------------------------------------------------------------

    @abstractmethod
    async def send_text(self, text: str, seq: int | None = None, kind: str | None = None) -> None:
        """Send one frame (``seq``: the last log ``seq`` sent so far, for SSE ids; ``kind``: the frame type).
        Called under ``send_lock``, or by :meth:`send_now` while nobody holds it."""

    async def send(self, frame: dict, seq: int | None = None) -> None:
        await self._send(dumps(frame), seq, frame.get("type"))

    async def _send(self, text: str, seq: int | None, kind: str | None) -> None:
        self.sending += 1
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS), self.send_lock:  # (no extra task, unlike wait_for)
                await self.send_text(text, seq, kind)
        except TimeoutError:
            self.close(f"the client did not read for {SEND_TIMEOUT_SECONDS:g} s", 1008)
            raise ConnectionError("client send timed out") from None
        finally:
            self.sending -= 1

    def event_send(self, message: dict) -> Awaitable[None]:
        """The send that :meth:`send_now` starts for an event's ASGI ``websocket.send`` message (built once per
        event by the hub and shared by its recipients: never changed): :meth:`send_text` of its text. A
        WebSocket replaces it with the connection's ASGI ``send`` itself (an attribute: no call in between,
        it runs once per client and event)."""
        return self.send_text(message["text"])

    def send_now(self, message: dict) -> bool:
        """Send an event's ASGI ``message`` from the hub's delivery, its pump idle and no other frame being sent:
        :meth:`event_send` run at once (:func:`eager.start`), without a task and without taking the lock (a send
        that finishes at once needs none), up to where it would wait. True when the text is sent or on its way:
        if the socket cannot take it now (the server paused writing to this client), the rest of the send runs
        in a task that holds ``send_lock`` until it is done (so what is sent next follows it), ``writing``
        meanwhile (the hub then queues this client's events for the pump), within :data:`SEND_TIMEOUT_SECONDS`.
        False when the send failed: the client closes."""
        try:
            rest = eager.start(self.event_send(message))
        except Exception as exc:  # noqa: BLE001 - gone or closing: end this client, never the hub's delivery
            self.close(f"send failed: {type(exc).__name__}: {exc}"[:200], 1011)
            return False
        if rest is not None:
            self.writing = True
            # Nobody sends or waits to (the hub checked ``sending``), so the lock is free and taken at once (None);
            # otherwise the task waits for its turn.
            locking = eager.start(self.send_lock.acquire())
            task = asyncio.get_running_loop().create_task(self._finish_send(rest, locking), name=f"realtime-{self.transport}-send")
            self._tasks.add(task)
        return True

    async def _finish_send(self, rest: Awaitable[None], locking: Awaitable[bool] | None) -> None:
        locked = locking is None
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                if not locked:
                    locked = await locking
                await rest
        except TimeoutError:
            self.close(f"the client did not read for {SEND_TIMEOUT_SECONDS:g} s", 1008)
        except Exception as exc:  # noqa: BLE001 - as in send_now
            self.close(f"send failed: {type(exc).__name__}: {exc}"[:200], 1011)
        finally:
            self.writing = False
            if locked:
                self.send_lock.release()
            self._tasks.discard(asyncio.current_task())

    def close(self, reason: str, code: int = 1000) -> None:
        """Ask the endpoint to end this client (``code``: the WebSocket close code)."""
        if self.close_reason is None:
            self.close_reason, self.close_code = reason, code
        self.direct = False  # nothing more sent from the hub's delivery; the endpoint closes the connection
        self.closed.set()

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.access.stacks is not None:
            self.direct = False  # every event through the pump, which judges its stack (_forward)
        self.stream = EventStream(bus, None, CLIENT_QUEUE_BOUND)
        self.hub = Hub.of_running_loop()
        self.hub.add(self)
        self.hub.enter(self, self.access.user_id, self.access.superuser)  # its account's events, unasked
        for sub in list(self.deployments.values()):  # subscriptions made before start(), indexed now
            self._follow(sub)
        for organization_id in list(self.organizations):
            self._join(organization_id)
        registry.add(self)
        self.pump_task = asyncio.get_running_loop().create_task(self._pump(), name=f"realtime-{self.transport}")

    async def stop(self) -> None:
        registry.discard(self)
        if self.hub is not None:
            self.hub.remove(self)
            self.hub = None
        if self.stream is not None:
            self.stream.close()
        tasks = [t for t in (self.pump_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def set_access(self, access: Access) -> None:
        """New access from the registry (or a re-authentication): drop what it no longer allows."""
        self.access = access
        if access.revoked:
            self.close(access.revoked, CLOSE_UNAUTHORIZED)
            return
        if access.stacks is not None:
            self.direct = False
        if self.hub is not None:
            self.hub.enter(self, access.user_id, access.superuser)  # a superuser no more hears no platform event
        lost_orgs = [o for o in self.organizations if not access.allows(o)]
        lost_deployments = [s for s in self.deployments.values() if not access.allows(s.organization_id)]
        if lost_orgs or lost_deployments:
            # Events of those organisations stop now (out of the hub's index; the pump checks ``access``); the
            # frames saying so are sent by a task, so that a client stuck on a slow send never holds up the
            # registry.
            if self.hub is not None:
                for org in lost_orgs:
                    self.hub.leave(self, org)
                for sub in lost_deployments:
                    self.hub.unfollow(self, sub.deployment_id)
            self._tasks.add(asyncio.get_running_loop().create_task(self._unsubscribe_lost(lost_orgs, lost_deployments)))

    async def _unsubscribe_lost(self, lost_orgs: list[str], lost_deployments: list[DeploymentSubscription]) -> None:
        try:
            await self._send_lost(lost_orgs, lost_deployments)
        except (ConnectionError, RuntimeError, OSError) as exc:
            self.close(f"send failed: {exc}")
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _send_lost(self, lost_orgs: list[str], lost_deployments: list[DeploymentSubscription]) -> None:
        async with self.exclusive:
            for org in lost_orgs:
                self._leave(org)
                await self.send(
                    {
                        "type": "error",
                        "code": "access_revoked",
                        "organization_id": org,
                        "detail": "you are no longer a member of this organization; unsubscribed",
                    }
                )
            for sub in lost_deployments:
                self._unfollow(sub.deployment_id)
                await self.send(
                    {
                        "type": "error",
                        "code": "access_revoked",
                        "deployment_id": sub.deployment_id,
                        "detail": "you are no longer a member of this deployment's organization; unsubscribed",
                    }
                )

    # --- subscriptions ------------------------------------------------------------------------------

    # The subscriptions and the hub's index change together, on the loop. The index only ever holds what
    # ``access`` allows (checked here, and set_access takes out what it no longer allows), so the hub's
    # fan-out needs no access check per client.

    def _follow(self, sub: DeploymentSubscription) -> None:
        self.deployments[sub.deployment_id] = sub
        if self.hub is not None and self.access.allows(sub.organization_id):
            self.hub.follow(self, sub.deployment_id)

    def _unfollow(self, deployment_id: str) -> bool:
        if self.hub is not None:
            self.hub.unfollow(self, deployment_id)
        return self.deployments.pop(deployment_id, None) is not None

    def _join(self, organization_id: str) -> None:
        self.organizations.add(organization_id)
        if self.hub is not None and self.access.allows(organization_id):
            self.hub.join(self, organization_id)

    def _leave(self, organization_id: str) -> bool:
        if self.hub is not None:
            self.hub.leave(self, organization_id)
        if organization_id not in self.organizations:
            return False
        self.organizations.discard(organization_id)
        return True

    async def subscribe_deployment(self, deployment_id: str, organization_id: str, since_seq: int, *, announce: bool = True) -> int:
        """Follow a deployment: persisted lines after ``since_seq`` now, live events after (``announce``:
        then a ``subscribed`` frame). Returns the last ``seq`` sent."""
        async with self.exclusive:
            sub = self.deployments.get(deployment_id)
            if sub is None:
                sub = DeploymentSubscription(deployment_id, organization_id, since_seq)
                self._follow(sub)  # live events queue from here on (busy: the hub queues them for the pump)
            else:
                sub.last_seq = since_seq
            await self._catch_up(sub)
            if announce:
                async with database.AsyncSessionLocal() as session:  # read after the subscription took effect
                    status = (await session.execute(select(Deployment.status).where(Deployment.id == deployment_id))).scalar_one_or_none()
                await self.send(
                    {
                        "type": "subscribed",
                        "deployment_id": deployment_id,
                        "organization_id": organization_id,
                        "stream": "events",
                        "last_seq": sub.last_seq,
                        "status": str(status) if status is not None else None,
                    }
                )
            return sub.last_seq

    async def subscribe_organization(self, organization_id: str) -> None:
        async with self.exclusive:
            self._join(organization_id)
            await self.send({"type": "subscribed", "organization_id": organization_id, "stream": "events"})

    async def unsubscribe_organization(self, organization_id: str) -> bool:
        async with self.exclusive:
            return self._leave(organization_id)

    async def unsubscribe_deployment(self, deployment_id: str) -> bool:
        async with self.exclusive:
            return self._unfollow(deployment_id)

    async def _catch_up(self, sub: DeploymentSubscription, upto: int | None = None) -> None:
        """Send the persisted lines after ``sub.last_seq`` (up to ``upto``), by pages."""
        while upto is None or sub.last_seq < upto:
            limit = CATCH_UP_PAGE if upto is None else min(CATCH_UP_PAGE, upto - sub.last_seq)
            async with database.AsyncSessionLocal() as session:
                lines = await read_logs(session, deployment_id=sub.deployment_id, since_seq=sub.last_seq, limit=limit)
            if not lines:
                return
            sub.last_seq = lines[-1].seq
            await self.send(logs_frame(sub.deployment_id, sub.organization_id, lines), sub.last_seq)
            if len(lines) < limit:
                return

    # --- the pump -------------------------------------------------------------------------------------

    def queue(self, evt: Event) -> None:
        """Hand ``evt`` to the pump (the hub, when it cannot send the event itself)."""
        self.idle = False
        self.stream.put(evt)

    async def _pump(self) -> None:
        stream = self.stream
        try:
            while True:
                item = stream.get_nowait()
                if item is None:
                    self.idle = True  # from here until an event is queued, the hub may send events itself
                    try:
                        item = await anext(stream)
                    except StopAsyncIteration:
                        return
                    finally:
                        self.idle = False
                async with self.exclusive:
                    if isinstance(item, Overflow):
                        await self._resync(item)
                    else:
                        await self._forward(item)
        except (ConnectionError, RuntimeError, OSError) as exc:
            self.close(f"send failed: {exc}", 1011)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("real time: %s client pump failed", self.transport)
            self.close("internal error", 1011)

    def advance(self, evt: Event) -> bool | None:
        """The part of the pump's :meth:`_forward` that changes this client's state, done by the hub for a log
        or deletion event it is about to send itself: True to send it, None when there is nothing to
        send (log lines of a deployment not followed), False when it must go through the queue and the pump
        (log lines that do not follow ``last_seq`` exactly). No access check: the hub's index holds allowed
        subscriptions only."""
        if evt.type is EventType.DEPLOYMENT_LOGS_UPDATE:
            sub = self.deployments.get(evt.deployment_id)
            if sub is None:
                return None
            logs = evt.data.get("logs") or ()
            if not logs or logs[0]["seq"] != sub.last_seq + 1:
                return False
            sub.last_seq = logs[-1]["seq"]
        elif evt.type is EventType.DEPLOYMENT_DELETED and evt.deployment_id in self.deployments:
            self._unfollow(evt.deployment_id)
        return True

    def hears(self, evt: Event) -> bool:
        """Whether this client may have ``evt``: an organisation's if its access allows it; one of no
        organisation (an account's or the platform's ``RESOURCE_CHANGED``) if it is of its audience."""
        if evt.organization_id:
            return self.access.allows(evt.organization_id)
        if evt.type is not EventType.RESOURCE_CHANGED or self.access.revoked is not None:
            return False
        kind, user_id = audience(evt)
        return (kind == "user" and user_id == self.access.user_id) or (kind == "superusers" and self.access.superuser)

    async def _forward(self, evt: Event) -> None:
        if not self.hears(evt):
            return
        if self.access.stacks is not None and evt.organization_id:  # a stack-limited token: its stacks' only
            stack_id = await stack_of(evt.deployment_id) if evt.deployment_id else None
            if not self.access.hears_stack(evt, stack_id):
                return
        sub = self.deployments.get(evt.deployment_id)
        if evt.type is EventType.DEPLOYMENT_LOGS_UPDATE:
            if sub is None:
                return
            lines = [line for line in evt.data.get("logs", ()) if line["seq"] > sub.last_seq]
            if not lines:
                return  # already sent (catch-up or resync read them from the database)
            if lines[0]["seq"] > sub.last_seq + 1:
                await self._catch_up(sub, upto=lines[0]["seq"] - 1)  # lines this process did not see
                lines = [line for line in lines if line["seq"] > sub.last_seq]
                if not lines:
                    return
            sub.last_seq = lines[-1]["seq"]
            if len(lines) == len(evt.data["logs"]):
                await self._send(encode_event(evt), sub.last_seq, str(evt.type))
            else:
                await self.send(logs_frame(evt.deployment_id, evt.organization_id, lines), sub.last_seq)
        else:
            await self._send(encode_event(evt), sub.last_seq if sub else None, str(evt.type))
            if evt.type is EventType.DEPLOYMENT_DELETED and sub is not None:
                self._unfollow(evt.deployment_id)
        self._send_latency.observe(latency(evt))
        self._frames_queued.inc()

    async def _resync(self, overflow: Overflow) -> None:
        dropped = overflow.dropped + self.stream.clear()
        metrics.RESYNCS.labels(self.transport).inc()
        if overflow.missed:
            logger.info("real time: the event bus reconnected; resynchronising a %s client of user %s", self.transport, self.access.user_id)
        else:
            logger.info(
                "real time: %s client of user %s fell behind (%d event(s) dropped); resynchronising",
                self.transport,
                self.access.user_id,
                dropped,
            )
        for org in sorted(self.organizations):
            await self.send({"type": "resync", "deployment_id": None, "organization_id": org, "last_seq": None})
        for sub in list(self.deployments.values()):
            await self.send(
                {"type": "resync", "deployment_id": sub.deployment_id, "organization_id": sub.organization_id, "last_seq": sub.last_seq},
                sub.last_seq,
            )
            await self._catch_up(sub)
        # and those of its account (its API tokens; users and organisations for a superuser): a resync of no
        # deployment and no organisation, after the others (the account lists read themselves again)
        await self.send({"type": "resync", "deployment_id": None, "organization_id": None, "last_seq": None})


def monotonic_deadline(expires_at: datetime | None) -> float | None:
    """``expires_at`` as a ``time.monotonic()`` deadline."""
    if expires_at is None:
        return None
    return time.monotonic() + (expires_at - datetime.now(UTC)).total_seconds()
