"""GET /health: liveness and the state of the database."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from backend import __version__
from backend.app import database


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


async def test_health_answers_while_a_writer_holds_the_database(client, db):
    """/health only reads: on SQLite it must not queue behind a transaction that holds the write lock (a request
    doing its lookups before it renders a template, a runner's commit), whose busy timeout is 30 s. It answers
    while that transaction is still open, and names the placed targets no worker serves as before."""
    async with database.AsyncSessionLocal() as writer:
        await writer.execute(text("SELECT 1"))  # BEGIN IMMEDIATE on SQLite: the write lock, held until the end
        response = await asyncio.wait_for(client.get("/health"), 15)
        assert response.status_code == 200, response.text
        assert response.json()["database"]["status"] == "ok"
        assert response.json()["targets"] == {"unserved": []}
        assert writer.in_transaction()
