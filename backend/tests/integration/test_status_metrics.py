"""``/metrics`` deployment gauges come from maintained counts, right after every kind of status write."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import func, select

from backend.app import database
from backend.app.main import create_app
from backend.app.models import Deployment, DeploymentStatus, Organization
from backend.app.services.deployments import status_counts
from backend.app.services.deployments.state_machine import claim_deployment, set_deployment_status
from backend.tests.conftest import make_settings
from backend.tests.factories import make_deployment

S = DeploymentStatus


@pytest.fixture
async def scrape(db):
    app = create_app(make_settings(db.settings.DATABASE_URL, PROMETHEUS_ENABLED=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:

        async def read() -> dict[str, int]:
            response = await client.get("/metrics")
            assert response.status_code == 200
            found = re.findall(r'^windflow_deployments\{status="(\w+)"\} ([0-9.e+]+)$', response.text, re.M)
            assert len(found) == len(S)
            return {status: int(float(value)) for status, value in found}

        yield read


async def _real_counts() -> dict[str, int]:
    async with database.AsyncSessionLocal() as session:
        rows = await session.execute(select(Deployment.status, func.count()).group_by(Deployment.status))
        counts = {str(s): 0 for s in S}
        counts.update({str(status): n for status, n in rows})
        return counts


def _expect(**counts: int) -> dict[str, int]:
    return {str(s): counts.get(str(s), 0) for s in S}


async def test_gauges_follow_every_status_write(scrape):
    assert await scrape() == _expect()
    async with database.AsyncSessionLocal() as session:
        a = await make_deployment(session)
        b = await make_deployment(session)
        c = await make_deployment(session, S.FAILED)
        await session.commit()
    assert await scrape() == _expect(pending=2, failed=1) == await _real_counts()

    async with database.AsyncSessionLocal() as session:
        assert await claim_deployment(session, deployment_id=a.id, owner="w1", executor="asyncio")
        await session.commit()
    assert await scrape() == _expect(pending=1, deploying=1, failed=1)

    async with database.AsyncSessionLocal() as session:
        assert await set_deployment_status(session, deployment_id=a.id, to_status=S.RUNNING, lease_owner="w1")
        assert await set_deployment_status(session, deployment_id=b.id, to_status=S.CANCELLED)
        assert await set_deployment_status(session, deployment_id=c.id, to_status=S.PENDING, reason="retry")
        await session.commit()
    assert await scrape() == _expect(running=1, cancelled=1, pending=1) == await _real_counts()

    async with database.AsyncSessionLocal() as session:  # rolled back: nothing counted
        assert await set_deployment_status(session, deployment_id=a.id, to_status=S.STOPPED)
        await session.rollback()
    assert await scrape() == _expect(running=1, cancelled=1, pending=1)

    async with database.AsyncSessionLocal() as session:  # a rejected transition changes nothing
        assert not await set_deployment_status(session, deployment_id=b.id, to_status=S.RUNNING)
        await session.commit()
    assert await scrape() == _expect(running=1, cancelled=1, pending=1)

    async with database.AsyncSessionLocal() as session:  # DELETE /deployments/{id} deletes through the ORM
        await session.delete(await session.get(Deployment, b.id))
        await session.commit()
    assert await scrape() == _expect(running=1, pending=1) == await _real_counts()

    async with database.AsyncSessionLocal() as session:  # an organisation's deployments go by cascade
        await session.delete(await session.get(Organization, a.organization_id))
        await session.commit()
    assert await scrape() == _expect(pending=1) == await _real_counts()


async def test_recount_repairs_rows_written_behind_the_orm(scrape):
    async with database.AsyncSessionLocal() as session:
        d = await make_deployment(session, S.RUNNING)
        await session.commit()
        await session.execute(Deployment.__table__.update().values(status=S.STOPPED))  # behind the ORM's back
        await session.commit()
    assert await scrape() == _expect(running=1)
    async with database.AsyncSessionLocal() as session:
        assert await status_counts.recount(session) == _expect(stopped=1)
        await session.commit()
    assert await scrape() == _expect(stopped=1) == await _real_counts()
    assert d.id
