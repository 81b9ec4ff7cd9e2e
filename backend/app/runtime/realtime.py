"""Real-time clients (WebSocket and SSE): subscriptions, catch-up by ``seq``, access, backpressure.

One :class:`Client` per WebSocket connection or SSE stream. It owns one bounded queue (an
:class:`~backend.app.core.events.EventStream`) and one *pump* task that sends what is queued. The clients
of an event loop share one :class:`Hub`, the loop's only subscriber on the bus, which indexes them by the
deployments and organisations they subscribed to and hands each event to those clients only. Invariants:

* **No gap, no duplicate** for a deployment's log lines. Subscribing adds the deployment to the filter
  *first*, then sends the persisted lines after ``since_seq`` (read by pages), remembering the last
  ``seq`` sent; live lines at or below it are skipped, and a live batch that starts beyond it is preceded
  by the missing lines read from the database. Subscribing holds the client's lock, so the pump sends
  nothing in between.
* **A slow client never delays anyone.** The bus only appends to the client's bounded queue; when the
  queue is full the events are dropped and the pump, on reaching the :class:`~backend.app.core.events.Overflow`
  marker, sends a ``resync`` frame per subscription (with the last ``seq`` sent) and resumes the log
  lines from the database. A client that does not accept a frame within :data:`SEND_TIMEOUT_SECONDS`
  is disconnected.
* **One encoding, one write per client.** An event is encoded once (:func:`encode_event`) whatever the
  number of clients. When a client's pump is idle (nothing queued, lock free) and its socket can take a
  frame now, the hub does what the pump would (:meth:`Client.advance` for log lines and deletions) and
  writes the event's one pre-built frame (:func:`text_frame`) to the socket: no task switch, no ASGI send
  and no allocation per client. Anything else (a queue, log lines that need a catch-up, a
  socket whose buffer is full, per-connection compression, SSE) takes the pump, so order and the
  invariants above hold.
* **Access follows memberships.** :class:`AccessRegistry` re-reads, every :data:`ACCESS_REFRESH_SECONDS`
  and in one batch for every client of the process, each user's organisations, active flag and API token;
  events of an organisation a user left are no longer sent, its subscriptions end with an ``error`` frame,
  and a deactivated user or revoked token closes the client (WebSocket code 4401).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from backend.app import database
from backend.app.runtime import metrics
from backend.app.runtime.loops import LoopService
from backend.app.core.events import LIST_EVENTS, Event, EventStream, EventType, Overflow, bus, deliver_on_loop, iso_utc
from backend.app.models import ApiToken, Deployment, Membership, User
from backend.app.services.identity import auth_service
from backend.app.services.deployments.logs import LogLine, read_logs

logger = logging.getLogger(__name__)

CATCH_UP_PAGE = 2000  # persisted lines per frame when catching up
CLIENT_QUEUE_BOUND = 500  # events a client may have waiting before it is resynchronised
ACCESS_REFRESH_SECONDS = 2.0
HEARTBEAT_SECONDS = 15.0
SEND_TIMEOUT_SECONDS = 30.0
CLOSE_UNAUTHORIZED = 4401


def dumps(frame: dict) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str)


_encoded: dict[int, tuple[Event, str]] = {}


def encode_event(evt: Event) -> str:
    """The JSON of an event, encoded once however many clients receive it: the last few hundred are kept,
    keyed by the event's identity (the event is kept with its text, so an id reused by a later event never
    returns a stale text)."""
    entry = _encoded.get(id(evt))
    if entry is not None and entry[0] is evt:
        return entry[1]
    text = dumps(evt.to_dict())
    if len(_encoded) > 256:
        _encoded.clear()
    _encoded[id(evt)] = (evt, text)
    return text


def _latency(evt: Event) -> float:
    return max(0.0, (datetime.now(UTC) - evt.timestamp).total_seconds())


_direct_sends: list[tuple[Event, str, int]] = []  # (event, transport, frames written): observed after the fan-out


def _count_direct_sends(evt: Event, transport: str, count: int) -> None:
    """Count ``count`` frames of ``evt`` written directly; the metrics are updated once the delivery is done
    (a callback after it), so the fan-out to thousands of sockets does not wait for them."""
    if not _direct_sends:
        asyncio.get_running_loop().call_soon(_observe_direct_sends)
    _direct_sends.append((evt, transport, count))


def _observe_direct_sends() -> None:
    tallies = list(_direct_sends)
    _direct_sends.clear()
    for evt, transport, count in tallies:
        metrics.EVENT_FRAMES.labels(transport, "direct").inc(count)
        metrics.observe_many(metrics.EVENT_SEND_LATENCY.labels(transport), _latency(evt), count)


def logs_frame(deployment_id: str, organization_id: str, lines: list[LogLine] | list[dict]) -> dict:
    now = iso_utc(datetime.now(UTC))
    logs = [line if isinstance(line, dict) else line.to_dict() for line in lines]
    return {"type": str(EventType.DEPLOYMENT_LOGS_UPDATE), "deployment_id": deployment_id,
            "organization_id": organization_id, "timestamp": now,
            "data": {"logs": logs, "append": True, "timestamp": now}}


# --- access ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """Which organisations' events a user may receive right now."""

    user_id: str
    superuser: bool
    organizations: frozenset[str]
    api_token_id: str | None = None
    revoked: str | None = None  # why the credential no longer works
    #: the token generation of the access token the client authenticated with (None for an API token); a
    #: password change or ``POST /auth/logout-all`` bumps the user's, which closes the client
    generation: int | None = None
    #: the account as last read (``is_active``, ``token_generation``), None when it is gone
    account: Any = field(default=None, compare=False, repr=False)

    def allows(self, organization_id: str) -> bool:
        return self.revoked is None and (self.superuser or organization_id in self.organizations)


async def load_access(user_ids: set[str], token_ids: set[str]) -> tuple[dict[str, Access], dict[str, Any]]:
    """Every user's access (memberships and account) and the rows of the API tokens, read in one short
    transaction; :func:`refreshed` judges each client's credential with them."""
    users: dict[str, Any] = {}
    orgs: dict[str, set[str]] = {}
    api_tokens: dict[str, Any] = {}
    ids, tokens = sorted(user_ids), sorted(token_ids)
    async with database.AsyncSessionLocal() as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for row in await session.execute(
                select(User.id, User.is_active, User.is_superuser, User.token_generation).where(User.id.in_(chunk))
            ):
                users[row.id] = row
            for uid, org in await session.execute(
                select(Membership.user_id, Membership.organization_id).where(Membership.user_id.in_(chunk))
            ):
                orgs.setdefault(uid, set()).add(org)
        for start in range(0, len(tokens), 500):
            chunk = tokens[start:start + 500]
            for row in await session.execute(
                select(ApiToken.id, ApiToken.revoked_at, ApiToken.expires_at).where(ApiToken.id.in_(chunk))
            ):
                api_tokens[row.id] = row
    access = {}
    for uid in user_ids:
        account = users.get(uid)
        access[uid] = Access(uid, bool(account and account.is_superuser), frozenset(orgs.get(uid, ())), account=account)
    return access, api_tokens


def refreshed(current: Access, fresh: Access, api_tokens: dict[str, Any]) -> Access:
    """``current``'s credential with ``fresh``'s memberships, revoked when the credential check of every HTTP
    request (``auth_service.credential_refusal``) would now refuse it: its API token revoked or expired, the
    account deactivated or gone, or signed out everywhere since it authenticated (token generation)."""
    refusal = auth_service.credential_refusal(
        fresh.account, api_token=api_tokens.get(current.api_token_id), api_token_used=current.api_token_id is not None,
        generation=current.generation, now=datetime.now(UTC),
    )
    return Access(fresh.user_id, fresh.superuser, fresh.organizations, current.api_token_id,
                  refusal.detail if refusal is not None else None, current.generation, fresh.account)


def credential_access(fresh: Access, api_tokens: dict[str, Any], api_token_id: str | None, generation: int) -> Access:
    """The access of a client that just authenticated: API token, or access token of ``generation``."""
    return refreshed(Access(fresh.user_id, fresh.superuser, fresh.organizations, api_token_id,
                            generation=None if api_token_id else generation), fresh, api_tokens)


class AccessRegistry:
    """The clients of this process, whose access is refreshed together (one query batch per period)."""

    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self._task: asyncio.Task | None = None

    def add(self, client: Client) -> None:
        self.clients.add(client)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="realtime-access")

    def discard(self, client: Client) -> None:
        self.clients.discard(client)

    async def refresh(self) -> None:
        clients = list(self.clients)
        if not clients:
            return
        access, api_tokens = await load_access(
            {c.access.user_id for c in clients}, {c.access.api_token_id for c in clients if c.access.api_token_id})
        for client in clients:
            await client.set_access(refreshed(client.access, access[client.access.user_id], api_tokens))

    async def _refresh_loop(self) -> None:
        await _AccessRefresh(self).run()


class _AccessRefresh(LoopService):
    """Every ``ACCESS_REFRESH_SECONDS`` while the registry has clients: a database hiccup keeps the last known
    access (the pass is retried at the next period)."""

    name = "real time: refreshing client access"
    log = logger

    def __init__(self, registry: AccessRegistry) -> None:
        super().__init__()
        self.registry = registry

    @property
    def interval(self) -> float:  # type: ignore[override]  # read at each period (tests shorten it)
        return ACCESS_REFRESH_SECONDS

    def should_continue(self) -> bool:
        return bool(self.registry.clients)

    async def run_once(self) -> None:
        await self.registry.refresh()


registry = AccessRegistry()


class Hub:
    """The real-time clients of one event loop, indexed by what they follow, and the fan-out of each event.

    One subscriber on the bus per loop, whatever the number of clients: an event costs one lookup in each
    index and one step per client that follows its deployment or organisation, never a call per connected
    client. Per recipient: when its pump is idle (nothing queued, lock free) and its socket can take a frame,
    the hub does what the pump would and writes the event's one pre-built frame at once (the first clients
    have it while the hub goes on to the next ones). Otherwise the event goes to the client's queue and
    its pump.
    """

    _hubs: dict[asyncio.AbstractEventLoop, Hub] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        # dicts used as ordered sets: a fan-out visits clients in the order they subscribed (roughly the order
        # their objects were allocated in), which the CPU's caches like better than a set's hash order
        self.by_deployment: dict[str, dict[Client, None]] = {}
        self.by_organization: dict[str, dict[Client, None]] = {}
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

    def add(self, client: Client) -> None:
        self.clients += 1
        if self._unsubscribe is None:
            self._unsubscribe = bus.subscribe(self.offer, filter=self.wants)
            self._unsubscribe_missed = bus.on_missed(self.offer_missed)

    def remove(self, client: Client) -> None:
        for deployment_id in list(client.deployments):
            self.unfollow(client, deployment_id)
        for organization_id in list(client.organizations):
            self.leave(client, organization_id)
        self.clients -= 1
        if self.clients <= 0 and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
            if self._unsubscribe_missed is not None:
                self._unsubscribe_missed()
                self._unsubscribe_missed = None
            self._hubs.pop(self.loop, None)

    def follow(self, client: Client, deployment_id: str) -> None:
        self.by_deployment.setdefault(deployment_id, {})[client] = None

    def unfollow(self, client: Client, deployment_id: str) -> None:
        _discard(self.by_deployment, deployment_id, client)

    def join(self, client: Client, organization_id: str) -> None:
        self.by_organization.setdefault(organization_id, {})[client] = None

    def leave(self, client: Client, organization_id: str) -> None:
        _discard(self.by_organization, organization_id, client)

    # --- the bus's side (any thread) ---

    def wants(self, evt: Event) -> bool:
        # Reads only; dict membership is atomic under the GIL.
        return evt.deployment_id in self.by_deployment or (
            evt.type in LIST_EVENTS and evt.organization_id in self.by_organization)

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
        clients: dict[Client, None] = {}
        for index in (self.by_deployment, self.by_organization):
            for members in index.values():
                clients.update(members)
        for client in clients:
            if client.stream is not None:
                client.idle = False  # what the hub would write directly now goes through the pump, after the resync
                client.stream.mark_missed()

    # --- the loop's side ---

    def fan_out(self, evt: Event) -> None:
        followers = self.by_deployment.get(evt.deployment_id)
        members = self.by_organization.get(evt.organization_id) if evt.type in LIST_EVENTS else None
        recipients: tuple[Client, ...] = tuple(followers) if followers else ()
        if members:  # a client following the deployment and its organisation gets the event once
            recipients += tuple(c for c in members if c not in followers) if followers else tuple(members)
        stateful = evt.type in _STATEFUL
        frame = None  # built for the first socket that takes it
        written = 0
        for client in recipients:
            # What the pump would do, done here when it is idle (nothing queued, lock free) and the socket can
            # take a frame now (open, less than DIRECT_WRITE_BUFFER bytes waiting); read as plain attributes:
            # this loop runs once per client and event.
            socket = client.socket
            if socket is None or client.busy or not client.idle or socket.is_closing() \
                    or socket.get_write_buffer_size() > DIRECT_WRITE_BUFFER:
                client.queue(evt)
                continue
            if stateful:
                try:
                    verdict = client.advance(evt)
                except Exception:  # noqa: BLE001 - its pump still delivers it
                    logger.exception("real time: direct delivery of %s failed; queued instead", evt.type)
                    verdict = False
                if verdict is None:
                    continue
                if not verdict:
                    client.queue(evt)
                    continue
            if frame is None:
                frame = text_frame(evt)
            socket.write(frame)
            written += 1
        if written:
            _count_direct_sends(evt, "websocket", written)


_STATEFUL = frozenset({EventType.DEPLOYMENT_LOGS_UPDATE, EventType.DEPLOYMENT_DELETED})


def text_frame(evt: Event) -> bytes:
    """The unmasked, unfragmented WebSocket text frame (RFC 6455) of an event: what the hub writes to every
    client ``socket`` (built once per event). Pinned to websockets' own serialisation by
    ``tests/unit/test_dependency_pins.py::test_text_frame_is_the_frame_websockets_itself_would_send``."""
    payload = encode_event(evt).encode()
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


def _discard(index: dict[str, dict[Client, None]], key: str, client: Client) -> None:
    clients = index.get(key)
    if clients is not None:
        clients.pop(client, None)
        if not clients:
            del index[key]


# --- clients -----------------------------------------------------------------------------------------


@dataclass
class DeploymentSubscription:
    deployment_id: str
    organization_id: str
    last_seq: int


#: Bytes a socket may have waiting in its write buffer for the hub to add a frame directly; beyond it the
#: event waits in the client's queue and the pump's send waits for the socket (and times out).
DIRECT_WRITE_BUFFER = 256 * 1024


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
        self.exclusive = _Exclusive(self)
        self.stream: EventStream | None = None  # filled by the loop's hub from start() until stop()
        self.hub: Hub | None = None
        # Read by the hub for every event (:meth:`Hub.fan_out`): plain attributes of this object, so a fan-out to
        # thousands of clients touches as little memory per client as it can.
        self.socket = None  # a transport taking :func:`text_frame` frames directly (a WebSocket sets it), or None
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
        """Send one frame (``seq``: the last log ``seq`` sent so far, for SSE ids; ``kind``: the frame type)."""

    async def send(self, frame: dict, seq: int | None = None) -> None:
        await self._send(dumps(frame), seq, frame.get("type"))

    async def _send(self, text: str, seq: int | None, kind: str | None) -> None:
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):  # (no extra task per send, unlike wait_for)
                await self.send_text(text, seq, kind)
        except TimeoutError:
            self.close("the client did not read for %d s" % SEND_TIMEOUT_SECONDS, 1008)
            raise ConnectionError("client send timed out") from None

    def close(self, reason: str, code: int = 1000) -> None:
        """Ask the endpoint to end this client (``code``: the WebSocket close code)."""
        if self.close_reason is None:
            self.close_reason, self.close_code = reason, code
        self.socket = None  # nothing more written directly; the endpoint closes the connection
        self.closed.set()

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.stream = EventStream(bus, None, CLIENT_QUEUE_BOUND)
        self.hub = Hub.of_running_loop()
        self.hub.add(self)
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
                await self.send({"type": "error", "code": "access_revoked", "organization_id": org,
                                 "detail": "you are no longer a member of this organization; unsubscribed"})
            for sub in lost_deployments:
                self._unfollow(sub.deployment_id)
                await self.send({"type": "error", "code": "access_revoked", "deployment_id": sub.deployment_id,
                                 "detail": "you are no longer a member of this deployment's organization; unsubscribed"})

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

    async def subscribe_deployment(
        self, deployment_id: str, organization_id: str, since_seq: int, *, announce: bool = True
    ) -> int:
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
                    status = (await session.execute(
                        select(Deployment.status).where(Deployment.id == deployment_id))).scalar_one_or_none()
                await self.send({"type": "subscribed", "deployment_id": deployment_id, "organization_id": organization_id,
                                 "stream": "events", "last_seq": sub.last_seq,
                                 "status": str(status) if status is not None else None})
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
        """Hand ``evt`` to the pump (the hub, when it cannot write the event to the socket itself)."""
        self.idle = False
        self.stream.put(evt)

    async def _pump(self) -> None:
        stream = self.stream
        try:
            while True:
                item = stream.get_nowait()
                if item is None:
                    self.idle = True  # from here until an event is queued, the hub may write events itself
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
        except Exception:  # noqa: BLE001 - never leave a client open without its pump
            logger.exception("real time: %s client pump failed", self.transport)
            self.close("internal error", 1011)

    def advance(self, evt: Event) -> bool | None:
        """The part of the pump's :meth:`_forward` that changes this client's state, done by the hub for a log
        or deletion event it is about to write directly: True to write it, None when there is nothing to
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

    async def _forward(self, evt: Event) -> None:
        if not self.access.allows(evt.organization_id):
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
        self._send_latency.observe(_latency(evt))
        self._frames_queued.inc()

    async def _resync(self, overflow: Overflow) -> None:
        dropped = overflow.dropped + self.stream.clear()
        metrics.RESYNCS.labels(self.transport).inc()
        if overflow.missed:
            logger.info("real time: the event bus reconnected; resynchronising a %s client of user %s",
                        self.transport, self.access.user_id)
        else:
            logger.info("real time: %s client of user %s fell behind (%d event(s) dropped); resynchronising",
                        self.transport, self.access.user_id, dropped)
        for org in sorted(self.organizations):
            await self.send({"type": "resync", "deployment_id": None, "organization_id": org, "last_seq": None})
        for sub in list(self.deployments.values()):
            await self.send({"type": "resync", "deployment_id": sub.deployment_id,
                             "organization_id": sub.organization_id, "last_seq": sub.last_seq}, sub.last_seq)
            await self._catch_up(sub)


def monotonic_deadline(expires_at: datetime | None) -> float | None:
    """``expires_at`` as a ``time.monotonic()`` deadline."""
    if expires_at is None:
        return None
    return time.monotonic() + (expires_at - datetime.now(UTC)).total_seconds()
