"""Registries through the HTTP API: CRUD, the encrypted password never returned, RBAC, 4xx for bad input, and
the login test against real registries (``docker-registry`` 2.8, one with htpasswd auth, one open)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select, text

from backend.app.core.image_reference import normalise_server, registry_of, split_reference
from backend.app.core.logging import redact
from backend.app.core.security import decrypt_secret
from backend.app.models import Registry
from backend.tests.helpers import add_member, create_user, default_org, setup_admin
from backend.tests.registry_fixtures import PASSWORD, USERNAME, open_registry, private_registry  # noqa: F401

API = "/api/v1/registries"
SECRET = "tok-9b1e-Very-Secret-Value"


async def _create(client, actor, **extra):
    body = {"name": "team", "server": "https://Registry.Example.com/v2/", "username": "bot", "password": SECRET, **extra}
    return await client.post(API, json=body, headers=actor.headers)


async def test_crud_password_stored_encrypted_and_never_returned(client, db, session, caplog):
    admin = await setup_admin(client)
    org_id = await default_org(client, admin)
    with caplog.at_level(logging.DEBUG):
        created = await _create(client, admin)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["server"] == "registry.example.com"  # normalised: no scheme, no /v2/, lower case
        assert body["organization_id"] == org_id and body["has_password"] is True and body["username"] == "bot"
        assert "password" not in body and "password_encrypted" not in body
        url = f"{API}/{body['id']}"
        one = await client.get(url, headers=admin.headers)
        listed = await client.get(API, headers=admin.headers)
        patched = await client.patch(url, json={"name": "team-2", "password": SECRET + "-new"}, headers=admin.headers)
        assert one.status_code == listed.status_code == patched.status_code == 200
        assert one.json() == body and [r["id"] for r in listed.json()["items"]] == [body["id"]]
        assert patched.json()["name"] == "team-2" and patched.json()["has_password"] is True
        for response in (created, one, listed, patched):
            assert SECRET not in response.text
    assert SECRET not in caplog.text
    rows = (await session.execute(text("SELECT * FROM registries"))).all()
    assert SECRET not in repr(rows)
    stored = (await session.execute(select(Registry).where(Registry.id == body["id"]))).scalar_one()
    assert decrypt_secret(db.settings, stored.password_encrypted) == SECRET + "-new"
    await session.commit()
    assert SECRET not in redact(f"registry said {SECRET}")  # registered with the redactor

    assert (await client.delete(url, headers=admin.headers)).status_code == 204
    assert (await client.get(url, headers=admin.headers)).status_code == 404


async def test_bad_input_is_4xx_never_500(client):
    admin = await setup_admin(client)
    ok = await _create(client, admin)
    assert ok.status_code == 201
    url = f"{API}/{ok.json()['id']}"
    for bad in (
        {"server": "registry.example.com/some/path"},
        {"server": "http://"},
        {"server": "bad host:5000"},
        {"server": "host:99999"},
        {"server": "a\x00b"},
        {"name": ""},
        {"name": "x" * 101},
        {"password": ""},
        {"username": None},
        {"unknown": 1},
        {"server": "x" * 300},
    ):
        response = await _create(client, admin, **{"name": "other", **bad})
        assert response.status_code == 422, (bad, response.text)
        assert SECRET not in response.text
    for bad in ({"name": None}, {"server": "with space"}, {"password": None}, {"extra": True}):
        assert (await client.patch(url, json=bad, headers=admin.headers)).status_code == 422, bad
    # the same name or server twice in an organisation: 409 saying which
    same_name = await _create(client, admin, server="ghcr.io")
    same_server = await _create(client, admin, name="other", server="registry.example.com")
    assert same_name.status_code == same_server.status_code == 409
    assert same_name.json()["code"] == "registry_name_taken" and same_server.json()["code"] == "registry_server_taken"
    second = await _create(client, admin, name="hub", server="index.docker.io")
    assert second.status_code == 201 and second.json()["server"] == "docker.io"
    clash = await client.patch(f"{API}/{second.json()['id']}", json={"server": "registry.example.com"}, headers=admin.headers)
    assert clash.status_code == 409
    for path in ("/no-such-id", "/bad%20id", "/" + "x" * 80):
        assert (await client.get(API + path, headers=admin.headers)).status_code in (404, 422)
    assert (await client.get(API, params={"limit": 0}, headers=admin.headers)).status_code == 422
    assert (await client.get(API)).status_code == 401


async def test_roles_and_foreign_organizations(client):
    admin = await setup_admin(client)
    org_id = await default_org(client, admin)
    created = (await _create(client, admin, server="127.0.0.1:1")).json()
    url = f"{API}/{created['id']}"
    viewer = await create_user(client, admin, "viewer@example.com")
    operator = await create_user(client, admin, "operator@example.com")
    org_admin = await create_user(client, admin, "orgadmin@example.com")
    outsider = await create_user(client, admin, "outsider@example.com")
    await add_member(client, admin, org_id, viewer, "viewer")
    await add_member(client, admin, org_id, operator, "operator")
    await add_member(client, admin, org_id, org_admin, "admin")
    other = await client.post("/api/v1/organizations", json={"name": "elsewhere"}, headers=admin.headers)
    await add_member(client, admin, other.json()["id"], outsider, "owner")

    new = {"name": "n", "server": "ghcr.io", "username": "u", "password": "p-secret"}
    assert (await client.get(url, headers=viewer.headers)).status_code == 200
    for response in (
        await client.post(API, json=new, headers=viewer.headers),
        await client.patch(url, json={"name": "x"}, headers=viewer.headers),
        await client.delete(url, headers=viewer.headers),
        await client.post(f"{url}/test", headers=viewer.headers),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "role_required"
    # operators use (test) but do not manage
    assert (await client.post(API, json=new, headers=operator.headers)).status_code == 403
    assert (await client.patch(url, json={"name": "x"}, headers=operator.headers)).status_code == 403
    assert (await client.delete(url, headers=operator.headers)).status_code == 403
    tested = await client.post(f"{url}/test", headers=operator.headers)
    assert tested.status_code == 200 and tested.json()["category"] == "unreachable" and tested.json()["ok"] is False
    made = await client.post(API, json=new, headers=org_admin.headers)
    assert made.status_code == 201 and made.json()["organization_id"] == org_id
    assert (await client.patch(f"{API}/{made.json()['id']}", json={"username": "v"}, headers=org_admin.headers)).status_code == 200
    assert (await client.delete(f"{API}/{made.json()['id']}", headers=org_admin.headers)).status_code == 204
    for response in (
        await client.get(url, headers=outsider.headers),
        await client.patch(url, json={"name": "x"}, headers=outsider.headers),
        await client.delete(url, headers=outsider.headers),
        await client.post(f"{url}/test", headers=outsider.headers),
        await client.get(API, params={"organization_id": org_id}, headers=outsider.headers),
        await client.post(API, json={**new, "organization_id": org_id}, headers=outsider.headers),
    ):
        assert response.status_code == 404, response.text
    assert (await client.get(API, headers=outsider.headers)).json()["items"] == []


async def test_login_test_against_real_registries(client, private_registry, open_registry):
    admin = await setup_admin(client)
    cases = [
        ("good", private_registry.server, USERNAME, PASSWORD, True, "ok"),
        ("wrong", private_registry.server, USERNAME, "wrong-password", False, "authentication"),
        ("open", open_registry.server, "anyone", "anything", True, "ok"),
    ]
    for name, server, username, password, ok, category in cases:
        # one organisation per server (a server is unique in an organisation)
        org = await client.post("/api/v1/organizations", json={"name": f"org-{name}"}, headers=admin.headers)
        created = await client.post(
            API,
            json={"name": name, "server": server, "username": username, "password": password, "organization_id": org.json()["id"]},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text
        result = await client.post(f"{API}/{created.json()['id']}/test", headers=admin.headers)
        assert result.status_code == 200
        assert (result.json()["ok"], result.json()["category"]) == (ok, category), (name, result.json())
        assert password not in result.text


def test_references():
    assert registry_of("busybox") == registry_of("library/busybox:1") == registry_of("docker.io/x/y") == "docker.io"
    assert registry_of("127.0.0.1:5000/team/api:1.4") == "127.0.0.1:5000"
    assert registry_of("Registry.Example.com/team/api@sha256:" + "a" * 64) == "registry.example.com"
    assert registry_of("localhost/x") == "localhost"
    assert split_reference("127.0.0.1:5000/team/api") == ("127.0.0.1:5000/team/api", "latest", None)
    assert split_reference("a/b:1.4") == ("a/b", "1.4", None)
    assert split_reference("a/b@sha256:ff") == ("a/b", None, "sha256:ff")
    assert normalise_server("HTTP://localhost:5000/") == "localhost:5000"
    with pytest.raises(ValueError):
        normalise_server("ftp://x/y")
