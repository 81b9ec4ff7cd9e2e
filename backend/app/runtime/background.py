"""The backend's own background loops: start-up recovery, periodic recovery and the reaper.

Periodic recovery runs in every backend process but does real work in at most one at a time: a
PostgreSQL advisory lock elects the runner (SQLite deployments are single-process), and a pass is skipped
when another runner (Celery beat or another replica) already recovered within the interval.

The reaper (``services/recovery.py::reap``) runs every ``REAPER_INTERVAL_SECONDS`` under its own advisory
lock, shared with Celery beat's ``windflow.reap_expired_leases`` task: one reaper at a time, wherever it runs.

A database that is down or restarting stops no loop: the pass is skipped with one warning (no traceback; then
at most one a minute while it lasts) and the next pass runs as usual once the database answers again. The
advisory locks go with the server's sessions, so a restart leaves none held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from sqlalchemy import text

from backend.app import database
from backend.app.config import Settings
from backend.app.database import utcnow
from backend.app.runtime import workers
from backend.app.runtime.sql_transport import restore_orphaned_deliveries
from backend.app.services import recovery, retention

logger = logging.getLogger(__name__)
RECOVERY_LOCK_KEY = 727274002
REAPER_LOCK_KEY = 727274003
RETENTION_LOCK_KEY = 727274004
_local_locks: dict[int, asyncio.Lock] = {}


@contextlib.asynccontextmanager
async def leader_lock(key: int = RECOVERY_LOCK_KEY) -> AsyncIterator[bool]:
    """Yield True in the one process that holds the lock, False elsewhere (never blocks)."""
    engine = database.get_engine()
    if engine.dialect.name != "postgresql":
        local = _local_locks.setdefault(key, asyncio.Lock())
        if local.locked():
            yield False
            return
        async with local:
            yield True
        return
    async with engine.connect() as conn:
        acquired = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar()
        await conn.commit()
        try:
            yield bool(acquired)
        finally:
            if acquired:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()


def _fresh(report: dict | None, interval: timedelta) -> bool:
    stamp = ((report or {}).get("last") or {}).get("timestamp")
    if not stamp:
        return False
    return utcnow() - datetime.fromisoformat(stamp.replace("Z", "+00:00")) < interval * 0.8


async def recover_once(settings: Settings, dispatcher, *, max_age_minutes: float, skip_if_fresh: bool) -> dict | None:
    async with leader_lock() as leader:
        if not leader:
            logger.debug("recovery: another process is running it")
            return None
        async with database.AsyncSessionLocal() as session:
            interval = timedelta(minutes=settings.RECOVERY_INTERVAL_MINUTES)
            if skip_if_fresh and _fresh(await recovery.last_report(session), interval):
                logger.debug("recovery: a recent pass by another runner; skipping")
                return None
            return await recovery.recover_pending_deployments(
                session, max_age_minutes=max_age_minutes, timeout_minutes=settings.RECOVERY_TIMEOUT_MINUTES, settings=settings, dispatch=dispatcher.dispatch
            )


async def startup_recovery(settings: Settings, dispatcher) -> dict | None:
    """Every ``pending`` deployment is retried when the backend starts (``max_age_minutes=0``)."""
    try:
        return await recover_once(settings, dispatcher, max_age_minutes=0, skip_if_fresh=False)
    except Exception as exc:  # noqa: BLE001 - the backend must start even if recovery cannot run
        database.OutageLog("start-up recovery", logger).failed(exc)  # periodic recovery catches up
        return None


async def periodic_recovery(settings: Settings, dispatcher) -> None:
    interval = settings.RECOVERY_INTERVAL_MINUTES * 60
    passes = database.OutageLog("periodic recovery", logger)
    while True:
        await asyncio.sleep(interval)
        try:
            await recover_once(settings, dispatcher, max_age_minutes=settings.RECOVERY_MAX_AGE_MINUTES, skip_if_fresh=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the loop alive
            passes.failed(exc)
        else:
            passes.succeeded()


async def reap_once(settings: Settings, dispatch) -> dict | None:
    """One reaper pass where the reaper lock is free (None elsewhere): the backend's loop and beat's task.

    Before the deployments (``services/recovery.py::reap``): the PostgreSQL broker's messages taken by a
    worker process that is gone or degraded are made visible again (``runtime/sql_transport.py``), and the
    leases of deployments whose executor belonged to a worker that is gone expire now
    (``runtime/workers.py``), so that this very pass reclaims them."""
    async with leader_lock(REAPER_LOCK_KEY) as leader:
        if not leader:
            return None
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


async def reaper_loop(settings: Settings, dispatcher) -> None:
    """Heal a dead executor's deployments within seconds of its lease expiring (not at the next recovery)."""
    passes = database.OutageLog("reaper pass", logger)
    while True:
        await asyncio.sleep(settings.REAPER_INTERVAL_SECONDS)
        try:
            await reap_once(settings, dispatcher.dispatch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the loop alive
            passes.failed(exc)
        else:
            passes.succeeded()


async def retention_once(settings: Settings) -> retention.RetentionReport | None:
    """One retention pass in the process holding the retention lock (None elsewhere)."""
    async with leader_lock(RETENTION_LOCK_KEY) as leader:
        if not leader:
            logger.debug("retention: another process is running it")
            return None
        return await retention.prune(settings)


async def periodic_retention(settings: Settings) -> None:
    """Prune old log lines and history every ``RETENTION_INTERVAL_MINUTES`` (first pass shortly after start)."""
    delay = 60.0
    passes = database.OutageLog("retention pass", logger)
    while True:
        await asyncio.sleep(delay)
        delay = settings.RETENTION_INTERVAL_MINUTES * 60
        try:
            await retention_once(settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the loop alive
            passes.failed(exc)
        else:
            passes.succeeded()
