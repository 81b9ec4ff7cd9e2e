"""The health gate and image pinning of the compose driver (v2 and v1) against the real Docker engine.

Each test uses its own deployment id and removes what it created in a ``finally``.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import pytest

from backend.app.engines import ComposeEngine, docker_base, engine_events
from backend.app.engines.base import EngineError
from backend.app.models.enums import LogLevel
from backend.tests.conftest import TEST_IMAGE
from backend.tests.engine_fixtures import (
    LogCapture,
    docker_client,  # noqa: F401 - fixture
    force_cleanup,
    labelled_objects,
    local_connection,
    make_spec,
)

pytestmark = pytest.mark.docker

STEPS = ("validate", "prepare", "ensure_images", "create_resources", "start_services", "wait_healthy")
DRIVERS = {"compose-v2": ("docker", "compose"), "compose-v1": ("docker-compose",)}


async def deploy(engine, spec, log) -> None:
    for step in STEPS:
        await getattr(engine, step)(spec, log)


async def cleanup(engine, spec, client) -> None:
    try:
        await engine.remove(spec, LogCapture())
    finally:
        force_cleanup(client, spec)


def image_id(reference: str) -> str:
    return subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", reference], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


@pytest.mark.parametrize("kind", DRIVERS)
async def test_a_container_that_dies_a_second_after_start_fails_the_gate(kind, docker_engine, docker_client, tmp_path):
    """Up at the first polls, gone a second later: the settle window catches it with its code and output."""
    spec = make_spec(
        tmp_path,
        f"""
services:
  web:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
  app:
    image: {TEST_IMAGE}
    command: ["sh", "-c", "echo 'DATABASE_URL is not set'; sleep 1; exit 3"]
""",
        health_timeout=30,
        stable_seconds=3,
    )
    engine = ComposeEngine(local_connection(docker_engine), command=DRIVERS[kind])
    log = LogCapture()
    try:
        with pytest.raises(EngineError) as caught:
            await deploy(engine, spec, log)
        assert caught.value.transient is False
        assert caught.value.message.startswith("service app exited with code 3; last log lines:")
        assert "DATABASE_URL is not set" in caught.value.message
        assert any("app | DATABASE_URL is not set" in line for line in log.at(LogLevel.ERROR))
    finally:
        await cleanup(engine, spec, docker_client)


async def test_a_restart_during_the_window_fails_the_gate(docker_engine, docker_client, tmp_path):
    spec = make_spec(
        tmp_path,
        f"""
services:
  app:
    image: {TEST_IMAGE}
    restart: always
    command: ["sh", "-c", "echo starting; sleep 1; echo 'out of memory'; exit 2"]
""",
        health_timeout=30,
        stable_seconds=4,
    )
    engine = ComposeEngine(local_connection(docker_engine))
    log = LogCapture()
    try:
        with pytest.raises(EngineError) as caught:
            await deploy(engine, spec, log)
        message = caught.value.message
        assert message.startswith(
            (
                "service app is restarting (it exited with code 2)",
                "service app restarted during the health gate (it exited with code 2)",
                # the poll saw it running again: Docker has reset its exit code by then
                "service app restarted during the health gate (",
                "service app exited with code 2",
            )
        ), message  # a poll between exit and restart
        assert "out of memory" in message
    finally:
        await cleanup(engine, spec, docker_client)


async def test_a_healthcheck_that_never_passes_fails_with_its_output(docker_engine, docker_client, tmp_path):
    spec = make_spec(
        tmp_path,
        f"""
services:
  app:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
    healthcheck:
      test: ["CMD", "sh", "-c", "echo 'GET /health: 503'; exit 1"]
      interval: 1s
      timeout: 2s
      retries: 2
""",
        health_timeout=60,
        stable_seconds=2,
    )
    engine = ComposeEngine(local_connection(docker_engine))
    log = LogCapture()
    started = time.monotonic()
    try:
        with pytest.raises(EngineError) as caught:
            await deploy(engine, spec, log)
        assert time.monotonic() - started < 20  # Docker calls it unhealthy after 2 probes; no waiting for the timeout
        assert caught.value.message.startswith("service app is unhealthy (last check: exit 1: GET /health: 503)")
    finally:
        await cleanup(engine, spec, docker_client)


async def test_healthy_services_pass_after_their_settle_window(docker_engine, docker_client, tmp_path):
    spec = make_spec(
        tmp_path,
        f"""
services:
  checked:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
  plain:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
""",
        health_timeout=30,
        stable_seconds=2,
    )
    engine = ComposeEngine(local_connection(docker_engine))
    log = LogCapture()
    try:
        for step in STEPS[:-1]:
            await getattr(engine, step)(spec, log)
        started = time.monotonic()
        await engine.wait_healthy(spec, log)
        assert time.monotonic() - started >= 2  # "plain" stayed up for the whole window
        assert "all services are running: checked, plain" in log.text()
    finally:
        await cleanup(engine, spec, docker_client)


HEALTHCHECKED = f"""
services:
  app:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
"""


async def test_the_gate_sees_a_container_turn_healthy_when_the_engine_says_so(docker_engine, docker_client, tmp_path, monkeypatch):
    """The engine's health_status event brings the gate's next look forward: with a poll every 30 s, a container
    healthy about a second after its start passes the gate within seconds (before the engine events woke the
    wait, it passed at the poll 30 s later)."""
    monkeypatch.setattr(docker_base, "POLL_INTERVAL", 30.0)
    spec = make_spec(tmp_path, HEALTHCHECKED, health_timeout=60)
    engine = ComposeEngine(local_connection(docker_engine))
    log = LogCapture()
    try:
        for step in STEPS[:-1]:
            await getattr(engine, step)(spec, log)
        started = time.monotonic()
        await engine.wait_healthy(spec, log)
        assert time.monotonic() - started < 15
        assert "all services are running: app" in log.text()
    finally:
        await cleanup(engine, spec, docker_client)


async def test_without_the_engine_events_the_gate_still_passes_at_its_polls(docker_engine, docker_client, tmp_path, monkeypatch):
    """No event stream to be had (every slot taken): the wait polls as before and the gate passes all the same."""
    monkeypatch.setattr(docker_base, "POLL_INTERVAL", 0.5)
    monkeypatch.setattr(engine_events, "_streams", threading.BoundedSemaphore(1))
    assert engine_events._streams.acquire(blocking=False)
    spec = make_spec(tmp_path, HEALTHCHECKED, health_timeout=60)
    engine = ComposeEngine(local_connection(docker_engine))
    log = LogCapture()
    try:
        await deploy(engine, spec, log)
        assert "all services are running: app" in log.text()
    finally:
        await cleanup(engine, spec, docker_client)


@pytest.mark.parametrize("kind", DRIVERS)
async def test_digests_are_recorded_and_a_pinned_rollout_runs_that_exact_image(kind, docker_engine, docker_client, tmp_path):
    """A local image has no registry digest: its id is recorded and pinned. The tag then moves to another
    image; the pinned rollout still runs the recorded one, an unpinned one the new one."""
    tag = f"windflow-test/pin-{uuid.uuid4().hex[:8]}:v1"
    subprocess.run(["docker", "tag", TEST_IMAGE, tag], check=True, timeout=30)
    compose = f"""
services:
  app:
    image: {tag}
    init: true
    command: ["sleep", "300"]
"""
    engine = ComposeEngine(local_connection(docker_engine), command=DRIVERS[kind])
    first = make_spec(tmp_path, compose, stable_seconds=0.5)
    again = make_spec(tmp_path, compose, stable_seconds=0.5)
    moved = make_spec(tmp_path, compose, stable_seconds=0.5)
    try:
        await deploy(engine, first, LogCapture())
        original = image_id(TEST_IMAGE)
        assert [(i.service, i.image, i.digest) for i in first.images] == [("app", tag, original)]
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, "-"],
            input=f"FROM {TEST_IMAGE}\nLABEL moved={tag}\n",
            text=True,
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert image_id(tag) != original

        again.pinned_images = {"app": first.images[0].reference}
        log = LogCapture()
        await deploy(engine, again, log)
        assert [(i.service, i.image, i.digest) for i in again.images] == [("app", tag, original)]
        assert "app: image " + tag + " is " + original + " (pinned)" in log.text()
        (container,) = docker_client.containers.list(
            ignore_removed=True, filters={"label": f"windflow.deployment_id={again.deployment_id}"}
        )
        assert container.attrs["Image"] == original

        await deploy(engine, moved, LogCapture())
        (container,) = docker_client.containers.list(
            ignore_removed=True, filters={"label": f"windflow.deployment_id={moved.deployment_id}"}
        )
        assert container.attrs["Image"] == image_id(tag) != original
        assert moved.images[0].digest == image_id(tag)
    finally:
        for spec in (first, again, moved):
            await cleanup(engine, spec, docker_client)
            assert labelled_objects(docker_client, spec)["containers"] == []
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)
