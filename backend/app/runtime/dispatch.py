"""Hand a committed ``pending`` deployment to an executor.

Always called *after* the transaction that made the deployment ``pending`` committed. Dispatching twice
is harmless: the runner's compare-and-set claim lets exactly one execution through.

Celery is used when the :class:`~backend.app.core.celery_manager.CeleryManager` says it is usable (enabled,
broker answering, a worker external or embedded present); otherwise, or when the enqueue itself fails, the
deployment runs in-process (asyncio fallback), which is logged and counted.

A *standalone* dispatcher (no manager; ``windflow recover``) belongs to a short-lived process: it decides
once with :meth:`probe` whether Celery workers are present, and :meth:`wait_local` awaits what it ran
in-process before the process exits.
"""

from __future__ import annotations

import asyncio
import logging

from backend.app.config import Settings
from backend.app.models import ExecutorKind
from backend.app.runtime import background_tasks, metrics
from backend.app.runtime.celery_config import DEPLOY_TASK, create_celery

logger = logging.getLogger(__name__)
ENQUEUE_TIMEOUT_SECONDS = 5.0


def _enqueue(celery_app, deployment_id: str) -> str:
    return celery_app.send_task(DEPLOY_TASK, args=(deployment_id,)).id


class Dispatcher:
    def __init__(self, settings: Settings, *, manager=None) -> None:
        self.settings = settings
        self.manager = manager
        self._producer = None

    async def dispatch(self, deployment_id: str) -> ExecutorKind:
        reason = self._celery_unavailable()
        if reason is None:
            try:
                await asyncio.wait_for(asyncio.to_thread(_enqueue, self._celery(), deployment_id), ENQUEUE_TIMEOUT_SECONDS)
                metrics.DISPATCHES.labels("celery").inc()
                return ExecutorKind.CELERY
            except Exception as exc:  # noqa: BLE001 - the deployment must not be lost with the broker
                reason = f"enqueue failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
                logger.warning("Celery %s; running deployment %s in-process (asyncio fallback)", reason, deployment_id)
                metrics.DISPATCH_FALLBACKS.labels("enqueue_failed").inc()
        else:
            logger.info("Celery unavailable (%s): running deployment %s in-process (asyncio fallback)", reason, deployment_id)
            metrics.DISPATCH_FALLBACKS.labels("unavailable").inc()
        background_tasks.create_background_task(deployment_id, self.settings)
        metrics.DISPATCHES.labels("asyncio").inc()
        return ExecutorKind.ASYNCIO

    def _celery(self):
        if self.manager is not None:
            return self.manager.celery
        if self._producer is None:  # sends tasks by name: the tasks themselves are the workers' business
            self._producer = create_celery(self.settings)
        return self._producer

    def _celery_unavailable(self) -> str | None:
        if self.manager is not None:
            return None if self.manager.celery_usable else self.manager.report.reason
        # No manager (a standalone script): Celery if configured and a worker sends heartbeats.
        return self.settings.celery_unavailable_reason or self._standalone_reason

    _standalone_reason: str | None = "no execution mode known"

    async def probe(self) -> None:
        """Standalone use: decide once whether Celery workers are present."""
        if self.settings.celery_unavailable_reason:
            self._standalone_reason = self.settings.celery_unavailable_reason
            return
        from backend.app import database
        from backend.app.runtime import workers

        async with database.AsyncSessionLocal() as session:
            present = await workers.serving_workers(session)
        self._standalone_reason = None if present else "no healthy Celery worker sends heartbeats"

    async def wait_local(self) -> None:
        """Wait for the deployments this process runs in-process (standalone use), retries included."""
        await background_tasks.wait()
