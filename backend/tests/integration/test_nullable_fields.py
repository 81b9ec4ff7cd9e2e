"""A PATCH body's schema says which fields take ``null``, and the API does what it says.

Walks the OpenAPI document's PATCH operations of organisations, users, stacks, targets and registries: every
property sent alone as ``null`` is refused (422 naming it) exactly when its schema is not nullable, and
accepted when it is. Before, ``name``, ``template``, ``password``, ``is_active``... were typed ``X | None`` in
the document (a client or a fuzzer sends null) while the API refused null.
"""

from __future__ import annotations

import httpx

from backend.tests.helpers import create_user, default_org, setup_admin

TEMPLATE = "services:\n  web:\n    image: nginx:alpine\n"


def _body_schema(document: dict, path: str) -> dict:
    ref = document["paths"][path]["patch"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _nullable(schema: dict) -> bool:
    return schema.get("type") == "null" or any(_nullable(alternative) for alternative in schema.get("anyOf", []))


async def test_every_patch_property_takes_null_exactly_when_its_schema_says_so(client: httpx.AsyncClient, app) -> None:
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    user = await create_user(client, admin, "someone@example.com")
    stack = await client.post("/api/v1/stacks", json={"name": "s", "template": TEMPLATE, "variables": []}, headers=admin.headers)
    target = await client.post(
        "/api/v1/targets", json={"name": "t", "type": "docker", "endpoint": "tcp://192.0.2.1:2376"}, headers=admin.headers
    )
    registry = await client.post(
        "/api/v1/registries",
        json={"name": "r", "server": "registry.example.com", "username": "u", "password": "p"},
        headers=admin.headers,
    )
    for created in (stack, target, registry):
        assert created.status_code == 201, created.text
    document = app.openapi()
    urls = {
        "/api/v1/organizations/{organization_id}": f"/api/v1/organizations/{org}",
        "/api/v1/users/{user_id}": f"/api/v1/users/{user.user_id}",
        "/api/v1/stacks/{stack_id}": f"/api/v1/stacks/{stack.json()['id']}",
        "/api/v1/targets/{target_id}": f"/api/v1/targets/{target.json()['id']}",
        "/api/v1/registries/{registry_id}": f"/api/v1/registries/{registry.json()['id']}",
    }
    checked: list[tuple[str, str, bool]] = []
    for path, url in urls.items():
        properties = _body_schema(document, path)["properties"]
        for name, schema in properties.items():
            if name in {"compose_policy", "variables_source"}:
                continue  # null resets the policy; the source text goes with its variables
            nullable = _nullable(schema)
            answer = await client.patch(url, json={name: None}, headers=admin.headers)
            if nullable:
                assert answer.status_code == 200, f"{path} {name}: the schema says nullable, the API answered {answer.text}"
            else:
                assert answer.status_code == 422, f"{path} {name}: the schema says not nullable, the API answered {answer.status_code}"
                assert name in answer.text, answer.text
            checked.append((path, name, nullable))
    refused = {(path.rsplit("/", 2)[1], name) for path, name, nullable in checked if not nullable}
    assert {("organizations", "name"), ("users", "password"), ("users", "is_active"), ("stacks", "template")} <= refused
    assert {("targets", "endpoint"), ("targets", "placed"), ("registries", "password"), ("stacks", "variables")} <= refused
    assert ("users", "full_name") not in refused and ("targets", "ssh_key") not in refused
