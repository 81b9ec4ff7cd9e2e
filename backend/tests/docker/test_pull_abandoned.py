"""A pull that hangs mid-blob (a registry behind :class:`SlowProxy`, which stops sending after a budget and keeps
the connection open) is abandoned for real: cancelling the deployment, or its pull timeout, shuts the pull's socket,
and the engine gives the pull up. Seen from outside the engine: once the registry answers again, the rest of the
blob is not downloaded and nothing is tagged (a pull merely no longer awaited completes then and tags the image).
The deployment ends cancelled, or failed saying which step timed out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import docker
import pytest

from backend.app.engines.base import project_name
from backend.app.runtime import background_tasks
from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import all_logs, force_cleanup, wait_status
from backend.tests.docker.test_deployments import make_env
from backend.tests.docker.test_private_registry import _image_stack, forget, push_fresh_layer
from backend.tests.registry_fixtures import SlowProxy, open_registry  # noqa: F401

#: What is abandoned here is the engine's pull and compose's up, the same code on either database: one database is
#: enough (SQLite, the embedded default; the state machine's two databases are tested in tests/integration)
pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]

LAYER = 3_000_000
BUDGET = 700_000  # bytes the proxy lets through before it hangs: the layer is a third downloaded


@pytest.fixture(scope="module")
def pushed(open_registry):
    """A fresh image (its own 3 MB layer) in the open registry, absent from the engine."""
    reference = push_fresh_layer(open_registry, LAYER)
    yield reference.removeprefix(open_registry.server + "/")
    forget(reference)


@pytest.fixture
def proxy(open_registry):
    slow = SlowProxy(open_registry.server, rate=2_000_000, stall_after=BUDGET)
    yield slow
    slow.close()


async def _env(db, docker_engine, tmp_path, **overrides):
    return await make_env(db, docker_engine, tmp_path, DEPLOYMENT_HEARTBEAT_SECONDS=0.3, DEPLOYMENT_LEASE_SECONDS=3, **overrides)


def _absent(reference: str) -> bool:
    try:
        docker.from_env().images.get(reference)
    except docker.errors.NotFound:
        return True
    return False


async def _until(predicate, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held (polled every 0.1 s); AssertionError naming ``what`` past ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not seen within {timeout} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def _deploy_through(env, proxy: SlowProxy, pushed: str, name: str) -> tuple[str, str]:
    reference = f"{proxy.server}/{pushed}"
    stack_id = await env.stack(_image_stack(reference), name=name)
    created = await env.deploy({}, stack_id=stack_id)
    return created["id"], reference


async def _engine_gave_up(proxy: SlowProxy, reference: str) -> None:
    """The registry answers again: an engine still pulling would download the rest and tag the image."""
    proxy.resume()
    await asyncio.sleep(3)  # the rest of the layer takes milliseconds on loopback, then the image is tagged
    assert _absent(reference), "the engine went on pulling after the pull was abandoned: the image is tagged"


async def test_cancel_during_a_hung_pull_stops_the_engines_pull(db, docker_engine, tmp_path, proxy, pushed, events):
    client, env = await _env(db, docker_engine, tmp_path)
    try:
        deployment_id, reference = await _deploy_through(env, proxy, pushed, "hung-cancel")
        await _until(lambda: proxy.stalled, 60, "the pull hanging mid-blob")
        await _until(
            lambda: any(
                e.type == "DEPLOYMENT_PULL_PROGRESS" and e.data["current_bytes"] > 0 for e in events if e.deployment_id == deployment_id
            ),
            10,
            "a progress event with bytes (sent before the hang)",
        )
        cancelled = await env.client.post(f"/api/v1/deployments/{deployment_id}/cancel", headers=env.admin.headers)
        assert cancelled.status_code == 200, cancelled.text
        started = time.monotonic()
        while True:  # the run stops within seconds although the registry never answers
            messages = [line["message"] for line in await all_logs(env.client, env.admin.headers, deployment_id)]
            if "Cancelled" in messages:
                break
            assert time.monotonic() - started < 10, messages
            await asyncio.sleep(0.1)
        print(f"run ended {time.monotonic() - started:.1f} s after the cancel")
        assert any(m.startswith("Cancelled during step 3/6 (Check images)") for m in messages), "\n".join(messages)
        assert not any(m.startswith("pulled image") for m in messages)
        body = (await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.admin.headers)).json()
        assert body["status"] == "cancelled"
        assert not docker.from_env().containers.list(
            ignore_removed=True, all=True, filters={"label": f"windflow.deployment_id={deployment_id}"}
        )
        await _engine_gave_up(proxy, reference)
    finally:
        forget(f"{proxy.server}/{pushed}")
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def test_pull_timeout_abandons_the_pull_and_says_which_step(db, docker_engine, tmp_path, proxy, pushed):
    client, env = await _env(db, docker_engine, tmp_path, DEPLOYMENT_PULL_TIMEOUT_SECONDS=3)
    try:
        deployment_id, reference = await _deploy_through(env, proxy, pushed, "hung-timeout")
        failed = await wait_status(env.client, env.admin.headers, deployment_id, {"running", "failed"}, timeout=60)
        assert failed["status"] == "failed"
        assert failed["attempt"] == 1, "a timed-out pull is not retried"
        message = failed["error_message"]
        assert "step Check images timed out" in message and "pull timeout of 3 s" in message and reference in message, message
        assert "layers" in message and " MB" in message, message
        logs = await all_logs(env.client, env.admin.headers, deployment_id)
        assert any(line["level"] == "error" and "timed out" in line["message"] for line in logs)
        await _engine_gave_up(proxy, reference)
    finally:
        forget(f"{proxy.server}/{pushed}")
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def test_a_stacks_own_pull_timeout_wins_and_a_bad_one_is_refused(db, docker_engine, tmp_path, proxy, pushed):
    client, env = await _env(db, docker_engine, tmp_path)  # the setting's timeout: its default, 30 minutes
    try:
        bad = await env.stack(_image_stack("busybox:1.36") + "x-windflow:\n  pull_timeout: soon\n", name="bad-timeout")
        refused = await env.client.post(
            "/api/v1/deployments", json={"stack_id": bad, "target_id": env.target_id, "variables": {}}, headers=env.admin.headers
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "invalid_pull_timeout"
        assert "x-windflow.pull_timeout must be a number of seconds" in refused.json()["detail"]

        reference = f"{proxy.server}/{pushed}"
        stack_id = await env.stack(_image_stack(reference) + "x-windflow:\n  pull_timeout: 2\n", name="own-timeout")
        created = await env.deploy({}, stack_id=stack_id)
        failed = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"}, timeout=60)
        assert failed["status"] == "failed" and failed["attempt"] == 1
        assert "pull timeout of 2 s" in failed["error_message"], failed["error_message"]
        await _engine_gave_up(proxy, reference)
    finally:
        forget(f"{proxy.server}/{pushed}")
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()


def _hanging_up_stack() -> str:
    """``web`` waits for ``db`` to be healthy, and ``db``'s first probe is an hour away: a real ``compose up`` that
    never returns (compose has no bound of its own on ``condition: service_healthy``)."""
    return (
        "services:\n"
        f"  db:\n    image: {TEST_IMAGE}\n    init: true\n"
        '    command: ["sh", "-c", "while true; do sleep 1; done"]\n'
        '    healthcheck:\n      test: ["CMD", "false"]\n      interval: 1h\n      start_period: 1h\n'
        f"  web:\n    image: {TEST_IMAGE}\n    init: true\n"
        '    command: ["sh", "-c", "while true; do sleep 1; done"]\n'
        "    depends_on:\n      db:\n        condition: service_healthy\n"
    )


def _processes_naming(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{proc.name}: {cmdline}")
    return found


async def test_up_timeout_kills_a_hung_compose_up_and_says_which_step(db, docker_engine, tmp_path):
    # 8 s: long enough for compose to create both containers and say what it waits for on a loaded machine (at
    # 3 s, a CI run under load killed it before it had)
    client, env = await _env(db, docker_engine, tmp_path, DEPLOYMENT_UP_TIMEOUT_SECONDS=8, DEPLOYMENT_MAX_ATTEMPTS=3)
    try:
        stack_id = await env.stack(_hanging_up_stack(), name="hung-up")
        created = await env.deploy({}, stack_id=stack_id)
        started = time.monotonic()
        failed = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"}, timeout=60)
        print(f"failed {time.monotonic() - started:.1f} s after the POST")
        assert failed["status"] == "failed"
        assert failed["attempt"] == 1, "a timed-out up is not retried: it would hang the same way"
        message = failed["error_message"]
        project = project_name(created["id"])
        assert "step Start services timed out" in message and "within 8 s (DEPLOYMENT_UP_TIMEOUT_SECONDS)" in message, message
        assert f"{project}-db-1" in message, message  # what compose was waiting for
        logs = await all_logs(env.client, env.admin.headers, created["id"])
        assert any(line["level"] == "error" and "DEPLOYMENT_UP_TIMEOUT_SECONDS" in line["message"] for line in logs)
        assert not _processes_naming(project), "compose up outlived its timeout"
        assert not docker.from_env().containers.list(
            ignore_removed=True, all=True, filters={"label": f"windflow.deployment_id={created['id']}"}
        )
    finally:
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def test_a_stacks_own_up_timeout_wins_and_a_bad_one_is_refused(db, docker_engine, tmp_path):
    client, env = await _env(db, docker_engine, tmp_path)  # the setting's up timeout: its default, 10 minutes
    try:
        bad = await env.stack(_hanging_up_stack() + "x-windflow:\n  up_timeout: 0\n", name="bad-up-timeout")
        refused = await env.client.post(
            "/api/v1/deployments", json={"stack_id": bad, "target_id": env.target_id, "variables": {}}, headers=env.admin.headers
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "invalid_up_timeout"
        assert "x-windflow.up_timeout must be a number of seconds between 1 and 86400" in refused.json()["detail"]

        stack_id = await env.stack(_hanging_up_stack() + "x-windflow:\n  up_timeout: 2\n", name="own-up-timeout")
        created = await env.deploy({}, stack_id=stack_id)
        failed = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"}, timeout=60)
        assert failed["status"] == "failed" and failed["attempt"] == 1
        assert "within 2 s (x-windflow.up_timeout)" in failed["error_message"], failed["error_message"]
        assert not _processes_naming(project_name(created["id"])), "compose up outlived its timeout"
    finally:
        await background_tasks.shutdown()
        for deployment_id in env.created:
            force_cleanup(deployment_id)
        await client.aclose()
