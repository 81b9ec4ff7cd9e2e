"""Deploy hooks over HTTP: management (admins only, the secret shown once), and calls judged before anything
is deployed: signatures in GitHub's and the timestamped form, replays, a disabled hook, a variable the hook
does not allow, a busy deployment, the per-hook rate limit, rotation with a grace period, push payloads
filtered by branch. The deployment is a row placed ``running``; the dispatcher records what it is asked to
run (the real rollout by a hook is in backend/tests/docker/test_hooks_deploy.py)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from backend.app.database import utcnow
from backend.app.main import create_app
from backend.app.models import AuditEntry, DeployHook, Deployment, DeploymentStatus, Membership, Role
from backend.app.services.hooks.signature import sign, sign_timestamped
from backend.tests.conftest import make_settings
from backend.tests.factories import make_deployment
from backend.tests.helpers import create_user, setup_admin


class RecordingDispatcher:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def dispatch(self, deployment_id: str) -> None:
        self.sent.append(deployment_id)


class World:
    def __init__(self, client, admin, deployment_id, org_id, dispatcher, db) -> None:
        self.client, self.admin, self.deployment_id, self.org_id, self.dispatcher, self.db = (
            client,
            admin,
            deployment_id,
            org_id,
            dispatcher,
            db,
        )

    @property
    def hooks(self) -> str:
        return f"/api/v1/deployments/{self.deployment_id}/hooks"

    async def hook(self, **body) -> dict:
        response = await self.client.post(self.hooks, json={"name": "ci", **body}, headers=self.admin.headers)
        assert response.status_code == 201, response.text
        return response.json()

    async def status(self) -> str:
        async with self.db.engine.connect() as conn:
            return (await conn.execute(select(Deployment.status).where(Deployment.id == self.deployment_id))).scalar_one()

    async def settle(self, status: DeploymentStatus = DeploymentStatus.RUNNING) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(update(Deployment).where(Deployment.id == self.deployment_id).values(status=status))


async def call(
    world: World, hook: dict, body: bytes = b"{}", *, secret: str | None = None, headers: dict | None = None, form: str = "github"
):
    secret = hook["secret"] if secret is None else secret
    sent = {"Content-Type": "application/json"}
    if form == "github":
        sent["X-Hub-Signature-256"] = sign(secret, body)
    elif form == "timestamped":
        stamp = int(time.time())
        sent.update({"X-WindFlow-Timestamp": str(stamp), "X-WindFlow-Signature-256": sign_timestamped(secret, stamp, body)})
    sent.update(headers or {})
    return await world.client.post(f"/api/v1/hooks/{hook['id']}", content=body, headers=sent)


@pytest.fixture
async def world(db, session):
    return await _world(db, session)


async def _world(db, session, **overrides) -> World:
    app = create_app(make_settings(db.settings.DATABASE_URL, PUBLIC_URL="https://windflow.example.com", **overrides))
    dispatcher = RecordingDispatcher()
    app.state.dispatcher = dispatcher
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    admin = await setup_admin(client)
    deployment = await make_deployment(session, DeploymentStatus.RUNNING, attempt=1)
    await session.commit()
    return World(client, admin, deployment.id, deployment.organization_id, dispatcher, db)


async def test_a_signed_call_redeploys_and_is_recorded(world, db):
    hook = await world.hook()
    assert hook["url"] == f"https://windflow.example.com/api/v1/hooks/{hook['id']}"
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    listed = await world.client.get(world.hooks, headers=world.admin.headers)
    assert listed.status_code == 200 and [h["id"] for h in listed.json()] == [hook["id"]]
    assert hook["secret"] not in listed.text

    accepted = await call(world, hook)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {
        "deployment_id": world.deployment_id,
        "revision": 1,
        "action": "redeploy",
        "reason": None,
        "stack_id": None,
        "deployments": [],
        "skipped": [],
    }
    assert await world.status() == "pending" and world.dispatcher.sent == [world.deployment_id]

    # the deployment is rolling out: the next call waits
    busy = await call(world, hook)
    assert busy.status_code == 429 and busy.json()["code"] == "deployment_rolling_out" and busy.headers["Retry-After"] == "10"
    assert world.dispatcher.sent == [world.deployment_id]

    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(AuditEntry.__table__).where(AuditEntry.action == "hook.call").order_by(AuditEntry.at))).all()
        everything = json.dumps([dict(r._mapping) for r in (await conn.execute(select(AuditEntry.__table__))).all()], default=str)
    assert [(r.actor_kind, r.actor_id, r.actor_name, r.status_code) for r in rows] == [
        ("hook", hook["id"], "ci", 202),
        ("hook", hook["id"], "ci", 429),
    ]
    assert rows[0].organization_id == world.org_id and rows[0].object_id == world.deployment_id
    assert rows[0].summary["action"] == "redeploy" and rows[0].summary["revision"] == 1
    assert hook["secret"] not in everything
    calls = (await world.client.get(f"{world.hooks}/{hook['id']}/calls", headers=world.admin.headers)).json()
    assert [(c["status_code"], c["code"], c["revision"]) for c in calls] == [(429, "deployment_rolling_out", None), (202, "accepted", 1)]


async def test_refused_calls_deploy_nothing(world):
    hook = await world.hook(allowed_variables=["tag"])
    cases = [
        (await call(world, hook, form="none"), 401, "hook_signature_missing"),
        (await call(world, hook, secret="whsec_wrong"), 401, "hook_signature_invalid"),
        (await call(world, hook, secret="whsec_wrong", form="timestamped"), 401, "hook_signature_invalid"),
        (await call(world, hook, b'{"variables": {"tag": "1.5", "port": 1}}'), 422, "hook_variable_not_allowed"),
        (await call(world, hook, b'{"image": "evil"}'), 422, "hook_body_invalid"),
        (await call(world, hook, b"not json"), 422, "hook_body_invalid"),
        (await call(world, hook, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}), 401, "hook_signature_invalid"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert "port" in cases[3][0].json()["detail"] and cases[3][0].json()["params"]["allowed"] == ["tag"]
    # a stale timestamp: 409
    stamp = int(time.time()) - 3600
    stale = await world.client.post(
        f"/api/v1/hooks/{hook['id']}",
        content=b"{}",
        headers={"X-WindFlow-Timestamp": str(stamp), "X-WindFlow-Signature-256": sign_timestamped(hook["secret"], stamp, b"{}")},
    )
    assert stale.status_code == 409 and stale.json()["code"] == "hook_replayed"
    # disabled: 403
    disabled = await world.client.patch(f"{world.hooks}/{hook['id']}", json={"enabled": False}, headers=world.admin.headers)
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    refused = await call(world, hook)
    assert refused.status_code == 403 and refused.json()["code"] == "hook_disabled"
    assert await world.status() == "running" and world.dispatcher.sent == []
    missing = await world.client.post(
        "/api/v1/hooks/00000000-0000-4000-8000-000000000000", content=b"{}", headers={"X-Hub-Signature-256": "sha256=00"}
    )
    assert missing.status_code == 404 and missing.json()["code"] == "hook_not_found"


async def test_replays_are_refused(world):
    hook = await world.hook()
    stamp = int(time.time())
    signed = {"X-WindFlow-Timestamp": str(stamp), "X-WindFlow-Signature-256": sign_timestamped(hook["secret"], stamp, b"{}")}
    first = await world.client.post(f"/api/v1/hooks/{hook['id']}", content=b"{}", headers=signed)
    assert first.status_code == 202, first.text
    await world.settle()
    again = await world.client.post(f"/api/v1/hooks/{hook['id']}", content=b"{}", headers=signed)
    assert again.status_code == 409 and again.json()["code"] == "hook_replayed"
    # GitHub's delivery id is the nonce of its form
    delivery = {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    assert (await call(world, hook, headers=delivery)).status_code == 202
    await world.settle()
    replay = await call(world, hook, headers=delivery)
    assert replay.status_code == 409 and replay.json()["code"] == "hook_replayed"
    assert await world.status() == "running" and len(world.dispatcher.sent) == 2


async def test_rotation_keeps_the_old_secret_for_the_grace_period(world, db):
    hook = await world.hook()
    rotated = await world.client.post(f"{world.hooks}/{hook['id']}/rotate", headers=world.admin.headers)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["secret"] != hook["secret"] and new["previous_secret_valid_until"] is not None
    assert (await call(world, hook)).status_code == 202  # the old one, within the grace period
    await world.settle()
    assert (await call(world, new)).status_code == 202
    await world.settle()
    async with db.engine.begin() as conn:
        await conn.execute(update(DeployHook).values(previous_valid_until=utcnow() - timedelta(seconds=1)))
    expired = await call(world, hook)
    assert expired.status_code == 401 and expired.json()["code"] == "hook_signature_invalid"
    assert (await call(world, new)).status_code == 202


async def test_push_payloads_are_filtered_by_branch(world):
    hook = await world.hook(branch="main")
    other = json.dumps({"ref": "refs/heads/dev", "after": "abc"}).encode()
    skipped = await call(world, hook, other, headers={"X-GitHub-Event": "push"})
    assert skipped.status_code == 200 and skipped.json()["action"] == "skipped" and "dev" in skipped.json()["reason"]
    gitlab = await call(
        world,
        hook,
        json.dumps({"ref": "refs/heads/dev"}).encode(),
        form="none",
        headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": hook["secret"]},
    )
    assert gitlab.status_code == 200 and gitlab.json()["action"] == "skipped"
    assert world.dispatcher.sent == []
    main = await call(world, hook, json.dumps({"ref": "refs/heads/main"}).encode(), headers={"X-GitHub-Event": "push"})
    assert main.status_code == 202 and main.json()["action"] == "redeploy" and world.dispatcher.sent == [world.deployment_id]
    wrong_token = await call(world, hook, b"{}", form="none", headers={"X-Gitlab-Token": "whsec_guess"})
    assert wrong_token.status_code == 401


async def test_rate_limit_per_hook(db, session):
    world = await _world(db, session, HOOK_RATE_LIMIT_PER_MINUTE=2)
    hook = await world.hook()
    assert (await call(world, hook)).status_code == 202
    await world.settle()
    assert (await call(world, hook)).status_code == 202
    await world.settle()
    limited = await call(world, hook)
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert len(world.dispatcher.sent) == 2
    other = await world.hook(name="other")  # another hook has its own budget
    assert (await call(world, other)).status_code == 202


async def test_only_admins_manage_hooks(world, session):
    hook = await world.hook()
    operator = await create_user(world.client, world.admin, "op@example.com")
    session.add(Membership(user_id=operator.user_id, organization_id=world.org_id, role=Role.OPERATOR))
    await session.commit()
    refused = await world.client.post(world.hooks, json={"name": "mine"}, headers=operator.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "role_required"
    assert (await world.client.get(world.hooks, headers=operator.headers)).status_code == 403
    outsider = await create_user(world.client, world.admin, "out@example.com")
    assert (await world.client.get(world.hooks, headers=outsider.headers)).status_code == 404
    bad = await world.client.post(world.hooks, json={"name": "x", "allowed_variables": ["no spaces"]}, headers=world.admin.headers)
    assert bad.status_code == 422
    deleted = await world.client.delete(f"{world.hooks}/{hook['id']}", headers=world.admin.headers)
    assert deleted.status_code == 204
    assert (await call(world, hook)).status_code == 404


# --- a stack's hooks ----------------------------------------------------------------------------------


async def _stack_world(world: World, session) -> tuple[str, dict[str, str]]:
    """The world's deployment's stack with two more deployments in its organisation (failed, deploying)."""
    first = await session.get(Deployment, world.deployment_id)
    ids = {"running": first.id}
    for status in (DeploymentStatus.FAILED, DeploymentStatus.DEPLOYING):
        row = Deployment(
            organization_id=first.organization_id,
            stack_id=first.stack_id,
            target_id=first.target_id,
            name=f"dep-{status}",
            status=status,
            attempt=1,
            revision=1,
            lease_owner="worker-1" if status is DeploymentStatus.DEPLOYING else None,
            lease_expires_at=utcnow() + timedelta(seconds=60) if status is DeploymentStatus.DEPLOYING else None,
        )
        session.add(row)
        await session.flush()
        ids[str(status)] = row.id
    await session.commit()
    return first.stack_id, ids


async def _statuses(world: World, ids: dict[str, str]) -> dict[str, str]:
    async with world.db.engine.connect() as conn:
        rows = (await conn.execute(select(Deployment.id, Deployment.status).where(Deployment.id.in_(list(ids.values()))))).all()
    by_id = dict(rows)
    return {name: str(by_id[i]) for name, i in ids.items()}


async def test_a_stack_hook_rolls_out_the_stacks_deployments_and_lists_them(world, session, db):
    stack_id, ids = await _stack_world(world, session)
    hooks = f"/api/v1/stacks/{stack_id}/hooks"
    created = await world.client.post(hooks, json={"name": "ci-stack"}, headers=world.admin.headers)
    assert created.status_code == 201, created.text
    hook = created.json()
    assert hook["stack_id"] == stack_id and hook["deployment_id"] is None and hook["secret"].startswith("whsec_")
    assert hook["url"] == f"https://windflow.example.com/api/v1/hooks/{hook['id']}"
    listed = await world.client.get(hooks, headers=world.admin.headers)
    assert [h["id"] for h in listed.json()] == [hook["id"]] and hook["secret"] not in listed.text
    # a stack's hook is not one of its deployments' hooks, and neither list reaches the other's
    assert (await world.client.get(world.hooks, headers=world.admin.headers)).json() == []
    deployment_hook = await world.hook(name="one")
    assert (
        await world.client.patch(f"{hooks}/{deployment_hook['id']}", json={"enabled": False}, headers=world.admin.headers)
    ).status_code == 404
    assert (
        await world.client.patch(f"{world.hooks}/{hook['id']}", json={"enabled": False}, headers=world.admin.headers)
    ).status_code == 404

    assert (await call(world, hook, secret="whsec_wrong")).status_code == 401
    assert world.dispatcher.sent == []

    accepted = await call(world, hook)
    assert accepted.status_code == 202, accepted.text
    answer = accepted.json()
    assert (answer["deployment_id"], answer["stack_id"], answer["action"]) == (None, stack_id, "redeploy")
    assert [(d["deployment_id"], d["action"], d["revision"]) for d in answer["deployments"]] == [
        (ids["running"], "redeploy", 1),
        (ids["failed"], "retry", 1),
    ]
    assert [(s["deployment_id"], s["code"]) for s in answer["skipped"]] == [(ids["deploying"], "deployment_rolling_out")]
    assert world.dispatcher.sent == [ids["running"], ids["failed"]]
    assert await _statuses(world, ids) == {"running": "pending", "failed": "pending", "deploying": "deploying"}

    # now every one is rolling out: refused with the first one's refusal, the others listed, nothing deployed
    busy = await call(world, hook)
    assert busy.status_code == 429 and busy.json()["code"] == "deployment_rolling_out" and busy.headers["Retry-After"] == "10"
    assert [s["deployment_id"] for s in busy.json()["params"]["skipped"]] == [ids["running"], ids["failed"], ids["deploying"]]
    assert world.dispatcher.sent == [ids["running"], ids["failed"]]

    calls = await world.client.get(f"{hooks}/{hook['id']}/calls", headers=world.admin.headers)
    assert [c["code"] for c in calls.json()] == ["deployment_rolling_out", "accepted", "hook_signature_invalid"]
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(AuditEntry.__table__)
                .where(AuditEntry.action == "hook.call", AuditEntry.actor_id == hook["id"])
                .order_by(AuditEntry.at)
            )
        ).all()
        everything = json.dumps([dict(r._mapping) for r in (await conn.execute(select(AuditEntry.__table__))).all()], default=str)
    accepted_row = next(r for r in rows if r.status_code == 202)
    assert (accepted_row.object_type, accepted_row.object_id, accepted_row.actor_kind) == ("stack", stack_id, "hook")
    assert accepted_row.summary["deployments"] == [ids["running"], ids["failed"]]
    assert accepted_row.summary["skipped"] == [{"deployment_id": ids["deploying"], "code": "deployment_rolling_out"}]
    assert hook["secret"] not in everything

    deleted = await world.client.delete(f"{hooks}/{hook['id']}", headers=world.admin.headers)
    assert deleted.status_code == 204
    assert (await call(world, hook)).status_code == 404


async def test_a_stack_hook_refuses_before_deploying_anything(world, session):
    stack_id, ids = await _stack_world(world, session)
    await world.settle(DeploymentStatus.STOPPED)
    hooks = f"/api/v1/stacks/{stack_id}/hooks"
    hook = (await world.client.post(hooks, json={"name": "ci", "allowed_variables": ["tag"]}, headers=world.admin.headers)).json()
    # a variable the hook does not allow: judged once, before any deployment
    refused = await call(world, hook, json.dumps({"variables": {"other": "1"}}).encode())
    assert refused.status_code == 422 and refused.json()["code"] == "hook_variable_not_allowed"
    # an allowed variable, which no deployment can take (these rows have no revision recorded): the answer is the
    # first one's refusal, each one's code in params.skipped
    change = await call(world, hook, json.dumps({"variables": {"tag": "1.5"}}).encode())
    assert change.status_code == 404, change.text
    assert change.json()["code"] == "revision_not_found" and change.json()["detail"].startswith("none of the stack's 3 deployment(s)")
    assert [s["code"] for s in change.json()["params"]["skipped"]] == ["revision_not_found", "revision_not_found", "deployment_rolling_out"]
    # disabled
    assert (await world.client.patch(f"{hooks}/{hook['id']}", json={"enabled": False}, headers=world.admin.headers)).status_code == 200
    assert (await call(world, hook)).status_code == 403
    assert world.dispatcher.sent == []
    assert await _statuses(world, ids) == {"running": "stopped", "failed": "failed", "deploying": "deploying"}

    # a stack without deployments
    empty = await world.client.post(
        "/api/v1/stacks",
        json={"name": "empty", "template": "services:\n  web:\n    image: nginx:alpine\n", "organization_id": world.org_id},
        headers=world.admin.headers,
    )
    assert empty.status_code == 201, empty.text
    other = (await world.client.post(f"/api/v1/stacks/{empty.json()['id']}/hooks", json={"name": "ci"}, headers=world.admin.headers)).json()
    nothing = await call(world, other)
    assert nothing.status_code == 409 and nothing.json()["code"] == "stack_has_no_deployments"


async def test_only_admins_manage_stack_hooks(world, session):
    stack_id, _ids = await _stack_world(world, session)
    hooks = f"/api/v1/stacks/{stack_id}/hooks"
    operator = await create_user(world.client, world.admin, "op@example.com")
    session.add(Membership(user_id=operator.user_id, organization_id=world.org_id, role=Role.OPERATOR))
    await session.commit()
    refused = await world.client.post(hooks, json={"name": "mine"}, headers=operator.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "role_required"
    outsider = await create_user(world.client, world.admin, "out@example.com")
    assert (await world.client.get(hooks, headers=outsider.headers)).status_code == 404
    assert (await world.client.post(hooks, json={"name": ""}, headers=world.admin.headers)).status_code == 422
