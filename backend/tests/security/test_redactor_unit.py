"""The per-deployment redactor and the server-log filter (pure logic; the end-to-end behaviour against the
real engine is in ``test_redaction_isolation.py``), and the worker listing seen by a non-superuser."""

from __future__ import annotations

import logging
import tempfile

from backend.app.core.logging import RedactingFilter, Redactor, register_secret
from backend.app.services.deployments.redaction import public_actor

PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----\n"


def test_masks_only_its_own_secrets():
    register_secret("someone-elses-password")  # known to the process (server log), not to this redactor
    redactor = Redactor(["pa$word-of-this-one", PEM])
    text = redactor("a pa$word-of-this-one b pa$$word-of-this-one c someone-elses-password d BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj")
    assert text == "a *** b *** c someone-elses-password d ***"


def test_rewrites_host_paths_and_strips_controls():
    redactor = Redactor([], {"/srv/windflow/data/deployments/abc": "wf-abc", "/srv/windflow/data/deployments": "<deployments>"})
    text = redactor(
        "open /srv/windflow/data/deployments/abc/docker-compose.yml\x1b[31m red\x00\r\n"
        f"and {tempfile.gettempdir()}/windflow-validate-x1y2/docker-compose.yml in /srv/windflow/data/deployments/other"
    )
    assert text == "open wf-abc/docker-compose.yml red\nand ./docker-compose.yml in <deployments>/other"


def test_generic_shapes_still_masked():
    assert Redactor()("password=hunter22 Authorization: Bearer abcdefghijkl") == "password=*** Authorization: ***"


def test_server_log_record_is_one_line():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "failed: %s", ("out\n2026 [CRITICAL] forged\x1b[2J",), None)
    RedactingFilter().filter(record)
    message = record.getMessage()
    assert "\n" not in message and "\x1b" not in message
    assert message == "failed: out\\n2026 [CRITICAL] forged\\x1b[2J"


def test_public_actor():
    actor = "asyncio:build-host-7:4242:deadbeef"
    assert public_actor(actor, superuser=False) == "asyncio:deadbeef"
    assert public_actor(actor, superuser=True) == actor
    assert public_actor("alice@example.com", superuser=False) == "alice@example.com"
    assert public_actor("recovery", superuser=False) == "recovery"
    assert public_actor(None, superuser=False) is None


def test_worker_listing_hides_host_and_pid_from_non_superusers():
    from backend.app.api.system import _public

    worker = {"name": "celery@build-host-7", "kind": "external", "hostname": "build-host-7", "pid": 4242, "alive": True}
    assert _public(worker, superuser=True) == worker
    shown = _public(worker, superuser=False)
    assert shown == {"name": None, "kind": "external", "hostname": None, "pid": None, "alive": True}
    assert _public(None, superuser=False) is None


async def test_worker_listing_over_the_api(db):
    import httpx

    from backend.app import database
    from backend.app.main import create_app
    from backend.app.runtime.workers import write_heartbeat
    from backend.tests.conftest import make_settings
    from backend.tests.helpers import create_user, setup_admin

    async with database.AsyncSessionLocal() as session:
        await write_heartbeat(
            session,
            name="celery@build-host-7",
            kind="external",
            hostname="build-host-7",
            pid=4242,
            broker="redis",
            concurrency=2,
        )
        await session.commit()
    app = create_app(make_settings(db.settings.DATABASE_URL))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        admin = await setup_admin(client)
        member = await create_user(client, admin, "member@example.com")
        as_member = (await client.get("/api/v1/system/workers", headers=member.headers)).text
        as_admin = (await client.get("/api/v1/system/workers", headers=admin.headers)).text
    assert "build-host-7" not in as_member and "4242" not in as_member and '"external"' in as_member
    assert "build-host-7" in as_admin and "4242" in as_admin
