"""Rate limits shared by backend replicas through Redis (core/ratelimit.py, ``RATE_LIMIT_REDIS_URL``).

Two apps on one database stand for two replicas behind a proxy: a client whose requests alternate between
them gets the limit once, not once per replica. Without Redis each keeps its own count (the test of that
says so, so that the shared case is seen to depend on Redis). The two real processes behind nginx are in
``celery/test_two_replicas.py``.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import update

from backend.app.core.ratelimit import RateLimiter
from backend.app.main import create_app, rate_limit_redis_url
from backend.app.models import Deployment, DeploymentStatus
from backend.app.services.hooks.signature import sign
from backend.tests.celery.test_celery_execution import REDIS_TEST_DB
from backend.tests.conftest import make_settings, require_service
from backend.tests.deploy_helpers import free_port
from backend.tests.factories import make_deployment
from backend.tests.helpers import setup_admin
from backend.tests.integration.test_hooks import RecordingDispatcher

ON_POSTGRESQL = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)

REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
LOGIN = "/api/v1/auth/login"


@pytest.fixture
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        require_service("Redis", str(exc))
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
async def replica(db):
    """Makes a client of a new app on the test database (a replica)."""

    def make(address: str, **overrides) -> httpx.AsyncClient:
        app = create_app(make_settings(db.settings.DATABASE_URL, **overrides))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 5000)), base_url="http://t")

    return make


async def failed_logins(clients: list[httpx.AsyncClient], account: str, count: int) -> list[int]:
    statuses = []
    for number in range(count):
        response = await clients[number % len(clients)].post(LOGIN, data={"username": account, "password": "wrong-password"})
        statuses.append(response.status_code)
    return statuses


@ON_POSTGRESQL
async def test_two_replicas_count_the_same_login_attempts(replica, redis_url):
    address = f"10.{uuid.uuid4().int % 250}.0.1"  # its own budget, whatever other sessions used on this Redis
    limits = {"RATE_LIMIT_REDIS_URL": redis_url, "LOGIN_RATE_LIMIT_PER_MINUTE": 5, "LOGIN_FAILURES_PER_ACCOUNT": 3}
    first, second = replica(address, **limits), replica(address, **limits)
    async with first, second:
        # failed logins of one account, alternating replicas: three allowed in all, then 429 on either
        account = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
        assert await failed_logins([first, second], account, 4) == [401, 401, 401, 429]
        limited = await second.post(LOGIN, data={"username": account, "password": "wrong-password"})
        assert limited.status_code == 429 and limited.json()["params"]["scope"] == "account", limited.text
        assert 290 <= int(limited.headers["retry-after"]) <= 300  # LOGIN_ACCOUNT_WINDOW_SECONDS
        # the address's budget (5 a minute): the 5 attempts above spent it on both replicas together
        other = await first.post(LOGIN, data={"username": "someone@example.com", "password": "x"})
        assert other.status_code == 429 and other.json()["params"]["scope"] == "address", other.text


@ON_POSTGRESQL
async def test_without_redis_each_replica_counts_its_own(replica):
    limits = {"LOGIN_FAILURES_PER_ACCOUNT": 3}
    first, second = replica("10.1.0.1", **limits), replica("10.1.0.1", **limits)
    async with first, second:
        assert first._transport.app.state.account_login_limiter.shared is False
        account = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
        assert await failed_logins([first, second], account, 6) == [401] * 6  # three on each


@ON_POSTGRESQL
async def test_a_redis_that_does_not_answer_lets_logins_through(replica):
    client = replica("10.2.0.1", RATE_LIMIT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", LOGIN_FAILURES_PER_ACCOUNT=1)
    async with client:
        assert await failed_logins([client], "nobody@example.com", 3) == [401, 401, 401]  # never a 500


async def test_the_event_bus_redis_is_the_default_store(redis_url):
    assert rate_limit_redis_url(make_settings("sqlite+aiosqlite:///x.db")) is None
    on_redis = make_settings("sqlite+aiosqlite:///x.db", EVENT_BUS="redis", EVENT_BUS_REDIS_URL=redis_url)
    assert rate_limit_redis_url(on_redis) == redis_url
    explicit = make_settings("sqlite+aiosqlite:///x.db", RATE_LIMIT_REDIS_URL="redis://elsewhere:6379/3")
    assert rate_limit_redis_url(explicit) == "redis://elsewhere:6379/3"
    limiter = RateLimiter(f"t-{uuid.uuid4().hex[:6]}", 2, 60, redis_url=redis_url)
    assert [await limiter.hit("k"), await limiter.hit("k")] == [None, None]
    assert await limiter.retry_in("k") == pytest.approx(60, abs=2)
    assert await limiter.hit("k") == pytest.approx(60, abs=2)
    assert await limiter.retry_in("other") is None


@ON_POSTGRESQL
async def test_two_replicas_count_the_same_hook_calls(replica, redis_url, session):
    """A hook's budget (``HOOK_RATE_LIMIT_PER_MINUTE``) is one across the replicas: calls alternating between
    two apps sharing Redis are refused (429) once the limit is reached in all, not per replica."""
    limits = {"RATE_LIMIT_REDIS_URL": redis_url, "HOOK_RATE_LIMIT_PER_MINUTE": 2}
    first, second = replica("10.3.0.1", **limits), replica("10.3.0.2", **limits)
    dispatcher = RecordingDispatcher()
    for client in (first, second):
        assert client._transport.app.state.hook_limiter.shared is True
        client._transport.app.state.dispatcher = dispatcher
    async with first, second:
        admin = await setup_admin(first)
        deployment = await make_deployment(session, DeploymentStatus.RUNNING, attempt=1)
        await session.commit()
        created = await first.post(f"/api/v1/deployments/{deployment.id}/hooks", json={"name": "ci"}, headers=admin.headers)
        assert created.status_code == 201, created.text
        hook = created.json()  # a new id: its own budget, whatever other sessions used on this Redis

        async def call(client: httpx.AsyncClient) -> httpx.Response:
            answer = await client.post(
                f"/api/v1/hooks/{hook['id']}", content=b"{}", headers={"X-Hub-Signature-256": sign(hook["secret"], b"{}")}
            )
            await session.execute(update(Deployment).where(Deployment.id == deployment.id).values(status=DeploymentStatus.RUNNING))
            await session.commit()  # settled again: the next call is judged by the limit only
            return answer

        statuses = [(await call(client)).status_code for client in (first, second, first, second)]
        assert statuses == [202, 202, 429, 429]
        limited = await call(second)
        assert limited.json()["code"] == "rate_limited" and 55 <= int(limited.headers["retry-after"]) <= 60, limited.text
        assert dispatcher.sent == [deployment.id, deployment.id]
