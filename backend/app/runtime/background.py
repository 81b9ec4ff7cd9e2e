"""The backend's own background loops: start-up recovery, periodic recovery and the reaper.

Periodic recovery runs in every backend process but does real work in at most one at a time: a
PostgreSQL advisory lock elects the runner (SQLite deployments are single-process), and a pass is skipped
when another runner (Celery beat or another replica) already recovered within the interval.

The reaper (``services/deployments/recovery.py::reap``) runs every ``REAPER_INTERVAL_SECONDS`` under its own advisory
lock, shared with Celery beat's ``windflow.reap_expired_leases`` task: one reaper at a time, wherever it runs.

Each loop is a ``runtime/loops.py::LoopService`` (interval, leader lock, outage logging); the Celery tasks
call the same one-pass functions (:func:`recover_once`, :func:`reap_once`).

A database that is down or restarting stops no loop: the pass is skipped with one warning (no traceback; then
at most one a minute while it lasts) and the next pass runs as usual once the database answers again. The
advisory locks go with the server's sessions, so a restart leaves none held.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from backend.app import database
from backend.app.config import Settings
from backend.app.database import utcnow
from backend.app.runtime import workers
from backend.app.runtime.loops import LoopService, leader_lock
from backend.app.runtime.sql_transport import restore_orphaned_deliveries
from backend.app.services.audit import audit_service
from backend.app.services.deployments import recovery, retention, watch
from backend.app.services.hooks import hook_service
from backend.app.services.notifications import delivery as notification_delivery

__all__ = ["leader_lock"]  # re-exported: the locks' one implementation is runtime/loops.py

logger = logging.getLogger(__name__)
RECOVERY_LOCK_KEY = 727274002
REAPER_LOCK_KEY = 727274003
RETENTION_LOCK_KEY = 727274004
WATCH_LOCK_KEY = 727274005
Dispatch = Callable[[str], Awaitable[None]]


def _fresh(report: dict | None, interval: timedelta) -> bool:
    stamp = ((report or {}).get("last") or {}).get("timestamp")
    if not stamp:
        return False
    return utcnow() - datetime.fromisoformat(stamp.replace("Z", "+00:00")) < interval * 0.8


async def _recover(
    settings: Settings, dispatch: Dispatch, *, max_age_minutes: float, skip_if_fresh: bool, timeout_minutes: float | None = None
) -> dict | None:
    async with database.AsyncSessionLocal() as session:
        interval = timedelta(minutes=settings.RECOVERY_INTERVAL_MINUTES)
        if skip_if_fresh and _fresh(await recovery.last_report(session), interval):
            logger.debug("recovery: a recent pass by another runner; skipping")
            return None
        timeout = settings.RECOVERY_TIMEOUT_MINUTES if timeout_minutes is None else timeout_minutes
        return await recovery.recover_pending_deployments(
            session, max_age_minutes=max_age_minutes, timeout_minutes=timeout, settings=settings, dispatch=dispatch
        )


async def recover_once(
    settings: Settings, dispatch: Dispatch, *, max_age_minutes: float, skip_if_fresh: bool, timeout_minutes: float | None = None
) -> dict | None:
    """One recovery pass where the recovery lock is free (None elsewhere): the backend's loops and beat's task.
    ``timeout_minutes``: default ``RECOVERY_TIMEOUT_MINUTES``."""
    async with leader_lock(RECOVERY_LOCK_KEY) as leader:
        if not leader:
            logger.debug("recovery: another process is running it")
            return None
        return await _recover(
            settings, dispatch, max_age_minutes=max_age_minutes, skip_if_fresh=skip_if_fresh, timeout_minutes=timeout_minutes
        )


async def startup_recovery(settings: Settings, dispatcher) -> dict | None:
    """Every ``pending`` deployment is retried when the backend starts (``max_age_minutes=0``)."""
    try:
        return await recover_once(settings, dispatcher.dispatch, max_age_minutes=0, skip_if_fresh=False)
    except Exception as exc:  # noqa: BLE001 - the backend must start even if recovery cannot run
        database.OutageLog("start-up recovery", logger).failed(exc)  # periodic recovery catches up
        return None


class RecoveryLoop(LoopService):
    """Periodic recovery, skipped when another runner (Celery beat, another replica) recovered recently."""

    name = "periodic recovery"
    lock_key = RECOVERY_LOCK_KEY
    log = logger

    def __init__(self, settings: Settings, dispatch: Dispatch) -> None:
        self.interval = settings.RECOVERY_INTERVAL_MINUTES * 60
        super().__init__()
        self.settings = settings
        self.dispatch = dispatch

    async def run_once(self) -> dict | None:
        return await _recover(self.settings, self.dispatch, max_age_minutes=self.settings.RECOVERY_MAX_AGE_MINUTES, skip_if_fresh=True)


async def periodic_recovery(settings: Settings, dispatcher) -> None:
    await RecoveryLoop(settings, dispatcher.dispatch).run()


async def _reap(settings: Settings, dispatch: Dispatch) -> dict:
    async with database.AsyncSessionLocal() as session:
        restored = await restore_orphaned_deliveries(session)
        orphaned = await workers.expire_leases_of_dead_workers(session)
        await session.commit()
        if restored:
            logger.warning("Reaper: %d broker message(s) of a worker that is gone or degraded back in the queue", restored)
        if orphaned:
            logger.warning("Reaper: %d deployment(s) ran on a worker that is gone: their leases expire now", orphaned)
        stats = await recovery.reap(session, settings=settings, dispatch=dispatch)
    return {**stats, "messages_restored": restored, "leases_of_dead_workers": orphaned}


class ReaperLoop(LoopService):
    """Heal a dead executor's deployments within seconds of its lease expiring (not at the next recovery).

    Before the deployments (``services/deployments/recovery.py::reap``): the PostgreSQL broker's messages taken by a
    worker process that is gone or degraded are made visible again (``runtime/sql_transport.py``), and the
    leases of deployments whose executor belonged to a worker that is gone expire now
    (``runtime/workers.py``), so that this very pass reclaims them."""

    name = "reaper pass"
    lock_key = REAPER_LOCK_KEY
    log = logger

    def __init__(self, settings: Settings, dispatch: Dispatch) -> None:
        self.interval = settings.REAPER_INTERVAL_SECONDS
        super().__init__()
        self.settings = settings
        self.dispatch = dispatch

    async def run_once(self) -> dict:
        return await _reap(self.settings, self.dispatch)


async def reap_once(settings: Settings, dispatch: Dispatch) -> dict | None:
    """One reaper pass where the reaper lock is free (None elsewhere): the backend's loop and beat's task."""
    return await ReaperLoop(settings, dispatch).once()


async def reaper_loop(settings: Settings, dispatcher) -> None:
    await ReaperLoop(settings, dispatcher.dispatch).run()


class RetentionLoop(LoopService):
    """Prune old log lines and history every ``RETENTION_INTERVAL_MINUTES`` (first pass shortly after start)."""

    name = "retention pass"
    lock_key = RETENTION_LOCK_KEY
    first_delay = 60.0
    log = logger

    def __init__(self, settings: Settings) -> None:
        self.interval = settings.RETENTION_INTERVAL_MINUTES * 60
        super().__init__()
        self.settings = settings

    async def run_once(self) -> retention.RetentionReport:
        report = await retention.prune(self.settings)
        # the audit trail's entries older than AUDIT_RETENTION_DAYS; the notification delivery log's settled
        # entries and the deploy hooks' calls older than RETENTION_DAYS: a batch per transaction
        removed = await self._prune_batches(audit_service.prune)
        if removed:
            logger.info("retention: removed %d audit entr(ies) older than %d days", removed, self.settings.AUDIT_RETENTION_DAYS)
        deliveries = await self._prune_batches(notification_delivery.prune)
        calls = await self._prune_batches(hook_service.prune_calls)
        if deliveries or calls:
            logger.info(
                "retention: removed %d notification deliver(ies) and %d hook call(s) older than %d days",
                deliveries,
                calls,
                self.settings.RETENTION_DAYS,
            )
        return report

    async def _prune_batches(self, prune) -> int:
        removed = 0
        while True:
            async with database.AsyncSessionLocal() as session:
                batch = await prune(session, settings=self.settings, batch=self.settings.RETENTION_BATCH_SIZE)
                await session.commit()
            removed += batch
            if batch < self.settings.RETENTION_BATCH_SIZE:
                return removed


async def retention_once(settings: Settings) -> retention.RetentionReport | None:
    """One retention pass in the process holding the retention lock (None elsewhere)."""
    return await RetentionLoop(settings).once()


async def periodic_retention(settings: Settings) -> None:
    await RetentionLoop(settings).run()


def host_watch_lock_key(host_id: str) -> int:
    """The advisory lock of the watcher pass over the targets bound to host ``host_id`` (a 64-bit key of its
    own per host, derived from the host id)."""
    digest = hashlib.sha256(f"windflow-watch-host:{host_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class WatchLoop(LoopService):
    """The watcher (``services/deployments/watch.py``): running deployments compared with their containers
    every ``DEPLOYMENT_WATCH_INTERVAL_SECONDS``, in two parts, each in one process at a time:

    * the targets any process reaches (not bound to a host), under one lock for the installation (shared with
      beat's ``windflow.watch_deployments``);
    * the targets bound to this process's host (``local@<host>``, placed next to that host's workers), under
      a lock of that host: a process of another host cannot reach their engine. A worker that serves its host's
      targets runs this part by itself (``celery_app.py``), so they are watched even where no beat task and no
      backend of that host runs.
    """

    name = "watcher pass"
    log = logger

    def __init__(self, settings: Settings, watcher: watch.Watcher | None = None, *, shared: bool = True) -> None:
        self.interval = settings.DEPLOYMENT_WATCH_INTERVAL_SECONDS
        super().__init__()
        self.settings = settings
        self.shared = shared
        self.watcher = watcher or watch.Watcher(settings)

    async def once(self) -> dict | None:
        """Each part where its lock is free; None when neither ran here."""
        host = self.settings.host_id
        parts = [(host_watch_lock_key(host), lambda target: target.host is not None and target.host == host)]
        if self.shared:
            parts.insert(0, (WATCH_LOCK_KEY, lambda target: target.host is None))
        totals: dict | None = None
        for key, scope in parts:
            async with leader_lock(key) as leader:
                if not leader:
                    self.log.debug("%s: another process is running it", self.name)
                    continue
                stats = await self.watcher.run_once(scope)
            totals = stats if totals is None else {name: totals[name] + stats[name] for name in totals}
        return totals


_watchers: dict[tuple[int, bool], watch.Watcher] = {}


async def watch_once(settings: Settings, *, shared: bool = True) -> dict | None:
    """One watcher pass where its locks are free (None elsewhere): beat's task (both parts), a placed worker's
    own pass over its host's targets (``shared=False``). The process keeps its watcher (each revision's
    document parsed once)."""
    watcher = _watchers.setdefault((id(settings), shared), watch.Watcher(settings))
    return await WatchLoop(settings, watcher, shared=shared).once()


async def watch_loop(settings: Settings) -> None:
    await WatchLoop(settings).run()
