"""The one rule deciding whether a credential still works (HTTP requests and real-time clients alike)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from backend.app.runtime.realtime.access import Access, refreshed
from backend.app.services.identity.auth_service import credential_refusal

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ACTIVE = SimpleNamespace(is_active=True, token_generation=3)
INACTIVE = SimpleNamespace(is_active=False, token_generation=3)
LIVE_TOKEN = SimpleNamespace(revoked_at=None, expires_at=NOW + timedelta(days=36500))
CASES = [
    ("access token", ACTIVE, {"generation": 3}, None),
    ("older generation", ACTIVE, {"generation": 2}, "token_revoked"),
    ("inactive", INACTIVE, {"generation": 3}, "inactive_user"),
    ("user gone", None, {"generation": 3}, "invalid_token"),
    ("api token", ACTIVE, {"api_token_used": True, "api_token": LIVE_TOKEN}, None),
    ("api token without expiry", ACTIVE, {"api_token_used": True, "api_token": SimpleNamespace(revoked_at=None, expires_at=None)}, None),
    ("api token unknown", ACTIVE, {"api_token_used": True, "api_token": None}, "invalid_token"),
    ("api token revoked", ACTIVE, {"api_token_used": True, "api_token": SimpleNamespace(revoked_at=NOW, expires_at=None)}, "invalid_token"),
    ("api token expired", ACTIVE, {"api_token_used": True, "api_token": SimpleNamespace(revoked_at=None, expires_at=NOW)}, "token_expired"),
    ("api token, user inactive", INACTIVE, {"api_token_used": True, "api_token": LIVE_TOKEN}, "inactive_user"),
]


@pytest.mark.parametrize(("user", "credential", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_rule_for_every_credential(user, credential, code):
    refusal = credential_refusal(user, now=NOW, **credential)
    assert (refusal.code if refusal is not None else None) == code


@pytest.mark.parametrize(("user", "credential", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_real_time_client_is_judged_by_the_same_rule(user, credential, code):
    """The access refresh of WebSocket/SSE clients (every few seconds) refuses exactly what HTTP refuses."""
    token_id = "t-1" if credential.get("api_token_used") else None
    current = Access("u-1", False, frozenset(), api_token_id=token_id, generation=credential.get("generation"))
    fresh = Access("u-1", False, frozenset({"org"}), account=user)
    tokens = {"t-1": credential["api_token"]} if credential.get("api_token") is not None else {}
    access = refreshed(current, fresh, tokens)
    expected = credential_refusal(user, now=datetime.now(UTC), **credential)
    assert access.revoked == (expected.detail if expected is not None else None)
    assert access.allows("org") is (code is None)
