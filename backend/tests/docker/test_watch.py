"""After the gate, in process on SQLite with the real engine: the watcher marks a running deployment whose
service dies or crash-loops, fails it when nothing of it runs, brings it back to ``running`` when its
containers come back, reconciles a ``failed`` deployment whose containers are up, and leaves a deployment
being stopped alone. And the automatic rollbacks that start outside the runner's gate: a change refused by a
policy tightened since it was made, and a change that timed out while pending.
(The watcher as beat's task on a Celery worker, and a worker killed with its attempts spent:
backend/tests/celery/test_watch_celery.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import timedelta

import pytest
from sqlalchemy import event, insert, select, update

from backend.app import database
from backend.app.core.events import EventType
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentStatus, DeploymentStatusHistory, Target, TargetType, User
from backend.app.models.base import new_id
from backend.app.runtime import background, background_tasks
from backend.app.services.deployments import recovery, revisions
from backend.app.services.deployments.runner import InProcessExecutor
from backend.app.services.deployments.watch import WATCH_BATCH, Watcher
from backend.tests.conftest import TEST_IMAGE, make_settings
from backend.tests.deploy_helpers import force_cleanup, free_port, wait_status
from backend.tests.docker.test_deployments import make_env
from backend.tests.factories import make_org_target_stack
from backend.tests.revision_helpers import REV_STACK, containers, running_services, serves, wait_revision
from backend.tests.revision_helpers import revisions as list_revisions

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]

FAST = {"DEPLOYMENT_STABLE_SECONDS": 1.0, "DEPLOYMENT_WATCH_INTERVAL_SECONDS": 0.4}

#: With ``restart: always``, web crash-loops a few seconds after its gate (its first run leaves a mark in its
#: volume; every later one sees it and exits 5 at once, and the engine starts it again); else it just runs.
#: worker runs on. ``grace``: worker
#: ignores SIGTERM, so stopping it takes that long.
LOOP_STACK = (
    "services:\n"
    "  web:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    "    restart: {{ restart }}\n"
    '    command: ["sh", "-c", "{% if restart == \'always\' %}if [ -f /data/ran ]; then echo fatal: lost the database; '
    'exit 5; fi; touch /data/ran; sleep {{ up_for }}; exit 5{% else %}exec sleep {{ up_for }}{% endif %}"]\n'
    '    volumes: ["data:/data"]\n'
    "  worker:\n"
    f"    image: {TEST_IMAGE}\n"
    "    init: true\n"
    "    stop_grace_period: {{ grace }}s\n"
    '    command: ["sh", "-c", "trap \'\' TERM; while true; do sleep 0.2; done"]\n'
    "{% if cap %}    cap_add: [NET_ADMIN]\n{% endif %}"
    "volumes:\n"
    "  data: {}\n"
)
LOOP_VARIABLES = [
    {"name": "restart", "type": "enum", "options": ["always", "no"], "default": "always"},
    {"name": "up_for", "type": "integer", "default": 6},
    {"name": "grace", "type": "integer", "default": 0},
    {"name": "cap", "type": "boolean", "default": False},
]


@pytest.fixture
async def env(db, docker_engine, tmp_path):
    client, environment = await make_env(db, docker_engine, tmp_path, **FAST)
    environment.stack_id = await environment.stack(REV_STACK["template"], REV_STACK["variables"], name="rev")
    environment.settings = make_settings(db.settings.DATABASE_URL, DEPLOYMENTS_WORKDIR=tmp_path / "deployments", **FAST)
    environment.watching = None
    try:
        yield environment
    finally:
        if environment.watching is not None:
            environment.watching.cancel()
            await asyncio.gather(environment.watching, return_exceptions=True)
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


def watch(env) -> None:
    """The watcher's loop, as the backend runs it (the test's app has no lifespan)."""
    env.watching = asyncio.create_task(background.watch_loop(env.settings))


async def until(env, deployment_id: str, check, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = (await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.admin.headers)).json()
        if check(body):
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"deployment {deployment_id} never got there in {timeout}s: {body}")


def docker(*args: str) -> None:
    subprocess.run(["docker", *args], capture_output=True, timeout=60, check=True)


async def history(deployment_id: str) -> list[tuple[str | None, str, str | None, str | None]]:
    async with database.AsyncSessionLocal() as session:
        rows = await session.execute(
            select(DeploymentStatusHistory)
            .where(DeploymentStatusHistory.deployment_id == deployment_id)
            .order_by(DeploymentStatusHistory.id)
        )
        return [(h.from_status, h.to_status, h.actor, h.reason) for h in rows.scalars()]


def health_events(events, deployment_id: str) -> list[dict]:
    return [e.data for e in events if e.deployment_id == deployment_id and e.type is EventType.DEPLOYMENT_HEALTH_CHANGED]


async def test_a_service_that_dies_after_the_gate_is_marked_then_failed_then_running_again(env, events):
    port = free_port()
    created = await env.deploy({"port": port})
    deployment_id = created["id"]
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    watch(env)
    await until(env, deployment_id, lambda d: d["health"] == "healthy")
    assert health_events(events, deployment_id) == []  # the first healthy look after the rollout tells nothing new
    services = running_services(deployment_id)

    docker("kill", services["web"])  # web dies; worker runs on
    seen = time.monotonic()
    degraded = await until(env, deployment_id, lambda d: d["health"] == "degraded")
    assert time.monotonic() - seen < 5
    assert degraded["status"] == "running"  # what still runs serves
    assert degraded["error_message"] == "revision 1 is degraded: service web exited with code 137"
    states = {s["service"]: (s["state"], s["running"], s["reason"]) for s in degraded["service_health"]}
    assert states == {"web": ("down", 0, "exited with code 137"), "worker": ("up", 1, None)}
    listed = (await env.client.get("/api/v1/deployments", headers=env.admin.headers)).json()["items"]
    assert [(d["id"], d["health"]) for d in listed] == [(deployment_id, "degraded")]  # the list's mark
    told = health_events(events, deployment_id)
    assert [(e["previous"], e["health"], e["status"]) for e in told] == [("healthy", "degraded", "running")]

    docker("kill", services["worker"])  # now nothing runs: the deployment says so
    failed = await until(env, deployment_id, lambda d: d["status"] == "failed")
    assert failed["health"] == "down"
    assert failed["error_message"].startswith("nothing of revision 1 runs any more: service web exited with code 137")
    assert (failed["revision"], failed["last_good_revision"]) == (1, 1)
    assert ("running", "failed", "watcher", "watcher: nothing of it runs any more") in await history(deployment_id)
    statuses = [
        (e.data["old_status"], e.data["new_status"])
        for e in events
        if e.deployment_id == deployment_id and e.type == "DEPLOYMENT_STATUS_CHANGED"
    ]
    assert statuses[-1] == ("running", "failed")
    logs = (await env.client.get(f"/api/v1/deployments/{deployment_id}/logs", headers=env.admin.headers)).json()["items"]
    assert any(line["message"].startswith("[WATCH] nothing of revision 1 runs any more") for line in logs)

    docker("start", services["web"], services["worker"])  # back: reconciled from the engine
    back = await until(env, deployment_id, lambda d: d["status"] == "running")
    assert (back["health"], back["error_message"]) == ("healthy", None)
    assert serves(port) == "v1"
    assert (await history(deployment_id))[-1] == ("failed", "running", "watcher", "watcher: every container up and healthy again")
    # each [WATCH] line the API gives has its sentence's code and the tag (a client words it: core/deployment_words.py)
    logs = (await env.client.get(f"/api/v1/deployments/{deployment_id}/logs", headers=env.admin.headers)).json()["items"]
    watched = [(line.get("code"), line.get("params", {}).get("tag")) for line in logs if line["message"].startswith("[WATCH]")]
    assert {"revision_health", "watch_down", "watch_running_again"} <= {code for code, _ in watched}, watched
    assert all(code is not None and tag == "WATCH" for code, tag in watched), watched
    outcomes = {r["number"]: r["outcome"] for r in await list_revisions(env.client, env.admin.headers, deployment_id)}
    assert outcomes == {1: "running"}


async def test_a_crash_loop_after_the_gate_shows_on_the_service_and_nothing_running_is_never_running(env, events):
    stack_id = await env.stack(LOOP_STACK, LOOP_VARIABLES, name="loop")
    created = await env.deploy({}, stack_id=stack_id)
    deployment_id = created["id"]
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    watch(env)
    looping = await until(env, deployment_id, lambda d: d["health"] == "degraded", timeout=30)
    web = next(s for s in looping["service_health"] if s["service"] == "web")
    assert web["state"] in ("restarting", "down"), web  # caught restarting, or between two restarts
    assert looping["status"] == "running" and looping["error_message"].startswith("revision 1 is degraded: service web ")
    # the restart count grows from look to look: still marked while it loops
    later = await until(
        env, deployment_id, lambda d: next(s for s in d["service_health"] if s["service"] == "web")["restarts"] >= 2, timeout=30
    )
    assert later["health"] == "degraded" and later["status"] == "running"
    assert all(e["health"] == "degraded" for e in health_events(events, deployment_id))


async def test_a_failed_deployment_whose_containers_run_is_reconciled(env, events):
    """The deployment of the issue: marked failed (its executor lost after its last attempt, as recovery
    settles it) while its containers were up and healthy."""
    port = free_port()
    deployment_id = (await env.deploy({"port": port}))["id"]
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    async with database.AsyncSessionLocal() as session:  # what recovery left after a worker died three times
        await session.execute(
            update(Deployment)
            .where(Deployment.id == deployment_id)
            .values(status="failed", last_good_revision=None, attempt=3, error_message="executor lost (lease expired) after 3 attempt(s)")
        )
        await session.commit()
    watch(env)
    back = await until(env, deployment_id, lambda d: d["status"] == "running")
    assert (back["health"], back["error_message"], back["last_good_revision"]) == ("healthy", None, 1)
    assert serves(port) == "v1"


async def test_a_stop_is_not_taken_for_a_crash(env, events):
    stack_id = await env.stack(LOOP_STACK, LOOP_VARIABLES, name="loop")
    deployment_id = (await env.deploy({"restart": "no", "up_for": 600, "grace": 3}, stack_id=stack_id))["id"]
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    watch(env)
    await until(env, deployment_id, lambda d: d["health"] == "healthy")
    stopped = await env.client.post(f"/api/v1/deployments/{deployment_id}/stop", headers=env.admin.headers)
    assert stopped.status_code == 202, stopped.text  # web stops at once, worker after its 3 s grace period
    await wait_status(env.client, env.admin.headers, deployment_id, {"stopped", "failed"})
    await asyncio.sleep(1.0)  # two more looks
    body = (await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.admin.headers)).json()
    assert (body["status"], body["error_message"]) == ("stopped", None)
    assert health_events(events, deployment_id) == [], "the watcher took the stop for a crash"
    assert all(actor != "watcher" for *_, actor, _ in await history(deployment_id))


# --- automatic rollbacks that do not start at the gate ----------------------------------------------


async def _change_without_rollout(env, deployment_id: str, variables: dict) -> int:
    """Revision N+1 made as the route makes it, left ``pending`` (not dispatched)."""
    async with database.AsyncSessionLocal() as session:
        deployment = await session.get(Deployment, deployment_id)
        user = (await session.execute(select(User).where(User.email == env.admin.email))).scalar_one()
        revision = await revisions.create_update(
            session, settings=env.settings, deployment=deployment, user=user, variables=variables, stack_version=None
        )
        await session.commit()
        return revision.number


async def test_a_change_refused_by_a_policy_tightened_since_is_rolled_back(env, events):
    policy = {"allow_capabilities": True}
    assert (
        await env.client.patch(f"/api/v1/targets/{env.target_id}", json={"compose_policy": policy}, headers=env.admin.headers)
    ).status_code == 200
    stack_id = await env.stack(LOOP_STACK, LOOP_VARIABLES, name="loop")
    deployment_id = (await env.deploy({"restart": "no", "up_for": 600}, stack_id=stack_id))["id"]
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    assert await _change_without_rollout(env, deployment_id, {"cap": True}) == 2
    tightened = await env.client.patch(
        f"/api/v1/targets/{env.target_id}", json={"compose_policy": {"allow_capabilities": False}}, headers=env.admin.headers
    )
    assert tightened.status_code == 200, tightened.text

    executor = InProcessExecutor()
    executor.submit(deployment_id, env.settings)
    await executor.wait()
    body = await wait_revision(env.client, env.admin.headers, deployment_id, 3, {"running", "failed"})
    assert body["status"] == "running", body["error_message"]
    listed = {
        r["number"]: (r["reason"], r["outcome"], r["rollback_of"])
        for r in await list_revisions(env.client, env.admin.headers, deployment_id)
    }
    assert listed == {3: ("automatic_rollback", "running", 1), 2: ("update", "failed", None), 1: ("created", "superseded", None)}
    failed = (await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions/2", headers=env.admin.headers)).json()
    assert "refused by the compose policy" in failed["error_message"] and "cap_add" in failed["error_message"]
    assert set(running_services(deployment_id)) == {"web", "worker"}
    rolled = [e.data for e in events if e.deployment_id == deployment_id and e.type is EventType.DEPLOYMENT_ROLLED_BACK]
    assert [(e["from_revision"], e["to_revision"], e["revision"]) for e in rolled] == [(2, 1, 3)]


async def test_a_change_that_timed_out_pending_is_rolled_back(env, events):
    port = free_port()
    deployment_id = (await env.deploy({"port": port}))["id"]
    assert (await wait_revision(env.client, env.admin.headers, deployment_id, 1, {"running", "failed"}))["status"] == "running"
    assert await _change_without_rollout(env, deployment_id, {"greeting": "v2"}) == 2
    async with database.AsyncSessionLocal() as session:  # nobody took it for two hours
        await session.execute(update(Deployment).where(Deployment.id == deployment_id).values(queued_at=utcnow() - timedelta(hours=2)))
        await session.commit()

    async with database.AsyncSessionLocal() as session:  # the product guide's snippet: runs what it retries here
        report = await recovery.recover_pending_deployments(session, timeout_minutes=60, settings=env.settings)
    assert report["statistics"]["failed"] == 1
    body = await wait_revision(env.client, env.admin.headers, deployment_id, 3, {"running", "failed"})
    assert body["status"] == "running", body["error_message"]
    listed = {r["number"]: (r["reason"], r["outcome"]) for r in await list_revisions(env.client, env.admin.headers, deployment_id)}
    assert listed == {3: ("automatic_rollback", "running"), 2: ("update", "failed"), 1: ("created", "superseded")}
    assert (await env.client.get(f"/api/v1/deployments/{deployment_id}/revisions/2", headers=env.admin.headers)).json()[
        "error_message"
    ] == "Timeout: still pending after 60 minutes"
    assert serves(port) == "v1"
    assert len(containers(deployment_id)) == 2
    moves = [(f, t) for f, t, *_ in await history(deployment_id)]
    assert moves[-4:] == [("pending", "failed"), ("failed", "pending"), ("pending", "deploying"), ("deploying", "running")]


async def test_a_pass_reads_an_answering_targets_rows_in_batches_and_none_of_a_silent_ones(db, docker_engine, tmp_path):
    """1,200 watched deployments on the real engine (failed ones whose revision passed its gate, no container
    left: nothing to change) and 1,200 running ones on a target whose engine does not answer. A pass reads the
    first in batches of WATCH_BATCH, without their document and values, and not one row of the second: a million
    watched rows once made every pass load them all at once on the event loop, every request waiting behind it."""
    settings = make_settings(db.settings.DATABASE_URL, DEPLOYMENTS_WORKDIR=tmp_path / "deployments")
    async with database.AsyncSessionLocal() as session:
        org, answering, stack = await make_org_target_stack(session)
        answering.endpoint = docker_engine
        silent = Target(organization_id=org.id, name="silent", type=TargetType.DOCKER, endpoint="tcp://127.0.0.1:1")
        session.add(silent)
        await session.flush()
        rows = [
            {"id": new_id(), "organization_id": org.id, "stack_id": stack.id, "target_id": target.id, "name": f"d{n}", "status": status,
             "revision": 1, "last_good_revision": 1, "attempt": 1, "variables": {}, "rendered_compose": "not read", "queued_at": utcnow()}
            for target, status in ((answering, DeploymentStatus.FAILED), (silent, DeploymentStatus.RUNNING))
            for n in range(1200)
        ]  # fmt: skip
        await session.execute(insert(Deployment), rows)
        await session.commit()
    answering_ids = {r["id"] for r in rows if r["target_id"] == answering.id}

    loaded: list[tuple[str, bool]] = []
    reads: list[int] = []

    def on_load(deployment, _context) -> None:
        loaded.append((deployment.id, "rendered_compose" in deployment.__dict__ or "variables" in deployment.__dict__))

    def on_execute(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM deployments" in statement and "targets" not in statement:
            reads.append(len(loaded))

    sync_engine = database.get_engine().sync_engine
    event.listen(Deployment, "load", on_load)
    event.listen(sync_engine, "before_cursor_execute", on_execute)
    try:
        stats = await Watcher(settings).run_once()
    finally:
        event.remove(Deployment, "load", on_load)
        event.remove(sync_engine, "before_cursor_execute", on_execute)
    assert stats["errors"] == 1  # the silent target's engine, once
    assert stats["looked"] == 1200 and stats["changed"] == 0
    assert {deployment_id for deployment_id, _ in loaded} == answering_ids  # not one row of the silent target
    assert not any(heavy for _, heavy in loaded), "a pass read documents and values it did not need"
    assert len(loaded) == 1200 and len(reads) == 3  # 500 + 500 + 200, each read before the next batch
    assert reads == [0, WATCH_BATCH, 2 * WATCH_BATCH]
