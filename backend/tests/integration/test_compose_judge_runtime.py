"""At run time ``compose up`` stays the final judge of a document the in-process judge let skip ``compose config``.

The runner's validate step skips the compose tool for a document
:func:`~backend.app.engines.compose_judge.certainly_valid` accepts. Should the judge ever be wrong, the
document still meets the tool: ``compose up`` reads it and its refusal fails the deployment, permanently,
with the tool's own message in ``error_message``, and nothing is left on the engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.app import database
from backend.app.engines import ComposeEngine
from backend.app.engines import compose as compose_driver
from backend.app.engines.base import DeploySpec, TargetConnection
from backend.app.models import Deployment, ExecutorKind, TargetType
from backend.app.services.deployments import runner
from backend.tests.conftest import TEST_IMAGE
from backend.tests.engine_fixtures import docker_client, labelled_objects  # noqa: F401 - fixture
from backend.tests.factories import make_deployment, plain_context

pytestmark = pytest.mark.docker

#: Refused by compose (a dependency on a service the document does not define); the judge defers on it.
REFUSED = f"services:\n  web:\n    image: {TEST_IMAGE}\n    command: ['sleep', '30']\n    depends_on: [db]\n"


async def _run(db, monkeypatch, tmp_path: Path, docker_engine: str) -> tuple[str, str | None, DeploySpec]:
    async with database.AsyncSessionLocal() as session:
        deployment = await make_deployment(session)
        await session.commit()
    spec = DeploySpec(deployment_id=deployment.id, compose=REFUSED, workdir=tmp_path / deployment.id)
    connection = TargetConnection(type=TargetType.DOCKER, endpoint=docker_engine)

    async def load_context(session, *, settings, deployment):
        return plain_context(
            deployment, ComposeEngine(connection, command=("docker", "compose")), spec, endpoint=docker_engine, target_name="local"
        )

    monkeypatch.setattr(runner, "load_context", load_context)
    outcome = await runner.run_deployment(deployment.id, db.settings, executor=ExecutorKind.ASYNCIO)
    async with database.AsyncSessionLocal() as session:
        row = await session.get(Deployment, deployment.id)
    return outcome.status, row.error_message, spec


async def test_a_document_the_tool_refuses_fails_at_validation(db, monkeypatch, tmp_path, docker_engine):
    status, error, _ = await _run(db, monkeypatch, tmp_path, docker_engine)
    assert status == "failed"
    assert error and "invalid compose document" in error and "db" in error, error


async def test_a_judge_mistake_is_caught_by_compose_up_with_the_tools_message(db, monkeypatch, tmp_path, docker_engine, docker_client):
    monkeypatch.setattr(compose_driver, "certainly_valid", lambda text: True)  # the judge, wrong
    status, error, spec = await _run(db, monkeypatch, tmp_path, docker_engine)
    assert status == "failed"
    assert error and "compose up failed" in error and "depends on undefined service" in error and "db" in error, error
    assert labelled_objects(docker_client, spec)["containers"] == []
