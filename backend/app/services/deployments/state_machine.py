"""The deployment state machine: the single choke point for every status change.

Routes, the runner, Celery tasks, recovery and tests all call :func:`set_deployment_status` (or its
:func:`claim_deployment` shorthand); a new deployment is inserted by :func:`record_creation`. Nothing else
assigns ``Deployment.status``.

Each change is a *compare-and-set*: ``UPDATE deployments SET status=:to ... WHERE id=:id AND
status=:from`` (plus the rule-specific conditions below). When the row changed under us the update hits
nothing and the caller gets a rejected :class:`TransitionResult` with a reason, never an exception: an
expected race is not an error. An accepted change writes a history row and queues a
``DEPLOYMENT_STATUS_CHANGED`` event that is published only after the caller commits.

The caller owns the transaction (services never commit).

Over 500 lines because every rule of the table, and the lease writes that are not status changes (renewal,
a teardown's claim and release), belong at this one choke point.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, ScalarSelect, Select, Update, bindparam, func, insert, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from backend.app.core.events import Event, EventType, StatusChangedData, queue_event
from backend.app.database import Base, defer_foreign_keys, utcnow
from backend.app.models import TEARDOWN_STATUSES, Deployment, DeploymentStatus, DeploymentStatusHistory, ExecutorKind, Target
from backend.app.services.deployments import history_reasons, revision_outcomes
from backend.app.services.deployments.status_counts import count_creation, note_transition

S = DeploymentStatus
logger = logging.getLogger(__name__)

#: Every allowed ``(from, to)`` pair (docs/architecture.md, "The deployment state machine"). Anything else is rejected.
ALLOWED_TRANSITIONS: frozenset[tuple[DeploymentStatus, DeploymentStatus]] = frozenset(
    {
        (S.PENDING, S.DEPLOYING),  # claimed by exactly one executor
        (S.PENDING, S.CANCELLED),
        (S.PENDING, S.FAILED),  # timeout, or attempts exhausted
        (S.DEPLOYING, S.RUNNING),
        (S.DEPLOYING, S.FAILED),
        (S.DEPLOYING, S.PENDING),  # transient failure or expired lease, attempts left
        (S.DEPLOYING, S.CANCELLED),
        (S.RUNNING, S.PENDING),  # redeploy
        (S.RUNNING, S.STOPPED),
        (S.RUNNING, S.FAILED),  # the watcher: nothing of it runs any more
        (S.FAILED, S.RUNNING),  # the watcher: every container of its revision is up and healthy again
        (S.STOPPED, S.PENDING),  # start / redeploy
        (S.FAILED, S.PENDING),  # retry
        (S.CANCELLED, S.PENDING),  # retry
        # a stop or delete finishes in the background, under an executor's lease (services/deployments/lifecycle.py)
        (S.RUNNING, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        (S.STOPPING, S.FAILED),  # the engine refused the stop
        (S.PENDING, S.DELETING),
        (S.RUNNING, S.DELETING),
        (S.FAILED, S.DELETING),
        (S.STOPPED, S.DELETING),
        (S.CANCELLED, S.DELETING),
        (S.DELETING, S.FAILED),  # the engine refused the teardown: the row stays, to be deleted again
        # (a finished teardown deletes the row: DEPLOYMENT_DELETED)
    }
)

#: Statuses an executor works in under a lease: a change out of them names it (``rule_lease_owner``).
LEASED_STATUSES = frozenset({S.DEPLOYING}) | TEARDOWN_STATUSES

#: Transitions that start a new request from the user: attempts and timers start over.
_REQUEUES_BY_USER = frozenset({(S.RUNNING, S.PENDING), (S.STOPPED, S.PENDING), (S.FAILED, S.PENDING), (S.CANCELLED, S.PENDING)})


#: Transitions only the watcher makes, from what the engine shows (``observed=True``).
OBSERVED_TRANSITIONS = frozenset({(S.RUNNING, S.FAILED), (S.FAILED, S.RUNNING)})


def is_allowed(from_status: DeploymentStatus, to_status: DeploymentStatus) -> bool:
    return (from_status, to_status) in ALLOWED_TRANSITIONS


@dataclass(frozen=True)
class TransitionResult:
    accepted: bool
    deployment_id: str
    from_status: DeploymentStatus | None
    to_status: DeploymentStatus
    reason: str = ""
    attempt: int | None = None

    def __bool__(self) -> bool:
        return self.accepted


# --- rules -------------------------------------------------------------------------------------
# Each rule is a small function that either returns a rejection reason or adds conditions to the
# compare-and-set. Their docstrings name the race they prevent.


def rule_single_claim(row: Deployment, now: datetime) -> str | None:
    """Only one executor may move a deployment from ``pending`` to ``deploying``.

    Celery redelivery (``acks_late``), recovery and the asyncio fallback can all try to run the same
    deployment. The claim's ``WHERE status='pending'`` lets exactly one of them hit the row; the others
    see it ``deploying`` (rejected here or by the compare-and-set) and drop their copy.
    The claim also honours the retry backoff (``not_before``) and the attempt budget.
    """
    if row.not_before is not None and row.not_before > now:
        return f"retry backoff: not before {row.not_before.isoformat()}"
    if row.attempt >= row.max_attempts:
        return f"no attempts left ({row.attempt}/{row.max_attempts})"
    return None


def holds_a_slot(now) -> ColumnElement[bool]:
    """A deployment that takes one of its target's slots: ``deploying`` under a lease that has not expired at
    ``now`` (a datetime or a bind parameter). An expired lease belongs to a dead executor and holds none."""
    return (Deployment.status == S.DEPLOYING) & (Deployment.lease_expires_at.is_(None) | (Deployment.lease_expires_at >= now))


@dataclass(frozen=True)
class _CapacityStatements:
    """The capacity rule's statements, built once (each call only binds its values: building the expression
    cost more than running it). Parameters: ``target_id``, ``now``, ``deployment_id``, ``queued_at``."""

    limit_locked: Select  # PostgreSQL: the target's limit, its row locked
    counts: Select  # PostgreSQL: its live leases and the older claimable deployments, after the lock
    limit_and_counts: Select  # SQLite: the three in one statement (the write lock is already held)

    @classmethod
    def build(cls) -> _CapacityStatements:
        target_id, now = bindparam("target_id"), bindparam("now")
        deployment_id, queued_at = bindparam("deployment_id"), bindparam("queued_at")

        def counted(*conditions) -> ScalarSelect:
            return select(func.count()).select_from(Deployment).where(*conditions).scalar_subquery()

        running = counted(Deployment.target_id == target_id, holds_a_slot(now))
        older = counted(
            Deployment.target_id == target_id,
            Deployment.status == S.PENDING,
            Deployment.id != deployment_id,
            (Deployment.not_before.is_(None)) | (Deployment.not_before <= now),
            (Deployment.queued_at < queued_at) | ((Deployment.queued_at == queued_at) & (Deployment.id < deployment_id)),
        )
        limit_of_target = select(Target.max_concurrent_deployments).where(Target.id == target_id)
        return cls(limit_of_target.with_for_update(), select(running, older), limit_of_target.add_columns(running, older))


async def rule_target_capacity(session: AsyncSession, *, row: Deployment, now: datetime) -> str | None:
    """A target runs at most ``max_concurrent_deployments`` deployments at once, oldest first.

    Two executors claiming two different deployments of one target at the same moment would each count
    one free slot and both start. Locking the target row (``FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE``
    already serialises writers) makes the count-then-claim atomic. The claim is also refused while older
    claimable deployments of the target wait, so waiting deployments start in the order they were queued.

    Only *live* leases hold a slot: a ``deploying`` row whose lease expired belongs to a dead executor
    (its compose children died with it, see ``engines/process.py``), so it must not keep a healthy worker
    waiting until the reaper has settled it.
    """
    params = {"target_id": row.target_id, "now": now, "deployment_id": row.id, "queued_at": row.queued_at}
    if session.get_bind().dialect.name == "postgresql":
        # the counts in a statement of their own, after the lock: it sees what a claim it waited for committed
        limit = (await session.execute(_CAPACITY.limit_locked, params)).scalar_one_or_none()
        if limit is None:
            return None
        n_running, n_older = (await session.execute(_CAPACITY.counts, params)).one()
    else:  # SQLite: the transaction holds the database's write lock since its BEGIN IMMEDIATE
        found = (await session.execute(_CAPACITY.limit_and_counts, params)).one_or_none()
        if found is None:
            return None
        limit, n_running, n_older = found
    free = limit - n_running
    if free <= 0:
        return f"target is at its limit of {limit} concurrent deployment(s); waiting in queue"
    if n_older >= free:
        return f"{n_older} older deployment(s) of this target are queued first"
    return None


_CAPACITY = _CapacityStatements.build()


def rule_requeue_needs_attempts(row: Deployment) -> str | None:
    """``deploying -> pending`` (transient failure, expired lease) only while attempts remain.

    Without it a deployment whose worker keeps dying would bounce between ``pending`` and ``deploying``
    forever; once the budget is spent the caller must settle it as ``failed``.
    """
    if row.attempt >= row.max_attempts:
        return f"no attempts left ({row.attempt}/{row.max_attempts}); settle it as failed"
    return None


def rule_fresh_attempts(from_status: DeploymentStatus, lease_owner: str | None, orphaned: bool = False) -> str | None:
    """A new rollout out of ``deploying`` (an automatic rollback) starts a fresh attempt budget, like a user's
    redeploy, and only its executor may start it.

    The failed revision's rollout may have spent its attempts; the rollback revision that replaces it is
    another rollout, and a worker killed during it must leave attempts for recovery to finish it. Held to
    the lease, so that an executor that lost the deployment cannot start a rollout behind its back; or asked
    by recovery once the lease expired (``orphaned``: the executor died after its last attempt).
    """
    if from_status is not S.DEPLOYING or (lease_owner is None and not orphaned):
        return "only the executor holding the lease may start a new rollout of a deploying deployment"
    return None


def rule_observed(from_status: DeploymentStatus, to_status: DeploymentStatus, observed: bool) -> str | None:
    """``running -> failed`` and ``failed -> running`` are the watcher's alone (``services/deployments/watch.py``),
    made from what the engine shows after the health gate; the watcher makes nothing else.

    Without it a route or an executor settling a deployment by mistake could call a deployment running that
    never passed a gate, or fail one that runs; and the watcher, acting on an observation that is seconds old,
    must not move a deployment that a user or an executor has meanwhile taken elsewhere (the compare-and-set
    on ``from`` holds that).
    """
    pair = (from_status, to_status)
    if pair in OBSERVED_TRANSITIONS and not observed:
        return f"{from_status} -> {to_status} is not allowed but to the watcher, from what the engine shows"
    if observed and pair not in OBSERVED_TRANSITIONS:
        return f"transition {from_status} -> {to_status} is not allowed to the watcher"
    return None


def rule_lease_owner(row: Deployment, lease_owner: str | None) -> str | None:
    """An executor may settle a ``deploying`` row only while it still holds the lease.

    If a worker stalls past its lease, recovery requeues the deployment and another executor claims it.
    When the first worker wakes up, its ``running``/``failed`` must not overwrite the new attempt: the
    compare-and-set also matches ``lease_owner``.
    """
    if lease_owner is not None and row.lease_owner != lease_owner:
        return f"lease is held by {row.lease_owner or 'nobody'}, not {lease_owner}"
    return None


def rule_lease_expired(row: Deployment, now: datetime) -> str | None:
    """Recovery may only take a ``deploying`` row away from its executor once the lease has expired.

    The executor renews its lease while it works; a live but slow executor must not have its deployment
    requeued under it. The compare-and-set also re-checks the expiry, so a renewal that lands between
    recovery's read and its write wins.
    """
    if row.lease_expires_at is not None and row.lease_expires_at >= now:
        return f"lease of {row.lease_owner} is still valid until {row.lease_expires_at.isoformat()}"
    return None


# --- the choke point ---------------------------------------------------------------------------


async def set_deployment_status(
    session: AsyncSession,
    *,
    deployment_id: str,
    to_status: DeploymentStatus,
    reason: str | None = None,
    actor: str | None = None,
    error_message: str | None = None,
    lease_owner: str | None = None,
    lease_seconds: int = 60,
    executor: ExecutorKind | None = None,
    task_id: str | None = None,
    not_before: datetime | None = None,
    expected_from: DeploymentStatus | frozenset[DeploymentStatus] | None = None,
    require_lease_expired: bool = False,
    fresh_attempts: bool = False,
    observed: bool = False,
    keep_volumes: bool = False,
    written: Deployment | None = None,
) -> TransitionResult:
    """Move a deployment to ``to_status`` if the transition is allowed and nobody raced us.

    ``lease_owner`` identifies the executor: it becomes the lease holder on a claim
    (``-> deploying``) and must match the current holder for changes out of ``deploying``.
    ``expected_from`` lets a caller insist on the state it saw (e.g. a user cancelling a ``pending``).
    ``require_lease_expired`` is for recovery settling an orphaned ``deploying`` row: see
    :func:`rule_lease_expired`.
    ``fresh_attempts``: ``deploying -> pending`` that starts a new rollout rather than retrying this one (an
    automatic rollback, see :func:`rule_fresh_attempts`).
    ``observed``: the watcher's ``running -> failed`` / ``failed -> running`` (:func:`rule_observed`).
    ``keep_volumes``: for ``-> deleting``, whether the teardown keeps the named volumes.
    ``written``: the deployment as this very transaction wrote it (a creation claiming the deployment it
    inserts), not read again.

    The deployment's current revision takes the outcome of the new status, in the same transaction
    (:mod:`backend.app.services.deployments.revision_outcomes`).
    """
    now = utcnow()
    row = written
    if row is None:
        row = (
            await session.execute(select(Deployment).where(Deployment.id == deployment_id).execution_options(populate_existing=True))
        ).scalar_one_or_none()
    if row is None:
        return TransitionResult(False, deployment_id, None, to_status, "deployment not found")
    from_status = DeploymentStatus(row.status)

    def reject(why: str) -> TransitionResult:
        return TransitionResult(False, deployment_id, from_status, to_status, why, row.attempt)

    if expected_from is not None:
        allowed_from = expected_from if isinstance(expected_from, frozenset) else frozenset({expected_from})
        if from_status not in allowed_from:
            return reject(f"deployment is {from_status}, expected {', '.join(sorted(allowed_from))}")
    if not is_allowed(from_status, to_status):
        return reject(f"transition {from_status} -> {to_status} is not allowed")
    if why := rule_observed(from_status, to_status, observed):
        return reject(why)

    values: dict[str, Any] = {"status": to_status, "updated_at": now}
    if not observed:  # what the watcher saw was of the containers before this change: it looks again
        values.update(health=None, service_health=None, health_since=None)
    checks: set[str] = set()  # the compare-and-set's conditions beyond the id and the status (_CAS_CHECKS)

    if to_status is S.DEPLOYING:
        if lease_owner is None:
            raise ValueError("a claim needs a lease_owner")
        if why := rule_single_claim(row, now):
            return reject(why)
        if why := await rule_target_capacity(session, row=row, now=now):
            return reject(why)
        values.update(
            attempt=_NEXT_ATTEMPT,
            lease_owner=lease_owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            finished_at=None,
            error_message=None,
            not_before=None,
            progress=0,
            current_step=0,
            step_name=None,
        )
        if executor is not None:
            values["executor"] = executor
        if task_id is not None:
            values["task_id"] = task_id
        checks.add("attempts_left")
    elif to_status in TEARDOWN_STATUSES:
        # a new request from the user: no executor holds it yet (one claims it with claim_teardown)
        values.update(
            attempt=0,
            lease_owner=None,
            lease_expires_at=None,
            not_before=None,
            started_at=now,
            finished_at=None,
            error_message=None,
            teardown_keep_volumes=keep_volumes,
            task_id=None,
        )
    else:
        if from_status in LEASED_STATUSES:
            if why := rule_lease_owner(row, lease_owner):
                return reject(why)
            if require_lease_expired:
                if why := rule_lease_expired(row, now):
                    return reject(why)
                checks.add("lease_expired")
            if lease_owner is not None:
                checks.add("lease_owner")
        if to_status is S.PENDING:
            if (from_status, to_status) in _REQUEUES_BY_USER:
                # error_message: an automatic rollback queued after a timeout keeps saying why
                values.update(attempt=0, queued_at=now, error_message=error_message, not_before=None, task_id=None)
            elif fresh_attempts:
                if why := rule_fresh_attempts(from_status, lease_owner, require_lease_expired):
                    return reject(why)
                values.update(attempt=0, queued_at=now, not_before=None, task_id=None)
                if error_message is not None:
                    values["error_message"] = error_message
            else:
                if why := rule_requeue_needs_attempts(row):
                    return reject(why)
                checks.add("attempts_left")
                values.update(not_before=not_before)
                if error_message is not None:
                    values["error_message"] = error_message
            values.update(lease_owner=None, lease_expires_at=None, started_at=None, finished_at=None, progress=0)
        else:
            values.update(finished_at=now, lease_owner=None, lease_expires_at=None)
            if to_status is S.RUNNING:
                values.update(error_message=None, progress=100, last_good_revision=_ITS_REVISION)
            elif error_message is not None or from_status is S.RUNNING or from_status in TEARDOWN_STATUSES:
                values["error_message"] = error_message  # a running one's is the watcher's, of what ran

    # the row as the compare-and-set left it comes back with it (RETURNING), into ``row``, the identity map's
    await session.flush()  # what the session holds unwritten goes first, as session.execute's autoflush would
    statement = _compare_and_set(
        frozenset(checks), tuple((key, value if isinstance(value, _InSql) else None) for key, value in values.items())
    )
    params = {f"set_{key}": value for key, value in values.items() if not isinstance(value, _InSql)}
    params.update(cas_id=deployment_id, cas_from=from_status, cas_now=now, cas_owner=lease_owner)
    connection = await session.connection()
    changed = (await connection.execute(statement, params)).one_or_none()
    if changed is None:
        return reject(f"concurrent change: deployment is no longer {from_status}")
    for column, key in _DEPLOYMENT_COLUMNS:
        set_committed_value(row, key, changed._mapping[column])
    note_transition(session, from_status=from_status, to_status=to_status)  # the /metrics gauges, written at commit

    await connection.execute(
        _INSERT_HISTORY,
        {
            "deployment_id": deployment_id,
            "from_status": from_status,
            "to_status": to_status,
            "reason": reason,
            "actor": actor,
            "created_at": now,
        },
    )
    await revision_outcomes.follow(session, deployment=row, to_status=to_status, now=now)
    queue_event(
        session,
        Event.of(
            EventType.DEPLOYMENT_STATUS_CHANGED,
            deployment_id,
            row.organization_id,
            StatusChangedData(
                new_status=str(to_status),
                old_status=str(from_status),
                name=row.name,
                error_message=row.error_message,
                attempt=row.attempt,
                dispatch_latency_seconds=(round((now - row.queued_at).total_seconds(), 6) if to_status is S.DEPLOYING else None),
                revision=row.revision,
            ),
            now,
        ),
    )
    # upper-case statuses so that the product guide's `grep "FAILED" logs/backend.log` finds failures
    logger.info(
        "update_status: deployment %s (%s) %s -> %s%s%s",
        deployment_id,
        row.name,
        from_status.upper(),
        to_status.upper(),
        f" by {actor}" if actor else "",
        f": {row.error_message}" if to_status is S.FAILED and row.error_message else "",
    )
    return TransitionResult(True, deployment_id, from_status, to_status, reason or "", row.attempt)


#: the foreign keys a creation defers: its history row and revision are written before the deployment (migration 0020)
CREATION_DEFERRED_KEYS = (
    "fk_deployment_status_history_deployment_id_deployments",
    "fk_deployment_revisions_deployment_id_deployments",
)


_INSERT_DEPLOYMENT = insert(Deployment.__table__)
_INSERT_HISTORY = insert(DeploymentStatusHistory.__table__)
#: (column, attribute) of every column of ``deployments``
_DEPLOYMENT_COLUMNS = [(column, sa_inspect(Deployment).get_property_by_column(column).key) for column in Deployment.__table__.columns]


@dataclass(frozen=True, eq=False)
class _InSql:
    """A value the compare-and-set computes in SQL, from the row it changes (one object per expression: the
    statement cache tells them apart by identity)."""

    expression: Any


_NEXT_ATTEMPT = _InSql(Deployment.attempt + 1)
_ITS_REVISION = _InSql(Deployment.revision)  # the revision it runs: ``last_good_revision`` once running
#: the compare-and-set's conditions beyond ``id`` and ``status``, by name (parameters ``cas_now``, ``cas_owner``)
_CAS_CHECKS = {
    "attempts_left": Deployment.attempt < Deployment.max_attempts,
    "lease_expired": Deployment.lease_expires_at < bindparam("cas_now"),
    "lease_owner": Deployment.lease_owner == bindparam("cas_owner"),
}


@functools.lru_cache(maxsize=256)
def _compare_and_set(checks: frozenset[str], shape: tuple[tuple[str, _InSql | None], ...]) -> Update:
    """The compare-and-set of :func:`set_deployment_status` for one shape (the columns it sets, in order, and which
    of them SQL computes; ``checks`` of :data:`_CAS_CHECKS`), built once: each transition only binds its values
    (``set_<column>``, ``cas_id``, ``cas_from``, ...), where building the statement took longer than running it.
    A Core statement returning the whole row, which the caller loads into the session's object."""
    table = Deployment.__table__
    return (
        update(table)
        .where(table.c.id == bindparam("cas_id"), table.c.status == bindparam("cas_from"), *(_CAS_CHECKS[name] for name in sorted(checks)))
        .values({key: bindparam(f"set_{key}") if sql is None else sql.expression for key, sql in shape})
        .returning(*table.columns)
    )


def _persist_unflushed(session: AsyncSession, deployment: Deployment) -> dict[str, Any]:
    """The values of ``deployment``'s ``INSERT`` (what it was given, else the column's default, as a flush
    would apply it); ``deployment`` is made persistent in ``session`` with them loaded, as after a flush, for
    the caller's ``INSERT`` of those values (no other code path inserts it)."""
    values: dict[str, Any] = {}
    given = deployment.__dict__
    for column, key in _DEPLOYMENT_COLUMNS:
        if key in given:
            value = given[key]
        elif column.default is not None:
            value = column.default.arg(None) if column.default.is_callable else column.default.arg
        else:
            value = None
        values[column.key] = value
        set_committed_value(deployment, key, value)
    make_transient_to_detached(deployment)
    session.add(deployment)
    return values


async def record_creation(
    session: AsyncSession,
    *,
    deployment: Deployment,
    actor: str,
    snapshot: Callable[[Deployment], BaseModel],
    children: Sequence[Base] = (),
) -> TransitionResult:
    """Insert a new deployment in ``pending``: the one status write that has no ``from``.

    Writes the ``None -> pending`` history row and ``children`` (rows that reference the deployment: its
    revision 1), counts it, and queues ``DEPLOYMENT_CREATED`` (published after the caller commits) whose data is
    ``snapshot(deployment)``, the deployment as the API shows it (a model with its ``queued_at``, which is
    stamped into it), so list views add the row without refetching.

    The deployment's ``INSERT`` comes last: the rows referencing it go first, their foreign keys checked at the
    commit (:data:`CREATION_DEFERRED_KEYS`), and on SQLite the status counts too, so that ``queued_at``, stamped
    right before that ``INSERT``, is followed by nothing of the creation but the commit; on PostgreSQL also the
    counts' upsert (their lock order, :func:`~backend.app.services.deployments.status_counts.count_creation`)
    and the event's ``pg_notify`` (it carries ``queued_at``). The caller commits at once and dispatches.
    """
    await defer_foreign_keys(session, *CREATION_DEFERRED_KEYS)
    deployment.status = S.PENDING
    session.add(
        DeploymentStatusHistory(
            deployment_id=deployment.id,
            from_status=None,
            to_status=S.PENDING,
            reason=history_reasons.text("created"),
            actor=actor,
            created_at=utcnow(),
        )
    )
    session.add_all(children)
    await session.flush()
    await count_creation(session, deployment=deployment)
    # Everything the INSERT and the event need is made ready before queued_at: the row's values (with the
    # column defaults a flush would apply), the deployment persistent in the session as if flushed, and the
    # event's payload. After the stamp only the INSERT itself runs (a cached Core statement: the ORM's flush
    # took longer than the statement it sends), then the caller's commit.
    values = _persist_unflushed(session, deployment)
    shown = snapshot(deployment)
    created = Event.of(EventType.DEPLOYMENT_CREATED, deployment.id, deployment.organization_id, shown)
    now = utcnow()
    values["queued_at"] = now
    set_committed_value(deployment, "queued_at", now)
    await (await session.connection()).execute(_INSERT_DEPLOYMENT, values)
    shown.queued_at = now
    stamped = shown.model_dump(mode="json", include={"queued_at"})
    queue_event(session, replace(created, data={**created.data, **stamped}, timestamp=now))
    logger.info("update_status: deployment %s (%s) created as PENDING by %s", deployment.id, deployment.name, actor)
    return TransitionResult(True, deployment.id, None, S.PENDING, "created", deployment.attempt)


async def claim_deployment(
    session: AsyncSession,
    *,
    deployment_id: str,
    owner: str,
    executor: ExecutorKind,
    lease_seconds: int = 60,
    task_id: str | None = None,
    written: Deployment | None = None,
) -> TransitionResult:
    """Claim a ``pending`` deployment for one executor (``pending -> deploying``). ``written``: the deployment
    as the caller's transaction inserted it (its creation), not read again."""
    return await set_deployment_status(
        session,
        deployment_id=deployment_id,
        to_status=S.DEPLOYING,
        reason=history_reasons.text("claimed", executor=owner),
        actor=owner,
        lease_owner=owner,
        lease_seconds=lease_seconds,
        executor=executor,
        task_id=task_id,
        expected_from=S.PENDING,
        written=written,
    )


async def renew_lease(session: AsyncSession, *, deployment_id: str, owner: str, lease_seconds: int) -> bool:
    """Heartbeat: extend the lease if ``owner`` still holds it (a deploy's or a teardown's). Returns False when
    it lost it."""
    result = await session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id, Deployment.status.in_(LEASED_STATUSES), Deployment.lease_owner == owner)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


async def claim_teardown(
    session: AsyncSession, *, deployment_id: str, owner: str, executor: ExecutorKind, lease_seconds: int, task_id: str | None = None
) -> Deployment | None:
    """Take the lease of a ``stopping`` or ``deleting`` deployment for one executor: the teardown's single claim.

    Not a status change (the status says what is asked; the lease says who does it): a compare-and-set on the
    lease, which hits the row only when nobody holds it or its holder's lease expired (its executor died:
    the reaper or recovery dispatched it again), and not during a retry's backoff. Counts an attempt.
    Returns the row as claimed, or None when another executor holds it, it is gone or settled.
    """
    now = utcnow()
    result = await session.execute(
        update(Deployment)
        .where(
            Deployment.id == deployment_id,
            Deployment.status.in_(TEARDOWN_STATUSES),
            Deployment.lease_owner.is_(None) | (Deployment.lease_expires_at < now),
            Deployment.not_before.is_(None) | (Deployment.not_before <= now),
        )
        .values(
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempt=Deployment.attempt + 1,
            executor=executor,
            task_id=task_id,
            not_before=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return (
        await session.execute(select(Deployment).where(Deployment.id == deployment_id).execution_options(populate_existing=True))
    ).scalar_one()


async def release_teardown(session: AsyncSession, *, deployment_id: str, owner: str, not_before: datetime, error_message: str) -> bool:
    """A teardown that failed transiently gives its lease back, to be claimed again after ``not_before`` (the
    caller's executor schedules it; the reaper sends it again were that lost). False when ``owner`` lost it."""
    result = await session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id, Deployment.status.in_(TEARDOWN_STATUSES), Deployment.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None, not_before=not_before, error_message=error_message, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


async def claimable_for_target(session: AsyncSession, *, target_id: str, now: datetime | None = None) -> list[str]:
    """Pending deployments of a target that may be claimed now, oldest first, as many as it has free slots
    (only live leases hold a slot, as in the state machine's capacity rule)."""
    now = now or utcnow()
    limit = (await session.execute(select(Target.max_concurrent_deployments).where(Target.id == target_id))).scalar_one_or_none()
    if limit is None:
        return []
    live = (
        await session.execute(select(func.count()).select_from(Deployment).where(Deployment.target_id == target_id, holds_a_slot(now)))
    ).scalar_one()
    if live >= limit:
        return []
    rows = await session.execute(
        select(Deployment.id)
        .where(
            Deployment.target_id == target_id,
            Deployment.status == DeploymentStatus.PENDING,
            Deployment.attempt < Deployment.max_attempts,
            (Deployment.not_before.is_(None)) | (Deployment.not_before <= now),
        )
        .order_by(Deployment.queued_at, Deployment.id)
        .limit(limit - live)
    )
    return list(rows.scalars())
