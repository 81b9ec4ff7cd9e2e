"""Hand a committed ``pending`` deployment to an executor.

Called *after* the transaction that made the deployment ``pending`` committed, except for a new deployment's
task on Redis, pushed while its creation commits (:meth:`Dispatcher.commit_and_dispatch_new`). Dispatching twice
is harmless: the runner's compare-and-set claim lets exactly one execution through.

Celery is used when the :class:`~backend.app.core.celery_manager.CeleryManager` says it is usable (enabled,
broker answering, a worker external or embedded present); otherwise, or when the enqueue itself fails, the
deployment runs in-process (asyncio fallback), which is logged and counted.

**Routing by target.** A deployment of a *placed* target (``services/targets/placement.py``) goes to that
target's own queue, which only the workers declaring it consume, whatever the execution mode: it never runs
in-process here (this process may not reach that engine). When no live worker serves the target the message
still waits in its queue, the deployment's log says so once, and a re-dispatch (the reaper's) sends nothing
more until a worker serves it. Every other deployment goes to the shared queue, as always.

A *standalone* dispatcher (no manager; ``windflow recover``) belongs to a short-lived process: it decides
once with :meth:`probe` whether Celery workers are present, and :meth:`wait_local` awaits what it ran
in-process before the process exits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app import database
from backend.app.config import Settings
from backend.app.models import Deployment, ExecutorKind, LogLevel, Target
from backend.app.runtime import background_tasks, metrics, redis_publish, workers
from backend.app.runtime.celery_config import DEPLOY_TASK, create_celery
from backend.app.runtime.redis_publish import RedisTaskPublisher
from backend.app.services.deployments.logs import append_logs_committed
from backend.app.services.deployments.runner import executor_id
from backend.app.services.deployments.state_machine import claim_deployment
from backend.app.services.targets import placement

logger = logging.getLogger(__name__)
ENQUEUE_TIMEOUT_SECONDS = 5.0
#: a deployment waiting for a worker of its placed target is told so (and sent) again after this long at most
UNSERVED_NOTE_SECONDS = 600.0


#: threads that do nothing but publish, at most this many sends at once (kombu's client is blocking)
PUBLISH_THREADS = 4


def _enqueue(celery_app, deployment_id: str, queue: str | None = None, countdown: float | None = None) -> str:
    return celery_app.send_task(DEPLOY_TASK, args=(deployment_id,), queue=queue, countdown=countdown).id


_publishers_lock = threading.Lock()
_publishers: tuple[int, ThreadPoolExecutor] | None = None


def _publishers_of_this_process() -> ThreadPoolExecutor:
    """The publishing threads, made in the process that uses them: a prefork child that inherited its parent's
    executor would count the parent's idle threads as its own and queue its sends to threads it does not have."""
    global _publishers
    with _publishers_lock:
        if _publishers is None or _publishers[0] != os.getpid():
            _publishers = (os.getpid(), ThreadPoolExecutor(max_workers=PUBLISH_THREADS, thread_name_prefix="windflow-publish"))
        return _publishers[1]


async def _push(publisher: RedisTaskPublisher, key: str, payload: str) -> None:
    """:meth:`RedisTaskPublisher.push` within ``ENQUEUE_TIMEOUT_SECONDS``, started by its first step (``wait_for``
    would run it in a task of its own, one more loop turn away)."""
    async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
        await publisher.push(key, payload)


async def publish(
    celery_app, deployment_id: str, queue: str | None = None, countdown: float | None = None, *, via: RedisTaskPublisher | None = None
) -> str:
    """Send ``deployment_id``'s task; at most ``ENQUEUE_TIMEOUT_SECONDS``. ``via``: the backend's Redis publisher
    (``runtime/redis_publish.py``: one ``LPUSH`` from the loop), else kombu (blocking) on a publishing thread.

    The threads are this module's own, not the event loop's default executor: that one also runs the
    blocking calls of in-process deployments (the engine's SDK), and a dispatch queued behind them would wait
    for them, time out and fall back to in-process. The send is handed to a thread at once and its answer
    awaited directly (``wait_for(to_thread(...))`` started it one loop turn later, in a task of its own, and
    took two more turns to report it back); a send still running at the timeout ends on its own, as before.
    """
    if via is not None:
        async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
            return await via.publish(deployment_id, queue, countdown)
    sent = asyncio.get_running_loop().run_in_executor(_publishers_of_this_process(), _enqueue, celery_app, deployment_id, queue, countdown)
    async with asyncio.timeout(ENQUEUE_TIMEOUT_SECONDS):
        return await sent


@dataclass(frozen=True)
class Route:
    """Where a deployment's work goes: its target's queue (placed) or the shared one."""

    queue: str
    placed: bool = False
    target_id: str | None = None
    target_name: str | None = None


def route_of_target(target: Target) -> Route | None:
    """The route of a deployment of ``target`` as the caller loaded it (no query); None when the row's
    columns are not loaded (expired: the caller asks :func:`route_of`)."""
    state = sa_inspect(target)
    if state.expired or {"id", "name", "placed"} & state.unloaded:
        return None
    return Route(placement.queue_for(target_id=target.id, placed=target.placed), bool(target.placed), target.id, target.name)


async def route_of(deployment_id: str) -> Route:
    """The queue of ``deployment_id``'s target (the shared queue for a deployment that is gone)."""
    async with database.AsyncSessionLocal() as session:
        row = (
            await session.execute(
                select(Target.id, Target.name, Target.placed)
                .join(Deployment, Deployment.target_id == Target.id)
                .where(Deployment.id == deployment_id)
            )
        ).first()
    if row is None:
        return Route(placement.SHARED_QUEUE)
    return Route(placement.queue_for(target_id=row.id, placed=row.placed), bool(row.placed), row.id, row.name)


#: deployment id -> when this process last sent it to a placed target that no live worker served
_waiting_for_worker: dict[str, float] = {}


async def _unserved(route: Route) -> bool:
    async with database.AsyncSessionLocal() as session:
        covered = await workers.coverage(session)
    return not covered.served(target_id=route.target_id or "", placed=True)


async def send_placed(
    celery_app, deployment_id: str, route: Route, *, countdown: float | None = None, via: RedisTaskPublisher | None = None
) -> bool:
    """Send ``deployment_id`` to its placed target's queue. When no live worker serves the target, its log says
    so and it is sent once per :data:`UNSERVED_NOTE_SECONDS` only (the reaper re-dispatches a pending deployment
    every ``DISPATCH_TIMEOUT_SECONDS``: the queue would fill with copies). False when it was not sent."""
    now = time.monotonic()
    for gone in [d for d, at in _waiting_for_worker.items() if now - at > UNSERVED_NOTE_SECONDS]:
        del _waiting_for_worker[gone]
    unserved = await _unserved(route)
    if unserved and deployment_id in _waiting_for_worker:
        return False
    await publish(celery_app, deployment_id, route.queue, countdown, via=via)
    if not unserved:
        _waiting_for_worker.pop(deployment_id, None)
        return True
    _waiting_for_worker[deployment_id] = now
    logger.warning(
        "deployment %s: no live worker serves target %s (%s); it waits in queue %s",
        deployment_id,
        route.target_name,
        route.target_id,
        route.queue,
    )
    await append_logs_committed(deployment_id, [(LogLevel.WARNING, _unserved_line(route), database.utcnow())])
    return True


def _unserved_line(route: Route) -> str:
    return (
        f"[WAITING] no live worker serves target {route.target_name}: the deployment waits in the target's "
        "queue until a worker that declares it (WORKER_TARGETS) runs"
    )


class Dispatcher:
    def __init__(self, settings: Settings, *, manager=None) -> None:
        self.settings = settings
        self.manager = manager
        self._producer = None
        self._taking_back: set[asyncio.Task] = set()  # withdrawals of messages whose deployment was not created

    async def dispatch(self, deployment_id: str, *, target: Target | None = None) -> ExecutorKind:
        """``target``: the deployment's target as the caller (a route that just wrote the deployment) loaded
        it, which spares a query for its route."""
        route = (route_of_target(target) if target is not None else None) or await route_of(deployment_id)
        if route.placed:
            await self._dispatch_placed(deployment_id, route)
            return ExecutorKind.CELERY
        reason = self._celery_unavailable()
        if reason is None:
            try:
                await publish(self._celery(), deployment_id, via=self._redis_publisher)
                metrics.DISPATCHES.labels("celery").inc()
                return ExecutorKind.CELERY
            except Exception as exc:  # noqa: BLE001 - the deployment must not be lost with the broker
                return await self._run_here_after_failed_enqueue(deployment_id, exc)
        logger.info("Celery unavailable (%s): running deployment %s in-process (asyncio fallback)", reason, deployment_id)
        metrics.DISPATCH_FALLBACKS.labels("unavailable").inc()
        return await self._run_here(deployment_id)

    async def commit_and_dispatch_new(
        self, session: AsyncSession, deployment_id: str, *, target: Target, created: Deployment | None = None
    ) -> ExecutorKind:
        """Commit ``session``, whose transaction created ``deployment_id`` (on ``target``; ``created``: the row as
        it inserted it, if the caller holds it), then dispatch it.

        When this process pushes the shared queue's messages to Redis itself (:mod:`redis_publish`), the push
        starts with the commit instead of after it: a worker takes a message about a millisecond after it was
        pushed, by when the commit is usually done, so the claim no longer waits for the commit *and* the push.
        The message says it was sent before the commit (``SENT_BEFORE_COMMIT_HEADER``): a runner that does not
        find the deployment yet looks again for ``runner.COMMIT_WAIT_SECONDS``. A commit that fails takes the
        message back if no worker took it yet; one a worker took finds no deployment and ends (nothing runs). A
        push that fails is an ordinary failed enqueue: once the commit is done, the deployment runs in-process.
        When Celery is unusable the deployment runs in this process, which takes it in the creation's own
        transaction: the claim (``pending -> deploying``, the lease for this process, every rule of a claim)
        commits with the deployment, and the run starts holding the lease, with no transaction of its own to
        claim it and no hand-off to wait for. A claim the rules refuse (the target at its limit, older
        deployments waiting) leaves the deployment pending, dispatched as ever. Should the process die before the
        run starts, the lease expires and recovery takes the deployment again, as for a run that died.
        Anything else (another broker, a placed target): the commit, then :meth:`dispatch`.
        """
        route = route_of_target(target)
        if route is not None and not route.placed:
            unusable = self._celery_unavailable()
            if unusable is not None:
                return await self._commit_and_run_here(session, deployment_id, unusable, created=created)
            if (publisher := self._redis_publisher) is not None:
                return await self._commit_and_push(session, deployment_id, publisher)
        await session.commit()
        return await self.dispatch(deployment_id, target=target)

    async def _commit_and_push(self, session: AsyncSession, deployment_id: str, publisher: RedisTaskPublisher) -> ExecutorKind:
        """Commit ``session`` while the new ``deployment_id``'s task is pushed to Redis (see
        :meth:`commit_and_dispatch_new`)."""
        _, key, payload = redis_publish.message(self._celery(), deployment_id, before_commit=True)
        pushed = asyncio.ensure_future(_push(publisher, key, payload))
        # One step of the push before the commit's: its LPUSH is written now (or, without an open connection, its
        # connection started), not once the commit first waits on the database, half a millisecond of Python later.
        await asyncio.sleep(0)
        try:
            await session.commit()
        except BaseException:
            taking_back = asyncio.ensure_future(self._take_back(publisher, pushed, key, payload))
            self._taking_back.add(taking_back)
            taking_back.add_done_callback(self._taking_back.discard)
            raise
        try:
            await pushed
        except Exception as exc:  # noqa: BLE001 - the deployment must not be lost with the broker
            return await self._run_here_after_failed_enqueue(deployment_id, exc)
        metrics.DISPATCHES.labels("celery").inc()
        return ExecutorKind.CELERY

    async def _commit_and_run_here(
        self, session: AsyncSession, deployment_id: str, unusable: str, *, created: Deployment | None
    ) -> ExecutorKind:
        """Claim the new ``deployment_id`` for this process in ``session``, commit, run it (see
        :meth:`commit_and_dispatch_new`)."""
        owner = executor_id(ExecutorKind.ASYNCIO)
        claim = await claim_deployment(
            session,
            deployment_id=deployment_id,
            owner=owner,
            executor=ExecutorKind.ASYNCIO,
            lease_seconds=self.settings.DEPLOYMENT_LEASE_SECONDS,
            written=created,
        )
        await session.commit()
        logger.info("Celery unavailable (%s): running deployment %s in-process (asyncio fallback)", unusable, deployment_id)
        metrics.DISPATCH_FALLBACKS.labels("unavailable").inc()
        return await self._run_here(deployment_id, claimed_by=owner if claim.accepted else None)

    @staticmethod
    async def _take_back(publisher: RedisTaskPublisher, pushed: asyncio.Future, key: str, payload: str) -> None:
        """After a failed commit: withdraw the message pushed with it, unless a worker took it (it finds nothing)."""
        try:
            await pushed
            if not await asyncio.wait_for(publisher.withdraw(key, payload), ENQUEUE_TIMEOUT_SECONDS):
                logger.info("a deployment's creation failed after its task was taken; the task finds no deployment")
        except Exception:  # not pushed, or not withdrawn: a runner that finds no deployment ends
            logger.debug("the task of a deployment whose creation failed was not withdrawn", exc_info=True)

    async def _run_here_after_failed_enqueue(self, deployment_id: str, exc: Exception) -> ExecutorKind:
        reason = f"enqueue failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        logger.warning("Celery %s; running deployment %s in-process (asyncio fallback)", reason, deployment_id)
        metrics.DISPATCH_FALLBACKS.labels("enqueue_failed").inc()
        return await self._run_here(deployment_id)

    async def _run_here(self, deployment_id: str, *, claimed_by: str | None = None) -> ExecutorKind:
        background_tasks.create_background_task(deployment_id, self.settings, claimed_by=claimed_by)
        metrics.DISPATCHES.labels("asyncio").inc()
        # Let the new task start now: it runs up to its first query (its claim's, or the first log line's of a
        # deployment its creation claimed), so that begins at once rather than when the caller (the POST building
        # its answer) next waits on I/O.
        await asyncio.sleep(0)
        return ExecutorKind.ASYNCIO

    async def _dispatch_placed(self, deployment_id: str, route: Route) -> None:
        """Only the target's workers run it: to its queue, never in-process (the reaper sends it again later
        when the broker refused it)."""
        if self.settings.celery_unavailable_reason:
            logger.warning(
                "deployment %s: target %s is placed but Celery is off (%s): it waits",
                deployment_id,
                route.target_id,
                self.settings.celery_unavailable_reason,
            )
            return
        try:
            if await send_placed(self._celery(), deployment_id, route, via=self._redis_publisher):
                metrics.DISPATCHES.labels("celery").inc()
        except Exception as exc:  # noqa: BLE001 - the reaper dispatches it again; the deployment stays pending
            logger.warning(
                "deployment %s: enqueue to %s failed (%s: %s); the reaper sends it again",
                deployment_id,
                route.queue,
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )

    def _celery(self):
        """The application that sends the tasks (by name: the tasks themselves are the workers' business). It
        has no result backend: nothing here reads a task's result, and on Redis a result backend would
        subscribe to each task's result channel before its publish (the workers store the results as ever)."""
        if self._producer is None:
            self._producer = create_celery(self.settings, results=False)
        return self._producer

    @functools.cached_property
    def _redis_publisher(self) -> RedisTaskPublisher | None:
        """The backend's Redis publisher, when its broker is one :mod:`redis_publish` sends to (decided at the
        first dispatch). A standalone dispatcher (``windflow recover``, a worker's task) sends through kombu,
        whose messages carry the ids of the task that sends them."""
        if self.manager is None or not redis_publish.supports(self._celery()):
            return None
        return RedisTaskPublisher(self._celery())

    async def aclose(self) -> None:
        """Close the Redis publisher's connection of this loop (the app's shutdown); none made, nothing to do."""
        publisher = self.__dict__.get("_redis_publisher")
        if publisher is not None:
            await publisher.aclose()

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
        async with database.AsyncSessionLocal() as session:
            present = [w for w in await workers.serving_workers(session) if w.shared_queue]
        self._standalone_reason = None if present else "no healthy Celery worker of the shared queue sends heartbeats"

    async def wait_local(self) -> None:
        """Wait for the deployments this process runs in-process (standalone use), retries included."""
        await background_tasks.wait()
