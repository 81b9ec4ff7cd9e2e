"""The OpenAPI document says every status each operation answers, with the error model and its codes.

Generic over ``app.routes`` (a new route is covered without touching this file): every operation is checked in
the document, then sent real requests that provoke its errors (no credential, unknown ids, a weaker role,
unreadable and oversized bodies), and every answer's status and ``code`` must be documented for that
operation. Then the domain errors the sweep cannot reach by itself (duplicates, refused transitions, last
owner, ...) are provoked one by one and checked the same way.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import jsonschema_rs
import pytest

from backend.app.api import deps
from backend.app.api.responses import ERROR_CODES_KEY, api_routes
from backend.app.models import DeploymentStatus, Membership, Role
from backend.app.schemas.targets import CREDENTIAL_RULES, ENDPOINT_PATTERN, TargetCreate
from backend.app.services import pagination
from backend.tests.factories import make_deployment
from backend.tests.helpers import ADMIN_PASSWORD, add_member, create_user, default_org, setup_admin

UNKNOWN = str(uuid.uuid4())
PARAM = re.compile(r"{([^}]+)}")


def _calls(dependant):
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _operations(app) -> list[tuple[str, str, Any]]:
    return sorted((route.path_format, method, route) for route in api_routes(app.routes) for method in route.methods)


class Documented:
    """Checks answers against the document and keeps what it saw."""

    def __init__(self, schema: dict) -> None:
        self.paths = schema["paths"]
        self.seen: list[tuple[str, str, int, str | None]] = []
        self.problems: list[str] = []

    def assert_all_documented(self) -> None:
        assert not self.problems, "\n".join(self.problems)

    def check(self, method: str, template: str, response: httpx.Response) -> httpx.Response:
        operation = self.paths[template][method.lower()]
        status = response.status_code
        code = None
        if status >= 400 and response.headers.get("content-type", "").startswith("application/json"):
            code = response.json().get("code")
        self.seen.append((method, template, status, code))
        where = f"{method} {template} answered {status} {code or ''}: {response.text[:200]}"
        documented = operation["responses"].get(str(status))
        if documented is None:
            self.problems.append(f"undocumented status: {where}")
        elif status >= 400 and code not in documented.get(ERROR_CODES_KEY, []):
            self.problems.append(f"undocumented code: {where} (documented: {documented.get(ERROR_CODES_KEY)})")
        return response


@pytest.fixture
def document(app) -> dict:
    return app.openapi()


def test_every_operation_documents_its_errors_with_the_error_model(app, document) -> None:
    operations = _operations(app)
    assert len(operations) > 50
    for template, method, route in operations:
        responses = document["paths"][template][method.lower()]["responses"]
        where = f"{method} {template}"
        calls = set(_calls(route.dependant))
        expected = set()
        if deps.get_current_user in calls:
            expected.add("401")
        if deps.get_session in calls:
            expected.add("503")
        if PARAM.search(template):
            expected |= {"404", "422"}
        if route.dependant.body_params or any(getattr(d, "body_params", None) for d in route.dependant.dependencies):
            expected |= {"400", "413", "422"}
        assert expected <= set(responses), f"{where} does not document {sorted(expected - set(responses))}"
        for status, response in responses.items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            model = "HTTPValidationError" if status == "422" else "ErrorBody"
            assert schema == {"$ref": f"#/components/schemas/{model}"}, f"{where} {status}: {schema}"
            codes = response[ERROR_CODES_KEY]
            assert codes and all(f"`{c}`" in response["description"] for c in codes), f"{where} {status}"
    body = document["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"detail", "code"}


def test_the_schema_states_the_rules_the_api_enforces(document) -> None:
    schemas = document["components"]["schemas"]
    endpoint = schemas["TargetCreate"]["properties"]["endpoint"]
    assert endpoint["pattern"] == ENDPOINT_PATTERN
    for good in ("unix:///var/run/docker.sock", "tcp://10.0.0.2:2376", "ssh://deploy@host:2222"):
        assert re.match(endpoint["pattern"], good)
    for bad in ("http://host:2375", "tcp://host", "unix://relative", "docker.sock"):
        assert not re.match(endpoint["pattern"], bad)
    assert schemas["TargetCreate"]["allOf"] == CREDENTIAL_RULES["allOf"]
    target = jsonschema_rs.validator_for(TargetCreate.model_json_schema())
    for body, valid in (
        ({"endpoint": "tcp://h:2376", "tls_ca": "pem"}, True),
        ({"endpoint": "unix:///var/run/docker.sock", "tls_ca": "pem"}, False),
        ({"endpoint": "unix:///var/run/docker.sock", "tls_verify": False}, False),
        ({"endpoint": "ssh://deploy@h", "ssh_key": "pem"}, True),
        ({"endpoint": "tcp://h:2376", "ssh_key": "pem"}, False),
        ({"endpoint": "tcp://h:2376", "tls_cert": "pem"}, False),
        ({"endpoint": "tcp://h:2376", "tls_cert": "pem", "tls_key": "pem"}, True),
        ({"endpoint": "unix:///var/run/docker.sock", "tls_ca": None}, True),
    ):
        assert target.is_valid({"name": "t", **body}) is valid, body
    member = schemas["MemberCreate"]
    assert [branch["required"] for branch in member["oneOf"]] == [["user_id"], ["email"]]
    offsets = [
        parameter["schema"]
        for path in document["paths"].values()
        for operation in path.values()
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "offset"
    ]
    assert len(offsets) >= 8 and all(o["maximum"] == pagination.MAX_OFFSET for o in offsets)


def _fill(template: str, ids: dict[str, str]) -> str:
    return PARAM.sub(lambda m: ids.get(m.group(1), UNKNOWN), template)


async def _send(client: httpx.AsyncClient, method: str, url: str, headers: dict | None = None, **kw) -> httpx.Response:
    if url.endswith("/events") and method == "GET":  # a stream: only its first answer matters
        async with client.stream(method, url, headers=headers, **kw) as response:
            await response.aread() if response.status_code >= 400 else None
            return response
    return await client.request(method, url, headers=headers, **kw)


async def test_real_answers_of_every_operation_are_documented(app, client, db, session, document) -> None:
    seen = Documented(document)
    admin = await setup_admin(client)
    viewer = await create_user(client, admin, "viewer@example.com")
    deployment = await make_deployment(session, DeploymentStatus.RUNNING)
    session.add(Membership(user_id=viewer.user_id, organization_id=deployment.organization_id, role=Role.VIEWER))
    await session.commit()
    registry = await client.post(
        "/api/v1/registries",
        json={
            "name": "r",
            "server": "registry.example.com",
            "username": "u",
            "password": "p",
            "organization_id": deployment.organization_id,
        },
        headers=admin.headers,
    )
    assert registry.status_code == 201, registry.text
    ids = {
        "organization_id": deployment.organization_id,
        "deployment_id": deployment.id,
        "stack_id": deployment.stack_id,
        "target_id": deployment.target_id,
        "registry_id": registry.json()["id"],
        "user_id": viewer.user_id,
        "number": "1",
        "a": "1",
        "b": "1",
    }
    operations = _operations(app)

    # no credential: every authenticated operation answers 401
    for template, method, route in operations:
        if deps.get_current_user in set(_calls(route.dependant)):
            response = seen.check(method, template, await _send(client, method, _fill(template, ids)))
            assert response.status_code == 401, f"{method} {template}: {response.status_code}"

    # unknown ids, as a superuser: every operation with an id in its path answers 404
    for template, method, _route in operations:
        if PARAM.search(template):
            url = PARAM.sub(UNKNOWN, template).replace(f"/{UNKNOWN}/diff/", "/1/diff/")
            response = seen.check(method, template, await _send(client, method, url, admin.headers))
            assert response.status_code in (404, 422), f"{method} {template}: {response.status_code}"

    # a viewer's writes on real rows: refused (403), or what the operation documents
    for template, method, _route in operations:
        if method != "GET" and PARAM.search(template) and not template.startswith("/api/v1/auth"):
            seen.check(method, template, await _send(client, method, _fill(template, ids), viewer.headers, json={}))

    # bodies: unreadable (not UTF-8), not JSON, too large
    for template, method, route in operations:
        if not route.dependant.body_params:
            continue
        url = _fill(template, ids)
        unreadable = await client.request(
            method, url, content=b'{"name": "\xff"}', headers={**admin.headers, "content-type": "application/json"}
        )
        seen.check(method, template, unreadable)
        not_json = await client.request(method, url, content=b"{not json", headers={**admin.headers, "content-type": "application/json"})
        seen.check(method, template, not_json)
        too_large = await client.request(
            method, url, content=b"{}", headers={**admin.headers, "content-type": "application/json", "content-length": str(10**9)}
        )
        assert seen.check(method, template, too_large).status_code == 413

    seen.assert_all_documented()
    statuses = {status for _m, _t, status, _c in seen.seen}
    assert {400, 401, 403, 404, 413, 422} <= statuses, statuses


async def test_domain_errors_are_documented(client, db, session, document) -> None:
    seen = Documented(document)
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    member = await create_user(client, admin, "member@example.com")
    await add_member(client, admin, org, member, "operator")
    running = await make_deployment(session, DeploymentStatus.RUNNING)
    await session.commit()

    async def expect(status: int, code: str, method: str, template: str, url: str, **kw) -> None:
        response = seen.check(method, template, await client.request(method, url, **kw))
        assert (response.status_code, response.json().get("code")) == (status, code), response.text

    auth = "/api/v1/auth"
    await expect(
        409,
        "already_set_up",
        "POST",
        f"{auth}/setup",
        f"{auth}/setup",
        json={"email": "x@example.com", "password": "x" * 12, "organization_name": "o"},
    )
    await expect(401, "invalid_credentials", "POST", f"{auth}/login", f"{auth}/login", data={"username": admin.email, "password": "wrong"})
    await expect(401, "invalid_token", "POST", f"{auth}/refresh", f"{auth}/refresh", json={"refresh_token": "not-a-token"})
    await expect(401, "not_authenticated", "POST", f"{auth}/logout", f"{auth}/logout")
    await expect(
        403,
        "invalid_credentials",
        "POST",
        f"{auth}/password",
        f"{auth}/password",
        json={"current_password": "wrong-password", "new_password": "another-long-password"},
        headers=member.headers,
    )
    await expect(
        409,
        "user_exists",
        "POST",
        "/api/v1/users",
        "/api/v1/users",
        json={"email": member.email, "password": ADMIN_PASSWORD},
        headers=admin.headers,
    )
    await expect(
        409, "organization_exists", "POST", "/api/v1/organizations", "/api/v1/organizations", json={"name": "acme"}, headers=admin.headers
    )
    members = "/api/v1/organizations/{organization_id}/members"
    await expect(
        409,
        "already_member",
        "POST",
        members,
        members.format(organization_id=org),
        json={"email": member.email, "role": "viewer"},
        headers=admin.headers,
    )
    await expect(
        422,
        "validation_error",
        "POST",
        members,
        members.format(organization_id=org),
        json={"email": member.email, "user_id": member.user_id, "role": "viewer"},
        headers=admin.headers,
    )
    one = members + "/{user_id}"
    await expect(409, "last_owner", "DELETE", one, one.format(organization_id=org, user_id=admin.user_id), headers=admin.headers)
    await expect(404, "member_not_found", "DELETE", one, one.format(organization_id=org, user_id=UNKNOWN), headers=admin.headers)
    await expect(
        403,
        "role_required",
        "PATCH",
        one,
        one.format(organization_id=org, user_id=admin.user_id),
        json={"role": "viewer"},
        headers=member.headers,
    )
    await expect(
        404,
        "organization_not_found",
        "GET",
        "/api/v1/deployments",
        "/api/v1/deployments",
        params={"organization_id": UNKNOWN},
        headers=admin.headers,
    )
    await expect(
        404, "organization_not_found", "GET", "/api/v1/stacks", "/api/v1/stacks", params={"organization_id": UNKNOWN}, headers=admin.headers
    )
    bad_endpoint = seen.check(
        "POST",
        "/api/v1/targets",
        await client.post("/api/v1/targets", json={"name": "t", "endpoint": "http://host:2375"}, headers=admin.headers),
    )
    assert bad_endpoint.status_code == 422 and bad_endpoint.json()["errors"][0]["type"] == "invalid_endpoint"
    start = "/api/v1/deployments/{deployment_id}/start"
    await expect(409, "invalid_transition", "POST", start, start.format(deployment_id=running.id), headers=admin.headers)
    cancel = "/api/v1/deployments/{deployment_id}/cancel"
    await expect(409, "invalid_transition", "POST", cancel, cancel.format(deployment_id=running.id), headers=admin.headers)
    await expect(
        409, "target_in_use", "DELETE", "/api/v1/targets/{target_id}", f"/api/v1/targets/{running.target_id}", headers=admin.headers
    )
    orgs = "/api/v1/organizations/{organization_id}"
    await expect(
        409, "organization_has_deployments", "DELETE", orgs, orgs.format(organization_id=running.organization_id), headers=admin.headers
    )
    await expect(403, "role_required", "DELETE", orgs, orgs.format(organization_id=org), headers=member.headers)
    seen.assert_all_documented()
