"""What keeps the UI's smaller lists live and filterable: ``RESOURCE_CHANGED`` events for stacks, targets and
members (organisation subscribers), API tokens (their owner) and users and organisations (superusers), the
``q`` / ``role`` / ``source`` / ``active`` filters, and why a pending deployment waits."""

from __future__ import annotations

from datetime import timedelta

from backend.app import database
from backend.app.core.events import audience
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentStatus, Membership, Role
from backend.app.schemas.events import ResourceChangedEvent
from backend.tests.factories import make_org_target_stack
from backend.tests.helpers import add_member, create_user, default_org, setup_admin

TEMPLATE = "services:\n  web:\n    image: nginx:1.27-alpine\n"


def changes(events, resources=("stack", "target", "member")) -> list[tuple[str, str, str | None]]:
    return [
        (e.data["resource"], e.data["action"], e.data["name"])
        for e in events
        if e.type == "RESOURCE_CHANGED" and e.data["resource"] in resources
    ]


async def test_stacks_targets_and_members_announce_their_changes(client, db, events) -> None:
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    stack = (
        await client.post("/api/v1/stacks", json={"name": "web", "template": TEMPLATE, "organization_id": org}, headers=admin.headers)
    ).json()
    await client.patch(f"/api/v1/stacks/{stack['id']}", json={"description": "d"}, headers=admin.headers)
    target = (
        await client.post(
            "/api/v1/targets", json={"name": "far", "endpoint": "tcp://192.0.2.1:2376", "organization_id": org}, headers=admin.headers
        )
    ).json()
    await client.patch(f"/api/v1/targets/{target['id']}", json={"max_concurrent_deployments": 3}, headers=admin.headers)
    member = await create_user(client, admin, "member@example.com")
    await add_member(client, admin, org, member, "viewer")
    await client.patch(f"/api/v1/organizations/{org}/members/{member.user_id}", json={"role": "operator"}, headers=admin.headers)
    await client.delete(f"/api/v1/organizations/{org}/members/{member.user_id}", headers=admin.headers)
    await client.delete(f"/api/v1/targets/{target['id']}", headers=admin.headers)
    await client.delete(f"/api/v1/stacks/{stack['id']}", headers=admin.headers)
    refused = await client.post(
        "/api/v1/stacks", json={"name": "web2", "template": "services: [", "organization_id": org}, headers=admin.headers
    )
    assert refused.status_code == 422  # nothing announced for what was not stored
    assert changes(events) == [
        ("stack", "created", "web"),
        ("stack", "updated", "web"),
        ("target", "created", "far"),
        ("target", "updated", "far"),
        ("member", "created", "member@example.com"),
        ("member", "updated", None),
        ("member", "deleted", None),
        ("target", "deleted", "far"),
        ("stack", "deleted", "web"),
    ]
    found = [e for e in events if e.type == "RESOURCE_CHANGED" and e.data["resource"] in ("stack", "target", "member")]
    assert all(e.organization_id == org and e.deployment_id == "" for e in found)
    assert {audience(e) for e in found} == {("organization", org)}
    ResourceChangedEvent.model_validate(found[0].to_dict())  # the frame matches its documented schema


async def test_tokens_users_and_organizations_announce_their_changes_to_whom_they_concern(client, db, events) -> None:
    admin = await setup_admin(client)
    ada = await create_user(client, admin, "ada@example.com")
    token = (await client.post("/api/v1/tokens", json={"name": "ci"}, headers=ada.headers)).json()
    assert (await client.delete(f"/api/v1/tokens/{token['id']}", headers=ada.headers)).status_code == 204
    await client.delete(f"/api/v1/tokens/{token['id']}", headers=ada.headers)  # already revoked: nothing new
    foreign = await client.delete(f"/api/v1/tokens/{token['id']}", headers=admin.headers)
    assert foreign.status_code == 404  # another user's token: refused, and nothing announced
    assert (await client.patch(f"/api/v1/users/{ada.user_id}", json={"full_name": "Ada L."}, headers=admin.headers)).status_code == 200
    org = (await client.post("/api/v1/organizations", json={"name": "research"}, headers=admin.headers)).json()
    refused = await client.post("/api/v1/users", json={"email": "ada@example.com", "password": "long-enough-1"}, headers=admin.headers)
    assert refused.status_code == 409  # nothing announced for what was not stored

    account = [e for e in events if e.type == "RESOURCE_CHANGED" and e.data["resource"] in ("token", "user", "organization")]
    assert [(e.data["resource"], e.data["action"], e.data["name"]) for e in account] == [
        ("user", "created", "ada@example.com"),
        ("token", "created", "ci"),
        ("token", "updated", "ci"),
        ("user", "updated", "ada@example.com"),
        ("organization", "created", "research"),
    ]
    assert [audience(e) for e in account] == [
        ("superusers", None),
        ("user", ada.user_id),
        ("user", ada.user_id),
        ("superusers", None),
        ("superusers", None),
    ]
    assert all(e.organization_id == "" and e.deployment_id == "" for e in account)  # no organisation hears them
    assert account[4].data["id"] == org["id"] and account[1].data["id"] == token["id"]
    for e in account:
        ResourceChangedEvent.model_validate(e.to_dict())


async def test_the_small_lists_filter(client, db) -> None:
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    for name, description in (("web-front", "nginx"), ("db", "postgres for the web"), ("cache", None)):
        created = await client.post(
            "/api/v1/stacks",
            json={"name": name, "description": description, "template": TEMPLATE, "organization_id": org},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
    names = lambda r: [i.get("name") or i.get("email") for i in r.json()["items"]]  # noqa: E731 - a one-line reader
    assert names(await client.get(f"/api/v1/stacks?organization_id={org}&q=WEB", headers=admin.headers)) == ["db", "web-front"]
    assert names(await client.get(f"/api/v1/stacks?organization_id={org}&q=100%25", headers=admin.headers)) == []
    assert names(await client.get(f"/api/v1/stacks?organization_id={org}&source=catalog", headers=admin.headers)) == []
    for name, endpoint in (("edge", "tcp://192.0.2.1:2376"), ("core", "ssh://deploy@core.example.com")):
        await client.post("/api/v1/targets", json={"name": name, "endpoint": endpoint, "organization_id": org}, headers=admin.headers)
    assert names(await client.get(f"/api/v1/targets?organization_id={org}&q=example", headers=admin.headers)) == ["core"]
    ops = await create_user(client, admin, "ops@example.com")
    await add_member(client, admin, org, ops, "operator")
    members = f"/api/v1/organizations/{org}/members"
    assert names(await client.get(f"{members}?q=OPS", headers=admin.headers)) == ["ops@example.com"]
    assert names(await client.get(f"{members}?role=owner", headers=admin.headers)) == [admin.email]
    assert names(await client.get("/api/v1/users?q=ops", headers=admin.headers)) == ["ops@example.com"]
    first = (await client.post("/api/v1/tokens", json={"name": "ci deploy"}, headers=admin.headers)).json()
    await client.post("/api/v1/tokens", json={"name": "laptop"}, headers=admin.headers)
    await client.delete(f"/api/v1/tokens/{first['id']}", headers=admin.headers)
    assert names(await client.get("/api/v1/tokens?q=CI", headers=admin.headers)) == ["ci deploy"]
    assert names(await client.get("/api/v1/tokens?active=true", headers=admin.headers)) == ["laptop"]
    assert names(await client.get("/api/v1/tokens?active=false", headers=admin.headers)) == ["ci deploy"]


async def test_a_pending_deployment_says_why_it_waits(client, db) -> None:
    admin = await setup_admin(client)
    now = utcnow()
    async with database.AsyncSessionLocal() as session:
        org, target, stack = await make_org_target_stack(session)
        target.max_concurrent_deployments = 1
        session.add(Membership(user_id=admin.user_id, organization_id=org.id, role=Role.VIEWER))

        def row(name: str, status: DeploymentStatus, **fields) -> Deployment:
            deployment = Deployment(
                organization_id=org.id, stack_id=stack.id, target_id=target.id, name=name, status=status, queued_at=now, **fields
            )
            session.add(deployment)
            return deployment

        busy = row("busy", DeploymentStatus.DEPLOYING, attempt=1, lease_owner="w", lease_expires_at=now + timedelta(minutes=1))
        queued = row("queued", DeploymentStatus.PENDING)
        backing_off = row("backing-off", DeploymentStatus.PENDING, attempt=1, not_before=now + timedelta(minutes=5))
        await session.commit()
        ids = {d.name: d.id for d in (busy, queued, backing_off)}

    listed = {
        d["name"]: d["waiting"]
        for d in (await client.get(f"/api/v1/deployments?organization_id={org.id}", headers=admin.headers)).json()["items"]
    }
    assert listed["busy"] is None
    assert listed["queued"] == {"reason": "target_capacity", "target_name": "local", "limit": 1, "deploying": 1, "until": None}
    assert listed["backing-off"]["reason"] == "retry_backoff" and listed["backing-off"]["until"]
    one = (await client.get(f"/api/v1/deployments/{ids['queued']}", headers=admin.headers)).json()
    assert one["waiting"]["reason"] == "target_capacity"

    async with database.AsyncSessionLocal() as session:  # the slot frees (its lease expired): nothing to wait for
        (await session.get(Deployment, ids["busy"])).lease_expires_at = now - timedelta(seconds=1)
        await session.commit()
    assert (await client.get(f"/api/v1/deployments/{ids['queued']}", headers=admin.headers)).json()["waiting"] is None
