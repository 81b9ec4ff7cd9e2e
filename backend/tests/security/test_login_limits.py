"""Login limits per account as well as per address (without telling whether the account exists), and
token invalidation: a password change or "log out everywhere" ends every outstanding access token."""

from __future__ import annotations

import re

import httpx
import pytest

from backend.app.main import create_app
from backend.tests.conftest import make_settings
from backend.tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, create_user, login, setup_admin

LOGIN = "/api/v1/auth/login"
ME = "/api/v1/auth/me"
FAILURES = 5


@pytest.fixture
def app(db):
    return create_app(make_settings(db.settings.DATABASE_URL, LOGIN_FAILURES_PER_ACCOUNT=FAILURES))


def _client(app, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 5000)), base_url="http://t")


async def _attempt(app, address: str, username: str, password: str) -> httpx.Response:
    async with _client(app, address) as client:
        return await client.post(LOGIN, data={"username": username, "password": password})


async def test_account_limit_holds_across_client_addresses(app):
    async with _client(app, "10.1.0.1") as first:
        await setup_admin(first)
    # every guess from a new address: the address limit never trips, the account limit does
    statuses = [(await _attempt(app, f"10.2.0.{n}", ADMIN_EMAIL, f"guess-{n}")).status_code for n in range(FAILURES)]
    assert statuses == [401] * FAILURES
    limited = await _attempt(app, "10.3.0.1", ADMIN_EMAIL, ADMIN_PASSWORD)
    assert limited.status_code == 429, limited.text
    assert limited.json()["code"] == "rate_limited" and "this account" in limited.json()["detail"]
    assert 1 <= int(limited.headers["retry-after"]) <= 300
    # the account name is normalised: case and spaces do not buy more guesses
    assert (await _attempt(app, "10.3.0.2", f"  {ADMIN_EMAIL.upper()} ", "guess")).status_code == 429
    # other accounts are not affected
    other = await _attempt(app, "10.4.0.1", "someone-else@example.com", "x" * 10)
    assert other.status_code == 401


async def test_unknown_account_gets_the_same_answers(app):
    async with _client(app, "10.1.0.1") as first:
        await setup_admin(first)
    known, unknown = [], []
    for n in range(FAILURES + 1):
        known.append(await _attempt(app, f"10.5.0.{n}", ADMIN_EMAIL, "wrong-password"))
        unknown.append(await _attempt(app, f"10.6.0.{n}", "nobody@example.com", "wrong-password"))

    def shape(response: httpx.Response) -> tuple:
        body = response.json()
        return response.status_code, body["code"], re.sub(r"\d+", "N", body["detail"])

    assert [shape(r) for r in known] == [shape(r) for r in unknown]
    assert [r.status_code for r in known] == [401] * FAILURES + [429]


async def test_successful_logins_do_not_count(app):
    async with _client(app, "10.1.0.1") as client:
        await setup_admin(client)
        for _ in range(FAILURES + 2):
            response = await client.post(LOGIN, data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
            assert response.status_code == 200, response.text


async def test_password_change_invalidates_outstanding_access_tokens(app):
    async with _client(app, "10.7.0.1") as client:
        admin = await setup_admin(client)
        user = await create_user(client, admin, "bob@example.com", "bob-password-1")
        other_session = await login(client, "bob@example.com", "bob-password-1")
        assert (await client.get(ME, headers=user.headers)).status_code == 200

        wrong = await client.post(
            "/api/v1/auth/password",
            json={"current_password": "not-it-at-all", "new_password": "bob-password-2"},
            headers=user.headers,
        )
        assert wrong.status_code == 403 and wrong.json()["code"] == "invalid_credentials"
        assert (await client.get(ME, headers=user.headers)).status_code == 200

        changed = await client.post(
            "/api/v1/auth/password",
            json={"current_password": "bob-password-1", "new_password": "bob-password-2"},
            headers=user.headers,
        )
        assert changed.status_code == 200, changed.text
        for old in (user, other_session):
            refused = await client.get(ME, headers=old.headers)
            assert refused.status_code == 401 and refused.json()["code"] == "token_revoked", refused.text
            stale = await client.post("/api/v1/auth/refresh", json={"refresh_token": old.refresh_token})
            assert stale.status_code == 401
        fresh = {"Authorization": f"Bearer {changed.json()['access_token']}"}
        assert (await client.get(ME, headers=fresh)).status_code == 200
        assert (await client.post(LOGIN, data={"username": "bob@example.com", "password": "bob-password-1"})).status_code == 401
        assert (await client.post(LOGIN, data={"username": "bob@example.com", "password": "bob-password-2"})).status_code == 200


async def test_logout_everywhere_invalidates_every_access_token(app):
    async with _client(app, "10.8.0.1") as client:
        admin = await setup_admin(client)
        second = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
        response = await client.post("/api/v1/auth/logout-all", headers=admin.headers)
        assert response.status_code == 204, response.text
        for session in (admin, second):
            refused = await client.get(ME, headers=session.headers)
            assert refused.status_code == 401 and refused.json()["code"] == "token_revoked"
            assert (await client.post("/api/v1/auth/refresh", json={"refresh_token": session.refresh_token})).status_code == 401
        again = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert (await client.get(ME, headers=again.headers)).status_code == 200


async def test_password_reset_by_a_superuser_invalidates_access_tokens(app):
    async with _client(app, "10.9.0.1") as client:
        admin = await setup_admin(client)
        user = await create_user(client, admin, "carol@example.com", "carol-password-1")
        reset = await client.patch(f"/api/v1/users/{user.user_id}", json={"password": "carol-password-2"}, headers=admin.headers)
        assert reset.status_code == 200, reset.text
        refused = await client.get(ME, headers=user.headers)
        assert refused.status_code == 401 and refused.json()["code"] == "token_revoked"
