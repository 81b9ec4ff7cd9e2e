"""Worker presence through heartbeats in the database (works on every broker).

Each Celery worker node upserts its row every ``HEARTBEAT_SECONDS``; a row not refreshed for
``STALE_AFTER_SECONDS`` means the worker is gone (crashed or stopped). The backend reads them to decide
where to dispatch and whether to start its embedded worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.database import utcnow
from backend.app.models import WorkerHeartbeat

HEARTBEAT_SECONDS = 3.0
STALE_AFTER_SECONDS = 12.0


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
        }


async def write_heartbeat(
    session: AsyncSession, *, name: str, kind: str, hostname: str, pid: int, broker: str, concurrency: int
) -> None:
    now = utcnow()
    row = await session.get(WorkerHeartbeat, name)
    if row is None or row.pid != pid:
        if row is not None:
            await session.delete(row)
            await session.flush()
        session.add(
            WorkerHeartbeat(
                name=name, kind=kind, hostname=hostname, pid=pid, broker=broker, concurrency=concurrency,
                started_at=now, last_seen=now,
            )
        )
    else:
        row.last_seen = now
        row.kind = kind
    try:
        await session.commit()
    except IntegrityError:  # two beats of one node raced; the other one wrote it
        await session.rollback()


async def remove_heartbeat(session: AsyncSession, name: str) -> None:
    await session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))
    await session.commit()


async def list_workers(session: AsyncSession, *, include_stale: bool = True) -> list[WorkerInfo]:
    cutoff = utcnow() - timedelta(seconds=STALE_AFTER_SECONDS)
    query = select(WorkerHeartbeat).order_by(WorkerHeartbeat.name)
    if not include_stale:
        query = query.where(WorkerHeartbeat.last_seen >= cutoff)
    rows = (await session.execute(query)).scalars().all()
    return [
        WorkerInfo(r.name, r.kind, r.hostname, r.pid, r.broker, r.concurrency, r.started_at, r.last_seen, r.last_seen >= cutoff)
        for r in rows
    ]


async def prune_stale(session: AsyncSession, older_than: timedelta = timedelta(hours=1)) -> int:
    result = await session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < utcnow() - older_than))
    await session.commit()
    return result.rowcount
