"""Organisations, members and RBAC over HTTP.

Users other than the first superuser are inserted directly with a precomputed password hash and get a
real access token from ``core.security`` (login is covered in test_auth): argon2 costs ~150 ms a call and
these tests need many users.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from backend.app.core import security
from backend.app.database import utcnow
from backend.app.models import Membership, Organization, User
from backend.tests.helpers import Actor, add_member, create_user, default_org, setup_admin

ORGS = "/api/v1/organizations"
_PASSWORD = "member-password-1"
_HASH = security.hash_password(_PASSWORD)


async def make_user(db, app, email: str, *, superuser: bool = False) -> Actor:
    async with db.engine.begin() as conn:
        user_id = (
            await conn.execute(
                User.__table__.insert()
                .values(
                    id=str(uuid.uuid4()),
                    email=email,
                    hashed_password=_HASH,
                    is_active=True,
                    is_superuser=superuser,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
                .returning(User.id)
            )
        ).scalar_one()
    token = security.create_access_token(app.state.settings, user_id).token
    return Actor(email, _PASSWORD, token, "", user_id)


async def memberships(db, org_id: str) -> dict[str, str]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(Membership.user_id, Membership.role).where(Membership.organization_id == org_id))).all()
    return {user_id: str(role) for user_id, role in rows}


@dataclass
class World:
    admin: Actor  # platform superuser, owner of "alpha" (created at setup) and "beta"
    alpha: str
    beta: str
    owner: Actor
    org_admin: Actor
    operator: Actor
    viewer: Actor
    outsider: Actor  # viewer of beta only


@pytest.fixture
async def world(client, db, app) -> World:
    admin = await setup_admin(client, organization_name="alpha")
    alpha = (await client.get("/api/v1/auth/me", headers=admin.headers)).json()["default_organization_id"]
    beta = await client.post(ORGS, json={"name": "beta"}, headers=admin.headers)
    assert beta.status_code == 201, beta.text
    actors = {}
    for role in ("owner", "admin", "operator", "viewer", "outsider"):
        actors[role] = await make_user(db, app, "org-admin@example.com" if role == "admin" else f"{role}@example.com")
    for role in ("owner", "admin", "operator", "viewer"):
        added = await client.post(f"{ORGS}/{alpha}/members", json={"user_id": actors[role].user_id, "role": role}, headers=admin.headers)
        assert added.status_code == 201, added.text
    added = await client.post(
        f"{ORGS}/{beta.json()['id']}/members", json={"email": "outsider@example.com", "role": "viewer"}, headers=admin.headers
    )
    assert added.status_code == 201, added.text
    return World(
        admin, alpha, beta.json()["id"], actors["owner"], actors["admin"], actors["operator"], actors["viewer"], actors["outsider"]
    )


# --- creating organisations ----------------------------------------------------------------------


async def test_superuser_creates_org_and_becomes_owner(client, db):
    admin = await setup_admin(client)
    response = await client.post(ORGS, json={"name": "  Platform Team ", "description": "ops"}, headers=admin.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Platform Team" and body["description"] == "ops" and body["role"] == "owner"
    assert await memberships(db, body["id"]) == {admin.user_id: "owner"}

    duplicate = await client.post(ORGS, json={"name": "Platform Team"}, headers=admin.headers)
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "organization_exists"
    assert "Platform Team" in duplicate.json()["detail"] and "another name" in duplicate.json()["detail"]
    async with db.engine.connect() as conn:
        names = (await conn.execute(select(Organization.name))).scalars().all()
    assert sorted(names) == ["Platform Team", "acme"]


async def test_non_superuser_cannot_create_org(client, db, app):
    await setup_admin(client)
    bob = await make_user(db, app, "bob@example.com")
    response = await client.post(ORGS, json={"name": "mine"}, headers=bob.headers)
    assert response.status_code == 403
    assert response.json()["code"] == "superuser_required"
    assert "superuser" in response.json()["detail"]
    async with db.engine.connect() as conn:
        assert (await conn.execute(select(Organization).where(Organization.name == "mine"))).first() is None


async def test_org_requires_authentication(client):
    response = await client.get(ORGS)
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"


# --- members ---------------------------------------------------------------------------------------


async def test_members_added_by_email_or_id_with_roles(client, world, db):
    listed = await client.get(f"{ORGS}/{world.alpha}/members", headers=world.viewer.headers)
    assert listed.status_code == 200
    roles = {m["email"]: m["role"] for m in listed.json()["items"]}
    assert roles == {
        "admin@example.com": "owner",
        "owner@example.com": "owner",
        "org-admin@example.com": "admin",
        "operator@example.com": "operator",
        "viewer@example.com": "viewer",
    }
    expected = {
        world.admin.user_id: "owner",
        world.owner.user_id: "owner",
        world.org_admin.user_id: "admin",
        world.operator.user_id: "operator",
        world.viewer.user_id: "viewer",
    }
    assert await memberships(db, world.alpha) == expected
    assert listed.json()["total"] == 5

    # by email, mixed case: an org admin adds the outsider as operator
    response = await client.post(
        f"{ORGS}/{world.alpha}/members",
        json={"email": "OUTSIDER@Example.com", "role": "operator"},
        headers=world.org_admin.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["user_id"] == world.outsider.user_id and response.json()["role"] == "operator"
    assert (await memberships(db, world.alpha))[world.outsider.user_id] == "operator"

    again = await client.post(
        f"{ORGS}/{world.alpha}/members",
        json={"user_id": world.outsider.user_id, "role": "viewer"},
        headers=world.org_admin.headers,
    )
    assert again.status_code == 409 and "already a member" in again.json()["detail"]
    assert (await memberships(db, world.alpha))[world.outsider.user_id] == "operator"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"email": "ghost@example.com", "role": "viewer"}, id="unknown-email"),
        pytest.param({"user_id": "00000000-0000-4000-8000-000000000000", "role": "viewer"}, id="unknown-id"),
    ],
)
async def test_add_unknown_user_404(client, world, body):
    response = await client.post(f"{ORGS}/{world.alpha}/members", json=body, headers=world.admin.headers)
    assert response.status_code == 404
    assert response.json()["code"] == "user_not_found"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"role": "viewer"}, id="neither"),
        pytest.param({"user_id": "x", "email": "x@example.com", "role": "viewer"}, id="both"),
        pytest.param({"user_id": None, "email": None, "role": "viewer"}, id="both-null"),
        pytest.param({"email": "x@example.com"}, id="no-role"),
        pytest.param({"email": "x@example.com", "role": "superuser"}, id="bad-role"),
        pytest.param({"email": "not-an-email", "role": "viewer"}, id="bad-email"),
    ],
)
async def test_member_create_validation_422(client, world, body, db):
    before = await memberships(db, world.alpha)
    response = await client.post(f"{ORGS}/{world.alpha}/members", json=body, headers=world.admin.headers)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["code"] == "validation_error"
    if "role" not in body or body.get("role") == "superuser":
        assert "role" in payload["detail"]
    elif body.get("email") == "not-an-email":
        assert payload["detail"].startswith("email: ")
    else:
        assert "exactly one of user_id or email" in payload["detail"]
    assert await memberships(db, world.alpha) == before


async def test_admin_cannot_grant_or_touch_ownership(client, world, db):
    before = await memberships(db, world.alpha)
    url = f"{ORGS}/{world.alpha}/members"
    grant = await client.post(url, json={"user_id": world.outsider.user_id, "role": "owner"}, headers=world.org_admin.headers)
    assert grant.status_code == 403 and "owner" in grant.json()["detail"]
    promote = await client.patch(f"{url}/{world.viewer.user_id}", json={"role": "owner"}, headers=world.org_admin.headers)
    assert promote.status_code == 403
    demote = await client.patch(f"{url}/{world.owner.user_id}", json={"role": "viewer"}, headers=world.org_admin.headers)
    assert demote.status_code == 403
    remove = await client.delete(f"{url}/{world.owner.user_id}", headers=world.org_admin.headers)
    assert remove.status_code == 403
    assert await memberships(db, world.alpha) == before

    # within their reach an admin manages members
    ok = await client.patch(f"{url}/{world.viewer.user_id}", json={"role": "operator"}, headers=world.org_admin.headers)
    assert ok.status_code == 200 and ok.json()["role"] == "operator"
    gone = await client.delete(f"{url}/{world.operator.user_id}", headers=world.org_admin.headers)
    assert gone.status_code == 204
    after = await memberships(db, world.alpha)
    assert after[world.viewer.user_id] == "operator" and world.operator.user_id not in after


async def test_owner_grants_ownership(client, world, db):
    response = await client.post(
        f"{ORGS}/{world.alpha}/members",
        json={"user_id": world.outsider.user_id, "role": "owner"},
        headers=world.owner.headers,
    )
    assert response.status_code == 201, response.text
    assert (await memberships(db, world.alpha))[world.outsider.user_id] == "owner"


async def test_last_owner_cannot_be_removed_or_demoted(client, world, db):
    url = f"{ORGS}/{world.alpha}/members"
    # two owners: one may step down
    stepped_down = await client.patch(f"{url}/{world.admin.user_id}", json={"role": "admin"}, headers=world.owner.headers)
    assert stepped_down.status_code == 200, stepped_down.text
    # now `owner` is the last one
    for response in (
        await client.patch(f"{url}/{world.owner.user_id}", json={"role": "admin"}, headers=world.owner.headers),
        await client.delete(f"{url}/{world.owner.user_id}", headers=world.owner.headers),
        await client.delete(f"{url}/{world.owner.user_id}", headers=world.admin.headers),  # superuser too
    ):
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "last_owner"
        assert "owner" in response.json()["detail"]
    assert (await memberships(db, world.alpha))[world.owner.user_id] == "owner"
    # re-affirming the last owner's role is not a demotion
    same = await client.patch(f"{url}/{world.owner.user_id}", json={"role": "owner"}, headers=world.owner.headers)
    assert same.status_code == 200


async def test_member_not_found(client, world):
    url = f"{ORGS}/{world.alpha}/members/{world.outsider.user_id}"
    for response in (
        await client.patch(url, json={"role": "viewer"}, headers=world.admin.headers),
        await client.delete(url, headers=world.admin.headers),
    ):
        assert response.status_code == 404 and response.json()["code"] == "member_not_found"


# --- isolation and roles ---------------------------------------------------------------------------


async def test_outsider_gets_404_for_another_org(client, world, db):
    before = await memberships(db, world.alpha)
    h = world.outsider.headers
    url = f"{ORGS}/{world.alpha}"
    responses = {
        "get": await client.get(url, headers=h),
        "patch": await client.patch(url, json={"name": "hijacked"}, headers=h),
        "delete": await client.delete(url, headers=h),
        "members": await client.get(f"{url}/members", headers=h),
        "add": await client.post(f"{url}/members", json={"user_id": world.outsider.user_id, "role": "owner"}, headers=h),
        "role": await client.patch(f"{url}/members/{world.viewer.user_id}", json={"role": "owner"}, headers=h),
        "remove": await client.delete(f"{url}/members/{world.viewer.user_id}", headers=h),
    }
    for name, response in responses.items():
        assert response.status_code == 404, (name, response.text)
        assert response.json() == {"detail": "organization not found", "code": "organization_not_found"}, name
    assert await memberships(db, world.alpha) == before
    # the same answer as for an organisation that does not exist at all
    missing = await client.get(f"{ORGS}/00000000-0000-4000-8000-000000000000", headers=h)
    assert missing.json() == responses["get"].json()
    # and the listing shows only their own organisation
    listed = (await client.get(ORGS, headers=h)).json()
    assert [(o["id"], o["role"]) for o in listed["items"]] == [(world.beta, "viewer")] and listed["total"] == 1
    own = await client.get(f"{ORGS}/{world.beta}", headers=h)
    assert own.status_code == 200 and own.json()["role"] == "viewer"


@pytest.mark.parametrize("who", ["viewer", "operator"])
async def test_viewer_and_operator_cannot_manage(client, world, db, who):
    actor = getattr(world, who)
    url = f"{ORGS}/{world.alpha}"
    before = await memberships(db, world.alpha)
    responses = [
        await client.post(f"{url}/members", json={"user_id": world.outsider.user_id, "role": "viewer"}, headers=actor.headers),
        await client.patch(f"{url}/members/{world.viewer.user_id}", json={"role": "operator"}, headers=actor.headers),
        await client.delete(f"{url}/members/{world.viewer.user_id}", headers=actor.headers),
        await client.patch(url, json={"name": "renamed"}, headers=actor.headers),
        await client.delete(url, headers=actor.headers),
    ]
    for response in responses:
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "role_required"
        assert f"you are {who}" in response.json()["detail"]
    assert await memberships(db, world.alpha) == before
    org = await client.get(url, headers=actor.headers)
    assert org.status_code == 200 and org.json()["name"] == "alpha" and org.json()["role"] == who
    assert (await client.get(f"{url}/members", headers=actor.headers)).status_code == 200


async def test_admin_updates_org(client, world, db):
    url = f"{ORGS}/{world.alpha}"
    response = await client.patch(url, json={"description": "the first team"}, headers=world.org_admin.headers)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "alpha" and response.json()["description"] == "the first team"
    renamed = await client.patch(url, json={"name": "gamma"}, headers=world.org_admin.headers)
    assert renamed.status_code == 200 and renamed.json()["name"] == "gamma"
    clash = await client.patch(url, json={"name": "beta"}, headers=world.org_admin.headers)
    assert clash.status_code == 409 and "beta" in clash.json()["detail"]
    null = await client.patch(url, json={"name": None}, headers=world.org_admin.headers)
    assert null.status_code == 422 and "name" in null.json()["detail"]
    cleared = await client.patch(url, json={"description": None}, headers=world.org_admin.headers)
    assert cleared.status_code == 200 and cleared.json()["description"] is None
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(Organization.name, Organization.description).where(Organization.id == world.alpha))).one()
    assert tuple(row) == ("gamma", None)


async def test_only_superuser_deletes_org(client, world, db):
    url = f"{ORGS}/{world.alpha}"
    refused = await client.delete(url, headers=world.owner.headers)
    assert refused.status_code == 403
    deleted = await client.delete(url, headers=world.admin.headers)
    assert deleted.status_code == 204
    assert (await client.get(url, headers=world.admin.headers)).status_code == 404
    assert (await client.get(url, headers=world.owner.headers)).status_code == 404
    assert await memberships(db, world.alpha) == {}
    async with db.engine.connect() as conn:  # users survive their organisation
        assert (await conn.execute(select(User.id).where(User.id == world.owner.user_id))).first() is not None


# --- pagination --------------------------------------------------------------------------------------


async def test_organization_pagination(client, db):
    admin = await setup_admin(client, organization_name="org-0")
    for i in range(1, 5):
        assert (await client.post(ORGS, json={"name": f"org-{i}"}, headers=admin.headers)).status_code == 201
    pages = []
    for offset in (0, 2, 4):
        response = await client.get(ORGS, params={"offset": offset, "limit": 2}, headers=admin.headers)
        assert response.status_code == 200
        assert response.json()["total"] == 5
        pages.append([o["name"] for o in response.json()["items"]])
    assert pages == [["org-0", "org-1"], ["org-2", "org-3"], ["org-4"]]
    beyond = await client.get(ORGS, params={"offset": 10}, headers=admin.headers)
    assert beyond.json() == {"items": [], "total": 5, "total_is_exact": True, "next_cursor": None}


async def test_member_pagination(client, world):
    url = f"{ORGS}/{world.alpha}/members"
    seen = []
    for offset in range(0, 5, 2):
        response = await client.get(url, params={"offset": offset, "limit": 2}, headers=world.viewer.headers)
        assert response.status_code == 200 and response.json()["total"] == 5
        seen += [m["user_id"] for m in response.json()["items"]]
    assert sorted(seen) == sorted(
        [world.admin.user_id, world.owner.user_id, world.org_admin.user_id, world.operator.user_id, world.viewer.user_id]
    )


async def test_pagination_bounds_422(client):
    admin = await setup_admin(client)
    org = (await client.get("/api/v1/auth/me", headers=admin.headers)).json()["default_organization_id"]
    cases = [({"limit": 0}, "limit"), ({"limit": 1000}, "limit"), ({"limit": "ten"}, "limit"), ({"offset": -1}, "offset")]
    for url in (ORGS, f"{ORGS}/{org}/members", "/api/v1/users"):
        for params, field in cases:
            response = await client.get(url, params=params, headers=admin.headers)
            assert response.status_code == 422, (url, params, response.text)
            assert response.json()["code"] == "validation_error"
            assert response.json()["detail"].startswith(f"{field}: "), response.json()
        assert (await client.get(url, params={"limit": 200}, headers=admin.headers)).status_code == 200


async def test_a_creation_without_organization_id_goes_to_the_default_organisation_with_its_role(client):
    """The default organisation (the oldest membership) and the role there come from one row: a viewer there is
    refused even when they operate elsewhere, an operator goes on to the next check, a user of no organisation
    is told to name one; a superuser owns their default organisation."""
    admin = await setup_admin(client)
    acme = await default_org(client, admin)
    other = (await client.post("/api/v1/organizations", json={"name": "other"}, headers=admin.headers)).json()["id"]
    vera = await create_user(client, admin, "vera@example.com")
    otto = await create_user(client, admin, "otto@example.com")
    nobody = await create_user(client, admin, "nobody@example.com")
    await add_member(client, admin, acme, vera, "viewer")
    await add_member(client, admin, other, vera, "operator")
    await add_member(client, admin, acme, otto, "operator")
    body = {"stack_id": str(uuid.uuid4()), "target_id": str(uuid.uuid4())}

    async def create(actor: Actor, **extra) -> tuple[int, str]:
        response = await client.post("/api/v1/deployments", json=body | extra, headers=actor.headers)
        return response.status_code, response.json()["code"]

    assert await create(vera) == (403, "role_required")
    assert await create(vera, organization_id=other) == (404, "stack_not_found")
    assert await create(otto) == (404, "stack_not_found")
    assert await create(admin) == (404, "stack_not_found")
    assert await create(nobody) == (422, "no_organization")
