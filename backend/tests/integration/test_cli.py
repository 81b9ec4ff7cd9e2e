"""The ``windflow`` command: db upgrade and create-admin, as a script would run them."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from backend.app.main import create_app
from backend.tests.celery_fixtures import REPO_ROOT, settings_env
from backend.tests.helpers import login

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)


async def windflow(settings, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the command in a thread: the test's event loop keeps serving whatever else holds the database."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "backend.app.cli", *args],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_db_upgrade_and_create_admin(db):
    upgraded = await windflow(db.settings, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "upgraded to head" in upgraded.stdout

    created = await windflow(
        db.settings, "create-admin", "--email", "Ops@Example.com", "--organization", "ops", "--password-stdin", stdin="a-long-password\n"
    )
    assert created.returncode == 0, created.stderr
    assert "superuser ops@example.com created" in created.stdout

    again = await windflow(db.settings, "create-admin", "--email", "ops@example.com", "--password-stdin", stdin="another-password\n")
    assert again.returncode == 1 and "already exists" in again.stderr

    short = await windflow(db.settings, "create-admin", "--email", "x@example.com", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "password" in short.stderr

    app = create_app(db.settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        admin = await login(client, "ops@example.com", "a-long-password")
        me = (await client.get("/api/v1/auth/me", headers=admin.headers)).json()
        assert me["is_superuser"] is True
        assert [m["organization_name"] for m in me["memberships"]] == ["ops"]
        # setup is closed once a user exists
        setup = await client.post(
            "/api/v1/auth/setup", json={"email": "late@example.com", "password": "a-long-password", "organization_name": "x"}
        )
        assert setup.status_code == 409
