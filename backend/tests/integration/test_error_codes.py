"""Every error a client may show carries a stable ``code`` and the ``params`` it quotes, so that the client
words it in its own language; history entries carry their reason's code and parameters likewise."""

from __future__ import annotations

import pytest

from backend.app import database
from backend.app.models import DeploymentStatus, Membership, Role
from backend.app.services.deployments import history_reasons
from backend.app.services.deployments.state_machine import claim_deployment, set_deployment_status
from backend.tests.factories import make_deployment
from backend.tests.helpers import add_member, create_user, default_org, setup_admin


async def test_a_422_names_each_fields_type_and_limits(client, db) -> None:
    admin = await setup_admin(client)
    response = await client.post("/api/v1/tokens", json={"name": "x" * 101}, headers=admin.headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["errors"] == [
        {"field": "name", "message": "String should have at most 100 characters", "type": "string_too_long", "params": {"max_length": 100}}
    ]
    missing = await client.post("/api/v1/tokens", json={}, headers=admin.headers)
    assert missing.json()["errors"][0]["type"] == "missing" and missing.json()["errors"][0]["params"] == {}


async def test_domain_errors_carry_specific_codes_and_their_params(client, db) -> None:
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    viewer = await create_user(client, admin, "viewer@example.com")
    await add_member(client, admin, org, viewer, "viewer")

    refused = await client.post(
        "/api/v1/stacks", json={"name": "s", "template": "services: {}\n", "organization_id": org}, headers=viewer.headers
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "role_required"
    assert refused.json()["params"] == {"minimum": "operator", "role": "viewer"}

    unknown = await client.post(
        f"/api/v1/organizations/{org}/members", json={"email": "nobody@example.com", "role": "viewer"}, headers=admin.headers
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "user_not_found" and unknown.json()["params"]["email"] == "nobody@example.com"

    again = await client.post(f"/api/v1/organizations/{org}/members", json={"email": viewer.email, "role": "viewer"}, headers=admin.headers)
    assert again.status_code == 409
    assert again.json() == {
        "detail": f"{viewer.email} is already a member; change their role with PATCH instead",
        "code": "already_member",
        "params": {"email": viewer.email},
    }

    not_superuser = await client.post("/api/v1/users", json={"email": "x@example.com", "password": "long-enough-1"}, headers=viewer.headers)
    assert not_superuser.json()["code"] == "superuser_required"
    assert "params" not in not_superuser.json()  # none to quote: the body stays {detail, code}


async def test_a_policy_refusal_names_the_options_that_would_allow_it(client, db) -> None:
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    target = await client.post(
        "/api/v1/targets", json={"name": "remote", "endpoint": "tcp://192.0.2.10:2376", "organization_id": org}, headers=admin.headers
    )
    stack = await client.post(
        "/api/v1/stacks",
        json={
            "name": "binds",
            "organization_id": org,
            "template": "services:\n  app:\n    image: busybox\n    volumes: ['/srv/data:/data']\n",
        },
        headers=admin.headers,
    )
    assert stack.status_code == 201, stack.text
    refused = await client.post(
        "/api/v1/deployments", json={"stack_id": stack.json()["id"], "target_id": target.json()["id"]}, headers=admin.headers
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "compose_policy_denied"
    assert refused.json()["params"] == {"rules": ["allow_host_binds"], "paths": ["services.app.volumes[0]"]}


@pytest.mark.parametrize("code", sorted(history_reasons.REASONS))
def test_every_reason_reads_back_as_its_code(code: str) -> None:
    sample = {"executor": "asyncio:abcd1234", "seconds": "2", "revision": "4", "of": "2", "failed": "3"}
    template = history_reasons.REASONS[code]
    params = {name: value for name, value in sample.items() if "{" + name + "}" in template}
    assert history_reasons.classify(history_reasons.text(code, **params)) == (code, params)


def test_a_free_form_reason_has_no_code() -> None:
    assert history_reasons.classify("something else") == (None, {})
    assert history_reasons.classify(None) == (None, {})


async def test_history_entries_carry_their_reason_code_and_hide_the_executors_host(client, db) -> None:
    admin = await setup_admin(client)
    viewer = await create_user(client, admin, "viewer@example.com")
    owner = "asyncio:build-host:4242:0badf00d"
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session)
        session.add(Membership(user_id=viewer.user_id, organization_id=deployment.organization_id, role=Role.VIEWER))
        assert (await claim_deployment(session, deployment_id=deployment.id, owner=owner, executor="asyncio")).accepted
        assert (
            await set_deployment_status(
                session,
                deployment_id=deployment.id,
                to_status=DeploymentStatus.PENDING,
                lease_owner=owner,
                actor=owner,
                reason=history_reasons.text("retry_scheduled", seconds="4"),
            )
        ).accepted
        await session.commit()
    history = (await client.get(f"/api/v1/deployments/{deployment.id}/history", headers=viewer.headers)).json()
    assert [(h["reason_code"], h["reason_params"]) for h in history] == [
        ("claimed", {"executor": "asyncio:0badf00d"}),
        ("retry_scheduled", {"seconds": "4"}),
    ]
    assert all("build-host" not in (h["reason"] or "") + (h["actor"] or "") for h in history), history
    assert history[0]["reason"] == "claimed by asyncio:0badf00d"
