"""Celery tasks. Thin: they take ids, run the shared runner on the worker's loop, and follow up.

A redelivered ``deploy_stack`` message is harmless: the runner starts by claiming the deployment through
the state machine, and only the claimer deploys.
"""

from __future__ import annotations

import logging

from backend.app.celery_app import (
    DEPLOY_TASK,
    PURGE_TASK,
    REAPER_TASK,
    RECOVERY_TASK,
    WATCH_TASK,
    celery_app,
    settings,
)
from backend.app.runtime import worker_loop
from backend.app.runtime.redis_publish import SENT_BEFORE_COMMIT_HEADER

logger = logging.getLogger(__name__)


async def _dispatch(deployment_id: str) -> None:
    await _send(deployment_id)


async def _dispatch_later(deployment_id: str, delay: float) -> None:
    await _send(deployment_id, countdown=delay)


async def _send(deployment_id: str, countdown: float | None = None) -> None:
    """To the queue of the deployment's target (runtime/dispatch.py: a placed target's own queue)."""
    from backend.app.runtime.dispatch import route_of, send_placed

    route = await route_of(deployment_id)
    if route.placed:
        await send_placed(celery_app, deployment_id, route, countdown=countdown)
    else:
        deploy_stack.apply_async((deployment_id,), countdown=countdown)


async def _deploy(deployment_id: str, task_id: str | None, sent_before_commit: bool = False) -> dict:
    # a stop or a delete goes the same way: the runner finds the status a teardown (services/deployments/lifecycle.py)
    from backend.app.models import ExecutorKind
    from backend.app.services.deployments.runner import after_run, run_deployment

    outcome = await run_deployment(
        deployment_id, settings, executor=ExecutorKind.CELERY, task_id=task_id, sent_before_commit=sent_before_commit
    )
    await after_run(outcome, dispatch=_dispatch, dispatch_later=_dispatch_later)
    await _flush_events()
    return {"deployment_id": deployment_id, "status": str(outcome.status), "reason": outcome.reason}


async def _flush_events() -> None:
    from backend.app.runtime import event_transport

    await event_transport.flush_events(5.0)


@celery_app.task(name=DEPLOY_TASK, bind=True)
def deploy_stack(self, deployment_id: str) -> dict:
    """Deploy one deployment (by id), or finish its stop or delete. A message pushed while the deployment's
    creation was committing says so in a header (``runtime/redis_publish.py``)."""
    sent_before_commit = bool((self.request.headers or {}).get(SENT_BEFORE_COMMIT_HEADER))
    return worker_loop.run(_deploy(deployment_id, self.request.id, sent_before_commit))


# Recovery and the reaper run by beat dispatch from inside a worker: to the broker we consume from.
_dispatch_to_workers = _dispatch


async def _recover(max_age_minutes: float, timeout_minutes: float) -> dict:
    from backend.app.runtime.background import recover_once

    report = await recover_once(  # one recovery at a time, whoever triggers it: beat, or a backend's loop
        settings, _dispatch_to_workers, max_age_minutes=max_age_minutes, skip_if_fresh=False, timeout_minutes=timeout_minutes
    )
    if report is None:
        return {"status": "skipped", "reason": "another recovery is running"}
    await _flush_events()
    return report


@celery_app.task(name=RECOVERY_TASK)
def retry_pending_deployments(max_age_minutes: float = 2, timeout_minutes: float = 60) -> dict:
    """Periodic recovery (beat: every 5 minutes)."""
    return worker_loop.run(_recover(max_age_minutes, timeout_minutes))


async def _reap() -> dict:
    from backend.app.runtime.background import reap_once

    stats = await reap_once(settings, _dispatch_to_workers)  # one reaper at a time: beat, or a backend's loop
    if stats is None:
        return {"status": "skipped", "reason": "another reaper is running"}
    await _flush_events()
    return {"status": "completed", "statistics": stats}


@celery_app.task(name=REAPER_TASK)
def reap_expired_leases() -> dict:
    """The reaper (beat: every ``REAPER_INTERVAL_SECONDS``): reclaim expired leases, re-dispatch lost messages."""
    return worker_loop.run(_reap())


async def _watch() -> dict:
    from backend.app.runtime.background import watch_once

    stats = await watch_once(settings)  # one watcher at a time: beat, or a backend's loop
    if stats is None:
        return {"status": "skipped", "reason": "another watcher is running"}
    await _flush_events()
    return {"status": "completed", "statistics": stats}


@celery_app.task(name=WATCH_TASK)
def watch_deployments() -> dict:
    """The watcher (beat: every ``DEPLOYMENT_WATCH_INTERVAL_SECONDS``): running deployments against their containers."""
    return worker_loop.run(_watch())


@celery_app.task(name=PURGE_TASK)
def purge_consumed_messages(older_than_minutes: int = 60) -> int:
    """Delete delivered messages that kombu's SQL transport leaves behind."""
    from backend.app.runtime.sql_transport import purge_consumed_messages as purge

    deleted = purge(settings.sync_database_url, older_than_minutes, batch_size=settings.RETENTION_BATCH_SIZE)
    logger.info("purged %d consumed broker message(s)", deleted)
    return deleted
