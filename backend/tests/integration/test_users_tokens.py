"""Users (superuser administration, deactivation) and personal API tokens over HTTP."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from backend.app.database import utcnow
from backend.app.models import ApiToken, RefreshToken, User
from backend.tests.helpers import ADMIN_EMAIL, create_user, setup_admin

USERS = "/api/v1/users"
TOKENS = "/api/v1/tokens"
ME = "/api/v1/auth/me"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _rows(db, stmt):
    async with db.engine.connect() as conn:
        return (await conn.execute(stmt)).all()


# --- users -----------------------------------------------------------------------------------------


async def test_superuser_creates_and_lists_users(client, db):
    admin = await setup_admin(client)
    response = await client.post(
        USERS,
        json={"email": " Carol@Example.com ", "password": "carol-password", "full_name": "Carol"},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    carol = response.json()
    assert carol["email"] == "carol@example.com" and carol["full_name"] == "Carol"
    assert carol["is_active"] is True and carol["is_superuser"] is False
    assert "password" not in response.text and "hashed" not in response.text

    (row,) = await _rows(db, select(User.email, User.hashed_password).where(User.id == carol["id"]))
    assert row.email == "carol@example.com"
    assert row.hashed_password.startswith("$argon2") and "carol-password" not in row.hashed_password

    listed = await client.get(USERS, headers=admin.headers)
    assert listed.status_code == 200
    assert listed.json()["total"] == 2
    assert [u["email"] for u in listed.json()["items"]] == [ADMIN_EMAIL, "carol@example.com"]
    page = await client.get(USERS, params={"offset": 1, "limit": 1}, headers=admin.headers)
    assert [u["email"] for u in page.json()["items"]] == ["carol@example.com"] and page.json()["total"] == 2

    one = await client.get(f"{USERS}/{carol['id']}", headers=admin.headers)
    assert one.status_code == 200 and one.json() == carol
    missing = await client.get(f"{USERS}/00000000-0000-4000-8000-000000000000", headers=admin.headers)
    assert missing.status_code == 404 and missing.json()["code"] == "user_not_found"

    login = await client.post("/api/v1/auth/login", data={"username": "carol@example.com", "password": "carol-password"})
    assert login.status_code == 200


async def test_duplicate_email_409(client, db):
    admin = await setup_admin(client)
    first = await client.post(USERS, json={"email": "dup@example.com", "password": "password-one"}, headers=admin.headers)
    assert first.status_code == 201
    second = await client.post(USERS, json={"email": "DUP@example.com", "password": "password-two"}, headers=admin.headers)
    assert second.status_code == 409
    assert second.json()["code"] == "user_exists" and "dup@example.com" in second.json()["detail"]
    assert len(await _rows(db, select(User.id).where(User.email == "dup@example.com"))) == 1


async def test_non_superuser_cannot_administer_users(client, db):
    admin = await setup_admin(client)
    bob = await create_user(client, admin, "bob@example.com")
    for response in (
        await client.post(USERS, json={"email": "eve@example.com", "password": "eve-password"}, headers=bob.headers),
        await client.get(USERS, headers=bob.headers),
        await client.get(f"{USERS}/{admin.user_id}", headers=bob.headers),
        await client.patch(f"{USERS}/{bob.user_id}", json={"is_superuser": True}, headers=bob.headers),
        await client.post(f"{USERS}/{admin.user_id}/deactivate", headers=bob.headers),
    ):
        assert response.status_code == 403, response.text
        assert response.json() == {"detail": "this needs a platform superuser", "code": "superuser_required"}
    rows = await _rows(db, select(User.email, User.is_active, User.is_superuser).order_by(User.email))
    assert [tuple(r) for r in rows] == [(ADMIN_EMAIL, True, True), ("bob@example.com", True, False)]
    assert (await client.get(USERS)).status_code == 401


async def test_deactivated_user_is_locked_out(client, db):
    admin = await setup_admin(client)
    bob = await create_user(client, admin, "bob@example.com")
    token = await client.post(TOKENS, json={"name": "ci"}, headers=bob.headers)
    assert token.status_code == 201
    api_token = token.json()["token"]
    for credential in (bob.access_token, api_token):
        assert (await client.get(ME, headers=_bearer(credential))).status_code == 200

    response = await client.post(f"{USERS}/{bob.user_id}/deactivate", headers=admin.headers)
    assert response.status_code == 200, response.text
    assert response.json()["is_active"] is False
    assert await _rows(db, select(User.is_active).where(User.id == bob.user_id)) == [(False,)]
    assert await _rows(db, select(RefreshToken.jti).where(RefreshToken.user_id == bob.user_id, RefreshToken.revoked_at.is_(None))) == []

    for credential in (bob.access_token, api_token):
        refused = await client.get(ME, headers=_bearer(credential))
        assert refused.status_code == 401
        assert refused.json()["code"] == "inactive_user" and "deactivated" in refused.json()["detail"]
    refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": bob.refresh_token})
    assert refresh.status_code == 401

    # reactivation restores the account (a fresh login is needed: the refresh tokens stay revoked)
    back = await client.patch(f"{USERS}/{bob.user_id}", json={"is_active": True}, headers=admin.headers)
    assert back.status_code == 200 and back.json()["is_active"] is True
    assert (await client.get(ME, headers=_bearer(api_token))).status_code == 200
    assert (await client.post("/api/v1/auth/refresh", json={"refresh_token": bob.refresh_token})).status_code == 401


async def test_superuser_cannot_lock_themselves_out(client, db):
    admin = await setup_admin(client)
    for response in (
        await client.post(f"{USERS}/{admin.user_id}/deactivate", headers=admin.headers),
        await client.patch(f"{USERS}/{admin.user_id}", json={"is_superuser": False}, headers=admin.headers),
    ):
        assert response.status_code == 422 and response.json()["code"] == "self_lockout"
    assert await _rows(db, select(User.is_active, User.is_superuser).where(User.id == admin.user_id)) == [(True, True)]


async def test_update_user_fields(client, db):
    admin = await setup_admin(client)
    created = await client.post(
        USERS, json={"email": "dan@example.com", "password": "dan-password", "full_name": "Dan"}, headers=admin.headers
    )
    user_id = created.json()["id"]
    promoted = await client.patch(f"{USERS}/{user_id}", json={"is_superuser": True, "full_name": "Daniel"}, headers=admin.headers)
    assert promoted.status_code == 200
    assert promoted.json()["is_superuser"] is True and promoted.json()["full_name"] == "Daniel"
    cleared = await client.patch(f"{USERS}/{user_id}", json={"full_name": None}, headers=admin.headers)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["full_name"] is None
    for field in ("password", "is_active", "is_superuser"):
        refused = await client.patch(f"{USERS}/{user_id}", json={field: None}, headers=admin.headers)
        assert refused.status_code == 422 and field in refused.json()["detail"], refused.text
    assert await _rows(db, select(User.full_name, User.is_superuser, User.is_active).where(User.id == user_id)) == [(None, True, True)]


# --- API tokens ------------------------------------------------------------------------------------


async def test_api_token_lifecycle(client, db):
    admin = await setup_admin(client)
    response = await client.post(TOKENS, json={"name": "ci", "expires_in_days": 30}, headers=admin.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    clear = created["token"]
    assert clear.startswith("wf_") and len(clear) > 30
    assert created["prefix"] == clear[:10] and created["name"] == "ci"
    assert created["revoked_at"] is None and created["last_used_at"] is None
    assert created["expires_at"] is not None

    listed = await client.get(TOKENS, headers=admin.headers)
    assert listed.status_code == 200
    assert listed.json()["total"] == 1
    (item,) = listed.json()["items"]
    assert item["id"] == created["id"] and "token" not in item
    assert clear not in listed.text and clear[10:] not in listed.text

    me = await client.get(ME, headers=_bearer(clear))
    assert me.status_code == 200 and me.json()["email"] == ADMIN_EMAIL
    # the token authenticates any route, including the token routes themselves
    assert (await client.get(TOKENS, headers=_bearer(clear))).status_code == 200

    # only the SHA-256 is stored
    rows = await _rows(db, select(ApiToken.__table__))
    assert len(rows) == 1
    assert clear not in repr(rows) and clear[10:] not in repr(rows)
    assert rows[0].token_hash == hashlib.sha256(clear.encode()).hexdigest()
    assert rows[0].last_used_at is not None  # recorded even though /auth/me only reads

    revoked = await client.delete(f"{TOKENS}/{created['id']}", headers=admin.headers)
    assert revoked.status_code == 204
    refused = await client.get(ME, headers=_bearer(clear))
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_token"
    listed = (await client.get(TOKENS, headers=admin.headers)).json()
    assert listed["items"][0]["revoked_at"] is not None
    assert (await client.delete(f"{TOKENS}/{created['id']}", headers=admin.headers)).status_code == 204  # idempotent


async def test_api_token_last_used_is_shown(client):
    admin = await setup_admin(client)
    clear = (await client.post(TOKENS, json={"name": "cli"}, headers=admin.headers)).json()["token"]
    assert (await client.get(ME, headers=_bearer(clear))).status_code == 200
    (item,) = (await client.get(TOKENS, headers=admin.headers)).json()["items"]
    assert item["last_used_at"] is not None


async def test_expired_api_token_401(client, db):
    admin = await setup_admin(client)
    created = (await client.post(TOKENS, json={"name": "short", "expires_in_days": 1}, headers=admin.headers)).json()
    assert (await client.get(ME, headers=_bearer(created["token"]))).status_code == 200
    async with db.engine.begin() as conn:
        await conn.execute(update(ApiToken).where(ApiToken.id == created["id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
    refused = await client.get(ME, headers=_bearer(created["token"]))
    assert refused.status_code == 401
    assert refused.json()["code"] == "token_expired" and "create a new one" in refused.json()["detail"]


async def test_tokens_are_private_to_their_owner(client, db):
    admin = await setup_admin(client)
    bob = await create_user(client, admin, "bob@example.com")
    mine = (await client.post(TOKENS, json={"name": "admin-token"}, headers=admin.headers)).json()
    bobs = (await client.post(TOKENS, json={"name": "bob-token"}, headers=bob.headers)).json()

    assert [t["name"] for t in (await client.get(TOKENS, headers=bob.headers)).json()["items"]] == ["bob-token"]
    me = await client.get(ME, headers=_bearer(bobs["token"]))
    assert me.json()["email"] == "bob@example.com"

    # bob cannot revoke the admin's token (and cannot tell it exists)
    refused = await client.delete(f"{TOKENS}/{mine['id']}", headers=bob.headers)
    assert refused.status_code == 404 and refused.json()["code"] == "token_not_found"
    assert await _rows(db, select(ApiToken.revoked_at).where(ApiToken.id == mine["id"])) == [(None,)]
    assert (await client.get(ME, headers=_bearer(mine["token"]))).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "name", id="missing-name"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "x" * 101}, "name", id="long-name"),
        pytest.param({"name": "t", "expires_in_days": 0}, "expires_in_days", id="zero-days"),
        pytest.param({"name": "t", "expires_in_days": 3651}, "expires_in_days", id="too-many-days"),
        pytest.param({"name": "t", "scope": "all"}, "scope", id="unknown-field"),
    ],
)
async def test_api_token_validation(client, db, body, field):
    admin = await setup_admin(client)
    response = await client.post(TOKENS, json=body, headers=admin.headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{field}: ")
    assert await _rows(db, select(ApiToken.id)) == []
