"""Real-time clients (WebSocket and SSE): subscriptions, catch-up by ``seq``, access, backpressure.

One :class:`Client` per WebSocket connection or SSE stream. It owns one bounded ``bus.stream`` whose
filter lets through the events of the deployments and organisations it subscribed to, and one *pump*
task that sends them. Invariants:

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
  number of clients. When a client's pump is idle (nothing queued, lock free), the bus's delivery hands
  the event to :meth:`Client._direct`, which does what the pump would and writes the frame at once
  (WebSocket: one pre-built frame per event, written to every socket; see ``api/realtime.py``): no task
  switch per client. Anything else (a queue, log lines that need a catch-up, a socket whose buffer is
  full, per-connection compression, SSE) takes the pump, so order and the invariants above hold.
* **Access follows memberships.** :class:`AccessRegistry` re-reads, every :data:`ACCESS_REFRESH_SECONDS`
  and in one batch for every client of the process, each user's organisations, active flag and API token;
  events of an organisation a user left are no longer sent, its subscriptions end with an ``error`` frame,
  and a deactivated user or revoked token closes the client (WebSocket code 4401).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import select

from backend.app import database
from backend.app.runtime import metrics
from backend.app.core.events import LIST_EVENTS, Event, EventStream, EventType, Overflow, bus, iso_utc
from backend.app.models import ApiToken, Deployment, Membership, User
from backend.app.services.deployment_logs import LogLine, read_logs

logger = logging.getLogger(__name__)

CATCH_UP_PAGE = 2000  # persisted lines per frame when catching up
CLIENT_QUEUE_BOUND = 500  # events a client may have waiting before it is resynchronised
ACCESS_REFRESH_SECONDS = 2.0
HEARTBEAT_SECONDS = 15.0
SEND_TIMEOUT_SECONDS = 30.0
CLOSE_UNAUTHORIZED = 4401


def dumps(frame: dict) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str)


T = TypeVar("T")


def once_per_event(cache: dict[int, tuple[Event, T]], evt: Event, build: Callable[[Event], T]) -> T:
    """``build(evt)``, computed once per event however many clients receive it: ``cache`` keeps the last few
    hundred results, keyed by the event's identity (the event is kept with its result, so an id reused by a
    later event never returns a stale result)."""
    entry = cache.get(id(evt))
    if entry is not None and entry[0] is evt:
        return entry[1]
    value = build(evt)
    if len(cache) > 256:
        cache.clear()
    cache[id(evt)] = (evt, value)
    return value


_encoded: dict[int, tuple[Event, str]] = {}


def encode_event(evt: Event) -> str:
    """The JSON of an event, encoded once however many clients receive it."""
    return once_per_event(_encoded, evt, lambda e: dumps(e.to_dict()))


def _latency(evt: Event) -> float:
    return max(0.0, (datetime.now(UTC) - evt.timestamp).total_seconds())


_direct_sends: dict[str, dict[int, list]] = {}  # transport -> id(event) -> [event, sends]: observed later


def _count_direct_send(evt: Event, transport: str) -> None:
    """Count a direct send of ``evt``; the latency histogram is updated once the whole delivery is done
    (a callback after it), so the fan-out to thousands of sockets does not wait for the metrics. (No
    object allocated per client: allocations would also bring the garbage collector into the fan-out.)"""
    tally = _direct_sends.get(transport)
    if tally is None:
        if not _direct_sends:
            asyncio.get_running_loop().call_soon(_observe_direct_sends)
        tally = _direct_sends[transport] = {}
    entry = tally.get(id(evt))
    if entry is not None and entry[0] is evt:
        entry[1] += 1
    else:
        tally[id(evt)] = [evt, 1]


def _observe_direct_sends() -> None:
    tallies = list(_direct_sends.items())
    _direct_sends.clear()
    for transport, tally in tallies:
        histogram = metrics.EVENT_SEND_LATENCY.labels(transport)
        for evt, count in tally.values():
            metrics.EVENT_FRAMES.labels(transport, "direct").inc(count)
            value = _latency(evt)
            for _ in range(count):
                histogram.observe(value)


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

    def allows(self, organization_id: str) -> bool:
        return self.revoked is None and (self.superuser or organization_id in self.organizations)


async def load_access(user_ids: set[str], token_ids: set[str]) -> tuple[dict[str, Access], set[str]]:
    """Every user's access and the API tokens no longer valid, read in one short transaction."""
    now = datetime.now(UTC)
    users: dict[str, tuple[bool, bool, int]] = {}
    orgs: dict[str, set[str]] = {}
    bad_tokens: set[str] = set()
    ids, tokens = sorted(user_ids), sorted(token_ids)
    async with database.AsyncSessionLocal() as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for uid, active, superuser, generation in await session.execute(
                select(User.id, User.is_active, User.is_superuser, User.token_generation).where(User.id.in_(chunk))
            ):
                users[uid] = (active, superuser, generation)
            for uid, org in await session.execute(
                select(Membership.user_id, Membership.organization_id).where(Membership.user_id.in_(chunk))
            ):
                orgs.setdefault(uid, set()).add(org)
        for start in range(0, len(tokens), 500):
            chunk = tokens[start:start + 500]
            found = set()
            for tid, revoked_at, expires_at in await session.execute(
                select(ApiToken.id, ApiToken.revoked_at, ApiToken.expires_at).where(ApiToken.id.in_(chunk))
            ):
                found.add(tid)
                if revoked_at is not None or (expires_at is not None and expires_at <= now):
                    bad_tokens.add(tid)
            bad_tokens.update(set(chunk) - found)
    access = {}
    for uid in user_ids:
        active, superuser, generation = users.get(uid, (False, False, None))
        access[uid] = Access(uid, superuser, frozenset(orgs.get(uid, ())),
                             revoked=None if active else "the account was deactivated or deleted", generation=generation)
    return access, bad_tokens


def refreshed(current: Access, fresh: Access, bad_tokens: set[str] = frozenset()) -> Access:
    """``current``'s credential with ``fresh``'s memberships: revoked when its API token was, when the account
    was deactivated, or when the user signed out everywhere since it authenticated (token generation)."""
    revoked = fresh.revoked
    if current.api_token_id in bad_tokens:
        revoked = "the API token was revoked or has expired"
    elif current.api_token_id is None and current.generation is not None and fresh.generation != current.generation:
        revoked = "signed out everywhere (password changed or logout-all); authenticate again"
    return Access(fresh.user_id, fresh.superuser, fresh.organizations, current.api_token_id, revoked, current.generation)


def credential_access(fresh: Access, api_token_id: str | None, generation: int) -> Access:
    """The access of a client that just authenticated: API token, or access token of ``generation``."""
    return refreshed(Access(fresh.user_id, fresh.superuser, fresh.organizations, api_token_id,
                            generation=None if api_token_id else generation), fresh)


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
        access, bad_tokens = await load_access(
            {c.access.user_id for c in clients}, {c.access.api_token_id for c in clients if c.access.api_token_id})
        for client in clients:
            await client.set_access(refreshed(client.access, access[client.access.user_id], bad_tokens))

    async def _refresh_loop(self) -> None:
        while self.clients:
            await asyncio.sleep(ACCESS_REFRESH_SECONDS)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a database hiccup: keep the last known access, retry
                logger.warning("real time: could not refresh client access", exc_info=True)


registry = AccessRegistry()


# --- clients -----------------------------------------------------------------------------------------


@dataclass
class DeploymentSubscription:
    deployment_id: str
    organization_id: str
    last_seq: int


class Client(ABC):
    """A subscriber on the bus with its own bounded queue, subscriptions and pump (WebSocket or SSE)."""

    def __init__(self, access: Access, transport: str) -> None:
        self.access = access
        self.transport = transport
        self.deployments: dict[str, DeploymentSubscription] = {}
        self.organizations: set[str] = set()
        self.lock = asyncio.Lock()
        self.stream: EventStream | None = None  # subscribed on the bus by start(), until stop()
        self.pump_task: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self.close_code = 1000
        self.sent = 0
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
        self.sent += 1

    def close(self, reason: str, code: int = 1000) -> None:
        """Ask the endpoint to end this client (``code``: the WebSocket close code)."""
        if self.close_reason is None:
            self.close_reason, self.close_code = reason, code
        self.closed.set()

    # --- lifecycle --------------------------------------------------------------------------------

    def write_now(self, evt: Event) -> bool:
        """Send ``evt``'s frame at once without waiting, if the transport can (else the pump sends it)."""
        return False

    def start(self) -> None:
        self.stream = bus.stream(self._wants, maxsize=CLIENT_QUEUE_BOUND)
        self.stream.direct = self._direct
        registry.add(self)
        self.pump_task = asyncio.get_running_loop().create_task(self._pump(), name=f"realtime-{self.transport}")

    async def stop(self) -> None:
        registry.discard(self)
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
            # Events of those organisations stop now (the pump checks ``access``); the frames saying so are
            # sent by a task, so that a client stuck on a slow send never holds up the registry.
            self._tasks.add(asyncio.get_running_loop().create_task(self._unsubscribe_lost(lost_orgs, lost_deployments)))

    async def _unsubscribe_lost(self, lost_orgs: list[str], lost_deployments: list[DeploymentSubscription]) -> None:
        try:
            await self._send_lost(lost_orgs, lost_deployments)
        except (ConnectionError, RuntimeError, OSError) as exc:
            self.close(f"send failed: {exc}")
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _send_lost(self, lost_orgs: list[str], lost_deployments: list[DeploymentSubscription]) -> None:
        async with self.lock:
            for org in lost_orgs:
                self.organizations.discard(org)
                await self.send({"type": "error", "code": "access_revoked", "organization_id": org,
                                 "detail": "you are no longer a member of this organization; unsubscribed"})
            for sub in lost_deployments:
                self.deployments.pop(sub.deployment_id, None)
                await self.send({"type": "error", "code": "access_revoked", "deployment_id": sub.deployment_id,
                                 "detail": "you are no longer a member of this deployment's organization; unsubscribed"})

    # --- subscriptions ------------------------------------------------------------------------------

    def _wants(self, evt: Event) -> bool:
        # Runs on the publisher's thread: reads only; set/dict membership is atomic under the GIL.
        if evt.deployment_id in self.deployments:
            return True
        return evt.type in LIST_EVENTS and evt.organization_id in self.organizations

    async def subscribe_deployment(
        self, deployment_id: str, organization_id: str, since_seq: int, *, announce: bool = True
    ) -> int:
        """Follow a deployment: persisted lines after ``since_seq`` now, live events after (``announce``:
        then a ``subscribed`` frame). Returns the last ``seq`` sent."""
        async with self.lock:
            sub = self.deployments.get(deployment_id)
            if sub is None:
                sub = DeploymentSubscription(deployment_id, organization_id, since_seq)
                self.deployments[deployment_id] = sub  # live events queue from here on
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
        async with self.lock:
            self.organizations.add(organization_id)
            await self.send({"type": "subscribed", "organization_id": organization_id, "stream": "events"})

    async def unsubscribe_organization(self, organization_id: str) -> bool:
        async with self.lock:
            if organization_id not in self.organizations:
                return False
            self.organizations.discard(organization_id)
            return True

    async def unsubscribe_deployment(self, deployment_id: str) -> bool:
        async with self.lock:
            return self.deployments.pop(deployment_id, None) is not None

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

    async def _pump(self) -> None:
        try:
            async for item in self.stream:
                async with self.lock:
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

    def _direct(self, evt: Event) -> bool:
        """The pump's :meth:`_forward`, done synchronously when it is idle (the stream's fast path): the
        common case of an event with nothing queued before it costs one socket write, no task switch.
        Returns False (the event is then queued for the pump) for anything that needs to wait or read:
        a held lock (a catch-up, a subscription being set up), log lines not following ``last_seq``
        exactly, a transport that cannot write now."""
        if self.lock.locked():
            return False
        if not self.access.allows(evt.organization_id):
            return True  # the pump would drop it too
        sub = self.deployments.get(evt.deployment_id)
        if evt.type is EventType.DEPLOYMENT_LOGS_UPDATE:
            if sub is None:
                return True
            logs = evt.data.get("logs") or ()
            if not logs or logs[0]["seq"] != sub.last_seq + 1:
                return False
            if not self.write_now(evt):
                return False
            sub.last_seq = logs[-1]["seq"]
        else:
            if not self.write_now(evt):
                return False
            if evt.type is EventType.DEPLOYMENT_DELETED and sub is not None:
                self.deployments.pop(evt.deployment_id, None)
        self.sent += 1
        _count_direct_send(evt, self.transport)
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
                self.deployments.pop(evt.deployment_id, None)
        self._send_latency.observe(_latency(evt))
        self._frames_queued.inc()

    async def _resync(self, overflow: Overflow) -> None:
        dropped = overflow.dropped + self.stream.clear()
        metrics.RESYNCS.labels(self.transport).inc()
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
