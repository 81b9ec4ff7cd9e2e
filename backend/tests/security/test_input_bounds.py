"""Input bounds: request body size (413 before parsing, chunked too), every path id validated (422, never a
500 on PostgreSQL), and the 422 body documented in OpenAPI as the handlers send it."""

from __future__ import annotations

import json

import httpx
import pytest

from backend.app.main import create_app
from backend.tests.conftest import make_settings
from backend.tests.helpers import setup_admin

LIMIT = 64 * 1024


@pytest.fixture
async def api(db):
    app = create_app(make_settings(db.settings.DATABASE_URL, MAX_REQUEST_BODY_BYTES=LIMIT))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield app, client


def _assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["code"] == "payload_too_large"
    assert str(LIMIT) in body["detail"] and "MAX_REQUEST_BODY_BYTES" in body["detail"]


async def test_oversized_body_refused_by_content_length_on_an_unauthenticated_route(api):
    _, client = api
    big = json.dumps({"email": "a@example.com", "password": "x" * (LIMIT * 4), "organization_name": "o"})
    _assert_413(await client.post("/api/v1/auth/setup", content=big, headers={"content-type": "application/json"}))
    # nothing was created: setup is still possible
    admin = await setup_admin(client)
    assert admin.access_token


async def test_oversized_chunked_body_without_content_length_refused(api):
    _, client = api

    async def chunks():
        piece = b'{"email": "a@example.com", "password": "' + b"x" * 8192
        yield piece
        for _ in range(LIMIT // 8192 + 2):
            yield b"x" * 8192
        yield b'", "organization_name": "o"}'

    response = await client.post("/api/v1/auth/setup", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    _assert_413(response)


async def test_oversized_login_form_refused(api):
    _, client = api
    response = await client.post("/api/v1/auth/login", data={"username": "a@example.com", "password": "p" * (LIMIT * 2)})
    _assert_413(response)


async def test_body_under_the_limit_is_served(api):
    _, client = api
    admin = await setup_admin(client)
    response = await client.post(
        "/api/v1/stacks",
        json={"name": "ok", "description": "d" * 400, "template": "services:\n  web:\n    image: x\n", "variables": []},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/deployments/%00",
        "/api/v1/deployments/abc%00def",
        "/api/v1/deployments/%00/logs",
        "/api/v1/deployments/%00/history",
        "/api/v1/deployments/not%20an%20id",
        "/api/v1/deployments/" + "a" * 65,
        "/api/v1/stacks/%00",
        "/api/v1/stacks/%27%3B--",
        "/api/v1/targets/%00",
        "/api/v1/organizations/%00",
        "/api/v1/organizations/%00/members",
        "/api/v1/users/%00",
        "/api/v1/deployments?stack_id=%00",
        "/api/v1/deployments?target_id=a%00b",
        "/api/v1/deployments?organization_id=%00",
        "/api/v1/stacks?organization_id=%00",
        "/api/v1/targets?organization_id=%00",
    ],
)
async def test_malformed_ids_answer_422_on_both_databases(api, path):
    _, client = api
    admin = await setup_admin(client)
    response = await client.get(path, headers=admin.headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["errors"] and body["errors"][0]["field"]


async def test_well_formed_unknown_ids_still_404(api):
    _, client = api
    admin = await setup_admin(client)
    for path in ("/api/v1/deployments/does-not-exist", "/api/v1/stacks/0f0e0d0c-0000-4000-8000-000000000000"):
        response = await client.get(path, headers=admin.headers)
        assert response.status_code == 404, response.text


async def test_mutating_routes_validate_ids_too(api):
    _, client = api
    admin = await setup_admin(client)
    for method, path in (
        ("POST", "/api/v1/deployments/%00/cancel"),
        ("DELETE", "/api/v1/deployments/%00"),
        ("POST", "/api/v1/targets/%00/test"),
        ("PATCH", "/api/v1/stacks/%00"),
    ):
        response = await client.request(method, path, headers=admin.headers, json={})
        assert response.status_code == 422, (method, path, response.text)


async def test_openapi_documents_the_422_body_as_sent(api):
    app, client = api
    schema = (await client.get("/openapi.json")).json()
    documented = schema["components"]["schemas"]["HTTPValidationError"]
    assert set(documented["required"]) == {"detail", "code"}
    assert documented["properties"]["detail"]["type"] == "string"
    assert documented["properties"]["code"]["type"] == "string"
    assert "errors" in documented["properties"]
    field_error = schema["components"]["schemas"]["FieldError"]
    assert set(field_error["properties"]) == {"field", "message", "type", "params"}
    # a route's 422 points at it
    responses = schema["paths"]["/api/v1/deployments/{deployment_id}"]["get"]["responses"]
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/HTTPValidationError"
    # and what the app actually sends matches it: request validation and a domain refusal
    admin = await setup_admin(client)
    sent = (await client.get("/api/v1/deployments/%00", headers=admin.headers)).json()
    assert set(sent) <= set(documented["properties"]) and {"detail", "code"} <= set(sent)
    assert all(set(e) <= set(field_error["properties"]) for e in sent["errors"])
    domain = await client.post("/api/v1/stacks", json={"name": "bad", "template": "services: [", "variables": []}, headers=admin.headers)
    assert domain.status_code == 422
    assert set(domain.json()) <= set(documented["properties"]) and {"detail", "code"} <= set(domain.json())
