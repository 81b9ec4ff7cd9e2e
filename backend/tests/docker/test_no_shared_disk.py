"""No shared disk: every step of a deployment runs from the database alone.

The project directory under ``DEPLOYMENTS_WORKDIR`` is only a local copy of the stored snapshot; a process
that did not deploy the deployment (another worker, another host, a fresh container) has none. Here the
directory is deleted before each action, and stop, start, redeploy and delete through the API still act on
the deployment's containers (HTTP API → asyncio executor / lifecycle → real Docker engine).
"""

from __future__ import annotations

import shutil
import stat

import pytest

from backend.app.engines.docker_base import COMPOSE_FILE
from backend.app.runtime import background_tasks
from backend.tests.deploy_helpers import force_cleanup, free_port, http_get, labelled, wait_deleted, wait_status
from backend.tests.docker.test_deployments import make_env

pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)]


async def test_stop_start_redeploy_delete_with_no_project_directory(db, docker_engine, tmp_path):
    client, env = await make_env(db, docker_engine, tmp_path)
    workdir = tmp_path / "deployments"
    try:
        port = free_port()
        created = await env.deploy({"port": port})
        deployment_id = created["id"]
        url = f"/api/v1/deployments/{deployment_id}"
        headers = env.admin.headers
        running = await wait_status(client, headers, deployment_id, {"running", "failed"})
        assert running["status"] == "running", running["error_message"]
        project = workdir / deployment_id
        assert (project / COMPOSE_FILE).is_file()

        shutil.rmtree(project)
        stopped = await client.post(f"{url}/stop", headers=headers)
        assert stopped.status_code == 202, stopped.text
        assert (await wait_status(client, headers, deployment_id, {"stopped", "failed"}))["status"] == "stopped"
        with pytest.raises(OSError):
            http_get(port, timeout=1)
        # rebuilt from the snapshot, with the modes of a deployment's directory and its rendered file
        assert stat.S_IMODE(project.stat().st_mode) == 0o700
        assert stat.S_IMODE((project / COMPOSE_FILE).stat().st_mode) == 0o600

        shutil.rmtree(project)
        started = await client.post(f"{url}/start", headers=headers)
        assert started.status_code == 200, started.text
        again = await wait_status(client, headers, deployment_id, {"running", "failed"})
        assert again["status"] == "running", again["error_message"]
        assert http_get(port).strip() == "hello-windflow"

        shutil.rmtree(project)
        redeployed = await client.post(f"{url}/redeploy", headers=headers)
        assert redeployed.status_code == 200, redeployed.text
        again = await wait_status(client, headers, deployment_id, {"running", "failed"})
        assert again["status"] == "running", again["error_message"]
        assert http_get(port).strip() == "hello-windflow"

        shutil.rmtree(project)
        deleted = await client.delete(url, headers=headers)
        assert deleted.status_code == 202, deleted.text
        await wait_deleted(client, headers, deployment_id)
        assert labelled("container", deployment_id) == []
        assert labelled("network", deployment_id) == []
        assert not project.exists()
        assert (await client.get(url, headers=headers)).status_code == 404
    finally:
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()
