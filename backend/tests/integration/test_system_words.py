"""The System page's server words carry codes a client words itself: the execution mode's reason
(``core/celery_manager.py`` ``Reason``) and a degraded worker's problems (``runtime/worker_watchdog.py``
``Problem``), each with its params, beside the English text API clients read."""

from __future__ import annotations

import re

from backend.app import database
from backend.app.config import Settings
from backend.app.core import celery_manager
from backend.app.runtime import workers
from backend.tests.helpers import setup_admin


async def test_the_execution_modes_reason_has_a_code_and_its_english_text(client):
    admin = await setup_admin(client)
    body = (await client.get("/api/v1/system/workers", headers=admin.headers)).json()
    # the tests' app runs without Celery
    assert (body["reason_code"], body["reason_params"], body["reason"]) == ("celery_disabled", {}, "CELERY_ENABLED=false")
    health = (await client.get("/health")).json()
    assert health["execution_reason_code"] == "celery_disabled" and health["execution_reason"] == body["reason"]


def test_every_reason_the_manager_gives_has_a_listed_code():
    off = Settings(CELERY_ENABLED=False, DATABASE_URL="postgresql://u@h/d")
    assert celery_manager.unavailable_reason(off) == celery_manager.Reason("celery_disabled", "CELERY_ENABLED=false")
    sqlite = Settings(CELERY_ENABLED=True, DATABASE_URL="sqlite+aiosqlite:///x.db")
    assert celery_manager.unavailable_reason(sqlite).code == "sqlite_no_broker"
    assert celery_manager.unavailable_reason(Settings(CELERY_ENABLED=True, DATABASE_URL="postgresql://u@h/d")) is None
    source = celery_manager.__file__
    with open(source, encoding="utf-8") as handle:
        text = handle.read()

    used = set(re.findall(r'Reason\(\s*"([a-z_]+)"', text)) | {"celery_disabled", "sqlite_no_broker"}
    assert used == set(celery_manager.REASON_CODES)


async def test_a_degraded_workers_problems_come_with_codes_and_params(client):
    admin = await setup_admin(client)
    async with database.AsyncSessionLocal() as session:
        await workers.write_heartbeat(
            session,
            name="sick@b",
            kind="external",
            hostname="b",
            pid=7,
            broker="postgresql",
            concurrency=2,
            state=workers.DEGRADED,
            problem="the pool has 0/2 live processes and has not refilled for 12s",
            problem_codes=[{"code": "pool_not_refilled", "params": {"live": 0, "concurrency": 2, "seconds": 12}}],
        )
    seen = (await client.get("/api/v1/system/workers", headers=admin.headers)).json()["workers"]
    sick = next(w for w in seen if w["name"] == "sick@b")
    assert sick["state"] == "degraded" and sick["problem"].startswith("the pool has 0/2")
    assert sick["problems"] == [{"code": "pool_not_refilled", "params": {"live": 0, "concurrency": 2, "seconds": 12}}]
    # a healthy beat clears them
    async with database.AsyncSessionLocal() as session:
        await workers.write_heartbeat(session, name="sick@b", kind="external", hostname="b", pid=7, broker="postgresql", concurrency=2)
    seen = (await client.get("/api/v1/system/workers", headers=admin.headers)).json()["workers"]
    assert next(w for w in seen if w["name"] == "sick@b")["problems"] == []
