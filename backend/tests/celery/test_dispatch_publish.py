"""What the backend's dispatcher sends to the broker for one deployment (issue 23): the task's message, and
nothing for a result it never reads. A private Redis server, so that its command counts are this test's."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from backend.app.models import Target
from backend.app.runtime import dispatch
from backend.app.runtime.dispatch import Dispatcher
from backend.tests.conftest import make_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis():
    if shutil.which("redis-server") is None:
        from backend.tests.conftest import require_service

        require_service("redis-server", "not installed")
    import redis

    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def _redis_dispatcher(url: str, tmp_path) -> Dispatcher:
    """A dispatcher sending to the private Redis, as after its probe found a worker."""
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE="redis",
        CELERY_BROKER_URL=url,
        CELERY_RESULT_BACKEND=url,
    )
    dispatcher = Dispatcher(settings)
    dispatcher._standalone_reason = None
    return dispatcher


def _calls(client, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_dispatch_publishes_the_task_and_subscribes_to_no_result(private_redis, tmp_path):
    url, client = private_redis
    dispatcher = _redis_dispatcher(url, tmp_path)
    target = Target(id="t-1", name="engine", placed=False)  # as the POST route hands it over: no query
    kinds = [str(await dispatcher.dispatch(f"deployment-{n}", target=target)) for n in range(3)]
    assert kinds == ["celery"] * 3
    assert client.llen("celery") == 3  # the three messages wait for a worker in the shared queue
    # a result backend prepares a reader for each message it sends (Redis: SUBSCRIBE to the task's result
    # channel, one round trip before the publish): the dispatcher reads no result
    assert _calls(client, "subscribe") == 0


async def test_a_dispatch_is_not_queued_behind_the_loops_other_blocking_calls(private_redis, tmp_path, monkeypatch):
    """The event loop's default executor also runs in-process deployments' blocking calls (the engine's SDK):
    with every one of its threads busy, a dispatch is still published at once, not timed out into the
    in-process fallback."""
    url, client = private_redis
    monkeypatch.setattr(dispatch, "ENQUEUE_TIMEOUT_SECONDS", 2.0)
    dispatcher = _redis_dispatcher(url, tmp_path)
    loop = asyncio.get_running_loop()
    busy = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(busy)
    release = threading.Event()
    blocked = loop.run_in_executor(None, release.wait, 30)  # the default executor's only thread, busy
    try:
        kind = await dispatcher.dispatch("deployment-1", target=Target(id="t-1", name="engine", placed=False))
        assert str(kind) == "celery"
        assert client.llen("celery") == 1
    finally:
        release.set()
        await blocked
