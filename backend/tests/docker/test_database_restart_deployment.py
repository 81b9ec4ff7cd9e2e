"""A deployment the backend runs itself (in-process, Celery disabled) across a PostgreSQL restart.

A private cluster (never the shared server) is stopped while the runner waits for its containers to be
stable, and started again before that wait ends. The runner does not need the database meanwhile; its log
lines wait in its writer, its lease renewal is retried. The deployment ends ``running`` with its one
container created once and every log line stored exactly once, in ``seq`` order, and the server log warns
of the outage without a traceback. ``-m immediate`` is a crash: the cluster runs with durable commits
(the helper's default, ``synchronous_commit = off``, would lose acknowledged commits in a crash, which says
nothing about WindFlow).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from backend.tests import conftest
from backend.tests.deploy_helpers import force_cleanup, labelled, wait_status
from backend.tests.helpers import setup_admin
from backend.tests.realtime_helpers import Server

pytestmark = pytest.mark.docker

TICKER = {
    "name": "ticker",
    "template": (
        "services:\n  app:\n"
        f"    image: {conftest.TEST_IMAGE}\n"
        "    init: true\n"
        "    network_mode: none\n"
        '    command: ["sh", "-c", "i=0; while true; do echo tick $$i; i=$$((i+1)); sleep 0.2; done"]\n'
    ),
}
STABLE_SECONDS = 12.0  # the runner's last step: the database is back well before it ends
OUTAGE_MET = "skipped: the database is unreachable"


async def _private_cluster():
    try:
        from backend.tests.pg_cluster import PrivateCluster

        cluster = await asyncio.to_thread(PrivateCluster)
    except (FileNotFoundError, RuntimeError) as exc:
        conftest.require_service("a private PostgreSQL cluster (initdb, pg_ctl)", str(exc))
    import psycopg

    with psycopg.connect(cluster.dsn, autocommit=True) as conn:  # durable commits, as a production server has
        conn.execute("ALTER SYSTEM SET synchronous_commit = on")
        conn.execute("SELECT pg_reload_conf()")
    return cluster


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_an_in_process_deployment_goes_on_across_a_database_restart(docker_engine, tmp_path, mode):
    cluster = await _private_cluster()
    server = None
    deployment_id = None
    try:
        server = await Server.start(
            cluster.async_url,
            tmp_path,
            RUN_MIGRATIONS_ON_STARTUP=True,
            EVENT_BUS="postgres",
            DEPLOYMENTS_WORKDIR=str(tmp_path / "deployments"),
            DEPLOYMENT_STABLE_SECONDS=STABLE_SECONDS,
            DEPLOYMENT_HEARTBEAT_SECONDS=0.5,  # the lease renewal meets the outage at once
        )
        pid = server.proc.pid
        async with server.http() as http:
            admin = await setup_admin(http)
            headers = admin.headers
            target = await http.post(
                "/api/v1/targets", headers=headers, json={"name": "engine", "type": "docker", "endpoint": docker_engine}
            )
            stack = await http.post("/api/v1/stacks", headers=headers, json=TICKER)
            created = await http.post(
                "/api/v1/deployments", headers=headers, json={"stack_id": stack.json()["id"], "target_id": target.json()["id"]}
            )
            assert created.status_code == 201, created.text
            deployment_id = created.json()["id"]

            deadline = time.monotonic() + 60
            while True:  # the runner's last step: waiting for the container to be stable
                body = (await http.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).json()
                assert body["status"] in ("pending", "deploying"), body
                if body["status"] == "deploying" and body["total_steps"] and body["current_step"] == body["total_steps"]:
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.1)
            containers = labelled("container", deployment_id)
            assert len(containers) == 1, containers

            await asyncio.to_thread(cluster.stop, mode)
            stopped_at = time.monotonic()
            while server.output().count(OUTAGE_MET) < 2:  # the reaper and the runner's lease renewal met it
                assert time.monotonic() < stopped_at + 10, server.output()[-3000:]
                await asyncio.sleep(0.1)
            await asyncio.to_thread(cluster.start)
            assert time.monotonic() - stopped_at < STABLE_SECONDS - 2, "the outage outlasted the runner's wait"

            final = await wait_status(http, headers, deployment_id, {"running", "failed"}, timeout=60)
            assert final["status"] == "running" and final["attempt"] == 1, final
            logs = (await http.get(f"/api/v1/deployments/{deployment_id}/logs", headers=headers)).json()
            seqs = [line["seq"] for line in logs["items"]]
            assert seqs == list(range(1, logs["last_seq"] + 1)), seqs
            messages = [line["message"] for line in logs["items"]]
            assert messages[0].startswith("Deployment started") and messages[-1] == "Deployment is running", messages
            for step in range(1, 7):
                assert sum(m.startswith(f"[{step}/6]") for m in messages) == 1, messages
            assert labelled("container", deployment_id) == containers  # the same container, created once
        assert server.proc.pid == pid and server.proc.alive()
        output = server.output()
        assert "Traceback" not in output and "could not store" not in output, output[-5000:]
    finally:
        if server is not None:
            server.stop()  # first: its runner may still be creating the container
        if deployment_id:
            force_cleanup(deployment_id)
        await asyncio.to_thread(cluster.destroy)
