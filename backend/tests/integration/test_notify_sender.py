"""The notification sender's HTTP client and its settle, against a real HTTP server over TCP and a real database.

The client (``delivery.http_client``, aiohttp) keeps one connection per receiver for the deliveries that follow
(the server counts the connections it accepted), sends each delivery's id and signature, does not keep a long
answer (its connection is closed, the delivery is still delivered), and reaches only checked addresses: a name
that resolves to the loopback is refused before any connection when the loopback is not allowed. The settle
records every kind of outcome of a pass (delivered with two status codes, retried later, failed for good) with
one statement per kind, and leaves a delivery whose lease passed to another sender untouched."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import timedelta

from sqlalchemy import select

from backend.app.core import security
from backend.app.database import utcnow
from backend.app.models import NotificationChannel, NotificationDelivery, Organization
from backend.app.services.notifications import delivery as sender
from backend.tests.conftest import make_settings

SECRET = "sender-secret-0123456789"


class Server:
    """An HTTP/1.1 server on the loopback that keeps connections alive; counts connections and requests."""

    def __init__(self, answer: bytes = b"ok") -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
                self.requests.append((head, await reader.readexactly(length)))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.answer) + self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def _channel(settings, url: str) -> NotificationChannel:
    return NotificationChannel(
        id="c1",
        organization_id="o1",
        name="hook",
        kind="webhook",
        url_encrypted=security.encrypt_secret(settings, url),
        secret_encrypted=security.encrypt_secret(settings, SECRET),
        events=["deployment.failed"],
    )


def _delivery(number: int) -> NotificationDelivery:
    payload = {"id": f"d{number}", "event": "deployment.failed", "deployment": {"id": f"dep{number}", "path": "/deployments/x"}}
    return NotificationDelivery(
        id=f"d{number}", channel_id="c1", organization_id="o1", event="deployment.failed", payload=payload, attempts=1
    )


async def _send_all(settings, server: Server, url: str, count: int) -> list:
    """``count`` deliveries sent one after another through one sender client; the client and the server closed."""
    client = sender.http_client(settings)
    try:
        return [await sender.send(settings, channel=_channel(settings, url), delivery=_delivery(n), client=client) for n in range(count)]
    finally:
        await client.close()
        await server.close()


async def test_deliveries_to_one_receiver_share_one_connection_each_signed_with_its_id() -> None:
    settings = make_settings("sqlite+aiosqlite:///unused.db", NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8", NOTIFY_TIMEOUT_SECONDS=5.0)
    server = Server()
    url = await server.start()
    outcomes = await _send_all(settings, server, url, 3)
    assert [o.ok for o in outcomes] == [True] * 3 and {o.status_code for o in outcomes} == {200}
    assert len(server.requests) == 3
    assert server.connections == 1  # kept alive from one delivery to the next
    for number, (head, body) in enumerate(server.requests):
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        headers = {k.lower().decode(): v.decode() for k, v in headers.items()}
        assert headers["x-windflow-delivery"] == f"d{number}"
        assert headers["x-windflow-signature-256"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert json.loads(body)["deployment"]["url"] == "/deployments/x"


async def test_a_long_answer_is_not_kept_its_connection_is_closed_and_the_delivery_counts() -> None:
    settings = make_settings("sqlite+aiosqlite:///unused.db", NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8", NOTIFY_TIMEOUT_SECONDS=5.0)
    server = Server(answer=b"x" * (4 * 1024 * 1024))
    url = await server.start()
    outcomes = await _send_all(settings, server, url, 2)
    assert [o.ok for o in outcomes] == [True, True]
    assert server.connections == 2  # the first answer was not read to its end: that connection was not reused


async def test_a_name_resolving_to_the_loopback_is_refused_before_connecting() -> None:
    settings = make_settings("sqlite+aiosqlite:///unused.db", NOTIFY_ALLOWED_NETWORKS="", NOTIFY_TIMEOUT_SECONDS=5.0)
    server = Server()
    url = (await server.start()).replace("127.0.0.1", "localhost")
    client = sender.http_client(settings)
    try:
        outcome = await sender.send(settings, channel=_channel(settings, url), delivery=_delivery(0), client=client)
    finally:
        await client.close()
        await server.close()
    assert not outcome.ok and outcome.final and outcome.status_code is None
    assert outcome.error is not None and "is a loopback address" in outcome.error and outcome.error.startswith("refused, nothing sent")
    assert server.connections == 0


async def test_a_pass_settles_each_kind_of_outcome_and_only_what_it_still_holds(db, session) -> None:
    settings = db.settings.model_copy(
        update={"NOTIFY_MAX_ATTEMPTS": 3, "NOTIFY_BACKOFF_SECONDS": 10.0, "NOTIFY_BACKOFF_MAX_SECONDS": 600.0}
    )
    org = Organization(name="o")
    session.add(org)
    await session.flush()
    channel = NotificationChannel(organization_id=org.id, name="c", kind="webhook", url_encrypted="x", events=["deployment.failed"])
    session.add(channel)
    await session.flush()
    lease = utcnow() + timedelta(seconds=60)
    rows = {}
    for name, attempts, owner in [
        ("ok200", 1, "me"),
        ("ok204", 1, "me"),
        ("retry", 2, "me"),
        ("last", 3, "me"),
        ("refused", 1, "me"),
        ("lost", 1, "other"),
    ]:
        row = NotificationDelivery(
            channel_id=channel.id,
            organization_id=org.id,
            event="deployment.failed",
            payload={},
            status="delivering",
            attempts=attempts,
            lease_owner=owner,
            lease_expires_at=lease,
        )
        session.add(row)
        rows[name] = row
    await session.commit()
    before = utcnow()
    ids = {name: row.id for name, row in rows.items()}
    held = await sender.settle(
        session,
        settings=settings,
        owner="me",
        outcomes=[
            (ids["ok200"], 1, sender.Outcome(True, 200)),
            (ids["ok204"], 1, sender.Outcome(True, 204)),
            (ids["retry"], 2, sender.Outcome(False, 500, "the receiver answered 500")),
            (ids["last"], 3, sender.Outcome(False, 500, "the receiver answered 500")),
            (ids["refused"], 1, sender.Outcome(False, None, "refused, nothing sent: x", final=True)),
            (ids["lost"], 1, sender.Outcome(True, 200)),
        ],
    )
    await session.commit()
    assert held == {ids[n] for n in ("ok200", "ok204", "retry", "last", "refused")}
    got = {r.id: r for r in (await session.execute(select(NotificationDelivery).execution_options(populate_existing=True))).scalars()}
    by_name = {name: got[i] for name, i in ids.items()}
    assert (by_name["ok200"].status, by_name["ok200"].last_status_code) == ("delivered", 200)
    assert (by_name["ok204"].status, by_name["ok204"].last_status_code) == ("delivered", 204)
    assert by_name["ok200"].delivered_at is not None and by_name["ok200"].lease_owner is None
    retry = by_name["retry"]
    assert (retry.status, retry.last_status_code, retry.last_error) == ("pending", 500, "the receiver answered 500")
    assert before + timedelta(seconds=19) <= retry.next_attempt_at <= utcnow() + timedelta(seconds=21)  # 10 s doubled at attempt 2
    assert retry.lease_owner is None and retry.lease_expires_at is None
    assert (by_name["last"].status, by_name["last"].last_status_code) == ("failed", 500)
    assert (by_name["refused"].status, by_name["refused"].last_error) == ("failed", "refused, nothing sent: x")
    lost = by_name["lost"]  # another sender holds it: untouched
    assert (lost.status, lost.lease_owner, lost.delivered_at) == ("delivering", "other", None)
