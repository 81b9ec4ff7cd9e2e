"""Notifications with real receivers: a deployment's end (a real status change through the state machine)
queues deliveries in its own transaction; the sender loop (runtime/notifier.py) delivers them to a local HTTP
server that checks the signature and answers 500 then 200 (retried, same delivery id), to one that hangs
(timeout, retried, the change already committed), by a second backend process after the first (a real
``python -m backend.app.main``) was killed -9 while its receiver hung (the lease expires), and
by email to an aiosmtpd server; a channel at the platform's own network refused at creation and, once the
operator's NOTIFY_ALLOWED_NETWORKS no longer allows it, at the connection (nothing sent); channels over HTTP (admins only, secrets never shown), the test action, the
delivery log, the audit trail without secrets."""

from __future__ import annotations

import asyncio
import email
import hashlib
import hmac
import json
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from backend.app.database import AsyncSessionLocal, utcnow
from backend.app.main import create_app
from backend.app.models import AuditEntry, DeployHookCall, DeploymentRevision, DeploymentStatus, Membership, NotificationDelivery, Role
from backend.app.runtime.background import RetentionLoop
from backend.app.runtime.notifier import NotificationLoop
from backend.app.services.deployments.state_machine import set_deployment_status
from backend.tests.conftest import make_settings
from backend.tests.factories import make_deployment
from backend.tests.helpers import create_user, setup_admin
from backend.tests.notify_helpers import Mailbox, Receiver, eventually
from backend.tests.realtime_helpers import Server

CHANNELS = "/api/v1/notification-channels"
SECRET = "channel-secret-0123456789"
FAST = dict(
    NOTIFY_POLL_SECONDS=0.2,
    NOTIFY_BACKOFF_SECONDS=0.2,
    NOTIFY_TIMEOUT_SECONDS=1.0,
    NOTIFY_LEASE_SECONDS=1.0,
    NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8, ::1/128",  # the receivers of these tests listen on the loopback
    PUBLIC_URL="https://wf.example.com",
)


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(**kw) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


class World:
    def __init__(self, db, settings, client, admin) -> None:
        self.db, self.settings, self.client, self.admin = db, settings, client, admin
        self.loops: list[asyncio.Task] = []

    def start_sender(self, **overrides) -> NotificationLoop:
        loop = NotificationLoop(self.settings.model_copy(update=overrides) if overrides else self.settings)
        self.loops.append(asyncio.create_task(loop.run()))
        return loop

    async def channel(self, org_id: str, **body) -> dict:
        response = await self.client.post(CHANNELS, json={"organization_id": org_id, "name": "ops", **body}, headers=self.admin.headers)
        assert response.status_code == 201, response.text
        return response.json()

    async def deliveries(self) -> list[NotificationDelivery]:
        async with self.db.engine.connect() as conn:
            return list((await conn.execute(select(NotificationDelivery.__table__).order_by(NotificationDelivery.created_at))).all())


@pytest.fixture
async def world(db):
    settings = make_settings(db.settings.DATABASE_URL, **FAST)
    app = create_app(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    admin = await setup_admin(client)
    w = World(db, settings, client, admin)
    yield w
    for task in w.loops:
        task.cancel()
    await asyncio.gather(*w.loops, return_exceptions=True)
    await client.aclose()


def check_signature(received, secret: str = SECRET) -> None:
    expected = "sha256=" + hmac.new(secret.encode(), received.body, hashlib.sha256).hexdigest()
    assert received.headers["x-windflow-signature-256"] == expected


async def test_webhook_500_then_200_is_retried_and_delivered_once_by_id(world, session, receiver):
    hook = receiver(script=[500, 200])
    deployment_id, org_id = await failed_deployment_in_org(world, session)
    assert await world.deliveries() == []  # no channel yet: nothing queued
    channel = await world.channel(org_id, kind="webhook", url=hook.url, secret=SECRET, events=["deployment.failed", "deployment.stuck"])
    world.start_sender()
    async with AsyncSessionLocal() as s:
        await set_deployment_status(
            s, deployment_id=deployment_id, to_status=DeploymentStatus.PENDING, reason="retry", expected_from=DeploymentStatus.FAILED
        )
        await set_deployment_status(
            s,
            deployment_id=deployment_id,
            to_status=DeploymentStatus.FAILED,
            reason="recovery timeout",
            error_message="timed out after 60 minutes",
        )
        await s.commit()
    try:
        await eventually(lambda: _delivered(world, 2))
    except AssertionError:
        raise AssertionError([dict(r._mapping) for r in await world.deliveries()], hook.received) from None
    requests = hook.received
    by_event: dict[str, list] = {}
    for r in requests:
        by_event.setdefault(r.headers["x-windflow-event"], []).append(r)
        check_signature(r)
    assert sorted(by_event) == ["deployment.failed", "deployment.stuck"]
    assert len(requests) == 3  # one of the two answered 500 first, and was sent again with the same id
    ids = [r.headers["x-windflow-delivery"] for r in requests]
    assert len(set(ids)) == 2 and sorted(ids.count(i) for i in set(ids)) == [1, 2]
    body = requests[-1].json
    assert body["id"] == requests[-1].headers["x-windflow-delivery"]
    assert body["organization"]["id"] == org_id and body["deployment"]["id"] == deployment_id
    assert body["deployment"]["status"] == "failed" and body["deployment"]["error_message"] == "timed out after 60 minutes"
    assert body["deployment"]["images"] == [{"service": "web", "image": "app:1.5", "digest": "sha256:" + "ab" * 32}]
    assert body["deployment"]["url"] == f"https://wf.example.com/deployments/{deployment_id}" and body["occurred_at"].endswith("Z")
    log = (await world.client.get(f"{CHANNELS}/{channel['id']}/deliveries", headers=world.admin.headers)).json()["items"]
    assert {(d["status"], d["last_status_code"]) for d in log} == {("delivered", 200)} and sorted(d["attempts"] for d in log) == [1, 2]
    assert SECRET not in json.dumps([r.json for r in requests])


async def failed_deployment_in_org(world, session) -> tuple[str, str]:
    """A failed deployment (revision 1 recorded its image) of an organisation the admin owns."""
    deployment = await make_deployment(session, DeploymentStatus.FAILED, attempt=1, error_message="first failure")
    session.add(Membership(user_id=world.admin.user_id, organization_id=deployment.organization_id, role=Role.OWNER))
    session.add(
        DeploymentRevision(
            deployment_id=deployment.id,
            number=1,
            reason="created",
            outcome="failed",
            variables={},
            images=[{"service": "web", "image": "app:1.5", "digest": "sha256:" + "ab" * 32}],
            created_at=utcnow(),
        )
    )
    await session.commit()
    return deployment.id, deployment.organization_id


async def _delivered(world, count: int) -> bool:
    rows = await world.deliveries()
    return len(rows) == count and all(r.status == "delivered" for r in rows)


async def test_a_hanging_receiver_is_timed_out_and_retried_without_holding_the_change(world, session, receiver):
    hook = receiver(hang=3.0, hang_count=1)
    deployment_id, org_id = await failed_deployment_in_org(world, session)
    await world.channel(org_id, kind="webhook", url=hook.url, events=["deployment.cancelled"])
    world.start_sender()
    async with AsyncSessionLocal() as s:
        await set_deployment_status(
            s, deployment_id=deployment_id, to_status=DeploymentStatus.PENDING, reason="retry", expected_from=DeploymentStatus.FAILED
        )
        await s.commit()
        started = asyncio.get_running_loop().time()
        await set_deployment_status(s, deployment_id=deployment_id, to_status=DeploymentStatus.CANCELLED, reason="cancelled by user")
        await s.commit()
        assert asyncio.get_running_loop().time() - started < 1.0  # the change never waits for a receiver
    (row,) = await eventually(lambda: _rows_with(world, lambda r: r.status == "delivered"), timeout=20)
    assert row.attempts == 2 and len(hook.received) == 2
    assert hook.received[0].headers["x-windflow-delivery"] == hook.received[1].headers["x-windflow-delivery"] == row.id
    assert "x-windflow-signature-256" not in hook.received[0].headers  # no secret: unsigned


async def _rows_with(world, predicate):
    rows = await world.deliveries()
    return rows if rows and all(predicate(r) for r in rows) else None


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_a_backend_killed_mid_delivery_leaves_it_to_another_after_its_lease(world, session, receiver, tmp_path):
    """A real backend process (``python -m backend.app.main``) sends the delivery to a receiver that hangs;
    it is killed -9 while it holds it; another backend process delivers it once the lease has expired."""
    hook = receiver(hang=30.0, hang_count=1)
    deployment_id, org_id = await failed_deployment_in_org(world, session)
    await world.channel(org_id, kind="webhook", url=hook.url, secret=SECRET, events=["deployment.succeeded"])
    async with AsyncSessionLocal() as s:
        await set_deployment_status(
            s, deployment_id=deployment_id, to_status=DeploymentStatus.PENDING, reason="retry", expected_from=DeploymentStatus.FAILED
        )
        await set_deployment_status(s, deployment_id=deployment_id, to_status=DeploymentStatus.DEPLOYING, lease_owner="w1")
        await set_deployment_status(
            s, deployment_id=deployment_id, to_status=DeploymentStatus.RUNNING, reason="all services running", lease_owner="w1"
        )
        await s.commit()
    backend = dict(
        NOTIFY_POLL_SECONDS=0.2,
        NOTIFY_LEASE_SECONDS=2.0,
        NOTIFY_TIMEOUT_SECONDS=30.0,  # the first sender never gives up by itself: it is killed
        NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8",
        RECOVERY_ON_STARTUP=False,
    )
    first = await Server.start(world.db.settings.DATABASE_URL, tmp_path, "first", **backend)
    try:
        await eventually(lambda: asyncio.sleep(0, result=hook.received), timeout=30)  # it is sending, the receiver hangs
        (held,) = await world.deliveries()
        assert held.status == "delivering" and held.lease_owner.split(":")[1] == str(first.proc.pid)
        first.proc.kill9()
        assert not first.proc.alive()
    finally:
        first.stop()
    second = await Server.start(world.db.settings.DATABASE_URL, tmp_path, "second", **backend)
    try:
        (row,) = await eventually(lambda: _rows_with(world, lambda r: r.status == "delivered"), timeout=30)
    finally:
        second.stop()
    assert row.attempts == 2 and row.lease_owner is None and row.delivered_at >= held.lease_expires_at
    assert len(hook.received) == 2  # the killed attempt (never answered) and the delivery
    ids = {r.headers["x-windflow-delivery"] for r in hook.received}
    assert ids == {row.id} and hook.received[1].json["event"] == "deployment.succeeded"
    check_signature(hook.received[1])


async def test_email_over_smtp_says_what_where_which_image_and_why(db, session):
    mailbox = Mailbox()
    try:
        settings = make_settings(
            db.settings.DATABASE_URL, SMTP_HOST="127.0.0.1", SMTP_PORT=mailbox.port, SMTP_FROM="wf@example.com", **FAST
        )
        app = create_app(settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            admin = await setup_admin(client)
            world = World(db, settings, client, admin)
            deployment_id, org_id = await failed_deployment_in_org(world, session)
            await world.channel(org_id, kind="email", address="oncall@example.com", events=["deployment.failed"])
            world.start_sender()
            async with AsyncSessionLocal() as s:
                await set_deployment_status(
                    s,
                    deployment_id=deployment_id,
                    to_status=DeploymentStatus.PENDING,
                    reason="retry",
                    expected_from=DeploymentStatus.FAILED,
                )
                await set_deployment_status(
                    s, deployment_id=deployment_id, to_status=DeploymentStatus.FAILED, error_message="image app:1.5 not found"
                )
                await s.commit()
            await eventually(lambda: asyncio.sleep(0, result=mailbox.messages))
            for task in world.loops:
                task.cancel()
        (mail,) = mailbox.messages
        assert mail["to"] == ["oncall@example.com"] and mail["from"] == "wf@example.com"
        parsed = email.message_from_string(mail["data"])
        text = parsed.get_payload(decode=True).decode()
        assert parsed["Subject"].startswith("[WindFlow] ") and parsed["Subject"].endswith(" failed")
        assert "Why: image app:1.5 not found" in text and f"Image (web): app:1.5 @ sha256:{'ab' * 32}" in text
        assert f"Deployment: https://wf.example.com/deployments/{deployment_id}" in text
    finally:
        mailbox.close()


async def test_per_event_choice_slack_discord_and_the_test_action(world, session, receiver):
    slack, discord = receiver(), receiver()
    deployment_id, org_id = await failed_deployment_in_org(world, session)
    only_success = await world.channel(
        org_id, name="slack", kind="slack", url=slack.url + "/T000/B000/XXXXSECRET", events=["deployment.succeeded"]
    )
    await world.channel(org_id, name="discord", kind="discord", url=discord.url, events=["deployment.failed"])
    world.start_sender()
    async with AsyncSessionLocal() as s:
        await set_deployment_status(
            s, deployment_id=deployment_id, to_status=DeploymentStatus.PENDING, reason="retry", expected_from=DeploymentStatus.FAILED
        )
        await set_deployment_status(s, deployment_id=deployment_id, to_status=DeploymentStatus.FAILED, error_message="exit 3")
        await s.commit()
    await eventually(lambda: asyncio.sleep(0, result=discord.received))
    assert "exit 3" in discord.received[0].json["content"] and "failed" in discord.received[0].json["content"]
    tested = await world.client.post(f"{CHANNELS}/{only_success['id']}/test", headers=world.admin.headers)
    assert tested.status_code == 202 and tested.json()["event"] == "test"
    await eventually(lambda: asyncio.sleep(0, result=slack.received))
    assert len(slack.received) == 1 and "test notification" in slack.received[0].json["text"]  # never the failure
    log = (await world.client.get(f"{CHANNELS}/{only_success['id']}/deliveries", headers=world.admin.headers)).json()["items"]
    await eventually(lambda: _log_status(world, only_success["id"], "delivered"))
    assert [d["event"] for d in log] == ["test"]


async def _log_status(world, channel_id, status):
    items = (await world.client.get(f"{CHANNELS}/{channel_id}/deliveries", headers=world.admin.headers)).json()["items"]
    return items and all(i["status"] == status for i in items)


async def test_channels_api_admins_only_and_no_secret_shown_or_recorded(world, session, db):
    _, org_id = await failed_deployment_in_org(world, session)
    url = "https://hooks.slack.com/services/T000/B000/XXXXSECRETTOKEN"
    created = await world.channel(org_id, kind="slack", url=url, events=["deployment.failed"])
    assert created["url_host"] == "hooks.slack.com" and "XXXXSECRETTOKEN" not in json.dumps(created)
    webhook = await world.channel(
        org_id, name="hook", kind="webhook", url="https://example.com/in", secret=SECRET, events=["deployment.failed"]
    )
    assert webhook["has_secret"] is True and SECRET not in json.dumps(webhook)
    listed = await world.client.get(CHANNELS, params={"organization_id": org_id}, headers=world.admin.headers)
    assert listed.status_code == 200 and [c["name"] for c in listed.json()["items"]] == ["hook", "ops"]
    assert "XXXXSECRETTOKEN" not in listed.text and SECRET not in listed.text
    changed = await world.client.patch(
        f"{CHANNELS}/{created['id']}",
        json={"events": ["deployment.failed", "target.unreachable"], "enabled": False},
        headers=world.admin.headers,
    )
    assert changed.status_code == 200 and changed.json()["enabled"] is False
    bad = await world.client.post(
        CHANNELS,
        json={"organization_id": org_id, "name": "x", "kind": "email", "url": "https://x.example.com", "events": ["deployment.failed"]},
        headers=world.admin.headers,
    )
    assert bad.status_code == 422
    bad_event = await world.client.post(
        CHANNELS,
        json={"organization_id": org_id, "name": "x", "kind": "slack", "url": "https://x.example.com", "events": ["everything"]},
        headers=world.admin.headers,
    )
    assert bad_event.status_code == 422
    bad_url = await world.client.post(
        CHANNELS,
        json={"organization_id": org_id, "name": "x", "kind": "webhook", "url": "file:///etc/passwd", "events": ["deployment.failed"]},
        headers=world.admin.headers,
    )
    assert bad_url.status_code == 422
    operator = await create_user(world.client, world.admin, "op@example.com")
    session.add(Membership(user_id=operator.user_id, organization_id=org_id, role=Role.OPERATOR))
    await session.commit()
    assert (await world.client.get(f"{CHANNELS}/{created['id']}", headers=operator.headers)).status_code == 403
    assert (
        await world.client.post(
            CHANNELS,
            json={"organization_id": org_id, "name": "x", "kind": "slack", "url": "https://x.example.com", "events": ["deployment.failed"]},
            headers=operator.headers,
        )
    ).status_code == 403
    assert (await world.client.get(CHANNELS, headers=operator.headers)).json()["items"] == []
    assert (await world.client.delete(f"{CHANNELS}/{created['id']}", headers=world.admin.headers)).status_code == 204
    async with db.engine.connect() as conn:
        audit = json.dumps([dict(r._mapping) for r in (await conn.execute(select(AuditEntry.__table__))).all()], default=str)
    assert "XXXXSECRETTOKEN" not in audit and SECRET not in audit
    assert "notification_channel.create" in audit and "notification_channel.delete" in audit


async def test_a_change_rolled_back_notifies_nobody(world, session, receiver):
    hook = receiver()
    deployment_id, org_id = await failed_deployment_in_org(world, session)
    await world.channel(org_id, kind="webhook", url=hook.url, events=["deployment.failed", "deployment.cancelled"])
    async with AsyncSessionLocal() as s:
        await set_deployment_status(
            s, deployment_id=deployment_id, to_status=DeploymentStatus.PENDING, reason="retry", expected_from=DeploymentStatus.FAILED
        )
        await set_deployment_status(s, deployment_id=deployment_id, to_status=DeploymentStatus.CANCELLED, reason="cancelled by user")
        await s.rollback()
    assert await world.deliveries() == [] and hook.received == []


PLATFORM_URLS = [
    "http://127.0.0.1:6379/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[::1]:5432/",
    "http://localhost:2375/containers/json",  # a name that resolves to the loopback
    "http://10.1.2.3/in",
    "http://[::ffff:127.0.0.1]:6379/",
    "http://[fd00::5]/in",
    "https://0.0.0.0/in",
]


async def test_a_channel_at_the_platforms_own_network_is_refused_at_creation(world, session, receiver):
    _, org_id = await failed_deployment_in_org(world, session)
    closed = make_settings(world.db.settings.DATABASE_URL, **{**FAST, "NOTIFY_ALLOWED_NETWORKS": ""})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(closed)), base_url="http://testserver") as client:
        for kind in ("webhook", "slack", "discord"):
            for url in PLATFORM_URLS:
                refused = await client.post(
                    CHANNELS,
                    json={"organization_id": org_id, "name": "x", "kind": kind, "url": url, "events": ["deployment.failed"]},
                    headers=world.admin.headers,
                )
                assert refused.status_code == 422, (kind, url, refused.text)
                assert refused.json()["code"] == "channel_url_not_allowed" and "NOTIFY_ALLOWED_NETWORKS" in refused.json()["detail"]
        # a public URL is accepted, and cannot be moved to the loopback afterwards
        public = await client.post(
            CHANNELS,
            json={
                "organization_id": org_id,
                "name": "pub",
                "kind": "webhook",
                "url": "https://93.184.215.14/in",
                "events": ["deployment.failed"],
            },
            headers=world.admin.headers,
        )
        assert public.status_code == 201, public.text
        moved = await client.patch(f"{CHANNELS}/{public.json()['id']}", json={"url": "http://127.0.0.1:6379/"}, headers=world.admin.headers)
        assert moved.status_code == 422 and moved.json()["code"] == "channel_url_not_allowed"
    listed = await world.client.get(CHANNELS, params={"organization_id": org_id}, headers=world.admin.headers)
    assert [c["url_host"] for c in listed.json()["items"]] == ["93.184.215.14"]  # nothing else was stored


async def test_a_channel_allowed_then_no_longer_allowed_is_refused_at_send_and_nothing_sent(world, session, receiver):
    hook = receiver()
    _, org_id = await failed_deployment_in_org(world, session)
    port = hook.server.server_address[1]
    # allowed when created (the operator's setting covers the loopback) ...
    by_ip = await world.channel(org_id, name="ip", kind="webhook", url=hook.url, events=["deployment.failed"])
    by_name = await world.channel(org_id, name="name", kind="slack", url=f"http://localhost:{port}/hook", events=["deployment.failed"])
    # ... then the setting is narrowed: the senders check the address they connect to
    world.start_sender(NOTIFY_ALLOWED_NETWORKS="")
    for channel in (by_ip, by_name):
        tested = await world.client.post(f"{CHANNELS}/{channel['id']}/test", headers=world.admin.headers)
        assert tested.status_code == 202
    rows = await eventually(lambda: _rows_with(world, lambda r: r.status == "failed"))
    assert len(rows) == 2
    for row in rows:
        assert row.attempts == 1 and row.last_status_code is None  # failed at once, never retried
        assert "NOTIFY_ALLOWED_NETWORKS" in row.last_error and "127.0.0.1 is a loopback address" in row.last_error
    # the delivery log gives why as a code and the values it quotes (the UI words it: i18n/deliveryWords.ts)
    for channel, host in ((by_ip, "127.0.0.1"), (by_name, "localhost")):
        log = await world.client.get(f"{CHANNELS}/{channel['id']}/deliveries", headers=world.admin.headers)
        (item,) = log.json()["items"]
        assert item["last_error_code"] == "egress_refused", item
        assert item["last_error_params"]["host"] == host and item["last_error_params"]["kind"] == "loopback"
    await asyncio.sleep(0.5)
    assert hook.received == []  # nothing reached the receiver


async def test_retention_prunes_old_settled_deliveries_and_hook_calls(world, session, receiver):
    deployment_id, org_id = await failed_deployment_in_org(world, session)
    channel = await world.channel(org_id, kind="webhook", url=receiver().url, events=["deployment.failed"])
    for _ in range(4):
        assert (await world.client.post(f"{CHANNELS}/{channel['id']}/test", headers=world.admin.headers)).status_code == 202
    hook = await world.client.post(f"/api/v1/deployments/{deployment_id}/hooks", json={"name": "ci"}, headers=world.admin.headers)
    assert hook.status_code == 201, hook.text
    old, recent = utcnow() - timedelta(days=31), utcnow() - timedelta(days=29)
    rows = [r.id for r in await world.deliveries()]
    ages = {rows[0]: ("delivered", old), rows[1]: ("failed", old), rows[2]: ("pending", old), rows[3]: ("delivered", recent)}
    async with world.db.engine.begin() as conn:
        for delivery_id, (status, at) in ages.items():
            await conn.execute(
                update(NotificationDelivery).where(NotificationDelivery.id == delivery_id).values(status=status, created_at=at)
            )
        for at, nonce in ((old, "n-old"), (recent, "n-recent")):
            await conn.execute(
                DeployHookCall.__table__.insert().values(
                    id=nonce, hook_id=hook.json()["id"], at=at, status_code=202, code="accepted", nonce=nonce
                )
            )
    settings = world.settings.model_copy(update={"RETENTION_DAYS": 30, "RETENTION_BATCH_SIZE": 1})  # several batches
    await RetentionLoop(settings).run_once()
    kept = {r.id: r.status for r in await world.deliveries()}
    assert kept == {rows[2]: "pending", rows[3]: "delivered"}  # the old settled ones went; an unsettled one stays
    async with world.db.engine.connect() as conn:
        calls = (await conn.execute(select(DeployHookCall.nonce))).scalars().all()
    assert calls == ["n-recent"]
    await RetentionLoop(world.settings.model_copy(update={"RETENTION_DAYS": 0})).run_once()  # 0 keeps everything
    assert len(await world.deliveries()) == 2
