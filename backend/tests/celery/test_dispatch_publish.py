"""What the backend's dispatcher sends to the broker for one deployment (issue 23): the task's message, and
nothing for a result it never reads. A private Redis server, so that its command counts are this test's."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from backend.app.models import Target
from backend.app.runtime import dispatch, redis_publish
from backend.app.runtime.celery_config import DEPLOY_TASK, create_celery
from backend.app.runtime.dispatch import Dispatcher
from backend.tests.conftest import make_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis():
    import redis

    port = _free_port()
    server = _start_redis(port)
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def _start_redis(port: int) -> subprocess.Popen:
    """A redis-server of this test on ``port``, answering."""
    if shutil.which("redis-server") is None:
        from backend.tests.conftest import require_service

        require_service("redis-server", "not installed")
    import redis

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
                return server
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    server.kill()
                    raise
                time.sleep(0.05)
    finally:
        client.close()


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


# --------------------------------------------------------------------------- the backend's Redis publisher


class _UsableCelery:
    """What the dispatcher asks of the backend's Celery manager: Celery is usable (a worker was found)."""

    celery_usable = True


def _backend_dispatcher(url: str, tmp_path) -> Dispatcher:
    """The backend's dispatcher (it has a manager): it sends through ``runtime/redis_publish.py``."""
    dispatcher = _redis_dispatcher(url, tmp_path)
    dispatcher.manager = _UsableCelery()
    return dispatcher


def _masked(raw: bytes) -> dict:
    """A pushed message with what differs between two sends of the same task (its ids) masked."""
    message = json.loads(raw)
    task_id = message["headers"]["id"]
    assert message["headers"]["root_id"] == message["properties"]["correlation_id"] == task_id
    for key in ("id", "root_id"):
        message["headers"][key] = "<id>"
    message["properties"]["correlation_id"] = "<id>"
    assert message["properties"]["delivery_tag"] not in ("", task_id)
    message["properties"]["delivery_tag"] = "<tag>"
    if message["headers"]["eta"] is not None:
        eta = datetime.fromisoformat(message["headers"]["eta"])
        assert 25 < (eta - datetime.now(UTC)).total_seconds() <= 30
        message["headers"]["eta"] = "<eta>"
    return message


@pytest.mark.parametrize("queue, countdown", [(None, None), ("windflow.target.t-9", 30.0)], ids=["shared", "placed-countdown"])
async def test_the_redis_publisher_pushes_what_send_task_pushes(private_redis, tmp_path, queue, countdown):
    """The message the backend pushes with one LPUSH is kombu's own for the same task, ids aside: the same
    Celery headers and body, the same envelope, the same list (a worker's BRPOP takes either alike)."""
    url, client = private_redis
    app = create_celery(_redis_dispatcher(url, tmp_path).settings, results=False)
    assert redis_publish.supports(app)
    key = queue or "celery"
    app.send_task(DEPLOY_TASK, args=("deployment-1",), queue=queue, countdown=countdown)
    by_kombu = client.rpop(key)
    publisher = redis_publish.RedisTaskPublisher(app)
    try:
        task_id = await publisher.publish("deployment-1", queue, countdown)
    finally:
        await publisher.aclose()
    ours = client.rpop(key)
    assert json.loads(ours)["headers"]["id"] == task_id
    assert _masked(ours) == _masked(by_kombu)
    assert client.llen(key) == 0


def test_the_redis_publisher_leaves_a_broker_layout_it_does_not_know_to_kombu(tmp_path):
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE="redis",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        CELERY_RESULT_BACKEND="redis://127.0.0.1:6379/0",
    )
    app = create_celery(settings, results=False)
    assert redis_publish.supports(app)
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": "tenant:"}
    assert not redis_publish.supports(app)
    sentinel = create_celery(settings, results=False)
    sentinel.conf.broker_url = "sentinel://127.0.0.1:26379"
    assert not redis_publish.supports(sentinel)


async def test_the_backend_dispatcher_sends_through_one_lpush(private_redis, tmp_path):
    url, client = private_redis
    dispatcher = _backend_dispatcher(url, tmp_path)
    before = {command: _calls(client, command) for command in ("lpush", "sadd", "subscribe")}
    try:
        kinds = [str(await dispatcher.dispatch(f"deployment-{n}", target=Target(id="t-1", name="engine", placed=False))) for n in range(3)]
    finally:
        await dispatcher.aclose()
    assert kinds == ["celery"] * 3
    assert [json.loads(m)["headers"]["argsrepr"] for m in client.lrange("celery", 0, -1)] == [f"('deployment-{n}',)" for n in (2, 1, 0)]
    # three pushes, and nothing else: no queue declaration (kombu's SADD of the binding), no result channel
    assert {command: _calls(client, command) - before[command] for command in before} == {"lpush": 3, "sadd": 0, "subscribe": 0}


async def test_the_backend_dispatcher_publishes_again_after_redis_restarted(tmp_path):
    """Redis restarts between two deployments: the publisher's idle connection is dead, and the next dispatch
    finds it so. It reconnects once and publishes, rather than running the deployment in-process."""
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    dispatcher = _backend_dispatcher(url, tmp_path)
    target = Target(id="t-1", name="engine", placed=False)
    server = _start_redis(port)
    try:
        assert str(await dispatcher.dispatch("deployment-1", target=target)) == "celery"
        server.terminate()
        server.wait(10)
        server = _start_redis(port)
        assert str(await dispatcher.dispatch("deployment-2", target=target)) == "celery"
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        assert [json.loads(m)["headers"]["argsrepr"] for m in client.lrange("celery", 0, -1)] == ["('deployment-2',)"]
        client.close()
    finally:
        await dispatcher.aclose()
        server.terminate()
        server.wait(10)


async def test_the_backend_dispatcher_runs_in_process_when_redis_is_gone(tmp_path, monkeypatch):
    """No Redis at the broker's address: the publish fails at once and the deployment runs here (the
    asyncio fallback), as with kombu."""
    submitted = []
    monkeypatch.setattr(
        dispatch.background_tasks,
        "create_background_task",
        lambda deployment_id, settings, claimed_by=None: submitted.append((deployment_id, claimed_by)),
    )
    dispatcher = _backend_dispatcher(f"redis://127.0.0.1:{_free_port()}/0", tmp_path)
    started = time.monotonic()
    try:
        kind = await dispatcher.dispatch("deployment-1", target=Target(id="t-1", name="engine", placed=False))
    finally:
        await dispatcher.aclose()
    assert (str(kind), submitted) == ("asyncio", [("deployment-1", None)])  # its run claims it
    assert time.monotonic() - started < dispatch.ENQUEUE_TIMEOUT_SECONDS


# --------------------------------------------------------------------------- a new deployment, pushed as it commits


class _Creation:
    """What the dispatcher awaits of the creating request's session: its commit, on its way until the test
    releases it, then done or failed."""

    def __init__(self, *, fails: bool = False) -> None:
        self.release = asyncio.Event()
        self.fails = fails
        self.committed = False

    async def commit(self) -> None:
        await self.release.wait()
        if self.fails:
            raise ConnectionError("the database went away during the commit")
        self.committed = True


async def _until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_the_message_sent_before_the_commit_is_send_tasks_with_its_header(private_redis, tmp_path):
    url, client = private_redis
    app = create_celery(_redis_dispatcher(url, tmp_path).settings, results=False)
    app.send_task(DEPLOY_TASK, args=("deployment-1",), headers={redis_publish.SENT_BEFORE_COMMIT_HEADER: True})
    by_kombu = client.rpop("celery")
    _, key, payload = redis_publish.message(app, "deployment-1", before_commit=True)
    assert key == "celery"
    assert json.loads(payload)["headers"][redis_publish.SENT_BEFORE_COMMIT_HEADER] is True
    assert _masked(payload.encode()) == _masked(by_kombu)


async def test_a_new_deployment_is_pushed_while_its_creation_commits(private_redis, tmp_path):
    """The push does not wait for the commit: the message is in the queue while the commit is still on its
    way, and says so; the dispatch returns once both are done."""
    url, client = private_redis
    dispatcher = _backend_dispatcher(url, tmp_path)
    creation = _Creation()
    try:
        dispatching = asyncio.ensure_future(
            dispatcher.commit_and_dispatch_new(creation, "deployment-1", target=Target(id="t-1", name="engine", placed=False))
        )
        assert await _until(lambda: client.llen("celery") == 1)
        assert not dispatching.done() and not creation.committed
        message = json.loads(client.lindex("celery", 0))
        assert message["headers"]["argsrepr"] == "('deployment-1',)"
        assert message["headers"][redis_publish.SENT_BEFORE_COMMIT_HEADER] is True
        creation.release.set()
        assert str(await dispatching) == "celery" and creation.committed
    finally:
        await dispatcher.aclose()


class _CommitThatLooksAtTheQueue:
    """A commit that first counts the queue's messages, blocking the loop (nothing else of the process runs
    meanwhile, a push not written yet included) for up to a second until Redis holds one."""

    def __init__(self, client) -> None:
        self.client = client
        self.queued_at_commit: int | None = None

    async def commit(self) -> None:
        deadline = time.monotonic() + 1.0
        while (queued := self.client.llen("celery")) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        self.queued_at_commit = queued


async def test_a_new_deployments_push_is_written_before_its_commit_starts(private_redis, tmp_path):
    """With the publisher's connection open, the LPUSH leaves before the commit's first step (which, for a real
    session, is half a millisecond of Python before it waits on the database), not once the commit yields."""
    url, client = private_redis
    dispatcher = _backend_dispatcher(url, tmp_path)
    shared = Target(id="t-1", name="engine", placed=False)
    try:
        opening = _Creation()
        opening.release.set()
        await dispatcher.commit_and_dispatch_new(opening, "deployment-1", target=shared)  # opens the connection
        client.delete("celery")
        creation = _CommitThatLooksAtTheQueue(client)
        assert str(await dispatcher.commit_and_dispatch_new(creation, "deployment-2", target=shared)) == "celery"
        assert creation.queued_at_commit == 1
    finally:
        await dispatcher.aclose()


async def test_a_creation_whose_commit_fails_takes_its_message_back(private_redis, tmp_path):
    url, client = private_redis
    dispatcher = _backend_dispatcher(url, tmp_path)
    creation = _Creation(fails=True)
    try:
        dispatching = asyncio.ensure_future(
            dispatcher.commit_and_dispatch_new(creation, "deployment-1", target=Target(id="t-1", name="engine", placed=False))
        )
        assert await _until(lambda: client.llen("celery") == 1)
        creation.release.set()
        with pytest.raises(ConnectionError):
            await dispatching
        # no worker took it: it is withdrawn, and no worker looks for a deployment that was never created
        assert await _until(lambda: client.llen("celery") == 0), client.lrange("celery", 0, -1)
        assert _calls(client, "lrem") == 1
    finally:
        await dispatcher.aclose()


async def test_a_new_deployment_whose_push_fails_runs_in_process_once_committed(tmp_path, monkeypatch):
    submitted = []
    creation = _Creation()
    monkeypatch.setattr(
        dispatch.background_tasks,
        "create_background_task",
        # unclaimed: its run claims it (the creation committed before the push was known to have failed)
        lambda deployment_id, settings, claimed_by=None: submitted.append((deployment_id, creation.committed, claimed_by)),
    )
    dispatcher = _backend_dispatcher(f"redis://127.0.0.1:{_free_port()}/0", tmp_path)  # no Redis there
    creation.release.set()
    try:
        kind = await dispatcher.commit_and_dispatch_new(creation, "deployment-1", target=Target(id="t-1", name="engine", placed=False))
    finally:
        await dispatcher.aclose()
    assert (str(kind), submitted) == ("asyncio", [("deployment-1", True, None)])  # after its commit, never before


async def test_a_placed_target_or_another_broker_commits_first(tmp_path, monkeypatch):
    """Only the shared queue on a Redis this process pushes to is sent before the commit: a placed target's
    message (its queue is checked for a serving worker first) and kombu's sends come after it."""
    creations = {"deployment-1": _Creation(), "deployment-2": _Creation()}
    for creation in creations.values():
        creation.release.set()
    seen = []

    async def dispatched(deployment_id, *, target=None):
        seen.append((deployment_id, creations[deployment_id].committed))
        return "celery"

    dispatcher = _backend_dispatcher(f"redis://127.0.0.1:{_free_port()}/0", tmp_path)
    monkeypatch.setattr(dispatcher, "dispatch", dispatched)
    placed = Target(id="t-9", name="far", placed=True)
    await dispatcher.commit_and_dispatch_new(creations["deployment-1"], "deployment-1", target=placed)
    dispatcher.manager = None  # a standalone dispatcher sends through kombu
    shared = Target(id="t-1", name="engine", placed=False)
    await dispatcher.commit_and_dispatch_new(creations["deployment-2"], "deployment-2", target=shared)
    assert seen == [("deployment-1", True), ("deployment-2", True)]


class _CommitLater:
    """A creating request's real session whose commit starts ``delay`` seconds after it was asked for."""

    def __init__(self, session, delay: float) -> None:
        self.session = session
        self.delay = delay

    async def commit(self) -> None:
        await asyncio.sleep(self.delay)
        await self.session.commit()


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_a_real_worker_that_takes_the_message_first_claims_the_deployment_once_committed(db, tmp_path):
    """The message reaches a worker a second before the deployment is committed (invisible to the worker until
    then, on PostgreSQL): the worker reads the message's header, looks again, and claims it after the commit."""
    from sqlalchemy import select

    from backend.app import database
    from backend.app.models import DeploymentStatusHistory
    from backend.tests.celery_fixtures import start_worker, wait_heartbeat
    from backend.tests.factories import make_deployment

    port = _free_port()
    server = _start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    settings = make_settings(
        db.settings.DATABASE_URL,
        CELERY_ENABLED=True,
        CELERY_BROKER_TYPE="redis",
        CELERY_BROKER_URL=url,
        CELERY_RESULT_BACKEND=url,
        CELERY_AUTO_START_WORKER=False,
        DEPLOYMENTS_WORKDIR=tmp_path / "deployments",
    )
    worker = start_worker(settings, tmp_path)
    dispatcher = Dispatcher(settings, manager=_UsableCelery())
    try:
        await wait_heartbeat("w1@", worker)
        async with database.AsyncSessionLocal() as creation:
            deployment = await make_deployment(creation)
            target = await creation.get(Target, deployment.target_id)
            kind = await dispatcher.commit_and_dispatch_new(_CommitLater(creation, 1.0), deployment.id, target=target)
        assert str(kind) == "celery"
        history: list = []
        deadline = time.monotonic() + 20
        while not history and time.monotonic() < deadline:
            async with database.AsyncSessionLocal() as session:
                history = (
                    (await session.execute(select(DeploymentStatusHistory).where(DeploymentStatusHistory.deployment_id == deployment.id)))
                    .scalars()
                    .all()
                )
            await asyncio.sleep(0.1)
        assert history, f"the deployment was never claimed:\n{worker.output()[-3000:]}"
        first = min(history, key=lambda h: h.id)
        assert (first.from_status, first.to_status) == ("pending", "deploying") and first.actor.startswith("celery:"), first
    finally:
        await dispatcher.aclose()
        worker.stop()
        server.terminate()
        server.wait(10)
