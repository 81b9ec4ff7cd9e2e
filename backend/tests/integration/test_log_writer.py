"""The runner's log writer loses no line when it closes while its periodic flush is still writing (a slow or
busy database): the last lines of a cancelled run (where it stopped, what was removed) were lost so on SQLite."""

from __future__ import annotations

import asyncio

from sqlalchemy import update

from backend.app import database
from backend.app.models import Deployment, LogLevel
from backend.app.services.deployments.logs import DeploymentLogWriter, read_logs
from backend.tests.factories import make_deployment


async def test_lines_being_flushed_when_the_writer_closes_are_kept(db) -> None:
    async with database.AsyncSessionLocal() as session:
        deployment_id = (await make_deployment(session)).id
        await session.commit()

    # Another transaction holds the write lock: the writer's periodic flush blocks in the database.
    blocker = await db.engine.connect()
    await blocker.begin()
    await blocker.execute(update(Deployment).where(Deployment.id == deployment_id).values(progress=0))  # SQLite: the write lock

    async def release() -> None:
        await asyncio.sleep(1.0)
        await blocker.rollback()

    writer = DeploymentLogWriter(deployment_id, interval=0.05)
    async with writer:
        await writer.log(LogLevel.WARNING, "Cancelled during step 3/6: removing what this deployment created")
        await asyncio.sleep(0.3)  # the periodic flush took that line and waits for the database
        await writer.log(LogLevel.INFO, "Cancelled")
        releasing = asyncio.create_task(release())
    await releasing
    await blocker.close()

    async with database.AsyncSessionLocal() as session:
        lines = await read_logs(session, deployment_id=deployment_id)
    assert [line.message for line in lines] == ["Cancelled during step 3/6: removing what this deployment created", "Cancelled"]
    assert [line.seq for line in lines] == [1, 2]
