"""Scoped personal API tokens over HTTP: ``read``, ``deploy`` (of given stacks) and ``admin``, and a token limited
to one organisation; each refused outside its scope (403 ``token_scope``, or 404 for another organisation, as
for an outsider) and allowed inside, never beyond its owner's role. The WebSocket side is in
test_realtime_accounts.py."""

from __future__ import annotations

import pytest

from backend.app.models import Deployment, Stack, Target, TargetType
from backend.tests.helpers import add_member, create_user, default_org, setup_admin

TOKENS = "/api/v1/tokens"
MISSING = "00000000-0000-4000-8000-000000000000"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _token(client, actor, **body) -> dict:
    response = await client.post(TOKENS, json={"name": "ci", **body}, headers=actor.headers)
    assert response.status_code == 201, response.text
    return response.json()


def _scope_refused(response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "token_scope", response.text


async def _world(client, session):
    """An admin, their organisation ``acme`` (two stacks, a target, a pending deployment of each stack) and a
    second organisation ``beta`` with a stack."""
    admin = await setup_admin(client)
    acme = await default_org(client, admin)
    beta = (await client.post("/api/v1/organizations", json={"name": "beta"}, headers=admin.headers)).json()["id"]
    target = Target(organization_id=acme, name="engine", type=TargetType.DOCKER, endpoint="tcp://127.0.0.1:1")
    stack_a = Stack(organization_id=acme, name="a", template="services: {}\n", variables=[])
    stack_b = Stack(organization_id=acme, name="b", template="services: {}\n", variables=[])
    stack_beta = Stack(organization_id=beta, name="c", template="services: {}\n", variables=[])
    session.add_all([target, stack_a, stack_b, stack_beta])
    await session.flush()
    dep_a = Deployment(organization_id=acme, stack_id=stack_a.id, target_id=target.id, name="web-a")
    dep_b = Deployment(organization_id=acme, stack_id=stack_b.id, target_id=target.id, name="web-b")
    session.add_all([dep_a, dep_b])
    await session.commit()
    return admin, acme, beta, target.id, stack_a.id, stack_b.id, stack_beta.id, dep_a.id, dep_b.id


async def test_a_token_without_scopes_keeps_its_owner_rights_and_lists_its_limits(client, session):
    admin, acme, beta, *_ = await _world(client, session)
    full = await _token(client, admin)
    assert (full["scopes"], full["organization_id"], full["stack_ids"]) == (["admin"], None, None)
    renamed = await client.patch(f"/api/v1/organizations/{beta}", json={"name": "beta2"}, headers=_bearer(full["token"]))
    assert renamed.status_code == 200, renamed.text
    limited = await _token(client, admin, scopes=["read", "read"], organization_id=acme)
    listed = {t["id"]: t for t in (await client.get(TOKENS, headers=admin.headers)).json()["items"]}
    assert (listed[limited["id"]]["scopes"], listed[limited["id"]]["organization_id"]) == (["read"], acme)
    assert listed[full["id"]]["scopes"] == ["admin"]


async def test_creation_checks_the_organisation_and_the_stacks(client, session):
    admin, acme, beta, _target, stack_a, _b, stack_beta, *_ = await _world(client, session)
    outsider = await create_user(client, admin, "eve@example.com")

    async def refused(actor, body, code):
        response = await client.post(TOKENS, json={"name": "ci", **body}, headers=actor.headers)
        assert response.status_code == 422 and response.json()["code"] == code, response.text
        return response.json()

    await refused(outsider, {"organization_id": acme}, "token_organization_invalid")
    await refused(admin, {"organization_id": MISSING}, "token_organization_invalid")
    await refused(admin, {"scopes": ["deploy"], "stack_ids": [stack_a]}, "token_stacks_need_organization")
    await refused(admin, {"scopes": ["admin"], "organization_id": acme, "stack_ids": [stack_a]}, "token_stacks_need_deploy")
    body = await refused(admin, {"scopes": ["deploy"], "organization_id": acme, "stack_ids": [stack_a, stack_beta]}, "token_stack_invalid")
    assert body["params"]["stack_ids"] == [stack_beta] and stack_beta in body["detail"]
    unknown = await client.post(TOKENS, json={"name": "ci", "scopes": ["root"]}, headers=admin.headers)
    assert unknown.status_code == 422
    assert (await client.get(TOKENS, headers=admin.headers)).json()["total"] == 0


async def test_read_token_reads_and_changes_nothing(client, session):
    admin, acme, _beta, target, _a, _b, _c, dep_a, _dep_b = await _world(client, session)
    read = _bearer((await _token(client, admin, scopes=["read"]))["token"])
    assert (await client.get(f"/api/v1/deployments/{dep_a}", headers=read)).status_code == 200
    assert (await client.get("/api/v1/users", headers=read)).status_code == 200  # its owner is a superuser
    _scope_refused(await client.post(f"/api/v1/deployments/{dep_a}/stop", headers=read))
    _scope_refused(await client.patch(f"/api/v1/targets/{target}", json={"name": "x"}, headers=read))
    refused = await client.post("/api/v1/organizations", json={"name": "gamma"}, headers=read)
    _scope_refused(refused)
    assert "read" in refused.json()["detail"] and refused.json()["params"]["scopes"] == ["read"]
    _scope_refused(await client.post(TOKENS, json={"name": "more"}, headers=read))
    orgs = (await client.get("/api/v1/organizations", headers=admin.headers)).json()["items"]
    assert [o["name"] for o in orgs] == ["acme", "beta"]  # nothing was created


async def test_deploy_token_deploys_its_stacks_only(client, session):
    admin, acme, _beta, target, stack_a, stack_b, _c, dep_a, dep_b = await _world(client, session)
    deploy = _bearer((await _token(client, admin, scopes=["deploy"], organization_id=acme, stack_ids=[stack_a]))["token"])
    # inside its scope: past the token check, the route answers (a missing target, a refused transition, a cancel)
    created = await client.post("/api/v1/deployments", json={"stack_id": stack_a, "target_id": MISSING}, headers=deploy)
    assert created.status_code == 404 and created.json()["code"] == "target_not_found", created.text
    stopped = await client.post(f"/api/v1/deployments/{dep_a}/stop", headers=deploy)
    assert stopped.status_code == 409, stopped.text
    cancelled = await client.post(f"/api/v1/deployments/{dep_a}/cancel", headers=deploy)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert (await client.get(f"/api/v1/deployments/{dep_b}", headers=deploy)).status_code == 200  # it reads its organisation
    # outside: stack B, its deployments, and anything that is not a deployment
    _scope_refused(await client.post("/api/v1/deployments", json={"stack_id": stack_b, "target_id": target}, headers=deploy))
    for action in ("stop", "redeploy", "start", "cancel"):
        _scope_refused(await client.post(f"/api/v1/deployments/{dep_b}/{action}", headers=deploy))
    _scope_refused(await client.post(f"/api/v1/deployments/{dep_b}/revisions", json={"variables": {}}, headers=deploy))
    _scope_refused(await client.patch(f"/api/v1/targets/{target}", json={"name": "x"}, headers=deploy))
    _scope_refused(await client.patch(f"/api/v1/stacks/{stack_a}", json={"name": "x"}, headers=deploy))
    _scope_refused(await client.delete(f"/api/v1/deployments/{dep_a}", headers=deploy))
    still = (await client.get(f"/api/v1/deployments/{dep_b}", headers=admin.headers)).json()
    assert still["status"] == "pending"
    assert len((await client.get("/api/v1/deployments", headers=admin.headers)).json()["items"]) == 2  # none created


async def test_organisation_limited_token_sees_no_other_organisation(client, session):
    admin, acme, beta, _target, _a, _b, stack_beta, dep_a, _dep_b = await _world(client, session)
    token = await _token(client, admin, scopes=["admin"], organization_id=acme)
    limited = _bearer(token["token"])
    orgs = (await client.get("/api/v1/organizations", headers=limited)).json()
    assert [o["id"] for o in orgs["items"]] == [acme]
    assert (await client.get(f"/api/v1/organizations/{beta}", headers=limited)).json()["code"] == "organization_not_found"
    assert (await client.get(f"/api/v1/stacks/{stack_beta}", headers=limited)).status_code == 404
    stacks = (await client.get("/api/v1/stacks", headers=limited)).json()["items"]
    assert stack_beta not in {s["id"] for s in stacks} and len(stacks) == 2
    assert (await client.get("/api/v1/stacks", params={"organization_id": beta}, headers=limited)).status_code == 404
    assert (await client.patch(f"/api/v1/organizations/{beta}", json={"name": "x"}, headers=limited)).status_code == 404
    # its owner is a superuser: not through this token (platform routes), nor may it mint an unlimited token
    _scope_refused(await client.get("/api/v1/users", headers=limited))
    _scope_refused(await client.post(TOKENS, json={"name": "wider"}, headers=limited))
    # inside its organisation it has the owner's rights
    assert (await client.patch(f"/api/v1/organizations/{acme}", json={"name": "acme2"}, headers=limited)).status_code == 200
    assert (await client.get(f"/api/v1/deployments/{dep_a}", headers=limited)).status_code == 200


async def test_a_scope_never_widens_the_owner_role(client, session):
    admin, acme, *_rest, dep_a, _dep_b = await _world(client, session)
    viewer = await create_user(client, admin, "vic@example.com")
    await add_member(client, admin, acme, viewer, "viewer")
    token = _bearer((await _token(client, viewer, scopes=["admin"], organization_id=acme))["token"])
    refused = await client.post(f"/api/v1/deployments/{dep_a}/stop", headers=token)
    assert refused.status_code == 403 and refused.json()["code"] == "role_required", refused.text
    assert (await client.get("/api/v1/users", headers=token)).json()["code"] == "superuser_required"


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
async def test_audit_names_the_token_of_a_refused_call(client, session, db):
    admin, _acme, *_rest, dep_b = await _world(client, session)
    read = _bearer((await _token(client, admin, scopes=["read"]))["token"])
    _scope_refused(await client.post(f"/api/v1/deployments/{dep_b}/stop", headers=read))
    entries = (await client.get("/api/v1/audit", headers=admin.headers)).json()["items"]
    (entry,) = [e for e in entries if e["object_id"] == dep_b]
    assert entry["actor"]["kind"] == "token" and entry["outcome"] != "success", entry
