"""Stop and delete: asked by a request, done in the background under an executor's lease.

The request only moves the status (``running -> stopping``, or ``-> deleting`` from any settled status and
``pending``) and the caller dispatches the deployment like a deploy (Celery or the asyncio fallback, to the
target's own queue when it is placed): it answers at once. The executor's runner finds the status a teardown
and calls :func:`run_teardown`: it takes the lease (``state_machine.claim_teardown``), renews it while the
engine stops or removes the containers (each container may take its stop grace period), then settles:
``stopping -> stopped``; a ``deleting`` deployment's row is deleted (``DEPLOYMENT_DELETED``) once nothing of it
is left on its engine. An engine error the engine may get over (unreachable, timeout) gives the lease back
and is retried with backoff while attempts remain; another fails it (``-> failed`` with the engine's message;
a failed deployment may be deleted again). An executor that dies mid-teardown leaves its lease to expire:
the reaper and recovery dispatch the deployment again, and another executor claims and finishes it.

``start``, ``redeploy`` and ``retry`` only requeue (the runner does the engine work); ``cancel`` moves the
status and the executor's heartbeat notices, kills its engine process group and removes what it created.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app import database
from backend.app.config import Settings
from backend.app.core.events import DeletedData, Event, EventType, queue_event
from backend.app.core.exceptions import Conflict
from backend.app.database import utcnow
from backend.app.engines.base import EngineError
from backend.app.models import Deployment, DeploymentStatus, ExecutorKind, LogLevel
from backend.app.services.deployments import history_reasons, lease, redaction, watch
from backend.app.services.deployments.context import load_context
from backend.app.services.deployments.logs import DeploymentLogWriter
from backend.app.services.deployments.state_machine import claim_teardown, release_teardown, set_deployment_status

S = DeploymentStatus
logger = logging.getLogger(__name__)

#: What a delete may start from (``deploying``: cancel it first; ``stopping``: wait for the stop).
DELETABLE = frozenset({S.PENDING, S.RUNNING, S.FAILED, S.STOPPED, S.CANCELLED})


async def request_stop(session: AsyncSession, *, deployment: Deployment, actor: str) -> None:
    """``running -> stopping``; the caller commits, then dispatches the deployment."""
    result = await set_deployment_status(
        session,
        deployment_id=deployment.id,
        to_status=S.STOPPING,
        reason=history_reasons.text("stop_requested"),
        actor=actor,
        expected_from=S.RUNNING,
    )
    if not result.accepted:
        status = await _status_now(session, deployment.id) or result.from_status
        raise Conflict(
            f"only a running deployment can be stopped; this one is {status}",
            code="invalid_transition",
            params={"action": "stop", "status": str(status) if status else None},
        )


async def request_delete(session: AsyncSession, *, deployment: Deployment, actor: str, keep_volumes: bool) -> None:
    """``-> deleting``; the caller commits, then dispatches the deployment. A deployment already ``deleting``
    is left as it is (its teardown goes on)."""
    if deployment.status is S.DELETING:
        return
    result = await set_deployment_status(
        session,
        deployment_id=deployment.id,
        to_status=S.DELETING,
        reason=history_reasons.text("delete_requested"),
        actor=actor,
        expected_from=DELETABLE,
        keep_volumes=keep_volumes,
    )
    if result.accepted:
        return
    status = await _status_now(session, deployment.id) or result.from_status  # a concurrent change: as it is now
    if status is S.DELETING:
        return  # a parallel delete won: its teardown goes on, once
    if status is S.DEPLOYING:
        raise Conflict("this deployment is being deployed: cancel it first, then delete it", code="deployment_busy")
    if status is S.STOPPING:
        raise Conflict("this deployment is being stopped: delete it once it is stopped", code="deployment_busy")
    raise Conflict(f"cannot delete this deployment: {result.reason}", code="deployment_busy")


async def _status_now(session: AsyncSession, deployment_id: str) -> DeploymentStatus | None:
    status = await session.scalar(select(Deployment.status).where(Deployment.id == deployment_id))
    return DeploymentStatus(status) if status is not None else None


@dataclass(frozen=True)
class Teardown:
    """How :func:`run_teardown` ended: ``stopped``, ``deleted``, ``failed``, ``requeued`` (after ``retry_in``),
    ``lost`` (another executor took the lease) or ``skipped`` (nothing to do)."""

    result: str
    target_id: str | None = None
    retry_in: float | None = None
    reason: str = ""


async def run_teardown(
    deployment_id: str, settings: Settings, *, executor: ExecutorKind, owner: str, task_id: str | None = None
) -> Teardown:
    """The executor's side of a stop or a delete (see the module's docstring)."""
    async with database.AsyncSessionLocal() as session:
        row = await claim_teardown(
            session,
            deployment_id=deployment_id,
            owner=owner,
            executor=executor,
            lease_seconds=settings.DEPLOYMENT_LEASE_SECONDS,
            task_id=task_id,
        )
        await session.commit()
        if row is None:
            return Teardown("skipped", reason="not claimable: settled, gone, in its backoff or under another executor's lease")
        action, target_id = ("stop" if row.status is S.STOPPING else "delete"), row.target_id
        keep_volumes, attempt, max_attempts = row.teardown_keep_volumes, row.attempt, row.max_attempts
        try:
            context = await load_context(session, settings=settings, deployment=row)
        except Exception as exc:  # noqa: BLE001 - a deployment that cannot be loaded fails with the reason
            message = redaction.base_redactor(settings)(f"cannot {action}: {exc}")
            await database.end_transaction(session)
            return await _fail(deployment_id, owner, action, message, target_id)
        await database.end_transaction(session)
    await watch.hold(deployment_id)  # the watcher must not take the containers going down for a crash
    async with DeploymentLogWriter(deployment_id, redactor=context.redactor) as logs:
        if action == "stop":
            await logs.log(LogLevel.INFO, f"Stopping (attempt {attempt}/{max_attempts})")
            work = asyncio.create_task(context.engine.stop(context.spec, logs.log))
        else:
            kept = " (named volumes are kept)" if keep_volumes else ""
            await logs.log(LogLevel.INFO, f"Deleting: removing containers, networks and volumes{kept} (attempt {attempt}/{max_attempts})")
            work = asyncio.create_task(context.engine.remove(context.spec, logs.log, keep_volumes=keep_volumes))
        lost = asyncio.Event()
        beat = asyncio.create_task(lease.heartbeat(deployment_id, owner, settings, work, lost))
        try:
            await work
        except asyncio.CancelledError:
            if not lost.is_set():
                raise  # the executor is shutting down: its lease expires and the reaper dispatches it again
            await logs.log(LogLevel.WARNING, "This executor lost its lease; stopping here")
            return Teardown("lost", target_id)
        except EngineError as exc:
            message = context.redactor(exc.message)
            await logs.log(LogLevel.ERROR, message)
            if exc.transient and attempt < max_attempts:
                delay = settings.DEPLOYMENT_RETRY_BACKOFF_SECONDS * (2 ** max(0, attempt - 1))
                await logs.log(LogLevel.WARNING, f"Transient failure: retrying the {action} in {delay:g}s")
                await logs.flush()
                async with database.AsyncSessionLocal() as session:
                    released = await release_teardown(
                        session,
                        deployment_id=deployment_id,
                        owner=owner,
                        not_before=utcnow() + timedelta(seconds=delay),
                        error_message=message,
                    )
                    await session.commit()
                return Teardown("requeued" if released else "lost", target_id, retry_in=delay if released else None, reason=message)
            await logs.flush()
            return await _fail(deployment_id, owner, action, message, target_id)
        finally:
            beat.cancel()
        if action == "stop":
            await logs.log(LogLevel.INFO, "Stopped")
            await logs.flush()  # every line lands before the status says stopped
            async with database.AsyncSessionLocal() as session:
                result = await set_deployment_status(
                    session,
                    deployment_id=deployment_id,
                    to_status=S.STOPPED,
                    reason=history_reasons.text("stopped"),
                    actor=owner,
                    lease_owner=owner,
                )
                await session.commit()
            return Teardown("stopped" if result.accepted else "lost", target_id, reason=result.reason)
        await logs.flush()
    # the log writer is closed: nothing writes to the deployment's rows any more
    return await _finish_delete(deployment_id, owner, context.spec.workdir, target_id)


async def _finish_delete(deployment_id: str, owner: str, workdir, target_id: str) -> Teardown:
    """Drop the row of a torn-down deployment, if this executor still holds its teardown."""
    async with database.AsyncSessionLocal() as session:
        current = await session.get(Deployment, deployment_id, with_for_update=True, populate_existing=True)
        if current is None or current.status is not S.DELETING or current.lease_owner != owner:
            await session.rollback()
            return Teardown("lost", target_id, reason="the teardown was taken over or the row is gone")
        # the project directory goes too (the teardown's compose run may have rebuilt it from the snapshot)
        shutil.rmtree(workdir, ignore_errors=True)
        queue_event(session, Event.of(EventType.DEPLOYMENT_DELETED, deployment_id, current.organization_id, DeletedData(name=current.name)))
        await session.delete(current)
        await session.commit()
    logger.info("deployment %s deleted by %s", deployment_id, owner)
    return Teardown("deleted", target_id)


async def _fail(deployment_id: str, owner: str, action: str, message: str, target_id: str) -> Teardown:
    verb = "Stop" if action == "stop" else "Delete"
    async with database.AsyncSessionLocal() as session:
        result = await set_deployment_status(
            session,
            deployment_id=deployment_id,
            to_status=S.FAILED,
            reason=history_reasons.text(f"{action}_failed"),
            actor=owner,
            lease_owner=owner,
            error_message=f"{verb} failed: {message}" + ("; delete it again to retry" if action == "delete" else ""),
        )
        await session.commit()
    return Teardown("failed" if result.accepted else "lost", target_id, reason=message)
