"""Leases of executors that are known dead expire at once (``runtime/workers.py``), on SQLite and PostgreSQL.

A pool child a worker saw die, or a process of a worker whose heartbeat went stale, ran its deployment to
the end of its life: the deployment is an orphan now, and waiting the rest of its lease (30 s) only delays
the healing. The real-process side (kills, the reaper reclaiming) is in ``tests/celery``."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlalchemy import text

from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentStatus, WorkerHeartbeat
from backend.app.runtime import workers
from backend.tests.factories import make_deployment

S = DeploymentStatus


async def _deploying(session, owner: str, *, started_seconds_ago: float = 30) -> Deployment:
    return await make_deployment(session, S.DEPLOYING, lease_owner=owner, started_at=utcnow() - timedelta(seconds=started_seconds_ago))


async def _expired(session, deployment: Deployment) -> bool:
    await session.refresh(deployment)
    return deployment.lease_expires_at <= utcnow()


async def test_the_leases_of_pool_processes_a_worker_saw_die_expire(session):
    dead = await _deploying(session, "celery:h1:100:aaaa")
    sibling = await _deploying(session, "celery:h1:101:bbbb")
    other_host = await _deploying(session, "celery:h2:100:cccc")
    in_process = await _deploying(session, "asyncio:h1:100:dddd")
    await session.commit()

    assert await workers.expire_leases_of(session, hostname="h1", pids={100}) == 1
    await session.commit()
    assert await _expired(session, dead)
    assert not await _expired(session, sibling)
    assert not await _expired(session, other_host)
    assert not await _expired(session, in_process)
    # the lease was reclaimed by another executor meanwhile: its new owner is left alone
    assert await workers.expire_leases_of(session, hostname="h1", pids={100}) == 0


async def test_the_leases_of_a_worker_that_is_gone_expire_and_no_others(session):
    now = utcnow()
    session.add(
        WorkerHeartbeat(
            name="gone@h1",
            kind="external",
            hostname="h1",
            pid=50,
            broker="postgresql",
            concurrency=2,
            started_at=now - timedelta(minutes=5),
            last_seen=now - timedelta(seconds=workers.STALE_AFTER_SECONDS + 8),
            pool_pids=[100, 101],
        )
    )
    session.add(
        WorkerHeartbeat(
            name="alive@h1",
            kind="external",
            hostname="h1",
            pid=60,
            broker="postgresql",
            concurrency=2,
            started_at=now - timedelta(minutes=5),
            last_seen=now,
            pool_pids=[200],
        )
    )
    orphan = await _deploying(session, "celery:h1:100:aaaa")
    solo = await _deploying(session, "celery:h1:50:eeee")  # a solo pool runs tasks in the main process
    reused = await _deploying(session, "celery:h1:101:bbbb", started_seconds_ago=1)  # claimed long after its last beat
    # claimed a second after the last beat: the worker died before its next one, with this claim in hand
    last_moment = await _deploying(session, "celery:h1:100:ffff", started_seconds_ago=workers.STALE_AFTER_SECONDS + 7)
    healthy = await _deploying(session, "celery:h1:200:cccc")
    stranger = await _deploying(session, "celery:h1:300:dddd")  # no worker row names it: its lease decides
    await session.commit()

    assert await workers.expire_leases_of_dead_workers(session) == 3
    await session.commit()
    assert await _expired(session, orphan)
    assert await _expired(session, solo)
    assert await _expired(session, last_moment)
    assert not await _expired(session, reused)
    assert not await _expired(session, healthy)
    assert not await _expired(session, stranger)
    assert orphan.status is S.DEPLOYING and orphan.lease_owner == "celery:h1:100:aaaa"  # the reaper settles it


async def test_a_worker_restarted_under_its_name_expires_its_dead_predecessors_leases(session):
    """Its supervisor restarts a killed worker under the same name: the new row replaces the old one and its
    record of the pool, so the predecessor's deployments are orphaned at once rather than a lease later."""
    now = utcnow()
    gone_pid = 4_000_000 + os.getpid() % 100_000  # above any pid_max: no such process here
    session.add(
        WorkerHeartbeat(
            name="w@h1",
            kind="external",
            hostname="h1",
            pid=gone_pid,
            broker="postgresql",
            concurrency=2,
            started_at=now - timedelta(minutes=5),
            last_seen=now - timedelta(seconds=2),
            pool_pids=[gone_pid + 1],
        )
    )
    orphan = await _deploying(session, f"celery:h1:{gone_pid + 1}:aaaa")
    other_host = await _deploying(session, f"celery:h2:{gone_pid + 1}:bbbb")
    await session.commit()

    await workers.write_heartbeat(session, name="w@h1", kind="external", hostname="h1", pid=os.getpid(), broker="postgresql", concurrency=2)
    assert await _expired(session, orphan)
    assert not await _expired(session, other_host)

    # a predecessor still alive (two workers under one name): nothing expires
    session.add(
        WorkerHeartbeat(
            name="twin@h1",
            kind="external",
            hostname="h1",
            pid=os.getpid(),
            broker="postgresql",
            concurrency=2,
            started_at=now,
            last_seen=now,
            pool_pids=[gone_pid + 2],
        )
    )
    alive = await _deploying(session, f"celery:h1:{gone_pid + 2}:cccc")
    await session.commit()
    await workers.write_heartbeat(
        session, name="twin@h1", kind="external", hostname="h1", pid=gone_pid + 3, broker="postgresql", concurrency=2
    )
    assert not await _expired(session, alive)


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_a_worker_restarted_under_its_name_puts_back_the_broker_messages_its_predecessor_took(session):
    """The PostgreSQL broker's messages the killed predecessor had taken are visible again at once (they would
    wait for the reaper's grace, ``STALE_AFTER_SECONDS`` after they were taken, their deployments unclaimed);
    a live process's are left alone."""
    from backend.app.runtime.sql_transport import create_broker_tables

    await (await session.connection()).run_sync(create_broker_tables)
    now = utcnow()
    gone_pid = 4_000_000 + os.getpid() % 100_000  # above any pid_max: no such process here
    queue = (
        await session.execute(
            text("INSERT INTO kombu_queue (id, name) VALUES (nextval('queue_id_sequence'), :n) RETURNING id"),
            {"n": f"w-test-{now.timestamp()}"},
        )
    ).scalar()
    taken = {}
    for owner in (gone_pid, os.getpid()):
        message = await session.execute(
            text(
                "INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id) "
                "VALUES (nextval('message_id_sequence'), false, now(), '{}', 1, :q) RETURNING id"
            ),
            {"q": queue},
        )
        taken[owner] = message.scalar()
        await session.execute(
            text("INSERT INTO broker_deliveries (message_id, delivery_tag, hostname, pid, taken_at) VALUES (:m, :t, 'h1', :p, now())"),
            {"m": taken[owner], "t": f"tag-{owner}", "p": owner},
        )
    session.add(
        WorkerHeartbeat(
            name="w@h1",
            kind="external",
            hostname="h1",
            pid=gone_pid,
            broker="postgresql",
            concurrency=2,
            started_at=now - timedelta(minutes=5),
            last_seen=now - timedelta(seconds=2),
        )
    )
    await session.commit()

    await workers.write_heartbeat(session, name="w@h1", kind="external", hostname="h1", pid=os.getpid(), broker="postgresql", concurrency=2)
    visible = dict((await session.execute(text("SELECT id, visible FROM kombu_message WHERE queue_id = :q"), {"q": queue})).all())
    assert visible == {taken[gone_pid]: True, taken[os.getpid()]: False}
    left = (await session.execute(text("SELECT pid FROM broker_deliveries WHERE hostname = 'h1'"))).scalars().all()
    assert left == [os.getpid()]
