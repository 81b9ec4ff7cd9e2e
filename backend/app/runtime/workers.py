"""Worker presence through heartbeats in the database (works on every broker).

Each Celery worker node upserts its row every ``HEARTBEAT_SECONDS``; a row not refreshed for
``STALE_AFTER_SECONDS`` means the worker is gone (crashed or stopped). A fresh row is not enough to count
as capacity: the worker's watchdog (``runtime/worker_watchdog.py``) writes ``state = degraded`` with the
problem when the worker is alive but does not execute (a pool that does not refill, a received task that
no idle pool process starts, a consumer that stopped fetching). The backend reads the rows to decide where
to dispatch and whether to start its embedded worker: only *serving* workers (fresh and healthy) count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentStatus, SystemState, WorkerHeartbeat
from backend.app.services.targets import placement

HEARTBEAT_SECONDS = 3.0
STALE_AFTER_SECONDS = 12.0
HEALTHY = "healthy"
DEGRADED = "degraded"


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    kind: str
    hostname: str
    pid: int
    broker: str
    concurrency: int
    started_at: datetime
    last_seen: datetime
    alive: bool
    state: str = HEALTHY
    problem: str | None = None
    live_processes: int | None = None
    #: the targets it serves (``WORKER_TARGETS``: ids, ``"*"`` for the shared queue); None: the shared queue only
    targets: list[str] | None = None
    #: ``problem`` as codes with their params (a list of ``{code, params}``: ``worker_watchdog.Problem``)
    problems: list[dict] | None = None

    @property
    def shared_queue(self) -> bool:
        """Whether it consumes the shared queue (every target that is not placed)."""
        return self.targets is None or placement.SHARED in self.targets

    @property
    def serving(self) -> bool:
        """Alive and executing: capacity that dispatch may count on."""
        return self.alive and self.state == HEALTHY

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "hostname": self.hostname,
            "pid": self.pid,
            "broker": self.broker,
            "concurrency": self.concurrency,
            "started_at": self.started_at.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "alive": self.alive,
            "state": self.state if self.alive else "gone",
            "problem": self.problem,
            "problems": self.problems or [],
            "live_processes": self.live_processes,
            "targets": self.targets,
            "shared_queue": self.shared_queue,
        }


async def write_heartbeat(
    session: AsyncSession,
    *,
    name: str,
    kind: str,
    hostname: str,
    pid: int,
    broker: str,
    concurrency: int,
    state: str = HEALTHY,
    problem: str | None = None,
    problem_codes: list[dict] | None = None,
    live_processes: int | None = None,
    pool_pids: list[int] | None = None,
    targets: list[str] | None = None,
) -> None:
    now = utcnow()
    row = await session.get(WorkerHeartbeat, name)
    if state == DEGRADED and (row is None or row.pid != pid or row.state != DEGRADED):
        await _count_degradation(session)
    if row is None or row.pid != pid:
        if row is not None:
            if row.hostname == hostname:
                await _expire_previous_incarnation(session, row, now)
            await session.delete(row)
            await session.flush()
        session.add(
            WorkerHeartbeat(
                name=name,
                kind=kind,
                hostname=hostname,
                pid=pid,
                broker=broker,
                concurrency=concurrency,
                started_at=now,
                last_seen=now,
                state=state,
                problem=problem,
                problem_codes=problem_codes,
                live_processes=live_processes,
                pool_pids=pool_pids,
                targets=targets,
            )
        )
    else:
        row.last_seen = now
        row.kind = kind
        row.state, row.problem, row.live_processes, row.pool_pids = state, problem, live_processes, pool_pids
        row.problem_codes = problem_codes
        row.targets = targets
    try:
        await session.commit()
    except IntegrityError:  # two beats of one node raced; the other one wrote it
        await session.rollback()


def _process_gone(pid: int) -> bool:
    """``pid`` does not run on this host (absent, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


#: the PostgreSQL broker's messages a dead main process had taken, visible again (kombu_message exists only
#: with that broker; the NOTIFY wakes the consumers, as runtime/sql_transport.py's own restore does)
_RESTORE_DEAD_PROCESS = text(
    "WITH dead AS (DELETE FROM broker_deliveries WHERE hostname = :hostname AND pid = :pid RETURNING message_id) "
    "UPDATE kombu_message SET visible = true WHERE visible = false AND id IN (SELECT message_id FROM dead) "
    "RETURNING pg_notify('windflow_broker', '')"
)


async def _expire_previous_incarnation(session: AsyncSession, row: WorkerHeartbeat, now: datetime) -> None:
    """A worker restarted under the same name on the same host (its supervisor, ``restart:``) replaces its
    previous incarnation's row, and with it the record of that one's pool: the deployments its processes were
    running would wait out their whole lease. When that previous main process is gone from this host, their
    leases expire now (claims made up to one beat after its last beat, as for a gone worker), for the reaper to
    settle them; and the PostgreSQL broker's messages it had taken are visible again now, rather than after
    the reaper's grace (``STALE_AFTER_SECONDS`` after they were taken) while their deployments wait unclaimed."""
    if not _process_gone(row.pid):
        return  # two live workers sharing one name: leave each other's leases alone
    connection = await session.connection()
    if (
        connection.dialect.name == "postgresql"
        and (await session.execute(text("SELECT to_regclass('public.kombu_message')"))).scalar() is not None
    ):
        await session.execute(_RESTORE_DEAD_PROCESS, {"hostname": row.hostname, "pid": row.pid})
    dead = {row.pid, *(row.pool_pids or [])}
    running = (
        await session.execute(
            select(Deployment.id, Deployment.lease_owner, Deployment.started_at).where(
                Deployment.status == DeploymentStatus.DEPLOYING,
                Deployment.lease_expires_at > now,
                Deployment.lease_owner.like("celery:%"),
            )
        )
    ).all()
    last = row.last_seen + timedelta(seconds=HEARTBEAT_SECONDS)
    doomed = [
        (deployment_id, owner)
        for deployment_id, owner, started_at in running
        if (executor := _executor(owner)) is not None
        and executor[0] == row.hostname
        and executor[1] in dead
        and started_at is not None
        and started_at <= last
    ]
    if doomed:
        await _expire(session, doomed, now)


def _executor(owner: str | None) -> tuple[str, int] | None:
    """``(host, pid)`` of a Celery executor's lease owner (``celery:<host>:<pid>:<nonce>``), else None."""
    parts = (owner or "").split(":")
    if len(parts) != 4 or parts[0] != "celery" or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


async def _expire(session: AsyncSession, doomed: list[tuple[str, str]], now: datetime) -> int:
    """Expire now the live leases ``(deployment id, owner)`` (a compare-and-set on the owner: a lease
    reclaimed meanwhile is left alone). Only the lease's deadline changes: the reaper, or a redelivered
    message, then reclaims the deployment through the state machine like any expired lease."""
    expired = 0
    for deployment_id, owner in doomed:
        result = await session.execute(
            update(Deployment)
            .where(
                Deployment.id == deployment_id,
                Deployment.status == DeploymentStatus.DEPLOYING,
                Deployment.lease_owner == owner,
                Deployment.lease_expires_at > now,
            )
            .values(lease_expires_at=now)
            .execution_options(synchronize_session=False)
        )
        expired += result.rowcount or 0
    return expired


async def expire_leases_of(session: AsyncSession, *, hostname: str, pids: set[int]) -> int:
    """A worker saw these processes of its own die (pool children killed, or killed by itself as it leaves):
    the deployments they ran are orphans now. The caller commits."""
    now = utcnow()
    rows = (
        await session.execute(
            select(Deployment.id, Deployment.lease_owner).where(
                Deployment.status == DeploymentStatus.DEPLOYING, Deployment.lease_expires_at > now
            )
        )
    ).all()
    return await _expire(session, [(i, o) for i, o in rows if _executor(o) in {(hostname, pid) for pid in pids}], now)


async def expire_leases_of_dead_workers(session: AsyncSession) -> int:
    """Deployments whose executor was a process of a worker that is gone (its heartbeat stale for
    ``STALE_AFTER_SECONDS``: the worker died, and its pool with it by the parent-death signal) are orphans:
    their leases expire now rather than up to ``DEPLOYMENT_LEASE_SECONDS`` later. Only claims made while that
    worker was alive count: before its last beat, or within one beat interval after it (it died before the next
    beat: a claim made in those seconds would otherwise wait out its whole lease), so a process id reused later
    is not taken for a dead one (a worker restarted under the same name and pid rewrites the row at its start,
    before it claims anything). The reaper runs this; the caller commits."""
    now = utcnow()
    running = (
        await session.execute(
            select(Deployment.id, Deployment.lease_owner, Deployment.started_at).where(
                Deployment.status == DeploymentStatus.DEPLOYING, Deployment.lease_expires_at > now, Deployment.lease_owner.like("celery:%")
            )
        )
    ).all()
    if not running:
        return 0
    gone = (
        (await session.execute(select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < now - timedelta(seconds=STALE_AFTER_SECONDS))))
        .scalars()
        .all()
    )
    last_beat = {}
    for row in gone:
        for pid in {row.pid, *(row.pool_pids or [])}:
            last_beat[(row.hostname, int(pid))] = row.last_seen
    doomed = [
        (deployment_id, owner)
        for deployment_id, owner, started_at in running
        if (executor := _executor(owner)) in last_beat
        and started_at is not None
        and started_at <= last_beat[executor] + timedelta(seconds=HEARTBEAT_SECONDS)
    ]
    return await _expire(session, doomed, now) if doomed else 0


#: ``system_state`` key of the cumulative count of workers found degraded (``windflow_workers_degraded_total``)
HEALTH_KEY = "worker_health"


async def _count_degradation(session: AsyncSession) -> None:
    row = await session.get(SystemState, HEALTH_KEY, with_for_update=True)
    if row is None:
        session.add(SystemState(key=HEALTH_KEY, value={"degraded_total": 1}))
    else:
        row.value = {**(row.value or {}), "degraded_total": int((row.value or {}).get("degraded_total", 0)) + 1}


async def degraded_total(session: AsyncSession) -> int:
    row = await session.get(SystemState, HEALTH_KEY)
    return int((row.value or {}).get("degraded_total", 0)) if row else 0


async def remove_heartbeat(session: AsyncSession, name: str) -> None:
    await session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))
    await session.commit()


async def list_workers(session: AsyncSession, *, include_stale: bool = True) -> list[WorkerInfo]:
    """Every known worker, or with ``include_stale=False`` the fresh ones (degraded included: see ``serving``)."""
    cutoff = utcnow() - timedelta(seconds=STALE_AFTER_SECONDS)
    query = select(WorkerHeartbeat).order_by(WorkerHeartbeat.name)
    if not include_stale:
        query = query.where(WorkerHeartbeat.last_seen >= cutoff)
    rows = (await session.execute(query)).scalars().all()
    return [
        WorkerInfo(
            r.name,
            r.kind,
            r.hostname,
            r.pid,
            r.broker,
            r.concurrency,
            r.started_at,
            r.last_seen,
            r.last_seen >= cutoff,
            r.state,
            r.problem,
            r.live_processes,
            r.targets,
            r.problem_codes,
        )
        for r in rows
    ]


async def serving_workers(session: AsyncSession) -> list[WorkerInfo]:
    """Workers that are alive and execute: what dispatch and the embedded worker's manager count on."""
    return [w for w in await list_workers(session, include_stale=False) if w.serving]


async def coverage(session: AsyncSession) -> placement.Coverage:
    """Which targets the serving workers serve (their heartbeats' declarations)."""
    return placement.Coverage.of(w.targets for w in await serving_workers(session))


async def unserved_targets(session: AsyncSession) -> list[tuple[str, str]]:
    """``(id, name)`` of the active placed targets that no serving worker serves: their work waits."""
    served = await coverage(session)
    return [(i, n) for i, n in await placement.placed_targets(session) if not served.served(target_id=i, placed=True)]


async def prune_stale(session: AsyncSession, older_than: timedelta = timedelta(hours=1)) -> int:
    result = await session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < utcnow() - older_than))
    await session.commit()
    return result.rowcount
