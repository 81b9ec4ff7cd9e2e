"""Authentication over HTTP: first-run setup, login, rate limit, refresh rotation, logout, /me, bad tokens."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from sqlalchemy import func, select, update

from backend.app.core import security
from backend.app.models import RefreshToken, User
from backend.tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, add_member, create_user, login, setup_admin

SETUP = "/api/v1/auth/setup"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"


def _setup_body(**overrides) -> dict:
    body = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": "acme"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


async def _scalar(db, stmt):
    async with db.engine.connect() as conn:
        return (await conn.execute(stmt)).scalar_one()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_401(response: httpx.Response, code: str | None = None) -> dict:
    assert response.status_code == 401, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["code"] == code, body
    assert response.headers.get("www-authenticate") == "Bearer"
    return body


# --- first-run setup ---------------------------------------------------------------------------


async def test_setup_creates_superuser_and_org_then_refuses(client, db):
    response = await client.post(SETUP, json=_setup_body(full_name="Ada Admin"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == db.settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60
    assert body["access_token"] != body["refresh_token"]

    me = await client.get(ME, headers=_bearer(body["access_token"]))
    assert me.status_code == 200, me.text
    me = me.json()
    assert me["email"] == ADMIN_EMAIL
    assert me["full_name"] == "Ada Admin"
    assert me["is_superuser"] is True and me["is_active"] is True
    assert [(m["organization_name"], m["role"]) for m in me["memberships"]] == [("acme", "owner")]
    assert me["default_organization_id"] == me["memberships"][0]["organization_id"]

    again = await client.post(SETUP, json=_setup_body(email="other@example.com", organization_name="other"))
    assert again.status_code == 409
    assert again.json()["code"] == "already_set_up"
    assert "log in" in again.json()["detail"]
    assert await _scalar(db, select(func.count()).select_from(User)) == 1


async def test_setup_normalises_email_case(client):
    response = await client.post(SETUP, json=_setup_body(email="  Admin@Example.COM "))
    assert response.status_code == 201, response.text
    actor = await login(client, "admin@example.com", ADMIN_PASSWORD)
    assert actor.user_id


async def test_concurrent_setups_create_exactly_one_superuser(client, db):
    """Two first-run setups racing: one wins, the other is told setup is done (never two superusers)."""
    first, second = await asyncio.gather(
        client.post(SETUP, json=_setup_body(email="one@example.com", organization_name="one")),
        client.post(SETUP, json=_setup_body(email="two@example.com", organization_name="two")),
    )
    assert sorted([first.status_code, second.status_code]) == [201, 409], (first.text, second.text)
    loser = first if first.status_code == 409 else second
    assert loser.json()["code"] == "already_set_up"
    assert await _scalar(db, select(func.count()).select_from(User)) == 1


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        pytest.param(_setup_body(email="not-an-email"), "email", "email", id="bad-email"),
        pytest.param(_setup_body(password="short"), "password", "at least 8", id="short-password"),
        pytest.param(_setup_body(password=...), "password", "required", id="missing-password"),
        pytest.param(_setup_body(organization_name=...), "organization_name", "required", id="missing-org"),
        pytest.param(_setup_body(organization_name="   "), "organization_name", "at least 1", id="blank-org"),
        pytest.param(_setup_body(is_admin=True), "is_admin", "unknown field", id="unknown-field"),
    ],
)
async def test_setup_rejects_bad_input_naming_the_field(client, db, body, field, fragment):
    response = await client.post(SETUP, json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["code"] == "validation_error"
    assert payload["detail"].startswith(f"{field}: ")
    assert fragment in payload["detail"]
    assert [e["field"] for e in payload["errors"]] == [field]
    assert ADMIN_PASSWORD not in response.text  # never echoes input
    assert await _scalar(db, select(func.count()).select_from(User)) == 0


async def test_password_whitespace_is_kept(client):
    """A password is taken verbatim: what was set at setup is what logs in (no silent stripping)."""
    password = "  spaced out secret  "
    response = await client.post(SETUP, json=_setup_body(password=password))
    assert response.status_code == 201, response.text
    assert (await client.post(LOGIN, data={"username": ADMIN_EMAIL, "password": password})).status_code == 200
    stripped = await client.post(LOGIN, data={"username": ADMIN_EMAIL, "password": password.strip()})
    assert stripped.status_code == 401


# --- login ---------------------------------------------------------------------------------------


async def test_login_returns_working_token_pair(client):
    admin = await setup_admin(client)
    response = await client.post(LOGIN, data={"username": "ADMIN@example.com", "password": ADMIN_PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    me = await client.get(ME, headers=_bearer(body["access_token"]))
    assert me.status_code == 200 and me.json()["id"] == admin.user_id


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param(ADMIN_EMAIL, "wrong-password", id="wrong-password"),
        pytest.param("nobody@example.com", ADMIN_PASSWORD, id="unknown-user"),
    ],
)
async def test_login_bad_credentials_401(client, username, password):
    await setup_admin(client)
    response = await client.post(LOGIN, data={"username": username, "password": password})
    body = _assert_401(response, "invalid_credentials")
    assert "incorrect email or password" in body["detail"]
    assert "access_token" not in body


async def test_login_inactive_user_401(client):
    admin = await setup_admin(client)
    user = await create_user(client, admin, "bob@example.com")
    deactivated = await client.post(f"/api/v1/users/{user.user_id}/deactivate", headers=admin.headers)
    assert deactivated.status_code == 200, deactivated.text
    response = await client.post(LOGIN, data={"username": user.email, "password": user.password})
    body = _assert_401(response, "inactive_user")
    assert "deactivated" in body["detail"]


async def test_login_needs_the_form_fields(client):
    await setup_admin(client)
    response = await client.post(LOGIN, json={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert response.status_code == 422
    assert "username" in response.json()["detail"] and "password" in response.json()["detail"]


async def test_login_rate_limited_per_client_address(app):
    assert app.state.login_limiter.limit == 10
    first = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.0.0.1", 5000)), base_url="http://t")
    second = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("10.0.0.2", 5000)), base_url="http://t")
    async with first, second:
        await setup_admin(first)
        statuses = []
        for number in range(10):
            # ten different (unknown) accounts: the address budget counts every attempt, whatever the account
            response = await first.post(LOGIN, data={"username": f"nobody{number}@example.com", "password": "wrong-password"})
            statuses.append(response.status_code)
        assert statuses == [401] * 10
        # the 11th attempt is refused even with the right password, before the password is checked
        limited = await first.post(LOGIN, data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        assert limited.status_code == 429, limited.text
        assert limited.json()["code"] == "rate_limited"
        assert "retry in" in limited.json()["detail"]
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 60
        # another address has its own budget
        other = await second.post(LOGIN, data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        assert other.status_code == 200, other.text
        # other routes are not limited
        assert (await first.post(SETUP, json=_setup_body())).status_code == 409


# --- refresh rotation -----------------------------------------------------------------------------


async def _age_rotations(db, seconds: float) -> None:
    """Moves every rotation ``seconds`` into the past (past the reuse window when larger than it)."""
    async with db.engine.begin() as conn:
        await conn.execute(
            update(RefreshToken)
            .where(RefreshToken.replaced_by.is_not(None))
            .values(revoked_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


async def test_refresh_rotates_and_refuses_the_old_token(client, db):
    admin = await setup_admin(client)
    response = await client.post(REFRESH, json={"refresh_token": admin.refresh_token})
    assert response.status_code == 200, response.text
    pair = response.json()
    assert pair["refresh_token"] != admin.refresh_token
    assert (await client.get(ME, headers=_bearer(pair["access_token"]))).status_code == 200

    await _age_rotations(db, db.settings.REFRESH_TOKEN_REUSE_SECONDS + 1)
    replay = await client.post(REFRESH, json={"refresh_token": admin.refresh_token})
    _assert_401(replay, "token_revoked")
    # the replay revoked the whole family: the newest refresh token no longer works either
    newest = await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})
    _assert_401(newest, "token_revoked")
    revoked = await _scalar(db, select(func.count()).select_from(RefreshToken).where(RefreshToken.revoked_at.is_(None)))
    assert revoked == 0


async def test_a_pair_lost_in_transit_is_recovered_within_the_reuse_window(client, db):
    """A tab that reloads while its refresh is in flight never stores the new pair; presenting the old
    refresh token again within REFRESH_TOKEN_REUSE_SECONDS gets another pair, and the login stays whole."""
    admin = await setup_admin(client)
    lost = await client.post(REFRESH, json={"refresh_token": admin.refresh_token})
    assert lost.status_code == 200, lost.text
    again = await client.post(REFRESH, json={"refresh_token": admin.refresh_token})
    assert again.status_code == 200, again.text
    pair = again.json()
    assert pair["refresh_token"] not in (admin.refresh_token, lost.json()["refresh_token"])
    assert (await client.get(ME, headers=_bearer(pair["access_token"]))).status_code == 200
    # the recovered pair rotates as usual, and the family counts one live token per branch
    assert (await client.post(REFRESH, json={"refresh_token": pair["refresh_token"]})).status_code == 200
    assert await _scalar(db, select(func.count()).select_from(RefreshToken).where(RefreshToken.revoked_at.is_(None))) == 2

    # past the window the same replay is theft: the whole family goes
    await _age_rotations(db, db.settings.REFRESH_TOKEN_REUSE_SECONDS + 1)
    _assert_401(await client.post(REFRESH, json={"refresh_token": admin.refresh_token}), "token_revoked")
    _assert_401(await client.post(REFRESH, json={"refresh_token": lost.json()["refresh_token"]}), "token_revoked")


async def test_a_logged_out_login_cannot_be_revived_within_the_reuse_window(client):
    admin = await setup_admin(client)
    rotated = await client.post(REFRESH, json={"refresh_token": admin.refresh_token})
    assert rotated.status_code == 200, rotated.text
    out = await client.post(LOGOUT, json={"refresh_token": rotated.json()["refresh_token"]}, headers=admin.headers)
    assert out.status_code == 204, out.text
    _assert_401(await client.post(REFRESH, json={"refresh_token": admin.refresh_token}), "token_revoked")


async def test_refresh_chain_and_family_isolation(client, db):
    """Rotation can go on; a replay in one login's family leaves another login's family alone."""
    admin = await setup_admin(client)
    other_login = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    token = admin.refresh_token
    for _ in range(3):
        response = await client.post(REFRESH, json={"refresh_token": token})
        assert response.status_code == 200, response.text
        token = response.json()["refresh_token"]
    await _age_rotations(db, db.settings.REFRESH_TOKEN_REUSE_SECONDS + 1)
    _assert_401(await client.post(REFRESH, json={"refresh_token": admin.refresh_token}), "token_revoked")
    assert (await client.post(REFRESH, json={"refresh_token": other_login.refresh_token})).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("a.b.c", id="three-dots"),
        pytest.param(jwt.encode({"sub": "x", "typ": "refresh", "jti": "j", "exp": 9999999999}, "k" * 40), id="forged"),
    ],
)
async def test_refresh_with_invalid_token_401(client, token):
    await setup_admin(client)
    _assert_401(await client.post(REFRESH, json={"refresh_token": token}), "invalid_token")


async def test_refresh_refuses_an_access_token(client):
    admin = await setup_admin(client)
    body = _assert_401(await client.post(REFRESH, json={"refresh_token": admin.access_token}), "invalid_token")
    assert "refresh" in body["detail"]


async def test_refresh_with_unknown_jti_401(client, app):
    """A correctly signed refresh token that the server never recorded is refused."""
    admin = await setup_admin(client)
    stray = security.create_refresh_token(app.state.settings, admin.user_id, uuid.uuid4().hex)
    _assert_401(await client.post(REFRESH, json={"refresh_token": stray.token}), "invalid_token")


# --- logout ---------------------------------------------------------------------------------------


async def test_logout_revokes_every_refresh_token(client, db):
    admin = await setup_admin(client)
    second = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    response = await client.post(LOGOUT, headers=admin.headers)
    assert response.status_code == 204, response.text
    for token in (admin.refresh_token, second.refresh_token):
        _assert_401(await client.post(REFRESH, json={"refresh_token": token}), "token_revoked")
    live = await _scalar(db, select(func.count()).select_from(RefreshToken).where(RefreshToken.revoked_at.is_(None)))
    assert live == 0


async def test_logout_one_refresh_token_keeps_other_sessions(client):
    admin = await setup_admin(client)
    other = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    response = await client.post(LOGOUT, json={"refresh_token": admin.refresh_token}, headers=admin.headers)
    assert response.status_code == 204, response.text
    _assert_401(await client.post(REFRESH, json={"refresh_token": admin.refresh_token}), "token_revoked")
    assert (await client.post(REFRESH, json={"refresh_token": other.refresh_token})).status_code == 200


async def test_logout_cannot_revoke_someone_elses_token(client):
    admin = await setup_admin(client)
    bob = await create_user(client, admin, "bob@example.com")
    response = await client.post(LOGOUT, json={"refresh_token": admin.refresh_token}, headers=bob.headers)
    _assert_401(response, "invalid_token")
    assert (await client.post(REFRESH, json={"refresh_token": admin.refresh_token})).status_code == 200


async def test_logout_needs_authentication(client):
    await setup_admin(client)
    _assert_401(await client.post(LOGOUT), "not_authenticated")


# --- /me ------------------------------------------------------------------------------------------


async def test_me_lists_memberships_and_default_org(client):
    admin = await setup_admin(client, organization_name="first")
    created = await client.post("/api/v1/organizations", json={"name": "second"}, headers=admin.headers)
    assert created.status_code == 201
    second_id = created.json()["id"]
    bob = await create_user(client, admin, "bob@example.com")

    me = (await client.get(ME, headers=bob.headers)).json()
    assert me["memberships"] == [] and me["default_organization_id"] is None
    assert me["is_superuser"] is False

    await add_member(client, admin, second_id, bob, "operator")
    me = (await client.get(ME, headers=bob.headers)).json()
    assert me["memberships"] == [{"organization_id": second_id, "organization_name": "second", "role": "operator"}]
    assert me["default_organization_id"] == second_id

    admin_me = (await client.get(ME, headers=admin.headers)).json()
    assert [m["organization_name"] for m in admin_me["memberships"]] == ["first", "second"]
    assert admin_me["default_organization_id"] == admin_me["memberships"][0]["organization_id"]
    assert "hashed_password" not in admin_me


# --- bad bearer credentials -------------------------------------------------------------------------


def _access_claims(user_id: str, **overrides) -> dict:
    now = datetime.now(UTC)
    claims = {"sub": user_id, "typ": "access", "jti": uuid.uuid4().hex, "iat": now, "exp": now + timedelta(minutes=5)}
    claims.update(overrides)
    return claims


async def test_crafted_access_token_control_case_works(client, app):
    """The crafting below is right: a valid crafted token is accepted, so the 401s are about the one change."""
    admin = await setup_admin(client)
    token = jwt.encode(_access_claims(admin.user_id), app.state.settings.SECRET_KEY, algorithm="HS256")
    assert (await client.get(ME, headers=_bearer(token))).status_code == 200


async def test_expired_access_token_401(client, app):
    admin = await setup_admin(client)
    past = datetime.now(UTC) - timedelta(minutes=30)
    token = jwt.encode(
        _access_claims(admin.user_id, iat=past, exp=past + timedelta(minutes=15)),
        app.state.settings.SECRET_KEY,
        algorithm="HS256",
    )
    body = _assert_401(await client.get(ME, headers=_bearer(token)), "token_expired")
    assert "expired" in body["detail"] and "refresh" in body["detail"]


@pytest.mark.parametrize(
    ("key", "algorithm", "overrides"),
    [
        pytest.param("another-secret-key-that-is-long-enough-000000", "HS256", {}, id="other-key"),
        pytest.param(None, "none", {}, id="alg-none"),
        pytest.param("SERVER", "HS256", {"typ": None}, id="no-typ"),
        pytest.param("SERVER", "HS256", {"typ": "admin"}, id="wrong-typ"),
        pytest.param("SERVER", "HS256", {"sub": str(uuid.uuid4())}, id="unknown-user"),
    ],
)
async def test_forged_or_malformed_access_token_401(client, app, key, algorithm, overrides):
    admin = await setup_admin(client)
    claims = {k: v for k, v in _access_claims(admin.user_id, **overrides).items() if v is not None}
    key = app.state.settings.SECRET_KEY if key == "SERVER" else key
    token = jwt.encode(claims, key, algorithm=algorithm)
    _assert_401(await client.get(ME, headers=_bearer(token)), "invalid_token")


async def test_refresh_token_is_not_an_access_token(client):
    admin = await setup_admin(client)
    body = _assert_401(await client.get(ME, headers=_bearer(admin.refresh_token)), "invalid_token")
    assert "access" in body["detail"] and "refresh" in body["detail"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param({}, "not_authenticated", id="missing"),
        pytest.param({"Authorization": ""}, "not_authenticated", id="empty"),
        pytest.param({"Authorization": "Bearer"}, "invalid_token", id="bearer-no-token"),
        pytest.param({"Authorization": "Bearer    "}, "invalid_token", id="bearer-blank"),
        pytest.param({"Authorization": "Basic YWRtaW46cGFzc3dvcmQ="}, "invalid_token", id="basic"),
        pytest.param({"Authorization": "Token abc"}, "invalid_token", id="other-scheme"),
        pytest.param({"Authorization": "Bearer not.a.jwt"}, "invalid_token", id="garbled-jwt"),
        pytest.param({"Authorization": "Bearer wf_doesnotexist0000000000000000"}, "invalid_token", id="unknown-api-token"),
        pytest.param({"Authorization": "Bearer 🚀".encode()}, "invalid_token", id="unicode"),
    ],
)
async def test_bad_authorization_header_401(client, headers, code):
    await setup_admin(client)
    body = _assert_401(await client.get(ME, headers=headers), code)
    assert "Bearer" in body["detail"] or "token" in body["detail"]


async def test_access_token_of_deleted_user_401(client, db):
    admin = await setup_admin(client)
    bob = await create_user(client, admin, "bob@example.com")
    async with db.engine.begin() as conn:
        await conn.execute(User.__table__.delete().where(User.id == bob.user_id))
    body = _assert_401(await client.get(ME, headers=bob.headers), "invalid_token")
    assert "no longer exists" in body["detail"]


async def test_password_change_revokes_refresh_tokens(client):
    admin = await setup_admin(client)
    bob = await create_user(client, admin, "bob@example.com")
    changed = await client.patch(f"/api/v1/users/{bob.user_id}", json={"password": "a-brand-new-password"}, headers=admin.headers)
    assert changed.status_code == 200, changed.text
    _assert_401(await client.post(REFRESH, json={"refresh_token": bob.refresh_token}), "token_revoked")
    _assert_401(await client.post(LOGIN, data={"username": bob.email, "password": bob.password}), "invalid_credentials")
    assert (await client.post(LOGIN, data={"username": bob.email, "password": "a-brand-new-password"})).status_code == 200
