"""The hub: the real-time clients of one event loop, indexed by what they follow, and the fan-out of each event.

One subscriber on the bus per loop (:meth:`Hub.of_running_loop`), whatever the number of clients. The
clients' side of the contract is :class:`Member` (implemented by
:class:`~backend.app.runtime.realtime.client.Client`): the hub reads a few plain attributes of each recipient
and either sends the event itself or hands it to the client's queue and pump.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from backend.app.core.events import LIST_EVENTS, Event, EventStream, EventType, audience, bus, deliver_on_loop
from backend.app.runtime import metrics
from backend.app.runtime.realtime.frames import encode_event, latency, text_frame

logger = logging.getLogger(__name__)


class Member(Protocol):
    """What the hub reads and calls on each client it delivers to (a :class:`~backend.app.runtime.realtime.client.Client`)."""

    deployments: dict
    organizations: set[str]
    stream: EventStream | None
    direct: bool
    writing: bool
    sending: int
    busy: int
    idle: bool

    def queue(self, evt: Event) -> None: ...

    def advance(self, evt: Event) -> bool | None: ...

    def send_now(self, message: dict) -> bool: ...

    #: writes a whole WebSocket frame to the client's socket (the listener's clients), or None: the hub then
    #: sends through :meth:`send_now`
    write_frame: Callable[[bytes], object] | None

    def close(self, reason: str, code: int = 1000) -> None: ...


_direct_sends: list[tuple[Event, str, int]] = []  # (event, transport, frames sent): observed after the fan-out


def _count_direct_sends(evt: Event, transport: str, count: int) -> None:
    """Count ``count`` frames of ``evt`` sent during the delivery; the metrics are updated once the delivery is done
    (a callback after it), so the fan-out to thousands of sockets does not wait for them."""
    if not _direct_sends:
        asyncio.get_running_loop().call_soon(_observe_direct_sends)
    _direct_sends.append((evt, transport, count))


def _observe_direct_sends() -> None:
    tallies = list(_direct_sends)
    _direct_sends.clear()
    for evt, transport, count in tallies:
        metrics.EVENT_FRAMES.labels(transport, "direct").inc(count)
        metrics.observe_many(metrics.EVENT_SEND_LATENCY.labels(transport), latency(evt), count)


class Hub:
    """The real-time clients of one event loop, indexed by what they follow, and the fan-out of each event.

    One subscriber on the bus per loop, whatever the number of clients: an event costs one lookup in each
    index and one step per client that follows its deployment or organisation, never a call per connected
    client. Per recipient: when its pump is idle (nothing queued, lock free) and it is a WebSocket, the hub
    does what the pump would and sends the event's one ASGI message (its text encoded once, the dict shared by
    every recipient) through the connection's ASGI ``send`` at once (:meth:`Member.send_now`: no task per
    client; the first clients have it while the hub goes on to the next ones; a send that has to wait for its
    socket finishes in a task of its own). Otherwise the event goes to the client's queue and its pump.
    """

    _hubs: dict[asyncio.AbstractEventLoop, Hub] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        # dicts used as ordered sets: a fan-out visits clients in the order they subscribed (roughly the order
        # their objects were allocated in), which the CPU's caches like better than a set's hash order
        self.by_deployment: dict[str, dict[Member, None]] = {}
        self.by_organization: dict[str, dict[Member, None]] = {}
        # Events of no organisation (RESOURCE_CHANGED of an account or of the platform, core.events.audience):
        # every client is indexed under its user, and superusers once more; no subscription needed.
        self.by_user: dict[str, dict[Member, None]] = {}
        self.superusers: dict[Member, None] = {}
        self._users: dict[Member, str] = {}
        self.clients = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_missed: Callable[[], None] | None = None

    @classmethod
    def of_running_loop(cls) -> Hub:
        loop = asyncio.get_running_loop()
        hub = cls._hubs.get(loop)
        if hub is None:
            hub = cls._hubs[loop] = cls(loop)
        return hub

    def add(self, client: Member) -> None:
        self.clients += 1
        if self._unsubscribe is None:
            self._unsubscribe = bus.subscribe(self.offer, filter=self.wants)
            self._unsubscribe_missed = bus.on_missed(self.offer_missed)

    def remove(self, client: Member) -> None:
        for deployment_id in list(client.deployments):
            self.unfollow(client, deployment_id)
        for organization_id in list(client.organizations):
            self.leave(client, organization_id)
        self.exit(client)
        self.clients -= 1
        if self.clients <= 0 and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
            if self._unsubscribe_missed is not None:
                self._unsubscribe_missed()
                self._unsubscribe_missed = None
            self._hubs.pop(self.loop, None)

    def follow(self, client: Member, deployment_id: str) -> None:
        self.by_deployment.setdefault(deployment_id, {})[client] = None

    def unfollow(self, client: Member, deployment_id: str) -> None:
        _discard(self.by_deployment, deployment_id, client)

    def join(self, client: Member, organization_id: str) -> None:
        self.by_organization.setdefault(organization_id, {})[client] = None

    def leave(self, client: Member, organization_id: str) -> None:
        _discard(self.by_organization, organization_id, client)

    def enter(self, client: Member, user_id: str, superuser: bool) -> None:
        """Index ``client`` under its user (its account's events: its API tokens) and, for a superuser, with
        those who hear the platform's (users, organisations); again whenever its access is read anew."""
        if self._users.get(client) != user_id:
            self.exit(client)
            self._users[client] = user_id
            self.by_user.setdefault(user_id, {})[client] = None
        if superuser:
            self.superusers[client] = None
        else:
            self.superusers.pop(client, None)

    def exit(self, client: Member) -> None:
        user_id = self._users.pop(client, None)
        if user_id is not None:
            _discard(self.by_user, user_id, client)
        self.superusers.pop(client, None)

    def audience_of(self, evt: Event) -> dict[Member, None] | None:
        """The clients an event of no organisation is for (its account's user, or superusers), or None."""
        kind, user_id = audience(evt)
        if kind == "user":
            return self.by_user.get(user_id or "")
        return self.superusers if kind == "superusers" else None

    # --- the bus's side (any thread) ---

    def wants(self, evt: Event) -> bool:
        # Reads only; dict membership is atomic under the GIL.
        return (
            evt.deployment_id in self.by_deployment
            or (evt.type in LIST_EVENTS and evt.organization_id in self.by_organization)
            or (not evt.organization_id and evt.type is EventType.RESOURCE_CHANGED and bool(self.audience_of(evt)))
        )

    def offer(self, evt: Event) -> None:
        deliver_on_loop(self.loop, self.thread, self.fan_out, evt)  # a closed loop has no client left to serve

    def offer_missed(self) -> None:
        """The bus's listener was disconnected (a database or Redis restart): what other processes published
        meanwhile never reached this process. Every subscribed client resynchronises, as one that fell behind
        does: a ``resync`` frame per subscription, then the log lines it lacks from the database."""
        try:
            self.loop.call_soon_threadsafe(self.resync_all)
        except RuntimeError:  # the loop has closed: no client left
            pass

    def resync_all(self) -> None:
        clients: dict[Member, None] = {}
        for index in (self.by_deployment, self.by_organization):
            for members in index.values():
                clients.update(members)
        clients.update(dict.fromkeys(self._users))  # every client hears its account's events
        for client in clients:
            if client.stream is not None:
                client.idle = False  # what the hub would write directly now goes through the pump, after the resync
                client.stream.mark_missed()

    # --- the loop's side ---

    def fan_out(self, evt: Event) -> None:
        if not evt.organization_id and evt.type is EventType.RESOURCE_CHANGED:
            for client in tuple(self.audience_of(evt) or ()):  # a few, now and then: through their pumps
                client.queue(evt)
            return
        followers = self.by_deployment.get(evt.deployment_id)
        members = self.by_organization.get(evt.organization_id) if evt.type in LIST_EVENTS else None
        recipients: tuple[Member, ...] = tuple(followers) if followers else ()
        if members:  # a client following the deployment and its organisation gets the event once
            recipients += tuple(c for c in members if c not in followers) if followers else tuple(members)
        stateful = evt.type in _STATEFUL
        # The ASGI message of the event, built for the first client that takes it and shared by all: one
        # encoding and one dict per event (servers only read it), not per client.
        message = None
        sent = 0
        writes: list[Callable[[bytes], object]] = []  # the sockets written to at the end (see _write_all)
        writers: list[Member] = []
        for client in recipients:
            # What the pump would do, done here when it is idle (nothing queued, lock free), no send the hub began
            # still waits for the socket and no other frame is being sent; read as plain attributes: this loop
            # runs once per client and event.
            if not client.direct or client.busy or not client.idle or client.writing or client.sending:
                client.queue(evt)
                continue
            if stateful:
                try:
                    verdict = client.advance(evt)
                except Exception:
                    logger.exception("real time: direct delivery of %s failed; queued instead", evt.type)
                    verdict = False
                if verdict is None:
                    continue
                if not verdict:
                    client.queue(evt)
                    continue
            write = client.write_frame
            if write is not None:
                writes.append(write)
                writers.append(client)
                continue
            if message is None:
                message = {"type": "websocket.send", "text": encode_event(evt)}
            if client.send_now(message):
                sent += 1
        if writes:
            sent += _write_all(writes, writers, evt)
        if sent:
            _count_direct_sends(evt, "websocket", sent)


def _write_all(writes: list[Callable[[bytes], object]], writers: list[Member], evt: Event) -> int:
    """Write the event's frame, built once (a server's frames are not masked: every client's are the same
    bytes), to the sockets of the clients that write whole frames (:attr:`Member.write_frame`), one after the
    other with nothing in between: the frame is not framed again per client (picows' ``send``), and no
    client's checks run between two writes (bench/README.md, "Issue 23, twelfth pass"). A text too large for
    one frame goes through each client's :meth:`Member.send_now`. Returns how many were sent."""
    text = encode_event(evt)
    frame = text_frame(text.encode())
    if frame is None:
        message = {"type": "websocket.send", "text": text}
        return sum(1 for client in writers if client.send_now(message))
    count, start, failed = len(writes), 0, 0
    while True:
        i = start
        try:
            for i in range(start, count):
                writes[i](frame)
            return count - failed
        except Exception as exc:  # noqa: BLE001 - gone or closing: end this client, never the others' delivery
            writers[i].close(f"send failed: {type(exc).__name__}: {exc}"[:200], 1011)
            failed += 1
            start = i + 1


_STATEFUL = frozenset({EventType.DEPLOYMENT_LOGS_UPDATE, EventType.DEPLOYMENT_DELETED})


def _discard(index: dict[str, dict[Member, None]], key: str, client: Member) -> None:
    clients = index.get(key)
    if clients is not None:
        clients.pop(client, None)
        if not clients:
            del index[key]
