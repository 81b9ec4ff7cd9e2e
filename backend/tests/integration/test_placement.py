"""Placement below the workers (``services/targets/placement.py``): a worker's declaration resolved to targets
(each then placed), ``local`` registered once per host, coverage from heartbeats, the queue a dispatch picks,
a target bound to another host refused here, and the targets API's placement fields and rules. The processes
themselves (workers on two engines) are in ``tests/celery/test_placement.py``."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.core.exceptions import ServiceUnavailable
from backend.app.models import Deployment, DeploymentStatus, Target
from backend.app.runtime import dispatch, workers
from backend.app.services.deployments import service_logs
from backend.app.services.deployments.context import load_context
from backend.app.services.targets import placement
from backend.tests.factories import make_deployment
from backend.tests.helpers import add_member, create_user, default_org, setup_admin


def test_a_declaration_reads_ids_names_local_and_the_shared_queue():
    assert placement.Declaration.parse("").everything
    assert placement.Declaration.parse(" , ").everything
    assert placement.Declaration.parse("*").everything  # the shared queue alone is no declaration
    declared = placement.Declaration.parse("local, prod-db ,*;prod-db\n3f1c")
    assert declared == placement.Declaration(("prod-db", "3f1c"), local=True, shared=True)
    assert not declared.everything


def test_coverage_counts_the_live_workers_of_each_target():
    coverage = placement.Coverage.of([None, ["*", "t1"], ["t1", "t2"]])
    assert coverage.workers(target_id="t1", placed=True) == 2 and coverage.workers(target_id="t3", placed=True) == 0
    assert coverage.served(target_id="t2", placed=True) and not coverage.served(target_id="t3", placed=True)
    # a target that is not placed runs on the shared queue's workers, or else in the backend
    assert coverage.workers(target_id="t3", placed=False) == 2 and coverage.served(target_id="t3", placed=False)
    assert placement.Coverage.of([["t1"]]).served(target_id="any", placed=False)
    assert placement.queue_for(target_id="t1", placed=True) == "windflow.target.t1"
    assert placement.queue_for(target_id="t1", placed=False) == "celery"


async def test_resolving_a_declaration_places_its_targets_and_registers_the_hosts_engine_once(db):
    settings = db.settings.model_copy(update={"HOST_ID": "host-b", "LOCAL_DOCKER_ENDPOINT": "unix:///run/b/docker.sock"})
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session)
        named = await session.get(Target, deployment.target_id)
        named.name = "prod-db"
        await session.commit()
        named_id, organization_id = named.id, named.organization_id

    declaration = placement.Declaration.parse("prod-db, local, nowhere")
    async with database.AsyncSessionLocal() as session:
        first = await placement.resolve(session, settings=settings, declaration=declaration)
        await session.commit()
    assert first.problems == ["no target has the id or name 'nowhere'"]
    assert len(first.target_ids) == 2 and first.target_ids[0] == named_id
    assert first.queues() == [f"windflow.target.{t}" for t in first.target_ids]
    assert first.heartbeat_targets() == first.target_ids

    async with database.AsyncSessionLocal() as session:
        targets = {t.id: t for t in (await session.execute(select(Target))).scalars()}
    local = targets[first.target_ids[1]]
    assert (local.name, local.host, local.endpoint, local.placed) == ("local@host-b", "host-b", "unix:///run/b/docker.sock", True)
    assert local.organization_id == organization_id  # the first organisation
    assert targets[named_id].placed is True

    async with database.AsyncSessionLocal() as session:  # a second worker of the host: the same target
        again = await placement.resolve(session, settings=settings, declaration=placement.Declaration.parse(f"local,{named_id},*"))
        await session.commit()
    assert again.target_ids == [named_id, local.id] and again.shared and again.queues()[0] == "celery"
    async with database.AsyncSessionLocal() as session:
        assert len((await session.execute(select(Target).where(Target.host == "host-b"))).scalars().all()) == 1

    # dispatch routes each deployment to its target's queue
    route = await dispatch.route_of(deployment.id)
    assert (route.queue, route.placed, route.target_name) == (f"windflow.target.{named_id}", True, "prod-db")
    assert (await dispatch.route_of("no-such-deployment")).queue == "celery"


async def test_without_an_organisation_local_cannot_be_registered(db):
    async with database.AsyncSessionLocal() as session:
        resolved = await placement.resolve(session, settings=db.settings, declaration=placement.Declaration.parse("local"))
    assert resolved.target_ids == [] and "no organisation exists yet" in resolved.problems[0]


async def test_coverage_and_unserved_targets_come_from_the_heartbeats(db):
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session)
        target = await session.get(Target, deployment.target_id)
        target.placed = True
        await session.commit()
        assert await workers.unserved_targets(session) == [(target.id, target.name)]
        await workers.write_heartbeat(
            session, name="w@a", kind="external", hostname="a", pid=1, broker="postgresql", concurrency=1, targets=[target.id]
        )
        assert (await workers.coverage(session)).workers(target_id=target.id, placed=True) == 1
        assert await workers.unserved_targets(session) == []
        listed = await workers.list_workers(session)
        assert listed[0].targets == [target.id] and not listed[0].shared_queue
        await workers.write_heartbeat(
            session,
            name="w@a",
            kind="external",
            hostname="a",
            pid=1,
            broker="postgresql",
            concurrency=1,
            state=workers.DEGRADED,
            problem="pool short",
            targets=[target.id],
        )
        assert await workers.unserved_targets(session) == [(target.id, target.name)]  # degraded serves nothing


async def test_the_guides_recovery_snippet_leaves_a_placed_targets_deployments_to_its_workers(db):
    """``recover_pending_deployments(db)`` without a dispatcher runs the retried deployments in the calling
    process: never those of a placed target, which this process may not reach."""
    from backend.app.services.deployment_service import DeploymentService

    async with database.AsyncSessionLocal() as session:
        placed = await make_deployment(session, queued_minutes_ago=5)
        elsewhere = await make_deployment(session, queued_minutes_ago=5)  # no snapshot: fails once it runs here
        (await session.get(Target, placed.target_id)).placed = True
        await session.commit()
        report = await DeploymentService.recover_pending_deployments(session)
    assert report["statistics"]["retried"] == 2
    async with database.AsyncSessionLocal() as session:
        assert (await session.get(Deployment, placed.id)).status is DeploymentStatus.PENDING
        assert (await session.get(Deployment, elsewhere.id)).status is DeploymentStatus.FAILED


async def test_a_target_of_another_host_is_never_acted_on_here(db):
    settings = db.settings.model_copy(update={"HOST_ID": "host-a"})
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session, DeploymentStatus.RUNNING)
        target = await session.get(Target, deployment.target_id)
        target.host, target.placed = "host-b", True
        await session.commit()
        deployment = await session.get(Deployment, deployment.id)
        for attempt in (
            load_context(session, settings=settings, deployment=deployment),
            service_logs.prepare(session, settings=settings, deployment=deployment, tail=10),
        ):
            with pytest.raises(ServiceUnavailable) as caught:
                await attempt
            assert caught.value.code == "target_elsewhere" and caught.value.params["host"] == "host-b"
        here = settings.model_copy(update={"HOST_ID": "host-b"})
        assert placement.reachable_here(target, here) and not placement.reachable_here(target, settings)


async def test_the_targets_api_shows_placement_and_keeps_host_binding_to_superusers(client):
    admin = await setup_admin(client)
    organization_id = await default_org(client, admin)
    body = {"name": "remote", "type": "docker", "endpoint": "tcp://203.0.113.9:2375"}
    created = await client.post("/api/v1/targets", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    shown = created.json()
    assert (shown["placed"], shown["host"], shown["served"]) == (False, None, True)

    other = await create_user(client, admin, "ops@example.com")
    await add_member(client, admin, organization_id, other, "admin")
    url = f"/api/v1/targets/{shown['id']}"
    refused = await client.patch(url, json={"host": "host-b"}, headers=other.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "host_binding_forbidden", refused.text
    refused = await client.post("/api/v1/targets", json={**body, "name": "r2", "host": "host-b"}, headers=other.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "host_binding_forbidden", refused.text
    placed = await client.patch(url, json={"placed": True}, headers=other.headers)  # an admin may place it
    assert placed.status_code == 200 and placed.json()["placed"] is True and placed.json()["served"] is False

    bound = await client.patch(url, json={"host": "host-b"}, headers=admin.headers)
    assert bound.status_code == 200 and bound.json()["host"] == "host-b" and bound.json()["placed"] is True
    unplaced = await client.patch(url, json={"placed": False}, headers=admin.headers)
    assert unplaced.status_code == 422 and unplaced.json()["code"] == "host_target_placed", unplaced.text
    invalid = await client.patch(url, json={"host": "no spaces/allowed"}, headers=admin.headers)
    assert invalid.status_code == 422, invalid.text
    freed = await client.patch(url, json={"host": None, "placed": False}, headers=admin.headers)
    assert freed.status_code == 200 and (freed.json()["host"], freed.json()["placed"]) == (None, False), freed.text


async def test_the_workers_list_shows_the_targets_served_to_superusers_only(client):
    admin = await setup_admin(client)
    member = await create_user(client, admin, "viewer@example.com")
    async with database.AsyncSessionLocal() as session:
        await workers.write_heartbeat(
            session, name="w@b", kind="external", hostname="b", pid=7, broker="postgresql", concurrency=1, targets=["*", "some-target-id"]
        )
    seen = (await client.get("/api/v1/system/workers", headers=admin.headers)).json()["workers"]
    assert seen[0]["targets"] == ["*", "some-target-id"] and seen[0]["shared_queue"] is True
    seen = (await client.get("/api/v1/system/workers", headers=member.headers)).json()["workers"]
    assert seen[0]["targets"] is None and seen[0]["shared_queue"] is True and seen[0]["hostname"] is None


def test_a_workers_watchdog_looks_at_the_queues_it_consumes_only():
    """The "not fetching" rule asks whether messages wait in *its* queues: a placed target's backlog that no
    worker serves must not make every other worker look stuck."""
    from types import SimpleNamespace

    from backend.app.runtime.worker_watchdog import WorkerMonitor

    assert WorkerMonitor.queues(SimpleNamespace(targets=None)) == ["celery"]
    assert WorkerMonitor.queues(SimpleNamespace(targets=["*", "t1"])) == ["celery", "windflow.target.t1"]
    assert WorkerMonitor.queues(SimpleNamespace(targets=["t2"])) == ["windflow.target.t2"]
