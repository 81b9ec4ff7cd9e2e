"""The asyncio executor: runs deployments inside the backend process (the same runner Celery calls).

Used when Celery is disabled or unavailable (always with SQLite). It has no persistence of its own: a
backend restart loses the in-flight tasks, and start-up recovery (plus lease expiry) picks them up again.
"""

from __future__ import annotations

import asyncio
import logging

from backend.app.config import Settings
from backend.app.models import ExecutorKind
from backend.app.services.deployment_runner import RunOutcome, after_run, run_deployment

logger = logging.getLogger(__name__)

_tasks: dict[str, asyncio.Task] = {}
_timers: set[asyncio.Task] = set()


def create_background_task(deployment_id: str, settings: Settings) -> asyncio.Task:
    """Run ``deployment_id`` in this process; a second call while one runs returns the running task."""
    running = _tasks.get(deployment_id)
    if running is not None and not running.done():
        return running
    task = asyncio.create_task(_run(deployment_id, settings), name=f"deployment-{deployment_id}")
    _tasks[deployment_id] = task
    task.add_done_callback(lambda t: _tasks.pop(deployment_id, None) if _tasks.get(deployment_id) is t else None)
    return task


async def _run(deployment_id: str, settings: Settings) -> RunOutcome | None:
    async def dispatch(waiting: str) -> None:
        create_background_task(waiting, settings)

    async def dispatch_later(later: str, delay: float) -> None:
        _schedule(later, settings, delay)

    try:
        outcome = await run_deployment(deployment_id, settings, executor=ExecutorKind.ASYNCIO)
        await after_run(outcome, dispatch=dispatch, dispatch_later=dispatch_later)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a background task must never die silently
        logger.exception("asyncio executor: deployment %s crashed", deployment_id)
        return None
    return outcome


def _schedule(deployment_id: str, settings: Settings, delay: float) -> None:
    async def later() -> None:
        await asyncio.sleep(delay)
        create_background_task(deployment_id, settings)

    timer = asyncio.create_task(later(), name=f"retry-{deployment_id}")
    _timers.add(timer)
    timer.add_done_callback(_timers.discard)


def in_flight() -> list[asyncio.Task]:
    """Every deployment task and retry timer of this process."""
    return [*_tasks.values(), *_timers]


def running_task(deployment_id: str) -> asyncio.Task | None:
    return _tasks.get(deployment_id)


async def shutdown(timeout: float = 10.0) -> None:
    """Cancel in-flight work (their subprocesses are killed); their leases expire and recovery resumes them."""
    pending = [t for t in (*_tasks.values(), *_timers) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout)
