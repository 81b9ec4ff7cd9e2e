"""Log lines keep their colours (ANSI SGR) through redaction, ``?strip=true`` gives plain text, and a failed
service's last lines appear once in the deployment's log, each at its own level."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.core.logging import Redactor
from backend.app.database import utcnow
from backend.app.engines.base import DeploySpec, EngineError
from backend.app.engines.docker_base import DockerEngine
from backend.app.models import DeploymentLog, ExecutorKind, LogLevel, Membership, Role
from backend.app.services.deployments import runner
from backend.app.services.deployments.log_text import plain, redact_keeping_colours
from backend.app.services.deployments.logs import append_logs
from backend.tests.factories import make_deployment, plain_context
from backend.tests.helpers import setup_admin

GREEN = "\x1b[32m"
RESET = "\x1b[0m"


@pytest.mark.parametrize(
    ("line", "stored"),
    [
        (f"{GREEN}ready{RESET} on :8080", f"{GREEN}ready{RESET} on :8080"),  # colours kept
        (f"\x1b[1;31mfatal{RESET}: \x1b[38;5;208mdisk\x1b[0m", f"\x1b[1;31mfatal{RESET}: \x1b[38;5;208mdisk\x1b[0m"),
        (f"password is {GREEN}hunter2-secret{RESET}", f"password is {GREEN}***{RESET}"),  # masked inside a colour
        (f"pw hunter2-{RESET}secret", "pw ***"),  # a secret split by a code: masked in the plain line
        ("\x1b[2Kcleared\x1b[1Aup\x07", "clearedup"),  # cursor moves and bells removed
        ("\x1b[12345678mnumber", "number"),  # a long parameter is not a colour
        ("two\nlines", "twolines"),  # one line stays one line
        ("<b>not html</b>", "<b>not html</b>"),  # text, stored as written
    ],
)
def test_redaction_keeps_colours_but_never_what_it_masks(line: str, stored: str) -> None:
    assert redact_keeping_colours(Redactor(["hunter2-secret"]), line) == stored


def test_plain_drops_every_sequence() -> None:
    assert plain(f"{GREEN}ok{RESET} done") == "ok done"
    assert plain("no escapes") == "no escapes"


async def test_the_log_keeps_colours_and_strip_true_gives_plain_text(client, db) -> None:
    admin = await setup_admin(client)
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session)
        session.add(Membership(user_id=admin.user_id, organization_id=deployment.organization_id, role=Role.OWNER))
        await append_logs(
            session,
            deployment_id=deployment.id,
            lines=[
                (LogLevel.INFO, f"{GREEN}listening{RESET} on :8080", utcnow()),
                (LogLevel.INFO, "<script>alert(1)</script>", utcnow()),
            ],
        )
        await session.commit()
    raw = await client.get(f"/api/v1/deployments/{deployment.id}/logs", headers=admin.headers)
    assert raw.status_code == 200, raw.text
    assert [line["message"] for line in raw.json()["items"]] == [f"{GREEN}listening{RESET} on :8080", "<script>alert(1)</script>"]
    stripped = await client.get(f"/api/v1/deployments/{deployment.id}/logs?strip=true", headers=admin.headers)
    assert [line["message"] for line in stripped.json()["items"]] == ["listening on :8080", "<script>alert(1)</script>"]


class _FailingEngine:
    """Every step passes but the last: its service exits, its last lines are logged (each at its level) and
    quoted in the error, as the drivers do."""

    def __getattr__(self, name):
        async def step(spec, log):
            if name == "wait_healthy":
                await log(LogLevel.INFO, "app | INFO starting")
                await log(LogLevel.ERROR, "app | ERROR database unreachable")
                raise EngineError(
                    "service app exited with code 1; last log lines:\nINFO starting\nERROR database unreachable",
                    transient=False,
                    output_logged=True,
                )

        return step


async def test_a_failed_services_last_lines_appear_once(db, monkeypatch, tmp_path: Path) -> None:
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session)
        await session.commit()
    spec = DeploySpec(deployment_id=deployment.id, compose="services: {}\n", workdir=tmp_path)

    async def load_context(session, *, settings, deployment):
        return plain_context(deployment, _FailingEngine(), spec)

    monkeypatch.setattr(runner, "load_context", load_context)
    outcome = await runner.run_deployment(deployment.id, db.settings, executor=ExecutorKind.ASYNCIO)
    assert outcome.status == "failed", outcome
    async with database.AsyncSessionLocal() as session:
        rows = (
            (await session.execute(select(DeploymentLog).where(DeploymentLog.deployment_id == deployment.id).order_by(DeploymentLog.seq)))
            .scalars()
            .all()
        )
    messages = [(str(r.level), r.message) for r in rows]
    assert sum("database unreachable" in m for _, m in messages) == 1, messages
    assert sum("starting" in m for _, m in messages) == 1, messages
    assert ("info", "app | INFO starting") in messages and ("error", "app | ERROR database unreachable") in messages
    assert ("error", "service app exited with code 1; last log lines:") in messages


async def test_the_docker_driver_says_the_output_it_quotes_is_logged() -> None:
    logged: list[tuple[LogLevel, str]] = []

    async def log(level, message):
        logged.append((level, message))

    async def last_logs(self, session, container, lines=10):
        return "WARN slow\nboom"

    class Driver:
        _last_logs = last_logs
        _fail = DockerEngine._fail

    with pytest.raises(EngineError) as caught:
        await Driver()._fail(None, "app", object(), "exited with code 1", log)
    assert caught.value.output_logged and caught.value.summary == "service app exited with code 1; last log lines:"
    assert logged == [(LogLevel.WARNING, "app | WARN slow"), (LogLevel.ERROR, "app | boom")]
