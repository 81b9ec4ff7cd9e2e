"""The deployment state machine over the full (from, to) matrix, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from backend.app import database
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentRevision, DeploymentStatus, DeploymentStatusHistory, ExecutorKind, RevisionReason
from backend.app.models.base import new_id
from backend.app.services.deployments import status_counts
from backend.app.services.deployments.state_machine import (
    CREATION_DEFERRED_KEYS,
    claim_deployment,
    claim_teardown,
    record_creation,
    release_teardown,
    renew_lease,
    set_deployment_status,
)
from backend.tests.factories import ShownDeployment, make_deployment

S = DeploymentStatus
PAIRS = list(itertools.product(list(S), list(S)))

# The expected answer for every (from, to) pair, stated here on its own (not read from the production
# table): "yes" where the transition is accepted, "." where it is refused. Rows: from; columns: to.
MATRIX = """
from/to      pending  deploying  running  failed  stopped  cancelled  stopping  deleting
pending      .        yes        .        yes     .        yes        .         yes
deploying    yes      .          yes      yes     .        yes        .         .
running      yes      .          .        .       yes      .          yes       yes
failed       yes      .          .        .       .        .          .         yes
stopped      yes      .          .        .       .        .          .         yes
cancelled    yes      .          .        .       .        .          .         yes
stopping     .        .          .        yes     yes      .          .         .
deleting     .        .          .        yes     .        .          .         .
"""


def _expected(matrix: str) -> dict[tuple[S, S], bool]:
    header, *rows = [line.split() for line in matrix.strip().splitlines()]
    columns = [S(name) for name in header[1:]]
    return {(S(row[0]), to): cell == "yes" for row in rows for to, cell in zip(columns, row[1:], strict=True)}


EXPECTED = _expected(MATRIX)
assert sorted(EXPECTED) == sorted(PAIRS), "the matrix names every (from, to) pair once"


def _id(pair) -> str:
    return f"{pair[0]}->{pair[1]}"


async def _history(session, deployment_id):
    rows = await session.execute(select(DeploymentStatusHistory).where(DeploymentStatusHistory.deployment_id == deployment_id))
    return rows.scalars().all()


@pytest.mark.parametrize("pair", PAIRS, ids=[_id(p) for p in PAIRS])
async def test_transition_matrix(session, events, pair):
    from_status, to_status = pair
    deployment = await make_deployment(session, from_status)
    await session.commit()

    result = await set_deployment_status(
        session,
        deployment_id=deployment.id,
        to_status=to_status,
        reason="matrix",
        actor="test",
        lease_owner="worker-1",
        error_message="boom",
    )
    await session.commit()

    row = await session.get(Deployment, deployment.id, populate_existing=True)
    history = await _history(session, deployment.id)
    if EXPECTED[pair]:
        assert result.accepted, result.reason
        assert row.status is to_status
        assert [(h.from_status, h.to_status) for h in history] == [(from_status, to_status)]
        assert [(e.data["old_status"], e.data["new_status"]) for e in events] == [(from_status, to_status)]
        assert events[0].to_dict()["type"] == "DEPLOYMENT_STATUS_CHANGED"
        assert events[0].organization_id == row.organization_id
    else:
        assert not result.accepted
        assert "not allowed" in result.reason
        assert row.status is from_status
        assert history == []
        assert events == []


async def test_claim_sets_lease_attempt_and_executor(session):
    deployment = await make_deployment(session)
    await session.commit()
    result = await claim_deployment(
        session, deployment_id=deployment.id, owner="w-a", executor=ExecutorKind.CELERY, lease_seconds=30, task_id="t1"
    )
    await session.commit()
    row = await session.get(Deployment, deployment.id, populate_existing=True)
    assert result.accepted and result.attempt == 1
    assert (row.status, row.attempt, row.lease_owner, row.executor, row.task_id) == (S.DEPLOYING, 1, "w-a", ExecutorKind.CELERY, "t1")
    assert timedelta(seconds=25) < row.lease_expires_at - utcnow() <= timedelta(seconds=30)
    assert row.started_at is not None and row.finished_at is None


async def test_second_claim_is_rejected(session):
    deployment = await make_deployment(session)
    await session.commit()
    first = await claim_deployment(session, deployment_id=deployment.id, owner="w-a", executor=ExecutorKind.CELERY)
    await session.commit()
    second = await claim_deployment(session, deployment_id=deployment.id, owner="w-b", executor=ExecutorKind.ASYNCIO)
    await session.commit()
    assert first.accepted and not second.accepted
    row = await session.get(Deployment, deployment.id, populate_existing=True)
    assert (row.lease_owner, row.attempt) == ("w-a", 1)


async def test_concurrent_claimers_exactly_one_wins(db):
    """Many executors race for one pending row, each on its own connection: one claim hits the row."""
    async with database.AsyncSessionLocal() as setup:
        deployment = await make_deployment(setup)
        await setup.commit()

    async def claimer(n: int):
        async with database.AsyncSessionLocal() as s:
            result = await claim_deployment(s, deployment_id=deployment.id, owner=f"worker-{n}", executor=ExecutorKind.CELERY)
            await s.commit()
            return result

    results = await asyncio.gather(*(claimer(n) for n in range(8)))
    winners = [r for r in results if r.accepted]
    assert len(winners) == 1
    async with database.AsyncSessionLocal() as s:
        row = await s.get(Deployment, deployment.id)
        history = await _history(s, deployment.id)
    assert row.attempt == 1
    assert row.lease_owner == f"worker-{results.index(winners[0])}"
    assert len(history) == 1


async def test_zombie_executor_cannot_settle_reclaimed_deployment(session):
    """Worker A's lease expired, the row was requeued and claimed by B: A's 'running' is rejected."""
    deployment = await make_deployment(session)
    await session.commit()
    assert await claim_deployment(session, deployment_id=deployment.id, owner="A", executor=ExecutorKind.CELERY)
    assert await set_deployment_status(session, deployment_id=deployment.id, to_status=S.PENDING, reason="lease expired", actor="recovery")
    assert await claim_deployment(session, deployment_id=deployment.id, owner="B", executor=ExecutorKind.CELERY)
    await session.commit()

    zombie = await set_deployment_status(session, deployment_id=deployment.id, to_status=S.RUNNING, lease_owner="A")
    assert not zombie.accepted and "lease" in zombie.reason
    assert not await renew_lease(session, deployment_id=deployment.id, owner="A", lease_seconds=60)
    assert await renew_lease(session, deployment_id=deployment.id, owner="B", lease_seconds=60)
    owner = await set_deployment_status(session, deployment_id=deployment.id, to_status=S.RUNNING, lease_owner="B")
    await session.commit()
    assert owner.accepted
    row = await session.get(Deployment, deployment.id, populate_existing=True)
    assert (row.status, row.attempt) == (S.RUNNING, 2)


async def test_requeue_refused_when_attempts_exhausted(session):
    deployment = await make_deployment(session, S.DEPLOYING, attempt=3)
    await session.commit()
    result = await set_deployment_status(
        session, deployment_id=deployment.id, to_status=S.PENDING, lease_owner="worker-1", error_message="engine down"
    )
    assert not result.accepted and "no attempts left" in result.reason
    failed = await set_deployment_status(
        session, deployment_id=deployment.id, to_status=S.FAILED, lease_owner="worker-1", error_message="engine down"
    )
    await session.commit()
    assert failed.accepted
    row = await session.get(Deployment, deployment.id, populate_existing=True)
    assert (row.status, row.error_message) == (S.FAILED, "engine down")


async def test_transient_requeue_keeps_attempts_and_honours_backoff(session):
    deployment = await make_deployment(session)
    await session.commit()
    await claim_deployment(session, deployment_id=deployment.id, owner="w", executor=ExecutorKind.ASYNCIO)
    later = utcnow() + timedelta(minutes=5)
    requeued = await set_deployment_status(
        session, deployment_id=deployment.id, to_status=S.PENDING, lease_owner="w", error_message="engine unreachable", not_before=later
    )
    await session.commit()
    assert requeued.accepted
    too_early = await claim_deployment(session, deployment_id=deployment.id, owner="w2", executor=ExecutorKind.ASYNCIO)
    assert not too_early.accepted and "backoff" in too_early.reason
    row = await session.get(Deployment, deployment.id, populate_existing=True)
    assert (row.status, row.attempt, row.error_message) == (S.PENDING, 1, "engine unreachable")


async def test_user_retry_resets_attempts(session):
    deployment = await make_deployment(session, S.FAILED, attempt=3, error_message="gave up")
    await session.commit()
    result = await set_deployment_status(session, deployment_id=deployment.id, to_status=S.PENDING, reason="retry", actor="user")
    await session.commit()
    row = await session.get(Deployment, deployment.id, populate_existing=True)
    assert result.accepted
    assert (row.status, row.attempt, row.error_message) == (S.PENDING, 0, None)


async def test_expected_from_guards_the_seen_state(session):
    deployment = await make_deployment(session, S.RUNNING)
    await session.commit()
    result = await set_deployment_status(session, deployment_id=deployment.id, to_status=S.STOPPED, expected_from=S.PENDING)
    assert not result.accepted and "expected pending" in result.reason


async def test_unknown_deployment_is_rejected_not_raised(session):
    result = await set_deployment_status(session, deployment_id="no-such-id", to_status=S.CANCELLED)
    assert not result.accepted and result.reason == "deployment not found"


async def test_rolled_back_change_emits_no_event(session, events):
    deployment = await make_deployment(session)
    deployment_id = deployment.id
    await session.commit()
    result = await set_deployment_status(session, deployment_id=deployment_id, to_status=S.CANCELLED, reason="user")
    assert result.accepted
    await session.rollback()
    row = await session.get(Deployment, deployment_id, populate_existing=True)
    assert row.status is S.PENDING
    assert events == []
    # the next commit must not publish the discarded event either
    await session.commit()
    assert events == []


async def test_a_teardown_is_claimed_by_one_executor_and_reclaimed_once_its_lease_expired(db):
    """``stopping``/``deleting``: the request leaves the row without a lease; executors racing for it (a broker's
    redelivery, the reaper, recovery) — one wins; a live lease keeps the others off, an expired one (its
    executor died) lets the next one take over; a retry's backoff is honoured; renewal works like a deploy's."""
    async with database.AsyncSessionLocal() as setup:
        deployment = await make_deployment(setup, S.RUNNING)
        await setup.commit()
        asked = await set_deployment_status(setup, deployment_id=deployment.id, to_status=S.DELETING, actor="user", keep_volumes=True)
        await setup.commit()
    assert asked.accepted

    async def claim(owner: str):
        async with database.AsyncSessionLocal() as session:
            row = await claim_teardown(session, deployment_id=deployment.id, owner=owner, executor=ExecutorKind.CELERY, lease_seconds=30)
            await session.commit()
            return owner if row is not None else None

    winners = [w for w in await asyncio.gather(*(claim(f"w-{i}") for i in range(6))) if w]
    assert len(winners) == 1
    async with database.AsyncSessionLocal() as session:
        row = await session.get(Deployment, deployment.id)
        assert (row.status, row.lease_owner, row.attempt, row.teardown_keep_volumes) == (S.DELETING, winners[0], 1, True)
        assert await renew_lease(session, deployment_id=deployment.id, owner=winners[0], lease_seconds=30)
        assert not await renew_lease(session, deployment_id=deployment.id, owner="someone-else", lease_seconds=30)
        await session.commit()
    assert await claim("late") is None, "a live lease keeps the others off"
    async with database.AsyncSessionLocal() as session:  # the winner died: its lease expires
        row = await session.get(Deployment, deployment.id)
        row.lease_expires_at = utcnow() - timedelta(seconds=1)
        await session.commit()
    assert await claim("next") == "next"
    async with database.AsyncSessionLocal() as session:
        assert await release_teardown(
            session, deployment_id=deployment.id, owner="next", not_before=utcnow() + timedelta(seconds=60), error_message="engine down"
        )
        await session.commit()
    assert await claim("during-backoff") is None
    async with database.AsyncSessionLocal() as session:
        refused = await set_deployment_status(session, deployment_id=deployment.id, to_status=S.FAILED, lease_owner="not-the-holder")
        assert not refused.accepted and "lease" in refused.reason


async def test_the_reaper_and_recovery_send_again_a_teardown_no_live_executor_holds(db):
    """A ``stopping``/``deleting`` row whose executor died (lease expired) or that no executor ever took (its
    message lost) is dispatched again by the reaper after ``DISPATCH_TIMEOUT_SECONDS`` and by recovery at once;
    one under a live lease, or asked a moment ago, is left alone."""
    from backend.app.services.deployments.recovery import reap, recover_pending_deployments
    from backend.tests.conftest import make_settings

    settings = make_settings(db.settings.DATABASE_URL, DISPATCH_TIMEOUT_SECONDS=5)
    now = utcnow()
    async with database.AsyncSessionLocal() as setup:
        dead = await make_deployment(setup, S.DELETING, lease_owner="celery:gone")
        lost = await make_deployment(setup, S.STOPPING)
        live = await make_deployment(setup, S.STOPPING, lease_owner="celery:alive")
        fresh = await make_deployment(setup, S.DELETING)
        await setup.commit()
        for row, lease_owner, lease_expires_at, updated_at in (
            (dead, "celery:gone", now - timedelta(seconds=20), now - timedelta(seconds=60)),
            (lost, None, None, now - timedelta(seconds=60)),
            (live, "celery:alive", now + timedelta(seconds=20), now - timedelta(seconds=60)),
            (fresh, None, None, now),
        ):
            await setup.execute(
                Deployment.__table__.update()
                .where(Deployment.id == row.id)
                .values(lease_owner=lease_owner, lease_expires_at=lease_expires_at, updated_at=updated_at)
            )
        await setup.commit()

    sent: list[str] = []

    async def dispatch(deployment_id: str) -> None:
        sent.append(deployment_id)

    async with database.AsyncSessionLocal() as session:
        stats = await reap(session, settings=settings, dispatch=dispatch)
    assert sorted(sent) == sorted([dead.id, lost.id]) and stats["teardowns"] == 2, (sent, stats)
    sent.clear()
    async with database.AsyncSessionLocal() as session:
        await reap(session, settings=settings, dispatch=dispatch)
    assert sent == [], "sent again at most once per timeout"
    async with database.AsyncSessionLocal() as session:
        await recover_pending_deployments(session, settings=settings, dispatch=dispatch)
    assert sorted(sent) == sorted([dead.id, lost.id, fresh.id]), "recovery sends every teardown no live lease holds"


@pytest.mark.parametrize("child", ["history", "revision"])
async def test_a_row_of_a_missing_deployment_fails_at_once_or_when_deferred_at_the_commit(db, child):
    """The keys a creation defers (its rows written before the deployment) are still checked, at its commit;
    a transaction that does not defer them is refused at its statement, as before migration 0020. The refused
    commit leaves nothing behind, and its connection goes back to the pool usable (SQLite keeps a transaction
    whose COMMIT failed open: the engine ends it)."""

    def orphan():
        if child == "history":
            return DeploymentStatusHistory(deployment_id="no-such-deployment", from_status=None, to_status=S.PENDING)
        return DeploymentRevision(deployment_id="no-such-deployment", number=1, reason=RevisionReason.CREATED)

    async with database.AsyncSessionLocal() as session:
        session.add(orphan())
        with pytest.raises(IntegrityError):
            await session.flush()
    async with database.AsyncSessionLocal() as session:
        await database.defer_foreign_keys(session, *CREATION_DEFERRED_KEYS)
        session.add(orphan())
        await session.flush()  # deferred: accepted until the commit
        with pytest.raises(IntegrityError):
            await session.commit()
    async with database.AsyncSessionLocal() as session:
        assert (await session.execute(select(func.count()).select_from(DeploymentStatusHistory))).scalar_one() == 0
        assert (await session.execute(select(func.count()).select_from(DeploymentRevision))).scalar_one() == 0


async def test_a_creation_and_a_claim_on_its_target_do_not_deadlock(db):
    """PostgreSQL row locks: a claim holds its target FOR UPDATE (the capacity rule) and then, at its commit, the
    status counters; a creation on that target waits for the target's key-share lock at its deployment's INSERT.
    The creation must take no counter before that INSERT, or each waits for the other (deadlock_timeout, then
    one of them fails). Both commit."""
    if db.kind != "postgresql":
        pytest.skip("SQLite has one write lock per database, no row locks")
    async with database.AsyncSessionLocal() as setup:
        waiting = await make_deployment(setup)
        await setup.commit()
    async with database.AsyncSessionLocal() as claim, database.AsyncSessionLocal() as creation:
        assert await claim_deployment(claim, deployment_id=waiting.id, owner="w1", executor="asyncio")  # the target locked

        async def create() -> None:
            new = Deployment(
                id=new_id(),
                organization_id=waiting.organization_id,
                stack_id=waiting.stack_id,
                target_id=waiting.target_id,
                name="second",
                variables={},
                revision=1,
            )
            first = DeploymentRevision(deployment_id=new.id, number=1, reason=RevisionReason.CREATED)
            await record_creation(
                creation,
                deployment=new,
                actor="ann@example.com",
                snapshot=ShownDeployment.of,
                children=[first],
            )
            await creation.commit()

        created = asyncio.create_task(create())
        async with database.AsyncSessionLocal() as watch:  # until the creation waits for the claim's lock
            for _ in range(1000):
                blocked = await watch.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
                )
                if blocked.scalar_one() or created.done():
                    break
                await watch.rollback()
                await asyncio.sleep(0.01)
        await claim.commit()
        await created
    async with database.AsyncSessionLocal() as session:
        assert await status_counts.read(session) == {**{str(s): 0 for s in S}, "pending": 1, "deploying": 1}
