"""A deployment's stop and delete, asked by a request and done in the background.

The request moves the status (``stopping`` / ``deleting``, ``services/deployments/lifecycle.py``), commits and
dispatches the deployment like a deploy (``runtime/dispatch.py``: Celery or the asyncio fallback; a *placed*
target's own queue, which only its workers consume), and answers at once; the executor's runner does the
teardown under a lease, and the reaper and recovery finish one whose executor died.

A placed target that no live worker serves is refused at once (``503 target_unserved``, nothing changed): a
stop that ran an hour later, when a worker comes back, would surprise everyone.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.exceptions import ServiceUnavailable
from backend.app.database import end_transaction
from backend.app.models import Deployment, DeploymentStatus, Target
from backend.app.runtime import workers
from backend.app.services.deployments import lifecycle

logger = logging.getLogger(__name__)


async def _ensure_served(session: AsyncSession, settings: Settings, deployment: Deployment, action: str) -> Target | None:
    """503 when the deployment's target is placed and nothing can run its work; the target otherwise."""
    target = await session.get(Target, deployment.target_id)
    if target is None or not target.placed:
        return target
    if settings.celery_unavailable_reason:
        raise ServiceUnavailable(
            f"cannot {action}: target {target.name} is placed (only its workers reach it) but Celery is off "
            f"({settings.celery_unavailable_reason})",
            code="target_unserved",
            params={"target": target.name},
        )
    covered = await workers.coverage(session)
    if not covered.served(target_id=target.id, placed=True):
        raise ServiceUnavailable(
            f"cannot {action}: no live worker serves target {target.name}; start a worker that declares it (WORKER_TARGETS) and try again",
            code="target_unserved",
            params={"target": target.name},
        )
    return target


async def stop(session: AsyncSession, *, settings: Settings, deployment: Deployment, actor: str) -> Target | None:
    """``running -> stopping``, committed; the caller reads the deployment, then dispatches it (its target,
    returned, spares the dispatcher a query)."""
    target = await _ensure_served(session, settings, deployment, "stop")
    await lifecycle.request_stop(session, deployment=deployment, actor=actor)
    await session.commit()
    return target


async def delete(session: AsyncSession, *, settings: Settings, deployment: Deployment, actor: str, keep_volumes: bool) -> Target | None:
    """``-> deleting``, committed; the caller dispatches it, and the row goes once its teardown is done."""
    target = await _ensure_served(session, settings, deployment, "delete")
    await lifecycle.request_delete(session, deployment=deployment, actor=actor, keep_volumes=keep_volumes)
    await session.commit()
    return target


async def wait_gone(session: AsyncSession, *, deployment_ids: list[str], timeout: float, interval: float = 0.25) -> list[Row]:
    """Wait up to ``timeout`` seconds for the rows of ``deployment_ids`` to be deleted, or for their teardowns to
    have settled otherwise (``failed``: the engine refused, or never answered within the attempts); the rows still
    there, ``(id, name, status, error_message)``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = list(
            await session.execute(
                select(Deployment.id, Deployment.name, Deployment.status, Deployment.error_message).where(Deployment.id.in_(deployment_ids))
            )
        )
        await end_transaction(session)  # each look in a transaction of its own (SQLite: no lock held while waiting)
        if all(row.status is not DeploymentStatus.DELETING for row in left) or loop.time() >= deadline:
            return left
        await asyncio.sleep(interval)
