"""The end of a rollout: the runner's last log lines and the status ``running`` are written by one transaction
(``runner._settle`` with the log writer), lines first, so no line of the run arrives after it says running."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from backend.app import database
from backend.app.runtime import background_tasks
from backend.tests.deploy_helpers import all_logs, force_cleanup, free_port, wait_status
from backend.tests.docker.test_deployments import make_env

pytestmark = pytest.mark.docker


async def test_the_last_lines_and_running_are_committed_together(db, docker_engine, tmp_path, events):
    client, env = await make_env(db, docker_engine, tmp_path)
    transactions: list[list[tuple[str, str]]] = []
    open_ones: dict[int, list[tuple[str, str]]] = {}

    def executed(conn, _cursor, statement, parameters, _context, _many) -> None:
        open_ones.setdefault(id(conn), []).append((statement, repr(parameters)))

    def committed(conn) -> None:
        transactions.append(open_ones.pop(id(conn), []))

    def rolled_back(conn) -> None:
        open_ones.pop(id(conn), None)

    sync = database.get_engine().sync_engine
    hooks = {"before_cursor_execute": executed, "commit": committed, "rollback": rolled_back}
    for name, hook in hooks.items():
        event.listen(sync, name, hook)
    try:
        created = await env.deploy({"port": free_port()})
        running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
        assert running["status"] == "running", running["error_message"]
    finally:
        for name, hook in hooks.items():
            event.remove(sync, name, hook)
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)

    def writes(transaction, table: str, text: str) -> bool:
        return any(statement.startswith(f"INSERT INTO {table}") and text in parameters for statement, parameters in transaction)

    settled = [t for t in transactions if writes(t, "deployment_status_history", "'running'")]
    assert len(settled) == 1, "one transaction writes the status running"
    assert writes(settled[0], "deployment_logs", "Deployment is running"), "the last line was committed apart from the status"
    statements = [statement for statement, _ in settled[0]]
    first_line = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO deployment_logs"))
    status = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO deployment_status_history"))
    assert first_line < status, "the lines are written before the status"

    # and the events say it in that order: every line of the run before the status running
    mine = [e for e in events if e.deployment_id == created["id"]]
    said_running = next(i for i, e in enumerate(mine) if e.type == "DEPLOYMENT_STATUS_CHANGED" and e.data["new_status"] == "running")
    streamed = [line["message"] for e in mine[:said_running] if e.type == "DEPLOYMENT_LOGS_UPDATE" for line in e.data["logs"]]
    logs = await all_logs(client, env.admin.headers, created["id"])
    assert streamed == [line["message"] for line in logs] and "Deployment is running" in streamed[-1]
    await client.aclose()
