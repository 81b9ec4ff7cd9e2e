"""Nothing secret in stored or returned text, against the real Docker engine.

A container that prints its own secret (and the platform's ``SECRET_KEY``, and terminal escapes) and dies:
its text reaches ``error_message``, the log lines, the events and the server log only through *that
deployment's* redactor. Organisation A's output is never masked with organisation B's secrets (that would be
a guessing oracle). Executor actors show no host or PID to non-superusers. Files at rest are private.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import stat

import httpx
import pytest
from sqlalchemy import select

from backend.app import database
from backend.app.core.logging import RedactingFilter
from backend.app.engines.docker_base import COMPOSE_FILE
from backend.app.main import create_app
from backend.app.models import Deployment, DeploymentLog, DeploymentStatusHistory
from backend.app.runtime import background_tasks
from backend.app.services.deployments.log_text import SGR
from backend.tests.conftest import TEST_IMAGE, TEST_SECRET_KEY, make_settings
from backend.tests.deploy_helpers import all_logs, force_cleanup, wait_status
from backend.tests.helpers import add_member, create_user, default_org, setup_admin

pytestmark = pytest.mark.docker

SECRET_A = "Alpha-Secret-Value-0001"
SECRET_B = "Bravo-Secret-Value-0002"

# Prints its secret, a value given as a plain variable, terminal escapes and a forged log record; then is
# unhealthy (a container that exits at once may be seen running first: the health check fails for sure).
LEAKY = {
    "name": "leaky",
    "template": (
        "services:\n"
        "  leaky:\n"
        f"    image: {TEST_IMAGE}\n"
        # PID 1 passes the removal's SIGTERM on: the failed revision's container goes at once, not after the
        # 10 s the engine waits for a shell that ignores it
        "    init: true\n"
        '    command: ["sh", "-c", "echo \\"password=$$PW plain $$NOTE\\"; echo \\"my pw: $$PW\\"; '
        "printf 'red\\\\033[31m text\\\\n2026-01-01 00:00:00 [CRITICAL] forged: record\\\\n'; exec sleep 600\"]\n"
        # unhealthy at its first check: a deterministic failure that quotes the container's output
        '    healthcheck:\n      test: ["CMD", "false"]\n      interval: 1s\n      timeout: 1s\n      retries: 1\n'
        "    environment:\n"
        '      PW: "{{ db_password }}"\n'
        '      NOTE: "{{ note }}"\n'
    ),
    "variables": [
        {"name": "db_password", "type": "secret", "required": True},
        {"name": "note", "type": "string", "default": "nothing"},
    ],
}


@pytest.fixture
def server_log():
    """The server log as ``setup_logging`` writes it: a handler behind the redacting filter."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("REC|%(name)s|%(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.fixture
async def api(db, docker_engine, tmp_path):
    settings = make_settings(
        db.settings.DATABASE_URL,
        DEPLOYMENTS_WORKDIR=tmp_path / "data" / "deployments",
        DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=30,
        DEPLOYMENT_RETRY_BACKOFF_SECONDS=0.2,
    )
    app = create_app(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    created: list[str] = []
    try:
        yield client, settings, created
    finally:
        await background_tasks.shutdown()
        for deployment_id in created:
            force_cleanup(deployment_id)
        await client.aclose()


async def _org_setup(client, admin, docker_engine, organization_id: str) -> tuple[str, str]:
    target = await client.post(
        "/api/v1/targets",
        json={"name": "engine", "type": "docker", "endpoint": docker_engine, "organization_id": organization_id},
        headers=admin.headers,
    )
    assert target.status_code == 201, target.text
    stack = await client.post("/api/v1/stacks", json={**LEAKY, "organization_id": organization_id}, headers=admin.headers)
    assert stack.status_code == 201, stack.text
    return target.json()["id"], stack.json()["id"]


async def _deploy_and_fail(client, admin, created, target_id, stack_id, variables, organization_id=None) -> dict:
    response = await client.post(
        "/api/v1/deployments",
        json={"stack_id": stack_id, "target_id": target_id, "variables": variables, "organization_id": organization_id},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    created.append(response.json()["id"])
    failed = await wait_status(client, admin.headers, response.json()["id"], {"failed", "running"})
    assert failed["status"] == "failed", failed
    return failed


async def _stored_texts(deployment_id: str) -> str:
    async with database.AsyncSessionLocal() as session:
        row = await session.get(Deployment, deployment_id)
        logs = (await session.execute(select(DeploymentLog.message).where(DeploymentLog.deployment_id == deployment_id))).scalars()
        history = (
            await session.execute(select(DeploymentStatusHistory).where(DeploymentStatusHistory.deployment_id == deployment_id))
        ).scalars()
        return "\n".join([row.error_message or "", *logs, *(f"{h.reason} {h.actor}" for h in history)])


async def test_container_secret_and_secret_key_never_stored_returned_or_logged(api, docker_engine, events, server_log, tmp_path):
    client, settings, created = api
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    target_id, stack_id = await _org_setup(client, admin, docker_engine, org)
    failed = await _deploy_and_fail(client, admin, created, target_id, stack_id, {"db_password": SECRET_A, "note": TEST_SECRET_KEY})
    deployment_id = failed["id"]
    # the failure says why, from the container's own words, with the secrets masked
    assert "is unhealthy" in failed["error_message"]
    assert "my pw: ***" in failed["error_message"] and "plain ***" in failed["error_message"]
    logs = await all_logs(client, admin.headers, deployment_id)
    history = (await client.get(f"/api/v1/deployments/{deployment_id}/history", headers=admin.headers)).text
    listing = (await client.get("/api/v1/deployments", headers=admin.headers)).text
    responses = "\n".join([str(failed), str(logs), history, listing])
    # the note variable is the caller's own input, shown back as given; everything else must not hold it
    engine_texts = "\n".join([failed["error_message"], str(logs), history])
    stored = await _stored_texts(deployment_id)
    published = "\n".join(str(e.data) for e in events if e.deployment_id == deployment_id)
    assert published, "events were published"
    for text in (responses, stored, published, server_log.getvalue()):
        assert SECRET_A not in text
    for text in (engine_texts, stored, server_log.getvalue()):
        assert TEST_SECRET_KEY not in text
    assert TEST_SECRET_KEY not in str(failed["error_message"]) and "plain ***" in failed["error_message"]
    # container output keeps its colours (SGR sequences, which the UI renders as styled text) and no other
    # terminal escape; the failure's message and the history have none; it never forges a server log record
    assert any("red\x1b[31m text" in line["message"] for line in logs), logs
    assert "\x1b" not in SGR.sub("", stored) and "\x1b" not in SGR.sub("", responses)
    assert "\x1b" not in failed["error_message"] and "\x1b" not in history
    log_text = server_log.getvalue()
    assert f"deployment {deployment_id}" in log_text, "the failure reached the server log"
    assert all(line.startswith("REC|") for line in log_text.splitlines()), log_text
    assert "\x1b" not in log_text
    # no absolute host path in what a tenant reads
    assert str(tmp_path) not in responses and str(settings.DEPLOYMENTS_WORKDIR) not in responses
    assert any(re.match(r"wrote [\w.-]+ of project wf-", line["message"]) for line in logs), logs


async def test_no_masking_oracle_across_organisations(api, docker_engine):
    """B's password printed by A's container is not masked in A's texts: A learns nothing from masking."""
    client, _, created = api
    admin = await setup_admin(client)
    org_a = await default_org(client, admin)
    org_b = await client.post("/api/v1/organizations", json={"name": "bravo"}, headers=admin.headers)
    assert org_b.status_code == 201, org_b.text
    target_b, stack_b = await _org_setup(client, admin, docker_engine, org_b.json()["id"])
    target_a, stack_a = await _org_setup(client, admin, docker_engine, org_a)
    # B deploys first, so this process has seen (decrypted, registered) B's secret
    failed_b = await _deploy_and_fail(
        client, admin, created, target_b, stack_b, {"db_password": SECRET_B}, organization_id=org_b.json()["id"]
    )
    assert SECRET_B not in failed_b["error_message"] and "my pw: ***" in failed_b["error_message"]
    # A's container prints B's password as a plain value
    failed_a = await _deploy_and_fail(client, admin, created, target_a, stack_a, {"db_password": SECRET_A, "note": SECRET_B})
    assert f"plain {SECRET_B}" in failed_a["error_message"], failed_a["error_message"]
    assert SECRET_A not in failed_a["error_message"]
    logs = await all_logs(client, admin.headers, failed_a["id"])
    assert any(SECRET_B in line["message"] for line in logs)
    assert not any(SECRET_A in line["message"] for line in logs)


async def test_actors_show_no_host_or_pid_to_non_superusers(api, docker_engine):
    client, _, created = api
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    viewer = await create_user(client, admin, "viewer@example.com")
    await add_member(client, admin, org, viewer, "viewer")
    target_id, stack_id = await _org_setup(client, admin, docker_engine, org)
    failed = await _deploy_and_fail(client, admin, created, target_id, stack_id, {"db_password": SECRET_A})
    path = f"/api/v1/deployments/{failed['id']}/history"
    as_viewer = (await client.get(path, headers=viewer.headers)).json()
    as_superuser = (await client.get(path, headers=admin.headers)).json()
    host, pid = socket.gethostname(), f":{os.getpid()}:"
    executor_actors = [h["actor"] for h in as_viewer if (h["actor"] or "").startswith("asyncio")]
    assert executor_actors, as_viewer
    assert all(host not in a and pid not in a for a in executor_actors), executor_actors
    reasons = [h["reason"] or "" for h in as_viewer]  # "claimed by <executor>" hides it as the actor does
    assert any(r.startswith("claimed by asyncio:") for r in reasons) and not any(host in r or pid in r for r in reasons)
    assert any(host in (h["actor"] or "") and pid in (h["actor"] or "") for h in as_superuser), as_superuser
    logs = await all_logs(client, viewer.headers, failed["id"])
    assert not any(pid in line["message"] or f":{host}:" in line["message"] for line in logs)


async def test_files_at_rest_are_private(api, docker_engine):
    client, settings, created = api
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    target_id, stack_id = await _org_setup(client, admin, docker_engine, org)
    failed = await _deploy_and_fail(client, admin, created, target_id, stack_id, {"db_password": SECRET_A})
    workdir = settings.DEPLOYMENTS_WORKDIR / failed["id"]
    compose_file = workdir / COMPOSE_FILE
    assert SECRET_A in compose_file.read_text(), "the rendered file holds the secret (compose needs it)"
    assert stat.S_IMODE(os.stat(compose_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(workdir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(settings.DEPLOYMENTS_WORKDIR).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(settings.DEPLOYMENTS_WORKDIR.parent).st_mode) == 0o700
    assert not any(p.name.endswith(".tmp") for p in workdir.iterdir())


async def test_service_logs_are_masked_with_their_own_deployment_secrets_only(db, session):
    """The live service-log stream uses the deployment's own redactor: A's secret is masked in A's stream,
    and B's secret (registered process-wide by B's deployment) is not, so masking is no oracle there either."""
    from backend.app.core import security
    from backend.app.core.logging import register_secret
    from backend.app.models import DeploymentStatus
    from backend.app.services.deployments import service_logs
    from backend.tests.factories import make_deployment

    settings = db.settings
    register_secret(SECRET_B)  # what B's deployment did in this process
    deployment = await make_deployment(
        session,
        DeploymentStatus.RUNNING,
        variables={"db_password": {"__encrypted__": security.encrypt_secret(settings, SECRET_A)}, "note": "plain"},
    )
    follower = await service_logs.prepare(session, settings=settings, deployment=deployment, tail=10)
    line = follower.redact(f"a={SECRET_A} b={SECRET_B} key={settings.SECRET_KEY}")
    assert SECRET_A not in line and settings.SECRET_KEY not in line
    assert f"b={SECRET_B}" in line, line
