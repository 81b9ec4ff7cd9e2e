"""Deployments per status, kept current where statuses change instead of counted at each scrape.

``/metrics`` used to group every deployment by status at each scrape: a full scan whose cost grows with
history. Instead the ``deployment_status_counts`` table holds one row per status and every writer of a
status adjusts it in the same transaction:

* the state machine (the one writer of ``Deployment.status``) calls :func:`note_transition`;
* inserting or deleting a ``Deployment`` through the ORM (creation, ``DELETE /deployments/{id}``) and
  deleting an ``Organization`` (its deployments go by cascade) are tracked by session events below.

Deltas are collected on the session and written just before it commits, in a fixed order of statuses,
with one upsert per status, sent together in that order. The counter rows are therefore locked only for the
instant between that upsert and the commit (never while the transaction does its real work), and two
transactions always lock them in the same order, so they cannot deadlock. A rolled-back transaction writes nothing.

A deployment's creation is counted by :func:`count_creation` (its ``INSERT`` is not an ORM flush); on SQLite
the count is written before the deployment's ``INSERT``, which is then its transaction's last statement
(``state_machine.record_creation``).

Rows written behind the ORM's back (a bulk ``INSERT`` by a benchmark, a manual ``DELETE``) are not
counted; :func:`recount` rebuilds the table from one full count.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from backend.app.models import Deployment, DeploymentStatus, DeploymentStatusCount, Organization

_KEY = "windflow_status_count_deltas"
_UPSERT = text(
    "INSERT INTO deployment_status_counts (status, count) VALUES (:status, :delta) "
    "ON CONFLICT (status) DO UPDATE SET count = deployment_status_counts.count + excluded.count"
)


def _deltas(session: Session | AsyncSession) -> Counter:
    sync = getattr(session, "sync_session", session)
    return sync.info.setdefault(_KEY, Counter())


def note_transition(session: Session | AsyncSession, *, from_status: DeploymentStatus | None, to_status: DeploymentStatus | None) -> None:
    """Count one deployment moving ``from_status -> to_status`` (``None``: created / deleted)."""
    deltas = _deltas(session)
    if from_status is not None:
        deltas[str(from_status)] -= 1
    if to_status is not None:
        deltas[str(to_status)] += 1


@event.listens_for(Session, "before_flush")
def _track_deletions(session: Session, _context, _instances) -> None:
    for obj in session.deleted:
        if isinstance(obj, Deployment):
            note_transition(session, from_status=DeploymentStatus(obj.status), to_status=None)
        elif isinstance(obj, Organization):
            # its deployments are deleted by the database's ON DELETE CASCADE, unseen by the ORM
            with session.no_autoflush:
                rows = session.execute(
                    select(Deployment.status, func.count()).where(Deployment.organization_id == obj.id).group_by(Deployment.status)
                )
                for status, count in rows:
                    _deltas(session)[str(status)] -= count


@event.listens_for(Session, "after_flush")
def _track_insertions(session: Session, _context) -> None:
    for obj in session.new:
        if isinstance(obj, Deployment):
            note_transition(session, from_status=None, to_status=DeploymentStatus(obj.status))


async def count_creation(session: AsyncSession, *, deployment: Deployment) -> None:
    """Count ``deployment``, not inserted yet (``state_machine.record_creation`` inserts it itself, not by a
    flush, so the session events above never see it). On SQLite the count is written at once (what is pending
    is flushed, then the deltas noted so far are written), so that its ``INSERT`` can end the transaction. A
    SQLite transaction holds the database's one write lock from its ``BEGIN IMMEDIATE``: the order of its
    statements takes no other lock.

    On PostgreSQL it is written at the commit, after its ``INSERT``, as every other change: written earlier,
    the ``pending`` counter would stay locked while that ``INSERT`` takes its foreign keys' key-share locks,
    among them its target's, which a claim holds ``FOR UPDATE`` (the capacity rule) until its own commit
    writes that counter: each would wait for the other."""
    note_transition(session, from_status=None, to_status=DeploymentStatus(deployment.status))
    if session.get_bind().dialect.name != "postgresql":
        await session.run_sync(_write_deltas)


@event.listens_for(Session, "before_commit")
def _write_deltas(session: Session) -> None:
    session.flush()  # rows added since the last flush are counted too
    deltas = session.info.pop(_KEY, None)
    if not deltas:
        return
    # a fixed lock order (the statuses sorted): concurrent commits cannot deadlock; the upserts go together
    # (one executemany: one round trip on asyncpg, which pipelines them, in that order)
    rows = [{"status": status, "delta": deltas[status]} for status in sorted(deltas) if deltas[status]]
    if rows:
        session.execute(_UPSERT, rows)


@event.listens_for(Session, "after_transaction_end")
def _forget_deltas(session: Session, transaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended (committed, rolled back or closed)
        session.info.pop(_KEY, None)


async def read(session: AsyncSession) -> dict[str, int]:
    """Deployments per status (every status present, zeros included)."""
    rows = await session.execute(select(DeploymentStatusCount.status, DeploymentStatusCount.count))
    counts = {str(status): 0 for status in DeploymentStatus}
    counts.update({status: int(count) for status, count in rows})
    return counts


async def recount(session: AsyncSession) -> dict[str, int]:
    """Rebuild the counts from one full count (after rows were written behind the ORM's back).

    On PostgreSQL the counter table is locked first, so transitions committing meanwhile wait and are
    neither lost nor counted twice. The caller commits.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("LOCK TABLE deployment_status_counts IN EXCLUSIVE MODE"))
    rows = (await session.execute(select(Deployment.status, func.count()).group_by(Deployment.status))).all()
    await session.execute(DeploymentStatusCount.__table__.delete())
    session.info.pop(_KEY, None)
    for status, count in rows:
        await session.execute(_UPSERT, {"status": str(status), "delta": count})
    return await read(session)
