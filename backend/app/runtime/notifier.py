"""The backend's notification sender: a loop that claims due deliveries and sends them.

Every backend process runs one; the claim is a compare-and-set with a lease (``services/notifications/
delivery.py``), so replicas share the work and a process that dies mid-delivery leaves its deliveries to the
others once their lease (``NOTIFY_LEASE_SECONDS``) has expired. A pass runs every ``NOTIFY_POLL_SECONDS``,
and at once when this process sees an event that may have queued deliveries (a deployment's end or
rollback, wherever it was committed: the event bus brings other processes' events too) or a test was
asked. Sends run concurrently (at most :data:`CONCURRENCY` at a time), each bounded by
``NOTIFY_TIMEOUT_SECONDS``, off the deployments' path: a receiver that hangs delays only its own delivery.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from backend.app import database
from backend.app.config import Settings
from backend.app.core.events import Event, bus
from backend.app.models import NotificationChannel, NotificationDelivery
from backend.app.runtime.loops import LoopService, sleep_or_event
from backend.app.services.notifications import delivery as sender
from backend.app.services.notifications import outbox

logger = logging.getLogger(__name__)
CONCURRENCY = 20
BATCH = 100

_loops: list[NotificationLoop] = []


def wake_all() -> None:
    """Run a pass now in this process (after a test delivery was queued)."""
    for loop in list(_loops):
        loop.wake()


class NotificationLoop(LoopService):
    name = "notification deliveries"
    log = logger

    def __init__(self, settings: Settings) -> None:
        self.interval = settings.NOTIFY_POLL_SECONDS
        super().__init__()
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._http = None  # one HTTP client for the loop's life (made on its loop by the first delivery)

    def wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def _on_event(self, evt: Event) -> None:
        if outbox.may_notify(evt):  # a deployment's end: it may have queued deliveries (its other changes did not)
            self.wake()

    async def run_once(self) -> int:
        """One pass: claim due deliveries with their channels (one transaction, two statements), send them
        concurrently, and record their outcomes as they come, those done together in one transaction;
        returns how many were claimed."""
        async with database.AsyncSessionLocal() as session:
            claimed = await sender.claim(session, owner=self.owner, lease_seconds=self.settings.NOTIFY_LEASE_SECONDS, limit=BATCH)
            await session.commit()
        if claimed:
            await self._deliver(claimed)
        return len(claimed)

    async def _deliver(self, claimed: list[tuple[NotificationDelivery, NotificationChannel]]) -> None:
        pending = {asyncio.ensure_future(self._send(delivery, channel)) for delivery, channel in claimed}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                sent = [task.result() for task in done if task.result() is not None]
                if sent:
                    await self._settle(sent)
        finally:
            for task in pending:  # cancelled (the loop stops): the leases expire and another sender takes them
                task.cancel()

    async def _send(
        self, delivery: NotificationDelivery, channel: NotificationChannel
    ) -> tuple[NotificationDelivery, NotificationChannel, sender.Outcome] | None:
        async with self._limit:
            if self._http is None:
                self._http = sender.http_client(self.settings)
            try:
                return delivery, channel, await sender.send(self.settings, channel=channel, delivery=delivery, client=self._http)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("notification %s: sending failed", delivery.id)  # sent again once its lease expires
                return None

    async def _settle(self, sent: list[tuple[NotificationDelivery, NotificationChannel, sender.Outcome]]) -> None:
        try:
            async with database.AsyncSessionLocal() as session:
                held = await sender.settle(
                    session,
                    settings=self.settings,
                    owner=self.owner,
                    outcomes=[(delivery.id, delivery.attempts, outcome) for delivery, _channel, outcome in sent],
                )
                await session.commit()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("notifications: recording %d outcome(s) failed; they are sent again once their lease expires", len(sent))
            return
        for delivery, channel, outcome in sent:
            if not outcome.ok:
                logger.warning(
                    "notification %s (%s) to channel %s: attempt %d failed: %s%s",
                    delivery.id,
                    delivery.event,
                    channel.id,
                    delivery.attempts,
                    outcome.error,
                    "" if delivery.id in held else " (its lease had passed to another sender)",
                )

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        unsubscribe = bus.subscribe(self._on_event)
        _loops.append(self)
        try:
            while not self._stopped.is_set():
                self._wake.clear()  # an event during the pass sets it again: the next wait ends at once
                try:
                    sent = await self.once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - keep the loop alive
                    self.outage.failed(exc)
                    sent = 0
                else:
                    self.outage.succeeded()
                if sent < BATCH:  # a full batch may have left more due: the next pass at once; else wait (an event
                    # during the pass, or a delivery queued by this process, has set _wake: the wait ends at once)
                    await sleep_or_event(self.interval, self._wake)
        finally:
            unsubscribe()
            _loops.remove(self)
            if self._http is not None:
                await self._http.close()


async def notification_loop(settings: Settings) -> None:
    await NotificationLoop(settings).run()
