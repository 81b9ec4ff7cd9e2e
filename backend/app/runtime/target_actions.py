"""A deployment's lifecycle actions (stop, delete) where its target is reachable.

* A target that is **not placed**: in this process, as always (``services/deployments/lifecycle.py``); any
  process can, since the project directory is rebuilt from the stored snapshot when it is missing.
* A **placed** target (``services/targets/placement.py``): on a worker that serves it. The action is sent to
  the target's queue (``windflow.stop_deployment`` / ``windflow.delete_deployment``) and the request waits for
  its result, so the API answers as it does for any other target (200/204, or the same 404/409/503 with the
  same code). No live worker serves the target: ``503 target_unserved`` at once, nothing queued (a stop that
  ran an hour later, when a worker comes back, would surprise everyone).

:func:`run_here` is the worker's side: the action on the worker's own session, its domain error returned as
data for the API to raise again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.app import database
from backend.app.config import Settings
from backend.app.core.exceptions import (
    Conflict,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    ValidationFailed,
    WindFlowError,
)
from backend.app.database import end_transaction
from backend.app.models import Deployment, Target
from backend.app.runtime import workers
from backend.app.runtime.celery_config import DELETE_TASK, STOP_TASK, create_celery
from backend.app.services.deployments import lifecycle
from backend.app.services.targets import placement

logger = logging.getLogger(__name__)

#: how long a request waits for the target's worker to stop or delete (a stop waits out each container's
#: stop grace period)
REMOTE_ACTION_TIMEOUT_SECONDS = 180.0

_producers: dict[str, Any] = {}


def _producer(settings: Settings):
    url = settings.celery_broker_url or ""
    if url not in _producers:
        _producers[url] = create_celery(settings)
    return _producers[url]


async def stop(session: AsyncSession, *, settings: Settings, deployment: Deployment, actor: str) -> None:
    """Stop ``deployment`` where its target is (the caller commits, then reads the deployment again)."""
    if not await _on_its_workers(session, settings, deployment, "stop", STOP_TASK, [deployment.id, actor]):
        await lifecycle.stop(session, settings=settings, deployment=deployment, actor=actor)


async def delete(session: AsyncSession, *, settings: Settings, deployment: Deployment, keep_volumes: bool) -> None:
    """Tear ``deployment`` down and delete it where its target is (the caller commits)."""
    if not await _on_its_workers(session, settings, deployment, "delete", DELETE_TASK, [deployment.id, keep_volumes]):
        await lifecycle.delete(session, settings=settings, deployment=deployment, keep_volumes=keep_volumes)


async def _on_its_workers(session: AsyncSession, settings: Settings, deployment: Deployment, action: str, task: str, args: list) -> bool:
    """Run ``task`` on a worker of the deployment's placed target and raise its error; False when the target is
    not placed (the caller acts here)."""
    target = await session.get(Target, deployment.target_id)
    if target is None or not target.placed:
        return False
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
    queue = placement.queue_name(target.id)
    await end_transaction(session)  # the worker's action may take the containers' stop grace periods
    result = await asyncio.to_thread(_call, _producer(settings), task, args, queue, action)
    error = result.get("error") if isinstance(result, dict) else None
    if error:
        raise _domain_error(error)
    return True


def _call(celery_app, task: str, args: list, queue: str, action: str) -> dict:
    from celery.exceptions import TimeoutError as CeleryTimeout

    sent = celery_app.send_task(task, args=args, queue=queue)
    try:
        return sent.get(timeout=REMOTE_ACTION_TIMEOUT_SECONDS, interval=0.2, propagate=True)
    except CeleryTimeout as exc:
        raise ServiceUnavailable(
            f"cannot {action}: the target's worker did not answer within {REMOTE_ACTION_TIMEOUT_SECONDS:g}s (it may "
            "still do it); look at the deployment again in a moment",
            code="target_worker_timeout",
        ) from exc
    except Exception as exc:
        logger.warning("%s on the target's worker failed: %s", action, type(exc).__name__)
        raise ServiceUnavailable(
            f"cannot {action}: the target's worker failed ({type(exc).__name__}); try again", code="target_worker_failed"
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            sent.forget()  # its result is read: no need to keep it for an hour


_BY_STATUS: dict[int, type[WindFlowError]] = {
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    503: ServiceUnavailable,
}


def _domain_error(error: dict) -> WindFlowError:
    """The worker's domain error, raised again here with its status, code, detail and params."""
    kind = _BY_STATUS.get(int(error.get("status") or 503), ServiceUnavailable)
    params = error.get("params") if isinstance(error.get("params"), dict) else None
    return kind(str(error.get("detail") or "the target's worker refused"), code=str(error.get("code") or kind.code), params=params)


async def run_here(action: str, deployment_id: str, settings: Settings, *, actor: str = "worker", keep_volumes: bool = False) -> dict:
    """The worker's side of :func:`stop` / :func:`delete`: the action on this process's engine connection, in a
    session of its own; ``{"ok": true}`` or ``{"error": {status, code, detail, params}}``."""
    async with database.AsyncSessionLocal() as session:
        deployment = await session.get(Deployment, deployment_id)
        if deployment is None:
            return {"error": {"status": 404, "code": "deployment_not_found", "detail": "deployment not found", "params": {}}}
        try:
            if action == "stop":
                await lifecycle.stop(session, settings=settings, deployment=deployment, actor=actor)
            elif action == "delete":
                await lifecycle.delete(session, settings=settings, deployment=deployment, keep_volumes=keep_volumes)
            else:
                raise ValidationFailed(f"unknown action {action!r}")
            await session.commit()
        except WindFlowError as exc:
            await session.rollback()
            return {"error": {"status": exc.status_code, "code": exc.code, "detail": exc.detail, "params": exc.params}}
    return {"ok": True}
