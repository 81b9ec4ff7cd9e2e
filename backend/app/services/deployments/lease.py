"""The lease heartbeat every executor's work runs under: a deploy (the runner) or a teardown (lifecycle)."""

from __future__ import annotations

import asyncio
import logging

from backend.app import database
from backend.app.config import Settings
from backend.app.services.deployments.state_machine import renew_lease

logger = logging.getLogger(__name__)


def heartbeat_seconds(settings: Settings) -> float:
    """Lease renewal period: the configured heartbeat, at most a third of the lease (two beats may fail)."""
    return min(settings.DEPLOYMENT_HEARTBEAT_SECONDS, settings.DEPLOYMENT_LEASE_SECONDS / 3)


async def heartbeat(deployment_id: str, owner: str, settings: Settings, work: asyncio.Task, lost: asyncio.Event) -> None:
    """Renew ``owner``'s lease until ``work`` is done; when the renewal is refused (the user cancelled, or the
    reaper or recovery handed the deployment to another executor) set ``lost`` and cancel ``work``."""
    interval = heartbeat_seconds(settings)
    outage = database.OutageLog(f"lease renewal of deployment {deployment_id}", logger)
    while not work.done():
        await asyncio.sleep(interval)
        try:
            async with database.AsyncSessionLocal() as session:
                held = await renew_lease(session, deployment_id=deployment_id, owner=owner, lease_seconds=settings.DEPLOYMENT_LEASE_SECONDS)
                await session.commit()
        except Exception as exc:
            if database.is_unavailable(exc):
                outage.failed(exc)  # one warning while the database is down, not a traceback every beat
            else:
                logger.warning("lease renewal of deployment %s failed; retrying", deployment_id, exc_info=True)
            continue
        outage.succeeded()
        if not held:
            lost.set()
            work.cancel()
            return
