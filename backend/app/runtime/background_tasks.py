"""The asyncio executor of this process: runs deployments inside the backend (the same runner Celery calls).

Used when Celery is disabled or unavailable (always with SQLite). It has no persistence of its own: a
backend restart loses the in-flight tasks, and start-up recovery (plus lease expiry) picks them up again.
The executor itself is :class:`~backend.app.services.deployments.runner.InProcessExecutor`; this module holds
the process's one instance.
"""

from __future__ import annotations

import asyncio

from backend.app.config import Settings
from backend.app.services.deployments.runner import InProcessExecutor

_executor = InProcessExecutor()


def create_background_task(deployment_id: str, settings: Settings, *, claimed_by: str | None = None) -> asyncio.Task:
    """Run ``deployment_id`` in this process; a second call while one runs returns the running task.
    ``claimed_by``: the lease's owner, when the deployment's creation claimed it for this process."""
    return _executor.submit(deployment_id, settings, claimed_by=claimed_by)


def in_flight() -> list[asyncio.Task]:
    """Every deployment task and retry timer of this process."""
    return _executor.in_flight()


def running_task(deployment_id: str) -> asyncio.Task | None:
    return _executor.running_task(deployment_id)


async def wait() -> None:
    """Return once nothing runs or waits to run in this process (a short-lived process before it exits)."""
    await _executor.wait()


async def shutdown(timeout: float = 10.0) -> None:
    """Cancel in-flight work (their subprocesses are killed); their leases expire and recovery resumes them."""
    await _executor.shutdown(timeout)
