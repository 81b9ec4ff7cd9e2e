"""The watcher's two moves in the state machine (``running -> failed``, ``failed -> running``): made only with
``observed=True``, and nothing else with it; on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools

import pytest

from backend.app.models import Deployment, DeploymentStatus
from backend.app.services.deployments.state_machine import OBSERVED_TRANSITIONS, set_deployment_status
from backend.tests.factories import make_deployment

S = DeploymentStatus
PAIRS = list(itertools.product(list(S), list(S)))


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
async def test_only_the_watchers_moves_are_observed(session, events, pair):
    from_status, to_status = pair
    deployment = await make_deployment(session, from_status, health="down", service_health={"services": []})
    await session.commit()
    result = await set_deployment_status(
        session, deployment_id=deployment.id, to_status=to_status, actor="watcher", error_message="seen", observed=True
    )
    await session.commit()
    row = await session.get(Deployment, deployment.id, populate_existing=True)
    if pair in {(S.RUNNING, S.FAILED), (S.FAILED, S.RUNNING)}:
        assert result.accepted, result.reason
        assert row.status is to_status
        assert row.health == "down"  # the watcher writes what it saw itself
        assert row.error_message == (None if to_status is S.RUNNING else "seen")
        assert [e.data["new_status"] for e in events] == [to_status]
    else:
        assert not result.accepted and "not allowed" in result.reason
        assert row.status is from_status and events == []


async def test_anyone_else_is_refused_them_and_resets_what_the_watcher_saw(session):
    assert {(S.RUNNING, S.FAILED), (S.FAILED, S.RUNNING)} == OBSERVED_TRANSITIONS
    running = await make_deployment(session, S.RUNNING, health="degraded", error_message="revision 1 is degraded: ...")
    failed = await make_deployment(session, S.FAILED)
    await session.commit()
    refused = await set_deployment_status(session, deployment_id=running.id, to_status=S.FAILED, actor="someone")
    assert not refused.accepted and "watcher" in refused.reason
    assert not (await set_deployment_status(session, deployment_id=failed.id, to_status=S.RUNNING, actor="someone")).accepted
    stopped = await set_deployment_status(session, deployment_id=running.id, to_status=S.STOPPED, actor="user")
    await session.commit()
    assert stopped.accepted
    row = await session.get(Deployment, running.id, populate_existing=True)
    # a user's change: the watcher looks again, and a stopped deployment keeps no "degraded" message
    assert (row.health, row.service_health, row.error_message) == (None, None, None)
