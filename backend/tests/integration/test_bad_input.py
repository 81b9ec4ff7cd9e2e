"""Malformed input never crashes the API: every answer is a 4xx JSON ``{"detail": str, "code": str}``.

One sweep sends a family of broken bodies to every POST/PATCH route of the foundation; the sweep runs
per route (one setup each) and reports every offending (route, body) pair at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest

from backend.tests.helpers import Actor, create_user, default_org, setup_admin

HUGE = "x" * 1_000_000


@dataclass
class Route:
    method: str
    path: str
    valid: dict  # a body that would be accepted (all strings are what the malformed variants mangle)
    auth: bool = True
    form: bool = False


@dataclass
class Ctx:
    admin: Actor
    member: Actor
    org_id: str


def routes(ctx: Ctx) -> dict[str, Route]:
    org = f"/api/v1/organizations/{ctx.org_id}"
    return {
        "setup": Route(
            "POST",
            "/api/v1/auth/setup",
            {"email": "new@example.com", "password": "long-enough-pw", "organization_name": "neworg"},
            auth=False,
        ),
        "login": Route(
            "POST", "/api/v1/auth/login", {"username": ctx.member.email, "password": ctx.member.password}, auth=False, form=True
        ),
        "refresh": Route("POST", "/api/v1/auth/refresh", {"refresh_token": ctx.member.refresh_token}, auth=False),
        "logout": Route("POST", "/api/v1/auth/logout", {"refresh_token": ctx.member.refresh_token}),
        "create-user": Route(
            "POST", "/api/v1/users", {"email": "someone@example.com", "password": "long-enough-pw", "full_name": "Some One"}
        ),
        "update-user": Route("PATCH", f"/api/v1/users/{ctx.member.user_id}", {"full_name": "Renamed", "password": "another-password"}),
        "create-org": Route("POST", "/api/v1/organizations", {"name": "org-two", "description": "second"}),
        "update-org": Route("PATCH", org, {"name": "renamed-org", "description": "d"}),
        "add-member": Route("POST", f"{org}/members", {"email": "someone-else@example.com", "role": "viewer"}),
        "change-role": Route("PATCH", f"{org}/members/{ctx.member.user_id}", {"role": "viewer"}),
        "create-token": Route("POST", "/api/v1/tokens", {"name": "ci-token", "expires_in_days": 3}),
    }


def _map_strings(body: dict, fn) -> dict:
    return {k: fn(v) if isinstance(v, str) else v for k, v in body.items()}


def _wrong_type(value):
    return {"nested": [value]} if not isinstance(value, dict) else "text"


#: name -> (how to build request kwargs from the valid body, must it be refused with a 4xx?)
VARIANTS = {
    "not-json": (lambda r: {"content": b"{'this is': not json,", "headers": {"content-type": "application/json"}}, True),
    "truncated-json": (lambda r: {"content": json.dumps(r.valid)[:-3].encode(), "headers": {"content-type": "application/json"}}, True),
    "empty-body": (lambda r: {"content": b"", "headers": {"content-type": "application/json"}}, True),
    "json-null": (lambda r: {"content": b"null", "headers": {"content-type": "application/json"}}, True),
    "json-array": (lambda r: {"json": [r.valid]}, True),
    "json-string": (lambda r: {"json": "hello"}, True),
    "json-number": (lambda r: {"json": 42}, True),
    "invalid-utf8": (lambda r: {"content": b'{"name": "\xff\xfe"}', "headers": {"content-type": "application/json"}}, True),
    "deep-nesting": (lambda r: {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}}, True),
    "wrong-types": (lambda r: {"json": {k: _wrong_type(v) for k, v in r.valid.items()}}, True),
    "numbers-for-strings": (lambda r: {"json": _map_strings(r.valid, lambda v: 12345)}, True),
    "huge-strings": (lambda r: {"json": _map_strings(r.valid, lambda v: HUGE)}, True),
    "null-bytes": (lambda r: {"json": _map_strings(r.valid, lambda v: v[:3] + "\x00" + v[3:])}, True),
    "lone-surrogate": (
        lambda r: {
            "content": json.dumps(_map_strings(r.valid, lambda v: v + "\ud800")).encode(),
            "headers": {"content-type": "application/json"},
        },
        True,
    ),
    "extra-field": (lambda r: {"json": {**r.valid, "is_superuser_please": True}}, True),
    "form-instead-of-json": (lambda r: {"data": _map_strings(r.valid, str)}, True),
    "text-plain-json": (lambda r: {"content": json.dumps(r.valid).encode(), "headers": {"content-type": "text/plain"}}, True),
    # valid shapes with unusual (but legal) text: may succeed, must never crash
    "unicode": (lambda r: {"json": _map_strings(r.valid, lambda v: v + "-ünïcødé-🚀-組織")}, False),
    "whitespace-padded": (lambda r: {"json": _map_strings(r.valid, lambda v: f"  {v}\t")}, False),
}

# Form routes take form fields, not JSON; JSON variants are all malformed for them anyway, and these
# are the only ones that make sense as form data.
FORM_VARIANTS = {
    "json-body": (lambda r: {"json": r.valid}, True),
    "empty-form": (lambda r: {"data": {}}, True),
    "huge-strings": (lambda r: {"data": _map_strings(r.valid, lambda v: HUGE)}, True),
    "null-bytes": (lambda r: {"data": _map_strings(r.valid, lambda v: v[:3] + "\x00" + v[3:])}, True),
    "invalid-utf8": (
        lambda r: {"content": b"username=\xff\xfe&password=\xff", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        True,
    ),
    "unicode": (lambda r: {"data": _map_strings(r.valid, lambda v: v + "-ünïcødé-🚀")}, True),
    "extra-field": (lambda r: {"data": {**r.valid, "grant_type": "password", "scope": "x" * 10_000}}, False),
}

# An optional body: an empty one means "revoke every refresh token", which is a legitimate 204.
ALLOWED_SUCCESS = {("logout", "empty-body"), ("logout", "json-null")}

ROUTE_NAMES = [
    "setup",
    "login",
    "refresh",
    "logout",
    "create-user",
    "update-user",
    "create-org",
    "update-org",
    "add-member",
    "change-role",
    "create-token",
]


@pytest.fixture
async def ctx(client) -> Ctx:
    admin = await setup_admin(client)
    member = await create_user(client, admin, "member@example.com")
    org_id = await default_org(client, admin)
    added = await client.post(
        f"/api/v1/organizations/{org_id}/members", json={"email": member.email, "role": "operator"}, headers=admin.headers
    )
    assert added.status_code == 201
    return Ctx(admin, member, org_id)


def check_error_body(response: httpx.Response) -> str | None:
    """``None`` if ``response`` is a well-formed error answer, else what is wrong with it."""
    if response.headers.get("content-type", "").split(";")[0] != "application/json":
        return f"content-type {response.headers.get('content-type')!r}"
    try:
        body = response.json()
    except ValueError:
        return "body is not JSON"
    if not isinstance(body, dict):
        return f"body is {type(body).__name__}"
    if not isinstance(body.get("detail"), str) or not body["detail"]:
        return f"detail is {body.get('detail')!r}"
    if not isinstance(body.get("code"), str) or not body["code"]:
        return f"code is {body.get('code')!r}"
    if "\x00" in body["detail"] or HUGE[:1000] in body["detail"]:
        return "detail echoes the input"
    return None


@pytest.mark.parametrize("route_name", ROUTE_NAMES)
async def test_malformed_bodies_get_4xx_json(client, ctx, route_name):
    route = routes(ctx)[route_name]
    variants = FORM_VARIANTS if route.form else VARIANTS
    problems = []
    for name, (build, must_refuse) in variants.items():
        kwargs = build(route)
        headers = {**kwargs.pop("headers", {}), **(ctx.admin.headers if route.auth else {})}
        response = await client.request(route.method, route.path, headers=headers, **kwargs)
        status = response.status_code
        if status >= 500:
            problems.append(f"{name}: {status} {response.text[:200]}")
        elif status >= 400:
            if problem := check_error_body(response):
                problems.append(f"{name}: {status} {problem}")
        elif must_refuse and (route_name, name) not in ALLOWED_SUCCESS:
            problems.append(f"{name}: accepted with {status}")
    assert not problems, f"{route.method} {route.path}:\n" + "\n".join(problems)


async def test_validation_errors_name_each_field(client, ctx):
    response = await client.post(
        "/api/v1/users",
        json={"email": 5, "password": ["x"], "full_name": "x" * 201, "role": "admin"},
        headers=ctx.admin.headers,
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert sorted(e["field"] for e in body["errors"]) == ["email", "full_name", "password", "role"]
    for field in ("email", "password", "full_name", "role"):
        assert f"{field}: " in body["detail"]


async def test_null_bytes_are_refused_with_the_field_named(client, ctx):
    response = await client.post("/api/v1/organizations", json={"name": "ev\x00il"}, headers=ctx.admin.headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("name: ") and "NUL" in response.json()["detail"]


async def test_not_json_says_so(client, ctx):
    response = await client.post("/api/v1/tokens", content=b"{nope", headers={**ctx.admin.headers, "content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert response.json()["detail"].startswith("body: the body is not valid JSON")


@pytest.mark.parametrize(
    "weird_id",
    [
        pytest.param("%00", id="nul"),
        pytest.param("x" * 5000, id="huge"),
        pytest.param("%F0%9F%9A%80", id="emoji"),
        pytest.param("%ED%A0%80", id="surrogate-bytes"),
        pytest.param("'%20OR%201=1--", id="sql-ish"),
    ],
)
async def test_weird_path_ids_never_crash(client, ctx, weird_id):
    h = ctx.admin.headers
    org = f"/api/v1/organizations/{ctx.org_id}"
    problems = []
    for method, path, body in [
        ("GET", f"/api/v1/organizations/{weird_id}", None),
        ("PATCH", f"/api/v1/organizations/{weird_id}", {"description": "x"}),
        ("GET", f"/api/v1/organizations/{weird_id}/members", None),
        ("PATCH", f"{org}/members/{weird_id}", {"role": "viewer"}),
        ("DELETE", f"{org}/members/{weird_id}", None),
        ("GET", f"/api/v1/users/{weird_id}", None),
        ("POST", f"/api/v1/users/{weird_id}/deactivate", None),
        ("DELETE", f"/api/v1/tokens/{weird_id}", None),
    ]:
        response = await client.request(method, path, json=body, headers=h)
        if response.status_code not in (404, 422) or check_error_body(response):
            problems.append(f"{method} {path[:80]}: {response.status_code} {response.text[:200]}")
    assert not problems, "\n".join(problems)


async def test_unknown_route_404_json(client):
    for path in ("/api/v1/nope", "/nope", "/api/v2/auth/me"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
        assert path in response.json()["detail"]


async def test_wrong_method_405_json(client):
    response = await client.put("/api/v1/auth/login", data={"username": "a", "password": "b"})
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert "PUT" in response.json()["detail"] and "POST" in response.json()["detail"]
    assert response.headers["allow"] == "POST"
    delete_me = await client.delete("/api/v1/auth/me")
    assert delete_me.status_code == 405 and delete_me.json()["code"] == "method_not_allowed"
