"""Targets through the HTTP API: CRUD, validation, encrypted credentials, RBAC, conflicts, connection tests."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess

import pytest
from sqlalchemy import select, text

from backend.app.core.logging import redact
from backend.app.core.security import decrypt_secret
from backend.app.models import Deployment, Organization, Target
from backend.app.schemas.targets import TEST_FAILURE_MESSAGES, TestFailure
from backend.app.services.targets import compose_policy, target_service
from backend.tests.helpers import add_member, create_user, default_org, setup_admin
from backend.tests.remote_docker import client_tls_material, make_ca, make_leaf

API = "/api/v1/targets"


def _body_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM document (what would leak if any part of it leaked)."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def _assert_no_secret(text_: str, *secrets: str) -> None:
    for secret in secrets:
        for line in _body_lines(secret):
            assert line not in text_, "a credential leaked"


async def _tls_target(client, actor, name="remote", **extra):
    ca, cert = client_tls_material()
    body = {
        "name": name,
        "type": "docker",
        "endpoint": "tcp://192.0.2.10:2376",
        "tls_ca": ca,
        "tls_cert": cert.cert,
        "tls_key": cert.key,
        **extra,
    }
    response = await client.post(API, json=body, headers=actor.headers)
    assert response.status_code == 201, response.text
    return response.json(), ca, cert


# --- CRUD -----------------------------------------------------------------------------------------


async def test_crud_and_credentials_never_returned_nor_stored_in_clear(client, db, session):
    admin = await setup_admin(client)
    org_id = await default_org(client, admin)

    created, ca, cert = await _tls_target(client, admin, description="lab engine", max_concurrent_deployments=5)
    assert created["organization_id"] == org_id
    assert created["endpoint"] == "tcp://192.0.2.10:2376"
    assert created["has_tls"] is True and created["tls_verify"] is True and created["has_ssh_key"] is False
    assert created["max_concurrent_deployments"] == 5 and created["is_active"] is True
    assert not {"tls_ca", "tls_cert", "tls_key", "ssh_key", "credentials_encrypted"} & created.keys()

    one = await client.get(f"{API}/{created['id']}", headers=admin.headers)
    listed = await client.get(API, headers=admin.headers)
    renamed = await client.patch(f"{API}/{created['id']}", json={"name": "remote-2"}, headers=admin.headers)
    assert one.status_code == listed.status_code == renamed.status_code == 200
    assert one.json() == created
    assert renamed.json()["name"] == "remote-2" and renamed.json()["has_tls"] is True  # credentials kept
    assert renamed.json()["updated_at"] >= created["updated_at"]
    for response in (one, listed, renamed):
        _assert_no_secret(response.text, ca, cert.cert, cert.key)

    # In the database: only the encrypted JSON, which decrypts to the exact material.
    rows = (await session.execute(text("SELECT * FROM targets"))).all()
    _assert_no_secret(repr(rows), ca, cert.cert, cert.key)
    stored = (await session.execute(select(Target).where(Target.id == created["id"]))).scalar_one()
    assert json.loads(decrypt_secret(db.settings, stored.credentials_encrypted)) == {
        "tls_ca": ca,
        "tls_cert": cert.cert,
        "tls_key": cert.key,
    }
    await session.commit()  # end the read: on SQLite every transaction holds the write lock
    # Every line of the key is masked in server logs once the target has been read.
    for line in _body_lines(cert.key):
        assert line not in redact(f"engine said: {line}")

    gone = await client.delete(f"{API}/{created['id']}", headers=admin.headers)
    assert gone.status_code == 204
    assert (await client.get(f"{API}/{created['id']}", headers=admin.headers)).status_code == 404


async def test_update_replaces_or_clears_credentials_field_by_field(client, db, session):
    admin = await setup_admin(client)
    created, ca, cert = await _tls_target(client, admin)
    url = f"{API}/{created['id']}"

    # The endpoint cannot move to a unix socket while TLS material is kept...
    refused = await client.patch(url, json={"endpoint": "unix:///var/run/docker.sock"}, headers=admin.headers)
    assert refused.status_code == 422
    assert refused.json()["code"] == "credentials_mismatch"
    assert "only apply to tcp://" in refused.json()["detail"] and "null" in refused.json()["detail"]

    # ...nor can a certificate lose its key.
    half = await client.patch(url, json={"tls_key": None}, headers=admin.headers)
    assert half.status_code == 422 and "go together" in half.json()["detail"]

    # Clearing cert + key keeps the CA; tls_verify=false is stored too.
    cleared = await client.patch(url, json={"tls_cert": None, "tls_key": None, "tls_verify": False}, headers=admin.headers)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["has_tls"] is True and cleared.json()["tls_verify"] is False
    stored = await session.get(Target, created["id"])
    await session.refresh(stored)
    assert json.loads(decrypt_secret(db.settings, stored.credentials_encrypted)) == {"tls_ca": ca, "tls_verify": False}
    await session.commit()  # end the read: on SQLite every transaction holds the write lock

    # Moving to unix:// together with clearing the rest leaves no credentials at all.
    moved = await client.patch(
        url,
        json={"endpoint": "unix:///run/other.sock", "tls_ca": None, "tls_verify": None, "description": "moved"},
        headers=admin.headers,
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["has_tls"] is False and moved.json()["tls_verify"] is True
    assert moved.json()["endpoint"] == "unix:///run/other.sock" and moved.json()["description"] == "moved"
    await session.refresh(stored)
    assert stored.credentials_encrypted is None
    await session.commit()

    # An SSH target gets a key; replacing the endpoint keeps it.
    ssh_key = _ssh_private_key()
    ssh = await client.patch(url, json={"endpoint": "ssh://deploy@192.0.2.20:2222", "ssh_key": ssh_key}, headers=admin.headers)
    assert ssh.status_code == 200, ssh.text
    assert ssh.json()["has_ssh_key"] is True and ssh.json()["has_tls"] is False
    _assert_no_secret(ssh.text, ssh_key)
    again = await client.patch(url, json={"endpoint": "ssh://deploy@192.0.2.21"}, headers=admin.headers)
    assert again.status_code == 200 and again.json()["has_ssh_key"] is True

    null_name = await client.patch(url, json={"name": None}, headers=admin.headers)
    assert null_name.status_code == 422 and "name cannot be null" in null_name.json()["detail"]


def _ssh_private_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()


async def test_list_filters_and_pages(client):
    admin = await setup_admin(client)
    org_id = await default_org(client, admin)
    second = await client.post("/api/v1/organizations", json={"name": "beta"}, headers=admin.headers)
    beta = second.json()["id"]
    for name, type_, org in (("a-swarm", "swarm", org_id), ("b-docker", "docker", org_id), ("c-beta", "docker", beta)):
        response = await client.post(
            API,
            json={"name": name, "type": type_, "endpoint": "tcp://192.0.2.1:2375", "organization_id": org},
            headers=admin.headers,
        )
        assert response.status_code == 201, response.text

    swarm = (await client.get(API, params={"type": "swarm"}, headers=admin.headers)).json()
    assert [t["name"] for t in swarm["items"]] == ["a-swarm"] and swarm["total"] == 1
    in_beta = (await client.get(API, params={"organization_id": beta}, headers=admin.headers)).json()
    assert [t["name"] for t in in_beta["items"]] == ["c-beta"]
    page = (await client.get(API, params={"organization_id": org_id, "limit": 1, "offset": 1}, headers=admin.headers)).json()
    # the org also holds the "local" target created at setup when this machine has a Docker socket
    expected = sorted(["a-swarm", "b-docker"] + (["local"] if _has_local_socket() else []))
    assert page["total"] == len(expected) and [t["name"] for t in page["items"]] == [expected[1]]
    bad = await client.get(API, params={"type": "kubernetes"}, headers=admin.headers)
    assert bad.status_code == 422


def _has_local_socket() -> bool:
    from pathlib import Path

    return Path(target_service.LOCAL_DOCKER_SOCKET).exists()


# --- validation -----------------------------------------------------------------------------------

_CA, _CLIENT = client_tls_material()
_OTHER = make_leaf(make_ca("other"), "other", server=False)


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"endpoint": "tcp://192.0.2.1"}, "endpoint", "a tcp endpoint needs a port"),
        ({"endpoint": "tcp://192.0.2.1:0"}, "endpoint", "between 1 and 65535"),
        ({"endpoint": "tcp://192.0.2.1:70000"}, "endpoint", "malformed"),
        ({"endpoint": "192.0.2.1:2375"}, "endpoint", "has no scheme"),
        ({"endpoint": "http://192.0.2.1:2375"}, "endpoint", "unsupported endpoint scheme 'http'"),
        ({"endpoint": "unix://var/run/docker.sock"}, "endpoint", "absolute socket path"),
        ({"endpoint": "ssh://192.0.2.1"}, "endpoint", "an ssh endpoint needs a user"),
        ({"endpoint": "ssh://u:pw@192.0.2.1"}, "endpoint", "give the private key in ssh_key"),
        ({"endpoint": "unix:///var/run/docker.sock", "tls_ca": _CA}, "request", "only apply to tcp:// endpoints"),
        ({"endpoint": "ssh://u@192.0.2.1", "tls_verify": False}, "request", "only apply to tcp:// endpoints"),
        ({"endpoint": "tcp://192.0.2.1:2376", "tls_cert": _CLIENT.cert}, "request", "tls_cert and tls_key go together"),
        ({"endpoint": "tcp://192.0.2.1:2376", "tls_key": _CLIENT.key}, "request", "tls_cert and tls_key go together"),
        (
            {"endpoint": "tcp://192.0.2.1:2376", "tls_cert": _CLIENT.cert, "tls_key": _OTHER.key},
            "request",
            "tls_key is not the private key of tls_cert",
        ),
        ({"endpoint": "tcp://192.0.2.1:2376", "tls_ca": "not a certificate"}, "tls_ca", "tls_ca is not a PEM certificate"),
        (
            {"endpoint": "tcp://192.0.2.1:2376", "tls_cert": _CLIENT.key, "tls_key": _CLIENT.key},
            "tls_cert",
            "tls_cert is not a PEM certificate",
        ),
        (
            {"endpoint": "tcp://192.0.2.1:2376", "tls_cert": _CLIENT.cert, "tls_key": _CLIENT.cert},
            "tls_key",
            "tls_key is not a PEM private key",
        ),
        ({"endpoint": "tcp://192.0.2.1:2376", "ssh_key": "x" * 40}, "ssh_key", "ssh_key is not a private key"),
        (
            {"endpoint": "tcp://192.0.2.1:2376", "ssh_key": None, "max_concurrent_deployments": 0},
            "max_concurrent_deployments",
            "greater than or equal to 1",
        ),
        (
            {"endpoint": "tcp://192.0.2.1:2376", "max_concurrent_deployments": 101},
            "max_concurrent_deployments",
            "less than or equal to 100",
        ),
        ({"endpoint": "tcp://192.0.2.1:2376", "type": "kubernetes"}, "type", "'docker' or 'swarm'"),
        ({"endpoint": "tcp://192.0.2.1:2376", "password": "x"}, "password", "unknown field"),
        ({}, "endpoint", "field required"),
    ],
    ids=[
        "tcp-no-port",
        "tcp-port-0",
        "tcp-port-range",
        "no-scheme",
        "http-scheme",
        "unix-relative",
        "ssh-no-user",
        "ssh-password",
        "tls-on-unix",
        "tls-verify-on-ssh",
        "cert-without-key",
        "key-without-cert",
        "key-mismatch",
        "ca-garbage",
        "cert-is-a-key",
        "key-is-a-cert",
        "ssh-key-garbage",
        "max-0",
        "max-101",
        "bad-type",
        "unknown-field",
        "no-endpoint",
    ],
)
async def test_create_validation_says_what_to_fix(client, body, field, message):
    admin = await setup_admin(client)
    response = await client.post(API, json={"name": "t", **body}, headers=admin.headers)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["code"] == "validation_error"
    assert any(e["field"] == field and message in e["message"] for e in payload["errors"]), payload
    # the submitted key material is never echoed back
    _assert_no_secret(response.text, _CLIENT.key, _OTHER.key)


async def test_ssh_key_only_with_ssh_endpoint(client):
    admin = await setup_admin(client)
    key = _ssh_private_key()
    refused = await client.post(API, json={"name": "s", "endpoint": "tcp://192.0.2.1:2375", "ssh_key": key}, headers=admin.headers)
    assert refused.status_code == 422 and "ssh_key only applies to ssh://" in refused.json()["detail"]
    accepted = await client.post(API, json={"name": "s", "endpoint": "ssh://deploy@192.0.2.1", "ssh_key": key}, headers=admin.headers)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["has_ssh_key"] is True
    _assert_no_secret(accepted.text, key)


# --- RBAC and conflicts ---------------------------------------------------------------------------


async def test_roles_and_foreign_organizations(client):
    admin = await setup_admin(client)
    org_id = await default_org(client, admin)
    created, *_ = await _tls_target(client, admin)
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

    new = {"name": "n", "endpoint": "tcp://192.0.2.1:2375"}
    # viewers read, nothing else
    assert (await client.get(url, headers=viewer.headers)).status_code == 200
    assert created["id"] in [t["id"] for t in (await client.get(API, headers=viewer.headers)).json()["items"]]
    for response in (
        await client.post(API, json=new, headers=viewer.headers),
        await client.patch(url, json={"name": "x"}, headers=viewer.headers),
        await client.delete(url, headers=viewer.headers),
        await client.post(f"{url}/test", headers=viewer.headers),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "role_required" and "you are viewer" in response.json()["detail"]
        assert response.json()["params"]["role"] == "viewer"
    # operators may test but not change
    assert (await client.post(API, json=new, headers=operator.headers)).status_code == 403
    assert (await client.patch(url, json={"name": "x"}, headers=operator.headers)).status_code == 403
    # admins of the organisation manage targets
    made = await client.post(API, json=new, headers=org_admin.headers)
    assert made.status_code == 201 and made.json()["organization_id"] == org_id
    assert (await client.patch(url, json={"max_concurrent_deployments": 3}, headers=org_admin.headers)).status_code == 200
    assert (await client.delete(f"{API}/{made.json()['id']}", headers=org_admin.headers)).status_code == 204

    # another organisation's member sees nothing: 404 everywhere, never 403
    for response in (
        await client.get(url, headers=outsider.headers),
        await client.patch(url, json={"name": "x"}, headers=outsider.headers),
        await client.delete(url, headers=outsider.headers),
        await client.post(f"{url}/test", headers=outsider.headers),
        await client.get(API, params={"organization_id": org_id}, headers=outsider.headers),
        await client.post(API, json={**new, "organization_id": org_id}, headers=outsider.headers),
    ):
        assert response.status_code == 404, response.text
    assert (await client.get(API, headers=outsider.headers)).json() == {
        "items": [],
        "total": 0,
        "total_is_exact": True,
        "next_cursor": None,
    }
    assert (await client.get(f"{API}/no-such-id", headers=admin.headers)).status_code == 404
    assert (await client.get(API)).status_code == 401


async def test_policy_rules_list_what_every_target_refuses(client):
    """The always-refused keys come from the one table the policy checks with, for any member to read."""
    admin = await setup_admin(client)
    viewer = await create_user(client, admin, "viewer@example.com")
    await add_member(client, admin, await default_org(client, admin), viewer, "viewer")

    response = await client.get(f"{API}/policy-rules", headers=viewer.headers)
    assert response.status_code == 200, response.text
    listed = {rule["key"]: rule["reason"] for rule in response.json()["always_refused"]}
    assert listed == compose_policy.HOST_FILE_RULES
    assert {
        "include",
        "services.*.env_file",
        "services.*.build",
        "services.*.extends.file",
        "configs.*.file",
        "volumes.*.driver_opts",
    } <= listed.keys()

    # each listed key is refused, with the reason listed (a document breaking every rule at once)
    doc = {
        "include": ["other.yaml"],
        "services": {
            "app": {
                "image": "nginx",
                "env_file": ".env",
                "label_file": "labels",
                "build": ".",
                "develop": {"watch": []},
                "provider": {"type": "model"},
                "use_api_socket": True,
                "extends": {"file": "base.yaml", "service": "b"},
                "credential_spec": {"file": "spec.json"},
            }
        },
        "configs": {"c": {"file": "./c.conf", "environment": "C"}},
        "secrets": {"s": {"file": "./s.txt", "environment": "S"}},
        "volumes": {"v": {"driver_opts": {"type": "none", "o": "bind", "device": "/srv"}}},
    }
    refused = {}
    for violation in compose_policy.host_file_violations(doc):
        parts = violation.path.split(".")
        key = ".".join([parts[0], "*", *parts[2:]]) if len(parts) > 1 else parts[0]
        refused[key] = violation.reason
    assert refused == listed

    assert (await client.get(f"{API}/policy-rules")).status_code == 401


async def test_duplicate_names_and_targets_in_use_conflict(client, session):
    admin = await setup_admin(client)
    first = await client.post(API, json={"name": "dup", "endpoint": "tcp://192.0.2.1:2375"}, headers=admin.headers)
    second = await client.post(API, json={"name": "other", "endpoint": "tcp://192.0.2.2:2375"}, headers=admin.headers)
    assert first.status_code == second.status_code == 201

    again = await client.post(API, json={"name": "dup", "endpoint": "tcp://192.0.2.3:2375"}, headers=admin.headers)
    assert again.status_code == 409 and again.json()["code"] == "target_name_taken"
    assert "'dup' already exists" in again.json()["detail"]
    rename = await client.patch(f"{API}/{second.json()['id']}", json={"name": "dup"}, headers=admin.headers)
    assert rename.status_code == 409 and rename.json()["code"] == "target_name_taken"
    # the same name in another organisation is fine
    beta = (await client.post("/api/v1/organizations", json={"name": "beta"}, headers=admin.headers)).json()["id"]
    elsewhere = await client.post(
        API, json={"name": "dup", "endpoint": "tcp://192.0.2.3:2375", "organization_id": beta}, headers=admin.headers
    )
    assert elsewhere.status_code == 201

    target_id = first.json()["id"]
    deployment = Deployment(organization_id=first.json()["organization_id"], target_id=target_id, name="web-1")
    session.add(deployment)
    await session.commit()
    in_use = await client.delete(f"{API}/{target_id}", headers=admin.headers)
    assert in_use.status_code == 409 and in_use.json()["code"] == "target_in_use"
    assert "used by 1 deployment(s)" in in_use.json()["detail"]
    assert (await client.get(f"{API}/{target_id}", headers=admin.headers)).status_code == 200

    await session.delete(deployment)
    await session.commit()
    assert (await client.delete(f"{API}/{target_id}", headers=admin.headers)).status_code == 204


# --- the local target and connection tests --------------------------------------------------------


async def test_setup_creates_local_target_and_it_answers(client, docker_engine):
    admin = await setup_admin(client)
    listed = (await client.get(API, headers=admin.headers)).json()
    assert [(t["name"], t["type"], t["endpoint"]) for t in listed["items"]] == [("local", "docker", docker_engine)]

    expected = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}} {{.Swarm.ControlAvailable}}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout.split()
    result = await client.post(f"{API}/{listed['items'][0]['id']}/test", headers=admin.headers)
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["ok"] is True and body["error"] is None
    assert body["version"] == expected[0]
    assert body["swarm_manager"] is (expected[1] == "true")
    assert body["api_version"] and body["os"]


async def test_unreachable_engine_reports_the_error(client):
    admin = await setup_admin(client)
    made = await client.post(API, json={"name": "closed", "endpoint": "tcp://127.0.0.1:1"}, headers=admin.headers)
    result = await client.post(f"{API}/{made.json()['id']}/test", headers=admin.headers)
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["ok"] is False and body["version"] is None
    assert body["category"] == "unreachable"
    assert body["error"] == TEST_FAILURE_MESSAGES[TestFailure.UNREACHABLE]


async def test_engine_that_never_answers_times_out(db, session):
    """A port that accepts connections but never speaks: the test gives up after its timeout, no exception."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        org = Organization(name="silent")
        session.add(org)
        await session.flush()
        target = Target(organization_id=org.id, name="silent", type="docker", endpoint=f"tcp://127.0.0.1:{port}")
        session.add(target)
        await session.flush()
        started = asyncio.get_running_loop().time()
        result = await target_service.test_target(target, db.settings, timeout=1.0)
        elapsed = asyncio.get_running_loop().time() - started
    # Closing the listener resets the pending connection, so the driver's thread does not linger either.
    assert result.ok is False and result.category is TestFailure.UNREACHABLE, result
    assert result.error == TEST_FAILURE_MESSAGES[TestFailure.UNREACHABLE]
    assert elapsed < 5


async def test_ensure_local_target_only_for_an_existing_socket_and_an_empty_org(db, session, tmp_path):
    org = Organization(name="fresh")
    session.add(org)
    await session.flush()
    missing = tmp_path / "missing.sock"
    assert await target_service.ensure_local_target(session, organization_id=org.id, settings=db.settings, socket_path=str(missing)) is None

    sock_path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock_path))
        created = await target_service.ensure_local_target(
            session, organization_id=org.id, settings=db.settings, socket_path=str(sock_path)
        )
        assert created is not None
        assert (created.name, created.type, created.endpoint) == ("local", "docker", f"unix://{sock_path}")
        # the organisation has a target now: nothing more is created
        assert (
            await target_service.ensure_local_target(session, organization_id=org.id, settings=db.settings, socket_path=str(sock_path))
            is None
        )
    count = (await session.execute(select(Target).where(Target.organization_id == org.id))).scalars().all()
    assert len(count) == 1
