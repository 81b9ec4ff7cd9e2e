"""GET /health: liveness and the state of the database."""

from __future__ import annotations

from backend import __version__


async def test_health_reports_database_and_version(client, db):
    response = await client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == __version__ == db.settings.VERSION
    assert body["database"]["status"] == "ok"
    assert body["database"]["kind"] == db.kind
    assert "error" not in body["database"]


async def test_health_needs_no_authentication_and_is_not_under_the_api_prefix(client):
    assert (await client.get("/health", headers={"Authorization": "Bearer garbage"})).status_code == 200
    missing = await client.get("/api/v1/health")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
