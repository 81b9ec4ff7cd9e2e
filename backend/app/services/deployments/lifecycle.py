"""Lifecycle actions that touch the engine directly from the request: stop and delete.

``start``, ``redeploy`` and ``retry`` only requeue (the runner does the engine work); ``cancel`` moves the
status and the executor's heartbeat notices, kills its engine process group and removes what it created.
"""

from __future__ import annotations

import shutil

from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.events import DeletedData, Event, EventType, queue_event
from backend.app.core.exceptions import Conflict, NotFound, ServiceUnavailable
from backend.app.core.logging import Redactor
from backend.app.database import end_transaction, utcnow
from backend.app.engines.base import EngineError
from backend.app.models import Deployment, DeploymentStatus, LogLevel
from backend.app.services.deployments import history_reasons, watch
from backend.app.services.deployments.context import load_context
from backend.app.services.deployments.logs import append_logs, append_logs_committed
from backend.app.services.deployments.state_machine import set_deployment_status

S = DeploymentStatus


class _Collector:
    def __init__(self) -> None:
        self.lines: list[tuple[LogLevel, str, object]] = []

    async def __call__(self, level: LogLevel, message: str) -> None:
        for line in message.splitlines() or [""]:
            self.lines.append((level, line, utcnow()))


def _engine_failure(action: str, exc: EngineError, redactor: Redactor) -> Exception:
    message = redactor(exc.message)
    if exc.transient:
        return ServiceUnavailable(f"cannot {action}: the target's Docker engine did not answer: {message}", code="engine_unavailable")
    return Conflict(f"cannot {action}: {message}", code="engine_error")


async def stop(session: AsyncSession, *, settings: Settings, deployment: Deployment, actor: str) -> None:
    if deployment.status is not S.RUNNING:
        raise Conflict(
            f"only a running deployment can be stopped; this one is {deployment.status}",
            code="invalid_transition",
            params={"action": "stop", "status": str(deployment.status)},
        )
    context = await load_context(session, settings=settings, deployment=deployment)
    redactor = context.redactor
    # Stopping takes up to the stack's stop grace period per container: no transaction (on SQLite, no write
    # lock) is held meanwhile. The status is then moved by compare-and-set from running.
    await end_transaction(session)
    await watch.hold(deployment.id)  # the watcher must not take the containers going down for a crash
    log = _Collector()
    await log(LogLevel.INFO, f"Stopping (requested by {actor})")
    try:
        await context.engine.stop(context.spec, log)
    except EngineError as exc:
        # the request's transaction rolls back with the error: the lines that say why are written on their own
        await append_logs_committed(deployment.id, log.lines + [(LogLevel.ERROR, exc.message, utcnow())], redactor=redactor)
        raise _engine_failure("stop", exc, redactor) from exc
    result = await set_deployment_status(
        session,
        deployment_id=deployment.id,
        to_status=S.STOPPED,
        reason=history_reasons.text("stopped_by_user"),
        actor=actor,
        expected_from=S.RUNNING,
    )
    if not result.accepted:
        raise Conflict(
            f"cannot stop this deployment: {result.reason}",
            code="invalid_transition",
            params={"action": "stop", "status": str(result.from_status) if result.from_status else None},
        )
    await log(LogLevel.INFO, "Stopped")
    await append_logs(session, deployment_id=deployment.id, lines=log.lines, redactor=redactor)


async def delete(session: AsyncSession, *, settings: Settings, deployment: Deployment, keep_volumes: bool) -> None:
    """Tear down every labelled container/network (and volume unless ``keep_volumes``), then drop the row."""
    if deployment.status is S.DEPLOYING:
        raise Conflict("this deployment is being deployed: cancel it first, then delete it", code="deployment_busy")
    context = await load_context(session, settings=settings, deployment=deployment)
    redactor = context.redactor
    await end_transaction(session)  # the engine's removal may take the containers' stop grace periods
    await watch.hold(deployment.id)  # the watcher must not take the containers going away for a crash
    log = _Collector()
    try:
        await context.engine.remove(context.spec, log, keep_volumes=keep_volumes)
    except EngineError as exc:
        raise _engine_failure("delete", exc, redactor) from exc
    # Meanwhile a redeploy may have requeued it and a runner claimed it: read it again, locked, before dropping it.
    current = await session.get(Deployment, deployment.id, with_for_update=True, populate_existing=True)
    if current is None:
        # a parallel delete won: it removed the directory, which this teardown's compose run may have rebuilt
        shutil.rmtree(context.spec.workdir, ignore_errors=True)
        raise NotFound(
            "deployment not found: a parallel request deleted it meanwhile (its containers and files are removed)",
            code="deployment_not_found",
        )
    if current.status is S.DEPLOYING:
        raise Conflict("this deployment was redeployed while it was being deleted: cancel it first, then delete it", code="deployment_busy")
    shutil.rmtree(context.spec.workdir, ignore_errors=True)
    queue_event(
        session, Event.of(EventType.DEPLOYMENT_DELETED, deployment.id, deployment.organization_id, DeletedData(name=deployment.name))
    )
    await session.delete(deployment)
