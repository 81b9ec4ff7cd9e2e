"""The deployment runner: the one code path every executor (Celery task, asyncio fallback) calls.

1. Claim the deployment through the state machine (compare-and-set). A redelivered Celery message, a
   recovery pass and the asyncio fallback may all call this for one deployment: only the claimer runs it.
2. Walk the engine steps, persisting every line of output and the progress between steps, while a
   heartbeat renews the lease. If the lease is lost (the user cancelled, or recovery handed the deployment
   to another executor) the heartbeat cancels the work, which kills the engine's process group.
3. Settle: ``running``; or ``pending`` again with backoff for a transient error while attempts remain;
   or ``failed`` with the engine's message. A cancelled deployment has what it created removed.
4. Every executor then calls :func:`after_run` with its own way of dispatching: it reschedules what must
   run again later and wakes the target's waiting deployments when a slot was freed.

A refused claim is never silently dropped: a deployment in its retry backoff is rescheduled for the end of
it (``deferred``); one refused for the target's capacity waits for a slot (``waiting``: the executor that
frees it wakes it, and the reaper re-dispatches it if that wake-up was lost); a ``deploying`` row under an
expired lease (its executor died, a broker redelivered the message) is reclaimed on the spot with the same
reality check as recovery, then claimed; under a lease still valid it is retried when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select

from backend.app import database
from backend.app.config import Settings
from backend.app.database import utcnow
from backend.app.engines.base import EngineError
from backend.app.models import TEARDOWN_STATUSES, Deployment, DeploymentStatus, ExecutorKind, LogLevel
from backend.app.services.deployments import history_reasons, lease, lifecycle, orphans, redaction, revisions
from backend.app.services.deployments.context import DeploymentContext, load_context
from backend.app.services.deployments.logs import DeploymentLogWriter
from backend.app.services.deployments.state_machine import (
    claim_deployment,
    claimable_for_target,
    set_deployment_status,
)
from backend.app.services.targets.compose_policy import PolicyViolation

logger = logging.getLogger(__name__)
S = DeploymentStatus

STEPS: list[tuple[str, str]] = [
    ("Validate configuration", "validate"),
    ("Prepare project directory", "prepare"),
    ("Check images", "ensure_images"),
    ("Create networks and volumes", "create_resources"),
    ("Start services", "start_services"),
    ("Wait until services are running and healthy", "wait_healthy"),
]


class Outcome(StrEnum):
    """How one call of :func:`run_deployment` ended (what the executor reports, e.g. as the task result)."""

    RUNNING = "running"  # deployed and settled running
    FAILED = "failed"  # settled failed (permanent error, or attempts spent)
    REQUEUED = "requeued"  # transient failure: pending again, to run after ``retry_in``
    CANCELLED = "cancelled"  # the user cancelled it while it ran; what it created was removed
    LOST = "lost"  # another actor took the deployment (lease lost); this executor stopped
    DEFERRED = "deferred"  # not claimable yet (retry backoff, or a lease still valid): retry after ``retry_in``
    WAITING = "waiting"  # the target is full: woken when a slot frees (``after_run``, or the reaper)
    SKIPPED = "skipped"  # nothing to do (already running, settled, deleted)
    STOPPED = "stopped"  # a stop's teardown finished (services/deployments/lifecycle.py)
    DELETED = "deleted"  # a delete's teardown finished: the row is gone


#: Outcomes after which the executor's slot on the target is free again.
FREES_A_SLOT = frozenset({Outcome.RUNNING, Outcome.FAILED, Outcome.REQUEUED, Outcome.CANCELLED, Outcome.LOST})


@dataclass(frozen=True)
class RunOutcome:
    deployment_id: str
    status: Outcome
    reason: str = ""
    target_id: str | None = None
    retry_in: float | None = None  # set for REQUEUED and DEFERRED: run it again after that many seconds


def executor_id(kind: ExecutorKind) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def backoff_seconds(settings: Settings, attempt: int) -> float:
    return settings.DEPLOYMENT_RETRY_BACKOFF_SECONDS * (2 ** max(0, attempt - 1))


#: How long a runner whose task was sent while the deployment's creation committed (Redis:
#: ``Dispatcher.commit_and_dispatch_new``) looks for a deployment it does not find yet: the commit is usually
#: done before a worker even takes the message; one that fails leaves nothing to find, and the task ends then.
#: A creation committed later still (a database stalled longer) waits for the reaper's dispatch; a redelivery of
#: such a message for a deployment deleted since then waits as long before it ends.
COMMIT_WAIT_SECONDS = 10.0
COMMIT_WAIT_MAX_PAUSE_SECONDS = 0.1

#: The first step that touches containers: a failure from there on may have replaced the running ones.
CONTAINERS_STEP = 4


async def _run_steps(context: DeploymentContext, owner: str, logs: DeploymentLogWriter, reached: list[int]) -> None:
    total = len(STEPS)
    context.spec.pull_progress = logs.pull_progress  # bounded DEPLOYMENT_PULL_PROGRESS events, folded progress
    for number, (title, method) in enumerate(STEPS, start=1):
        reached[0] = number
        logs.progress(owner=owner, current_step=number, total_steps=total, step_name=title)
        await logs.log(LogLevel.INFO, f"[{number}/{total}] {title}")
        await getattr(context.engine, method)(context.spec, logs.log)


#: Between two tries of a settle, or of a run, that met an unreachable database (seconds).
DATABASE_RETRY_SECONDS = 1.0


async def _settle(
    deployment_id: str,
    to: DeploymentStatus,
    owner: str,
    *,
    rollout: revisions.Rollout | None = None,
    images: list[dict[str, str]] | None = None,
    logs: DeploymentLogWriter | None = None,
    patience: float = 0.0,
    **kwargs,
) -> bool:
    """Move the deployment out of ``deploying`` under the lease; with ``rollout``, the images its pull resolved
    are recorded on its revision in the same transaction; with ``logs``, the lines it still buffers are written
    in that transaction too, before the status (one commit for both).

    An unreachable database (restarting) is tried again every :data:`DATABASE_RETRY_SECONDS` for ``patience``
    seconds (the runner passes its lease's length), with one warning: the run's outcome and its reason
    (``error_message``) land once it answers. Safe to repeat: the change is a compare-and-set on the status
    and the lease owner, so a deployment the reaper handed on meanwhile is refused, not overwritten. Past
    ``patience`` the error is raised; the lease expires and recovery settles the deployment."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + patience
    outage = database.OutageLog(f"settling deployment {deployment_id} as {to}", logger)
    while True:
        try:
            async with (
                database.AsyncSessionLocal() as session,
                logs.written_with(session) if logs is not None else contextlib.nullcontext(),
            ):
                if rollout is not None and images:
                    await revisions.record_images(session, deployment_id=deployment_id, number=rollout.number, images=images)
                result = await set_deployment_status(
                    session, deployment_id=deployment_id, to_status=to, lease_owner=owner, actor=owner, **kwargs
                )
                await session.commit()
        except Exception as exc:
            if not database.is_unavailable(exc) or loop.time() >= give_up_at:
                raise
            outage.failed(exc)
            await asyncio.sleep(DATABASE_RETRY_SECONDS)
            continue
        outage.succeeded()
        break
    if not result.accepted:
        logger.info("deployment %s: %s refused: %s", deployment_id, to, result.reason)
    return result.accepted


async def _current_status(deployment_id: str) -> DeploymentStatus | None:
    async with database.AsyncSessionLocal() as session:
        status = (await session.execute(select(Deployment.status).where(Deployment.id == deployment_id))).scalar_one_or_none()
    return DeploymentStatus(status) if status is not None else None


async def run_deployment(
    deployment_id: str,
    settings: Settings,
    *,
    executor: ExecutorKind,
    owner: str | None = None,
    task_id: str | None = None,
    sent_before_commit: bool = False,
    claimed_by: str | None = None,
) -> RunOutcome:
    """``sent_before_commit``: the task was sent while the deployment's creation was committing
    (``Dispatcher.commit_and_dispatch_new``); a deployment not found yet is looked for again until
    :data:`COMMIT_WAIT_SECONDS`. ``claimed_by``: the owner of the lease the deployment's creation took in its
    own transaction (this process runs it: ``Dispatcher.commit_and_dispatch_new``); the run holds it already
    and is that owner."""
    owner = claimed_by or owner or executor_id(executor)
    if claimed_by is None:
        refused = await _claim_for_run(
            deployment_id, settings, executor=executor, owner=owner, task_id=task_id, sent_before_commit=sent_before_commit
        )
        if refused is not None:
            return refused
    async with DeploymentLogWriter(deployment_id) as logs:
        logs.redactor = redaction.base_redactor(settings)  # until the deployment's own is loaded
        # Load, check, run.
        rollout: revisions.Rollout | None = None
        try:
            async with database.AsyncSessionLocal() as session:
                # Read only: on SQLite a plain BEGIN (WAL: a snapshot that waits for no writer), instead of the
                # write lock every other transaction takes first, which queued this read behind the request
                # still finishing (its audit entry) or another runner's log lines.
                await session.connection(execution_options={"sqlite_deferred": True})
                deployment = await session.get(Deployment, deployment_id)
                attempt, max_attempts = deployment.attempt, deployment.max_attempts
                context = await load_context(session, settings=settings, deployment=deployment)
                rollout = await revisions.rollout_of(session, deployment=deployment)
            # every rollout of a revision after its first pull runs the images it recorded (a rollback: the
            # images of the revision it re-applies)
            context.spec.pinned_images = dict(rollout.pinned)
            logs.redactor = context.redactor
            context.check_policy()  # the target's policy as it is now: it may have been tightened since creation
        except Exception as exc:  # noqa: BLE001 - a deployment that cannot even be loaded fails with the reason
            if isinstance(exc, PolicyViolation):
                message = f"refused by the compose policy: {exc.detail}"
            else:
                message = f"cannot prepare the deployment: {exc}"
            message = logs.redactor(message)
            await logs.log(LogLevel.ERROR, message)
            await logs.flush()
            reason = history_reasons.text("preparation_failed")
            if isinstance(exc, PolicyViolation) and rollout is not None:
                # a policy tightened since the change was made: nothing of it ran, the last good revision is
                # rolled out again (what ran before it still runs meanwhile)
                rolled_back = await _roll_back(deployment_id, context.target_id, owner, message, Failed(context, rollout, 0), logs)
                if rolled_back is not None:
                    return rolled_back
                if rollout.is_automatic_rollback:
                    message, reason = rollout.failure_message(message), history_reasons.text("automatic_rollback_failed")
            await _settle(deployment_id, S.FAILED, owner, error_message=message, reason=reason, patience=settings.DEPLOYMENT_LEASE_SECONDS)
            return RunOutcome(deployment_id, Outcome.FAILED, message)

        # The executor's kind only: its id names the host and PID, which tenants have no business seeing.
        for line in rollout.opening():
            await logs.log(LogLevel.WARNING if rollout.is_automatic_rollback else LogLevel.INFO, logs.redactor(line))
        await logs.log(
            LogLevel.INFO, f"Deployment started (revision {rollout.number}, attempt {attempt}/{max_attempts}, executor {executor})"
        )
        target_id = context.target_id
        lost = asyncio.Event()
        reached = [0]
        work = asyncio.create_task(_run_steps(context, owner, logs, reached))
        heartbeat = asyncio.create_task(lease.heartbeat(deployment_id, owner, settings, work, lost))
        try:
            await work
        except asyncio.CancelledError:
            if not lost.is_set():
                raise  # the executor itself is shutting down; recovery takes over after the lease expires
            return await _after_lost_lease(context, logs, rollout, step=reached[0])
        except EngineError as exc:
            # The engine's message quotes the containers' output: the deployment's own redactor masks it
            # before it is stored in error_message, published in events or written to the server log.
            message = logs.redactor(exc.message)
            failed = Failed(context, rollout, reached[0])
            return await _after_failure(
                settings,
                deployment_id,
                target_id,
                owner,
                attempt,
                max_attempts,
                message,
                exc.transient,
                logs,
                logged=logs.redactor(exc.summary),
                failed=failed,
            )
        except Exception as exc:  # noqa: BLE001 - an unexpected error fails the deployment, never the process
            message = logs.redactor(f"unexpected error: {type(exc).__name__}: {exc}")
            logger.error("deployment %s: %s", deployment_id, message)
            return await _after_failure(
                settings,
                deployment_id,
                target_id,
                owner,
                attempt,
                max_attempts,
                message,
                False,
                logs,
                failed=Failed(context, rollout, reached[0]),
            )
        finally:
            heartbeat.cancel()

        await logs.log(LogLevel.INFO, "Deployment is running")
        images = [image.record() for image in context.spec.images]
        # every line and progress step lands (in the same transaction) before the status says running
        if await _settle(
            deployment_id,
            S.RUNNING,
            owner,
            rollout=rollout,
            images=images,
            logs=logs,
            reason=history_reasons.text("running"),
            patience=settings.DEPLOYMENT_LEASE_SECONDS,
        ):
            return RunOutcome(deployment_id, Outcome.RUNNING, target_id=target_id)
        return await _after_lost_lease(context, logs, rollout)


_TEARDOWN_OUTCOMES = {
    "stopped": Outcome.STOPPED,
    "deleted": Outcome.DELETED,
    "failed": Outcome.FAILED,
    "requeued": Outcome.REQUEUED,
    "lost": Outcome.LOST,
    "skipped": Outcome.SKIPPED,
}


async def _teardown(deployment_id: str, settings: Settings, *, executor: ExecutorKind, owner: str, task_id: str | None) -> RunOutcome:
    done = await lifecycle.run_teardown(deployment_id, settings, executor=executor, owner=owner, task_id=task_id)
    # a teardown holds no deploy slot of its target: nothing to wake (target_id only with a retry)
    return RunOutcome(
        deployment_id, _TEARDOWN_OUTCOMES[done.result], done.reason, done.target_id if done.retry_in else None, retry_in=done.retry_in
    )


@dataclass(frozen=True)
class Failed:
    """What a failed run had: its context, the revision it rolled out and the last step it reached."""

    context: DeploymentContext
    rollout: revisions.Rollout
    step: int

    @property
    def images(self) -> list[dict[str, str]]:
        return [image.record() for image in self.context.spec.images]


async def _after_failure(
    settings: Settings,
    deployment_id: str,
    target_id: str,
    owner: str,
    attempt: int,
    max_attempts: int,
    message: str,
    transient: bool,
    logs: DeploymentLogWriter,
    logged: str | None = None,
    failed: Failed | None = None,
) -> RunOutcome:
    # Every line is stored before the status changes: a client that sees the new status finds the reason.
    # ``logged``: what the log still needs of ``message`` (the output it quotes may be there already, each
    # line at its own level: EngineError.output_logged).
    await logs.log(LogLevel.ERROR, message if logged is None else logged)
    if transient and attempt < max_attempts:
        delay = backoff_seconds(settings, attempt)
        await logs.log(LogLevel.WARNING, f"Transient failure: retrying in {delay:g}s (attempt {attempt + 1}/{max_attempts})")
        await logs.flush()
        requeued = await _settle(
            deployment_id,
            S.PENDING,
            owner,
            error_message=message,
            not_before=utcnow() + timedelta(seconds=delay),
            reason=history_reasons.text("retry_scheduled", seconds=f"{delay:g}"),
            patience=settings.DEPLOYMENT_LEASE_SECONDS,
        )
        if requeued:
            return RunOutcome(deployment_id, Outcome.REQUEUED, message, target_id, retry_in=delay)
    elif transient:
        await logs.log(LogLevel.ERROR, f"Giving up after {attempt} attempt(s)")
    await logs.flush()
    reason = history_reasons.text("failed")
    if failed is not None:
        rolled_back = await _roll_back(deployment_id, target_id, owner, message, failed, logs)
        if rolled_back is not None:
            return rolled_back
        await _remove_failed(failed, logs)
        if failed.rollout.is_automatic_rollback:
            message, reason = failed.rollout.failure_message(message), history_reasons.text("automatic_rollback_failed")
        await logs.flush()
    if await _settle(
        deployment_id,
        S.FAILED,
        owner,
        rollout=failed.rollout if failed else None,
        images=failed.images if failed else None,
        error_message=message,
        reason=reason,
        patience=settings.DEPLOYMENT_LEASE_SECONDS,
    ):
        return RunOutcome(deployment_id, Outcome.FAILED, message, target_id)
    return RunOutcome(deployment_id, Outcome.LOST, "status changed while failing", target_id)


async def _roll_back(
    deployment_id: str, target_id: str, owner: str, message: str, failed: Failed, logs: DeploymentLogWriter
) -> RunOutcome | None:
    """The failed revision's automatic rollback, when the deployment has one (see
    ``revisions.automatic_rollback_target``): a new revision re-applying the last good one is queued, and this
    executor reschedules the deployment at once. None when there is none to make."""
    async with database.AsyncSessionLocal() as session:
        good = await revisions.automatic_rollback_target(session, deployment_id=deployment_id)
    if good is None:
        return None
    await logs.log(
        LogLevel.WARNING,
        f"Revision {failed.rollout.number} failed: {revisions.first_line(message)}; rolling "
        f"back to revision {good.number}, the last that passed the health gate",
    )
    await logs.flush()  # the reason is in the log before the status says pending
    async with database.AsyncSessionLocal() as session:
        revision = await revisions.begin_automatic_rollback(
            session, deployment_id=deployment_id, owner=owner, message=message, images=failed.images
        )
        await session.commit()
    if revision is None:
        return None  # the lease is gone (the failed settle says so) or the rollback was switched off meanwhile
    logger.info(
        "deployment %s: revision %s failed; automatic rollback to revision %s as revision %s",
        deployment_id,
        failed.rollout.number,
        good.number,
        revision.number,
    )
    return RunOutcome(deployment_id, Outcome.REQUEUED, message, target_id, retry_in=0.0)


async def _remove_failed(failed: Failed, logs: DeploymentLogWriter) -> None:
    """Nothing of a revision that failed for good keeps running: what its run started is removed (named
    volumes are kept). A failure before any container was touched leaves what ran before as it is."""
    if failed.step < CONTAINERS_STEP:
        return
    await logs.log(
        LogLevel.WARNING,
        f"Removing the containers of revision {failed.rollout.number}: nothing of a failed revision keeps running (named volumes are kept)",
    )
    try:
        await failed.context.engine.remove(failed.context.spec, logs.log, keep_volumes=True)
    except Exception as exc:  # noqa: BLE001 - a clean-up that fails never keeps the deployment from settling
        detail = exc.message if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        await logs.log(LogLevel.ERROR, f"Could not remove them: {logs.redactor(detail)}")


async def _after_lost_lease(
    context: DeploymentContext, logs: DeploymentLogWriter, rollout: revisions.Rollout, *, step: int = 0
) -> RunOutcome:
    """``step``: the step the work was in when it was stopped (0: it had finished them all)."""
    deployment_id, target_id = context.deployment_id, context.target_id
    status = await _current_status(deployment_id)
    if status is S.CANCELLED:
        # a later revision's named volumes hold what the revisions before it wrote: only a first deploy's go
        keep_volumes = rollout.number > 1
        where = f" during step {step}/{len(STEPS)} ({STEPS[step - 1][0]}), stopped there" if 0 < step <= len(STEPS) else ""
        await logs.log(
            LogLevel.WARNING,
            f"Cancelled{where}: removing what this deployment created" + (" (named volumes are kept)" if keep_volumes else ""),
        )
        try:
            await context.engine.remove(context.spec, logs.log, keep_volumes=keep_volumes)
        except EngineError as exc:
            await logs.log(LogLevel.ERROR, f"Clean-up after cancel failed: {logs.redactor(exc.message)}")
        await logs.log(LogLevel.INFO, "Cancelled")
        return RunOutcome(deployment_id, Outcome.CANCELLED, target_id=target_id)
    await logs.log(LogLevel.WARNING, f"This executor lost its lease (deployment is now {status}); stopping here")
    return RunOutcome(deployment_id, Outcome.LOST, f"status is {status}", target_id)


async def _claim_for_run(
    deployment_id: str, settings: Settings, *, executor: ExecutorKind, owner: str, task_id: str | None, sent_before_commit: bool
) -> RunOutcome | None:
    """Claim ``deployment_id`` for ``owner``: None once claimed, else what the run ends with instead."""
    commit_deadline = time.monotonic() + COMMIT_WAIT_SECONDS if sent_before_commit else 0.0
    pause = 0.001
    tries = 0
    while tries < 2:  # a second try only after reclaiming a dead executor's row
        async with database.AsyncSessionLocal() as session:
            claim = await claim_deployment(
                session,
                deployment_id=deployment_id,
                owner=owner,
                executor=executor,
                lease_seconds=settings.DEPLOYMENT_LEASE_SECONDS,
                task_id=task_id,
            )
            await session.commit()
        if claim.from_status is None and time.monotonic() < commit_deadline:
            await asyncio.sleep(pause)  # not committed yet, or never will be (a creation that failed)
            pause = min(pause * 2, COMMIT_WAIT_MAX_PAUSE_SECONDS)
            continue
        tries += 1
        if claim.accepted:
            return None
        if claim.from_status in TEARDOWN_STATUSES:  # a stop or a delete asked: the same dispatch, another job
            return await _teardown(deployment_id, settings, executor=executor, owner=owner, task_id=task_id)
        refused = await _after_refused_claim(settings, deployment_id, claim.reason)
        if refused is not None:
            logger.debug("deployment %s not claimed by %s: %s (%s)", deployment_id, owner, claim.reason, refused.status)
            return refused
    return RunOutcome(deployment_id, Outcome.SKIPPED, claim.reason)


async def _after_refused_claim(settings: Settings, deployment_id: str, reason: str) -> RunOutcome | None:
    """Why the claim was refused, as an outcome the executor acts on; ``None`` when the row was a dead
    executor's and has just been reclaimed (claim again)."""
    now = utcnow()
    async with database.AsyncSessionLocal() as session:
        row = (
            await session.execute(select(Deployment).where(Deployment.id == deployment_id).execution_options(populate_existing=True))
        ).scalar_one_or_none()
        if row is None:
            return RunOutcome(deployment_id, Outcome.SKIPPED, reason)
        status = DeploymentStatus(row.status)
        if status is S.PENDING:
            if row.not_before is not None and row.not_before > now:
                return RunOutcome(deployment_id, Outcome.DEFERRED, reason, row.target_id, (row.not_before - now).total_seconds())
            if row.attempt >= row.max_attempts:
                return RunOutcome(deployment_id, Outcome.SKIPPED, reason, row.target_id)
            return RunOutcome(deployment_id, Outcome.WAITING, reason, row.target_id)
        if status is S.DEPLOYING and row.lease_expires_at is not None:
            if row.lease_expires_at >= now:
                # maybe a redelivery for an executor that just died: look again when its lease ends
                wait = (row.lease_expires_at - now).total_seconds() + 1.0
                return RunOutcome(deployment_id, Outcome.DEFERRED, reason, row.target_id, wait)
            counter = await orphans.reclaim_orphan(session, settings=settings, deployment=row, actor="reclaim")
            await session.commit()
            if counter == "retried":
                return None
            return RunOutcome(deployment_id, Outcome.SKIPPED, f"dead executor's deployment settled ({counter})", row.target_id)
    return RunOutcome(deployment_id, Outcome.SKIPPED, reason, row.target_id)


Dispatch = Callable[[str], Awaitable[object]]
DispatchLater = Callable[[str, float], Awaitable[object]]


async def after_run(outcome: RunOutcome, *, dispatch: Dispatch, dispatch_later: DispatchLater) -> None:
    """What every executor does once :func:`run_deployment` returned (the Celery task and the asyncio path).

    1. ``retry_in`` (requeued after a transient failure, or deferred): run it again when that time is up.
    2. The executor's slot on the target is free: start the oldest waiting deployments, as many as the
       target has free slots. Were this wake-up lost (the executor died right here), the reaper
       re-dispatches them after ``DISPATCH_TIMEOUT_SECONDS``.
    """
    if outcome.retry_in is not None:
        await dispatch_later(outcome.deployment_id, max(0.0, outcome.retry_in))
    if outcome.target_id and outcome.status in FREES_A_SLOT:
        async with database.AsyncSessionLocal() as session:
            waiting = await claimable_for_target(session, target_id=outcome.target_id)
        for deployment_id in waiting:
            if deployment_id != outcome.deployment_id:
                await dispatch(deployment_id)


class InProcessExecutor:
    """Runs deployments as asyncio tasks of the calling process: the runner, then :func:`after_run` with
    itself as the dispatcher (waiting deployments and retries run here too).

    The backend's asyncio fallback keeps one for the process (``runtime/background_tasks.py``); recovery
    called without a dispatch callable (the product guide's troubleshooting snippet, docs/architecture.md#the-product-guide) uses its own and waits for it.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task] = {}
        self._timers: set[asyncio.Task] = set()
        self._again: set[str] = set()  # deployments dispatched while their run was still going
        self._outage = database.OutageLog(f"asyncio executor: running deployments (tried again every {DATABASE_RETRY_SECONDS:g}s)", logger)

    def submit(self, deployment_id: str, settings: Settings, *, claimed_by: str | None = None) -> asyncio.Task:
        """Run ``deployment_id`` here; a call while one runs returns the running task and runs the deployment
        once more after it (a retry, a rollback or a revision queued while the previous run still cleans up
        or settles would otherwise wait for the reaper). ``claimed_by``: the owner of the lease the
        deployment's creation took for this process (a new deployment has no run here yet)."""
        running = self._tasks.get(deployment_id)
        if running is not None and not running.done():
            self._again.add(deployment_id)
            return running
        task = asyncio.create_task(self._run(deployment_id, settings, claimed_by), name=f"deployment-{deployment_id}")
        self._tasks[deployment_id] = task

        def done(finished: asyncio.Task) -> None:
            if self._tasks.get(deployment_id) is finished:
                self._tasks.pop(deployment_id, None)
                if deployment_id in self._again and not finished.cancelled():
                    self._again.discard(deployment_id)
                    self.submit(deployment_id, settings)  # a claim that finds nothing to do is skipped

        task.add_done_callback(done)
        return task

    def dispatcher(self, settings: Settings) -> Dispatch:
        async def dispatch(deployment_id: str) -> None:
            self.submit(deployment_id, settings)

        return dispatch

    async def _run(self, deployment_id: str, settings: Settings, claimed_by: str | None = None) -> RunOutcome | None:
        async def dispatch_later(later: str, delay: float) -> None:
            self._schedule(later, settings, delay)

        try:
            outcome = await run_deployment(deployment_id, settings, executor=ExecutorKind.ASYNCIO, claimed_by=claimed_by)
            await after_run(outcome, dispatch=self.dispatcher(settings), dispatch_later=dispatch_later)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not database.is_unavailable(exc):
                logger.exception("asyncio executor: deployment %s crashed", deployment_id)
                return None
            # The database went away under the run (its claim, its settle past the lease, the wake-up of the
            # target's waiting deployments): an outage, not a bug. The deployment runs here again once it
            # answers; that run's claim finds what is left to do (a lease still held: deferred to its end,
            # then reclaimed as recovery would).
            self._outage.failed(exc)  # one warning for the outage, not one traceback per deployment and try
            self._schedule(deployment_id, settings, DATABASE_RETRY_SECONDS)
            return None
        self._outage.succeeded()
        return outcome

    def _schedule(self, deployment_id: str, settings: Settings, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            self.submit(deployment_id, settings)  # the run that scheduled it may still be finishing: it runs after

        timer = asyncio.create_task(later(), name=f"retry-{deployment_id}")
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    def in_flight(self) -> list[asyncio.Task]:
        """Every deployment task and retry timer of this executor."""
        return [*self._tasks.values(), *self._timers]

    def running_task(self, deployment_id: str) -> asyncio.Task | None:
        return self._tasks.get(deployment_id)

    async def wait(self) -> None:
        """Return once nothing runs or waits to run here (retries included)."""
        while pending := [t for t in self.in_flight() if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel in-flight work (their subprocesses are killed); their leases expire and recovery resumes them."""
        pending = [t for t in self.in_flight() if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)
