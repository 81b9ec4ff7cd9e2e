"""The watcher: what a deployment's containers do after its health gate, against what its status says.

The health gate (``engines/health_gate.py``) judges a rollout until it is ``running``. From then on the
watcher looks, every ``DEPLOYMENT_WATCH_INTERVAL_SECONDS``, at the containers of every ``running``
deployment, and of every ``failed`` one whose containers are its current revision's (that revision passed
its gate before, or its last attempt got as far as starting them), and judges each service:

* ``up`` (every container running, healthy where it has a healthcheck), ``done`` (a one-shot job another
  service waits for, exited 0), ``starting``;
* ``down`` (exited, or never started), ``restarting`` (restarting, or restarted since the last look: a crash
  loop shows as a restart count that grows between looks), ``unhealthy`` (with the last probe's output),
  ``missing`` (fewer containers than the revision asks for).

The deployment is ``healthy`` (every service up or done), ``down`` (nothing of it runs) or ``degraded``
(between). What changes is stored on the deployment (``health``, ``service_health``: per service), written
to its log as a ``[WATCH]`` line and sent as ``DEPLOYMENT_HEALTH_CHANGED``; ``error_message`` says which
service is not up and why while it is not. Container text (probe output) passes through the deployment's
redactor first. Then, through the state machine (``observed=True``, the only writer of these two moves):

* ``running`` seen ``down`` at two looks in a row -> ``failed`` ("nothing of revision N runs any more: ...").
  The list and the page never show ``running`` with nothing running. No automatic rollback: the revision
  passed its gate and ran; whatever stopped it (a crash, the host, a hand) is not a bad revision.
* ``failed`` seen ``healthy`` at two looks in a row -> ``running``: a deployment settled ``failed`` while its
  containers came up (an executor lost after its last attempt, a timeout) or came back after the watcher
  failed it, is reconciled from the engine.

A ``degraded`` deployment stays ``running``: what still runs serves. The first healthy look after a rollout
is stored without an event (the rollout's own ``running`` said it). A stop or a delete holds the watcher off
the deployment while it takes the containers down (:func:`hold`).

It runs in one process at a time (``runtime/background.py::WatchLoop``: the backend's loop or beat's
``windflow.watch_deployments``, under one advisory lock) over the targets any process reaches, and in one
process of each host over the targets bound to that host (a worker placed there runs that part itself; another
host cannot reach their engine): one engine call per target (``Engine.inspect_managed``), else one per deployment (swarm). It owns its sessions and
commits each deployment's change on its own, like the reaper; it writes only what changed, and never moves
``updated_at`` (retention's clock of last activity).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import defer

from backend.app import database
from backend.app.config import Settings
from backend.app.core.events import Event, EventType, HealthChangedData, ServiceHealthData, queue_event
from backend.app.core.logging import Redactor
from backend.app.core.security import EncryptedValues
from backend.app.database import utcnow
from backend.app.engines import engine_for
from backend.app.engines.base import EngineError, ServiceState
from backend.app.engines.document import active_services, completed_dependencies, desired_replicas, load_document
from backend.app.models import Deployment, DeploymentStatus, LogLevel, Target
from backend.app.services.deployments import context as deployment_context
from backend.app.services.deployments import history_reasons, redaction
from backend.app.services.deployments.logs import append_logs
from backend.app.services.deployments.state_machine import set_deployment_status
from backend.app.services.targets import placement, target_service

logger = logging.getLogger(__name__)
S = DeploymentStatus
HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
ACTOR = "watcher"
#: The runner's first step that touches containers: a failed rollout that got that far left its own.
CONTAINERS_STEP = 4
#: How long a stop or a delete holds the watcher off a deployment (it clears with the status change).
HOLD_SECONDS = 300.0

_EXITED = frozenset({"exited", "dead", "complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
#: Docker's ``created`` is a container never started (down); these are a swarm task on its way up.
_STARTING = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting"})
_PROBLEMS = ("down", "unhealthy", "restarting", "missing")
#: A container the engine restarted counts as restarting until its current run has lasted this long (Docker's
#: own rule: a run of 10 s resets its restart backoff). A crash loop's container is up for a moment between two
#: exits; two looks inside that moment must not call it healthy.
RESTART_SETTLE_SECONDS = 10.0
#: A pass reads a target's watched deployments this many at a time (by id), the event loop free between two
#: reads, and without their document and values (read when a revision is first seen, or to redact a problem).
WATCH_BATCH = 500
_UNREAD = (defer(Deployment.rendered_compose), defer(Deployment.variables))


@dataclass(frozen=True)
class Expected:
    """What a revision's document asks for: containers per service, and its one-shot jobs."""

    replicas: Mapping[str, int]
    one_shot: frozenset[str] = frozenset()

    @classmethod
    def of(cls, compose: str) -> Expected:
        services = active_services(load_document(compose))
        return cls({name: desired_replicas(service) for name, service in services.items()}, frozenset(completed_dependencies(services)))


@dataclass(frozen=True)
class Look:
    """One look at a deployment's containers: its health, each service, and each container's restart count."""

    health: str
    services: list[ServiceHealthData]
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def message(self) -> str | None:
        wrong = [f"service {s.service} {s.reason}" for s in self.services if s.state in _PROBLEMS or s.state == "starting"]
        return "; ".join(wrong) or None

    def record(self) -> dict:
        return {"services": [s.model_dump() for s in self.services], "containers": self.restarts}


def _exit(code: int | None) -> str:
    return f"exited with code {code}" if code is not None else "exited"


def _up_for(state: ServiceState, now: datetime) -> float | None:
    """Seconds since a container's current run started (None when the engine did not say)."""
    started = state.started
    return (now - started).total_seconds() if started is not None else None


def judge(expected: Expected, states: Iterable[ServiceState], previous_restarts: Mapping[str, int], now: datetime | None = None) -> Look:
    """The health of a deployment from its containers (``states``), the restart counts of the last look, and
    ``now`` (a restarted container's run younger than :data:`RESTART_SETTLE_SECONDS` is not up yet). Pure: the
    watcher's decisions are tested on it without an engine."""
    by_service: dict[str, list[ServiceState]] = {}
    for state in states:
        by_service.setdefault(state.service, []).append(state)
    services: list[ServiceHealthData] = []
    restarts: dict[str, int] = {}
    anything_runs = False
    for name in sorted(set(expected.replicas) | set(by_service)):
        want = expected.replicas.get(name, 0)
        containers = by_service.get(name, [])
        if want <= 0 and not containers:
            continue
        running = done = 0
        problem: tuple[str, str] | None = None  # (state, reason): the first container's that is not up
        starting = False
        for c in containers:
            restarts[c.container_id] = c.restarts
            restarted = c.restarts - previous_restarts.get(c.container_id, 0)
            if c.state == "running":
                running += 1
                if c.health == "unhealthy":
                    problem = problem or ("unhealthy", "is unhealthy" + (f" (last check: {c.probe})" if c.probe else ""))
                elif restarted > 0:
                    problem = problem or ("restarting", f"restarted {restarted} time(s) since the last look ({c.restarts} in all)")
                elif c.restarts > 0 and now is not None and (up := _up_for(c, now)) is not None and up < RESTART_SETTLE_SECONDS:
                    problem = problem or ("restarting", f"restarted {c.restarts} time(s), up for {max(up, 0):.0f} s only")
                elif c.health == "starting":
                    starting = True
            elif c.state == "restarting":
                problem = problem or ("restarting", f"is restarting (it {_exit(c.exit_code)}; {c.restarts} restart(s))")
            elif c.state in _EXITED and name in expected.one_shot and c.exit_code == 0:
                done += 1
            elif c.state in _STARTING:
                starting = True
            elif c.state in _EXITED:
                problem = problem or ("down", _exit(c.exit_code) if c.state in ("exited", "dead") else f"{c.state} ({_exit(c.exit_code)})")
            else:
                problem = problem or ("down", f"is {c.state or 'in an unknown state'}")
        anything_runs = anything_runs or running > 0
        if problem is None and len(containers) < want:
            problem = ("missing", f"has {len(containers)} of its {want} container(s)")
        if problem is not None:
            state, reason = problem
        elif starting:
            state, reason = "starting", "is starting"
        elif containers and done == len(containers):
            state, reason = "done", None
        else:
            state, reason = "up", None
        total = sum(c.restarts for c in containers)
        services.append(ServiceHealthData(service=name, state=state, expected=want, running=running, restarts=total, reason=reason))
    if all(s.state in ("up", "done") for s in services):
        health = HEALTHY
    elif not anything_runs and any(s.state not in ("done",) for s in services):
        health = DOWN
    else:
        health = DEGRADED
    return Look(health, services, restarts)


async def hold(deployment_id: str, *, seconds: float = HOLD_SECONDS) -> None:
    """Keep the watcher off ``deployment_id`` for ``seconds`` (a stop or a delete is taking its containers down):
    written in a transaction of its own, before the engine is touched, so that the watcher never fails a
    deployment whose containers a user is stopping."""
    async with database.AsyncSessionLocal() as session:
        await session.execute(
            update(Deployment)
            .where(Deployment.id == deployment_id)
            .values(watch_hold_until=utcnow() + timedelta(seconds=seconds), updated_at=Deployment.updated_at)
            .execution_options(synchronize_session=False)
        )
        await session.commit()


def _watched(now):
    """Deployments the watcher looks at: ``running`` ones, and ``failed`` ones whose containers are their
    current revision's (it passed its gate before, or its last attempt started them)."""
    return (
        (Deployment.status == S.RUNNING)
        | (
            (Deployment.status == S.FAILED)
            & or_(
                Deployment.revision == Deployment.last_good_revision,
                (Deployment.attempt > 0) & (Deployment.current_step >= CONTAINERS_STEP),
            )
        )
    ) & (Deployment.watch_hold_until.is_(None) | (Deployment.watch_hold_until < now))


@dataclass
class Watcher:
    """One watcher for a process: keeps, between passes, each revision's expected services (its document is
    decrypted and parsed once) and the targets whose engine did not answer (one warning per outage)."""

    settings: Settings
    _expected: dict[tuple[str, int], Expected] = field(default_factory=dict)
    _unreachable: set[str] = field(default_factory=set)

    async def run_once(self, scope: Callable[[Target], bool] | None = None) -> dict[str, int]:
        """One pass over every watched deployment of the targets this process reaches (and ``scope`` keeps).
        Returns ``{"looked", "changed", "failed", "recovered", "errors"}``.

        Target by target: the engine first, then, only if it answered, that target's watched deployments in
        batches. A pass never holds every watched row at once, and a target whose engine is down costs one
        call, not a read of its deployments (a million rows once made every pass, every 5 s, load them all
        on the event loop and every request wait behind it)."""
        stats = {"looked": 0, "changed": 0, "failed": 0, "recovered": 0, "errors": 0}
        now = utcnow()
        async with database.AsyncSessionLocal() as session:
            watched_there = exists().where(Deployment.target_id == Target.id, _watched(now))
            targets = list((await session.execute(select(Target).where(watched_there).order_by(Target.id))).scalars())
            await database.end_transaction(session)
        seen: set[tuple[str, int]] = set()
        for target in targets:
            if not target.is_active or not placement.reachable_here(target, self.settings):
                continue
            if scope is not None and not scope(target):
                continue
            try:
                await self._watch_target(target, now, stats, seen)
            except Exception:
                logger.exception("watcher: target %s", target.name)
                stats["errors"] += 1
        # revisions no longer watched (stopped, rolled out, deleted) leave the cache; those of a target whose
        # engine did not answer were not seen either, and are read again when it answers
        self._expected = {key: value for key, value in self._expected.items() if key in seen}
        if stats["changed"]:
            logger.info(
                "Watcher: looked=%d changed=%d failed=%d recovered=%d errors=%d",
                stats["looked"],
                stats["changed"],
                stats["failed"],
                stats["recovered"],
                stats["errors"],
            )
        return stats

    async def _watch_target(self, target: Target, now: datetime, stats: dict[str, int], seen: set[tuple[str, int]]) -> None:
        credentials = target_service.credentials(target, self.settings)
        engine = engine_for(target_service.connection_from(target, credentials))
        try:
            managed = await engine.inspect_managed()
        except EngineError as exc:
            # an engine that does not answer tells nothing of the containers: nothing is changed
            if target.id not in self._unreachable:
                logger.warning("watcher: the engine of target %s did not answer: %s", target.name, exc.message)
                self._unreachable.add(target.id)
            stats["errors"] += 1
            return
        self._unreachable.discard(target.id)
        async for deployment in _watched_of(target.id, now):
            seen.add((deployment.id, deployment.revision))
            try:
                if managed is not None:
                    states = managed.get(deployment.id, [])
                else:
                    full = await _whole(deployment)
                    if full is None:
                        continue  # rolled out or deleted since it was read: the next pass sees it as it is
                    states = await engine.inspect(deployment_context.deploy_spec(self.settings, full))
                stats["looked"] += 1
                change = await self._settle(deployment, target, credentials, states)
            except Exception:
                logger.exception("watcher: deployment %s", deployment.id)
                stats["errors"] += 1
                continue
            if change:
                stats["changed"] += 1
                if change in ("failed", "recovered"):
                    stats[change] += 1

    async def _expected_of(self, deployment: Deployment) -> Expected | None:
        """What the deployment's revision asks for (its document read and parsed once per revision); None when
        the row changed revision or went since the pass read it."""
        key = (deployment.id, deployment.revision)
        if key not in self._expected:
            full = await _whole(deployment)
            if full is None:
                return None
            self._expected[key] = Expected.of(deployment_context.snapshot_compose(self.settings, full))
        return self._expected[key]

    async def _redactor(self, deployment: Deployment, target: Target, credentials: Mapping) -> Redactor:
        full = await _whole(deployment)
        _, secrets = EncryptedValues(full.variables if full is not None else {}).decrypt_with_secrets(self.settings)
        return redaction.deployment_redactor(
            self.settings, deployment.id, secrets=[*secrets, *redaction.target_secrets(target, credentials)]
        )

    async def _settle(self, deployment: Deployment, target: Target, credentials: Mapping, states: list[ServiceState]) -> str | None:
        """Store what changed of one deployment's health and move its status if it must. Returns ``"changed"``,
        ``"failed"``, ``"recovered"`` or None (nothing changed)."""
        status = DeploymentStatus(deployment.status)
        if status is S.FAILED and not states:
            return None  # a failed deployment without containers: nothing disagrees
        expected = await self._expected_of(deployment)
        if expected is None:
            return None
        record = deployment.service_health or {}
        look = judge(expected, states, record.get("containers") or {}, utcnow())
        previous = deployment.health
        redacts = look.health != HEALTHY or previous not in (None, HEALTHY)
        redact = await self._redactor(deployment, target, credentials) if redacts else None
        services = [s.model_copy(update={"reason": redact(s.reason)}) if redact and s.reason else s for s in look.services]
        message = redact(look.message) if redact and look.message else None
        stored = {"services": [s.model_dump() for s in services], "containers": look.restarts}
        move: DeploymentStatus | None = None
        if status is S.RUNNING and look.health == DOWN and previous == DOWN:
            move = S.FAILED
        elif status is S.FAILED and look.health == HEALTHY and previous == HEALTHY:
            move = S.RUNNING
        if move is None and look.health == previous and stored == record:
            return None

        async with database.AsyncSessionLocal() as session:
            # the row as it is now: a rollout, a stop or a delete since the look leaves it alone
            row = (
                await session.execute(
                    select(Deployment).where(Deployment.id == deployment.id).with_for_update().execution_options(populate_existing=True)
                )
            ).scalar_one_or_none()
            now = utcnow()
            if (
                row is None
                or row.status != deployment.status
                or row.revision != deployment.revision
                or row.finished_at != deployment.finished_at
                or (row.watch_hold_until is not None and row.watch_hold_until >= now)
            ):
                return None
            lines: list[tuple[LogLevel, str, object]] = []
            result = None
            if move is S.FAILED:
                error = f"nothing of revision {row.revision} runs any more: {message}"
                lines.append((LogLevel.ERROR, f"[WATCH] {error}", now))
                result = await set_deployment_status(
                    session,
                    deployment_id=row.id,
                    to_status=S.FAILED,
                    reason=history_reasons.text("watch_down"),
                    actor=ACTOR,
                    error_message=error,
                    expected_from=S.RUNNING,
                    observed=True,
                )
            elif move is S.RUNNING:
                lines.append((LogLevel.INFO, f"[WATCH] every service of revision {row.revision} is up and healthy: running again", now))
                result = await set_deployment_status(
                    session,
                    deployment_id=row.id,
                    to_status=S.RUNNING,
                    reason=history_reasons.text("watch_running"),
                    actor=ACTOR,
                    expected_from=S.FAILED,
                    observed=True,
                )
            if result is not None and not result.accepted:
                return None
            values: dict = {"health": look.health, "service_health": stored, "updated_at": Deployment.updated_at}
            if look.health != previous:
                values["health_since"] = now
            if status is S.RUNNING and move is None:
                if look.health != HEALTHY:
                    values["error_message"] = f"revision {row.revision} is {look.health}: {message}"
                elif previous in (DEGRADED, DOWN):
                    values["error_message"] = None
            await session.execute(
                update(Deployment).where(Deployment.id == row.id).values(**values).execution_options(synchronize_session=False)
            )
            told = look.health != previous and not (previous is None and look.health == HEALTHY)
            if told or (look.health != HEALTHY and message != _message_of(record)):
                if move is None:
                    if look.health == HEALTHY:
                        lines.append((LogLevel.INFO, f"[WATCH] every service of revision {row.revision} is up again", now))
                    else:
                        lines.append((LogLevel.WARNING, f"[WATCH] revision {row.revision} is {look.health}: {message}", now))
                queue_event(
                    session,
                    Event.of(
                        EventType.DEPLOYMENT_HEALTH_CHANGED,
                        row.id,
                        row.organization_id,
                        HealthChangedData(
                            health=look.health,
                            previous=previous,
                            status=str(move or status),
                            revision=row.revision,
                            message=message,
                            services=services,
                        ),
                        now,
                    ),
                )
            if lines:
                await append_logs(session, deployment_id=row.id, lines=lines)
            await session.commit()
        if move is S.FAILED:
            logger.warning("watcher: deployment %s (%s) is down: %s", deployment.id, deployment.name, message)
            return "failed"
        if move is S.RUNNING:
            logger.info("watcher: deployment %s (%s) runs again: reconciled to running", deployment.id, deployment.name)
            return "recovered"
        return "changed"


async def _watched_of(target_id: str, now: datetime) -> AsyncIterator[Deployment]:
    """The target's watched deployments, :data:`WATCH_BATCH` at a time in order of id, without their document
    and values; each read in a transaction of its own, ended before the rows are judged."""
    after = ""
    while True:
        async with database.AsyncSessionLocal() as session:
            query = (
                select(Deployment)
                .options(*_UNREAD)
                .where(Deployment.target_id == target_id, _watched(now), Deployment.id > after)
                .order_by(Deployment.id)
                .limit(WATCH_BATCH)
            )
            batch = list((await session.execute(query)).scalars())
            await database.end_transaction(session)
        for deployment in batch:
            yield deployment
        if len(batch) < WATCH_BATCH:
            return
        after = batch[-1].id


async def _whole(deployment: Deployment) -> Deployment | None:
    """The deployment's whole row (with its document and values) if it is still at the revision read; else None."""
    async with database.AsyncSessionLocal() as session:
        row = (await session.execute(select(Deployment).where(Deployment.id == deployment.id))).scalar_one_or_none()
        await database.end_transaction(session)
    return row if row is not None and row.revision == deployment.revision else None


def _message_of(record: Mapping) -> str | None:
    wrong = [f"service {s.get('service')} {s.get('reason')}" for s in record.get("services") or [] if s.get("state") not in ("up", "done")]
    return "; ".join(wrong) or None
