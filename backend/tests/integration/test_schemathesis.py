"""Property-based fuzzing of every operation of ``/openapi.json`` (schemathesis) against a real backend process.

Bounded (a fixed seed, a few examples per operation, a time cap) so that it runs in ``make test``; it fails on
any server error and on any answer the document does not describe (an undocumented status, a body or content
type that does not match its schema). The SSE route is fuzzed too, with a request timeout: a generated id is
never a real deployment's, so it answers at once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backend.tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD
from backend.tests.realtime_helpers import Server

#: seconds the whole run may take; schemathesis stops generating when it is spent
MAX_TIME_SECONDS = 30
EXAMPLES_PER_OPERATION = 8
SEED = 25


@pytest.fixture
async def server(db, tmp_path):
    if db.kind != "postgresql":
        pytest.skip("the document is the same on both databases: fuzzed once, on PostgreSQL (the time budget)")
    server = await Server.start(db.settings.DATABASE_URL, tmp_path)
    try:
        yield server
    finally:
        server.stop()


async def test_every_operation_answers_as_documented_under_fuzzing(server, tmp_path) -> None:
    async with server.http() as client:
        setup = await client.post(
            "/api/v1/auth/setup", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": "fuzz"}
        )
        assert setup.status_code == 201, setup.text
        token = await client.post(
            "/api/v1/tokens", json={"name": "fuzz"}, headers={"Authorization": f"Bearer {setup.json()['access_token']}"}
        )
        assert token.status_code == 201, token.text
        operations = len([m for path in (await client.get("/openapi.json")).json()["paths"].values() for m in path])
    st = Path(sys.executable).with_name("st")
    run = subprocess.run(
        [
            str(st),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token.json()['token']}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            str(SEED),
            "--max-time",
            str(MAX_TIME_SECONDS),
            "--request-timeout",
            "30",  # a loaded machine: a stack's creation runs the compose tool
            "--workers",
            "1",
            "--no-color",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=MAX_TIME_SECONDS * 3,
        cwd=tmp_path,
    )
    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert f"{operations} selected / {operations} total" in run.stdout, report  # every operation was fuzzed
