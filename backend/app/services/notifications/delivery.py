"""Delivering a queued notification: claim it (a lease), send it, settle it (delivered, retried later, failed).

At least once, whoever sends it: a sender claims due deliveries with a compare-and-set (``pending`` and due,
or ``delivering`` past its lease: its sender died), sends them, and settles only those it still holds. A
receiver sees the same ``X-WindFlow-Delivery`` id again only when a sender died between its send and its
settle, or the receiver answered too late; it deduplicates with that id. A failure (an answer that is not
2xx, a timeout, a refused connection, an SMTP error) is retried after ``NOTIFY_BACKOFF_SECONDS`` doubled at
each attempt (up to ``NOTIFY_BACKOFF_MAX_SECONDS``) until ``NOTIFY_MAX_ATTEMPTS``, then the delivery is
``failed``. Only a status code and a short error are kept: a receiver's answer is never stored or shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core import security
from backend.app.database import utcnow
from backend.app.models import NotificationChannel, NotificationDelivery
from backend.app.services.hooks.signature import sign
from backend.app.services.notifications import egress

if TYPE_CHECKING:  # imported by the first delivery over HTTP (http_client): 0.1-0.3 s of CPU per process
    import aiohttp

logger = logging.getLogger(__name__)

PENDING, DELIVERING, DELIVERED, FAILED = "pending", "delivering", "delivered", "failed"
_TITLES = {
    "deployment.succeeded": "succeeded",
    "deployment.failed": "failed",
    "deployment.cancelled": "was cancelled",
    "deployment.rolled_back": "was rolled back",
    "deployment.recovered": "recovered after a crash",
    "deployment.stuck": "was stuck beyond its timeout",
    "target.unreachable": "failed: its target is unreachable",
    "test": "test notification",
}


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    final: bool = False  # not worth retrying (a refused address): the delivery fails now


async def claim(
    session: AsyncSession, *, owner: str, lease_seconds: float, limit: int
) -> list[tuple[NotificationDelivery, NotificationChannel]]:
    """Take up to ``limit`` due deliveries for ``owner``, with their channels (the caller commits).

    One ``UPDATE … WHERE id IN (the due ones, oldest first) AND still due … RETURNING``: on PostgreSQL the
    candidates are locked ``SKIP LOCKED`` (two senders never wait for, nor take, the same rows) and the
    condition is checked again on the row as it is (a compare-and-set); SQLite has one writer at a time.
    Then the channels, in one query (a delivery whose channel was deleted meanwhile is left out)."""
    now = utcnow()
    due = or_(
        and_(NotificationDelivery.status == PENDING, NotificationDelivery.next_attempt_at <= now),
        and_(NotificationDelivery.status == DELIVERING, NotificationDelivery.lease_expires_at < now),
    )
    candidates = (
        select(NotificationDelivery.id)
        .where(due)
        .order_by(NotificationDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    result = await session.execute(
        update(NotificationDelivery)
        .where(NotificationDelivery.id.in_(candidates), due)
        .values(
            status=DELIVERING,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=NotificationDelivery.attempts + 1,
        )
        .returning(NotificationDelivery),
        execution_options={"synchronize_session": False},
    )
    deliveries = sorted(result.scalars(), key=lambda d: (d.next_attempt_at, d.id))
    if not deliveries:
        return []
    channel_ids = {d.channel_id for d in deliveries}
    channels = {
        c.id: c for c in (await session.execute(select(NotificationChannel).where(NotificationChannel.id.in_(channel_ids)))).scalars()
    }
    return [(d, channels[d.channel_id]) for d in deliveries if d.channel_id in channels]


def url_of(settings: Settings, path: str | None) -> str | None:
    if not path:
        return None
    return settings.PUBLIC_URL.rstrip("/") + path if settings.PUBLIC_URL else path


def message(settings: Settings, body: dict[str, Any]) -> tuple[str, str]:
    """A human subject and text of a delivery (Slack, Discord, email)."""
    deployment = body.get("deployment") or {}
    org = (body.get("organization") or {}).get("name", "")
    if not deployment:
        title = f"[WindFlow] test notification from {org}"
        return title, f"{title}\nThis channel receives WindFlow's notifications."
    title = f"[WindFlow] {deployment.get('name', '?')} {_TITLES.get(body.get('event', ''), body.get('event', ''))}"
    lines = [
        title,
        f"Organisation: {org}",
        f"Status: {deployment.get('status')} (revision {deployment.get('revision')})",
    ]
    for image in deployment.get("images") or []:
        digest = f" @ {image['digest']}" if image.get("digest") else ""
        lines.append(f"Image ({image.get('service')}): {image.get('image')}{digest}")
    if deployment.get("error_message"):
        lines.append(f"Why: {deployment['error_message']}")
    link = url_of(settings, deployment.get("path"))
    if link:
        lines.append(f"Deployment: {link}")
    return title, "\n".join(lines)


def webhook_body(settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(body))
    deployment = out.get("deployment")
    if isinstance(deployment, dict):
        deployment["url"] = url_of(settings, deployment.pop("path", None))
    return out


#: at most this much of a receiver's answer is read (to keep its connection for the next delivery); a longer
#: answer is not read further and its connection is closed
_MAX_ANSWER = 64 * 1024


def http_client(settings: Settings) -> aiohttp.ClientSession:
    """The client a sender keeps for its deliveries (call it on the event loop that sends): HTTP/1.1
    connections kept alive per receiver, no proxy from the environment, no cookie kept from one answer to
    the next request, every connection to an address checked by ``egress`` (public, or in
    ``NOTIFY_ALLOWED_NETWORKS``). Each request is bounded by ``NOTIFY_TIMEOUT_SECONDS`` as a whole
    (connecting, sending, the answer) and follows no redirect (:func:`_post`)."""
    import aiohttp

    from backend.app.services.notifications.egress_connector import connector

    return aiohttp.ClientSession(
        connector=connector(settings),
        timeout=aiohttp.ClientTimeout(total=settings.NOTIFY_TIMEOUT_SECONDS),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )


async def _post(settings: Settings, url: str, content: bytes, headers: dict[str, str], client: aiohttp.ClientSession | None) -> Outcome:
    if client is None:
        async with http_client(settings) as own:
            return await _post(settings, url, content, headers, own)
    import aiohttp  # loaded by the client's making

    try:
        async with client.post(
            url, data=content, headers={"Content-Type": "application/json", **headers}, allow_redirects=False
        ) as response:
            status = response.status
            read = 0  # the answer is not kept; read (a little of it) so that the connection serves again
            while read <= _MAX_ANSWER and not response.content.at_eof():
                chunk = await response.content.readany()
                if not chunk:
                    break
                read += len(chunk)
    except egress.EgressRefused as exc:
        return Outcome(False, None, f"refused, nothing sent: {exc}", final=True)
    except TimeoutError:  # aiohttp's timeouts are TimeoutErrors
        return Outcome(False, None, f"no answer within {settings.NOTIFY_TIMEOUT_SECONDS:g} s")
    except (aiohttp.ClientError, ValueError) as exc:
        return Outcome(False, None, f"{type(exc).__name__}: could not reach the receiver")
    if 200 <= status < 300:
        return Outcome(True, status)
    return Outcome(False, status, f"the receiver answered {status}")


def _smtp_send(settings: Settings, to: str, subject: str, text: str) -> None:
    mail = EmailMessage()
    mail["From"] = settings.SMTP_FROM
    mail["To"] = to
    mail["Subject"] = subject
    mail.set_content(text)
    with smtplib.SMTP(settings.SMTP_HOST, settings.SMTP_PORT, timeout=settings.NOTIFY_TIMEOUT_SECONDS) as smtp:
        if settings.SMTP_STARTTLS:
            smtp.starttls()
        if settings.SMTP_USERNAME:
            smtp.login(settings.SMTP_USERNAME, settings.SMTP_PASSWORD)
        smtp.send_message(mail)


async def send(
    settings: Settings, *, channel: NotificationChannel, delivery: NotificationDelivery, client: aiohttp.ClientSession | None = None
) -> Outcome:
    """One attempt of ``delivery`` on ``channel``."""
    body = dict(delivery.payload or {})
    if channel.kind == "email":
        if not settings.SMTP_HOST:
            return Outcome(False, None, "SMTP_HOST is not set: the server cannot send email")
        subject, text = message(settings, body)
        try:
            await asyncio.to_thread(_smtp_send, settings, channel.address or "", subject, text)
        except (OSError, smtplib.SMTPException) as exc:
            return Outcome(False, None, f"SMTP: {type(exc).__name__}: {str(exc)[:200]}")
        return Outcome(True, 250)
    url = security.decrypt_secret(settings, channel.url_encrypted or "")
    if channel.kind == "webhook":
        content = json.dumps(webhook_body(settings, body), separators=(",", ":")).encode()
        headers = {"X-WindFlow-Event": str(body.get("event", "")), "X-WindFlow-Delivery": delivery.id}
        if channel.secret_encrypted:
            headers["X-WindFlow-Signature-256"] = sign(security.decrypt_secret(settings, channel.secret_encrypted), content)
        return await _post(settings, url, content, headers, client)
    _, text = message(settings, body)
    field = "content" if channel.kind == "discord" else "text"
    return await _post(settings, url, json.dumps({field: text[:1900]}).encode(), {}, client)


_T = NotificationDelivery.__table__
_HELD = and_(_T.c.id.in_(bindparam("b_ids", expanding=True)), _T.c.status == DELIVERING, _T.c.lease_owner == bindparam("b_owner"))
_RELEASED = {"lease_owner": None, "lease_expires_at": None}
#: the settles, built once (a pass settles with one statement per kind of outcome, whatever the batch)
_DELIVERED = (
    update(_T)
    .where(_HELD)
    .values(status=DELIVERED, delivered_at=bindparam("b_now"), last_error=None, last_status_code=bindparam("b_code"), **_RELEASED)
    .returning(_T.c.id)
)
_FAILED = (
    update(_T)
    .where(_HELD)
    .values(status=FAILED, last_error=bindparam("b_error"), last_status_code=bindparam("b_code"), **_RELEASED)
    .returning(_T.c.id)
)
_RETRIED = (
    update(_T)
    .where(_HELD)
    .values(
        status=PENDING,
        next_attempt_at=bindparam("b_next", type_=_T.c.next_attempt_at.type),
        last_error=bindparam("b_error"),
        last_status_code=bindparam("b_code"),
        **_RELEASED,
    )
    .returning(_T.c.id)
)


async def settle(session: AsyncSession, *, settings: Settings, owner: str, outcomes: list[tuple[str, int, Outcome]]) -> set[str]:
    """Record attempts' outcomes (``(delivery id, its attempts, outcome)``) of the deliveries ``owner`` still
    holds; returns their ids (the others passed to another sender once their lease expired). The caller
    commits. Deliveries answered with the same status code are settled by one statement, and so are failures
    of the same attempt with the same error."""
    now = utcnow()
    groups: dict[tuple[Any, ...], list[str]] = {}
    for delivery_id, attempts, outcome in outcomes:
        if outcome.ok:
            key: tuple[Any, ...] = (_DELIVERED, outcome.status_code, None, None)
        else:
            error = (outcome.error or "")[:500]
            if attempts >= settings.NOTIFY_MAX_ATTEMPTS or outcome.final:
                key = (_FAILED, outcome.status_code, error, None)
            else:
                delay = min(settings.NOTIFY_BACKOFF_SECONDS * 2 ** (attempts - 1), settings.NOTIFY_BACKOFF_MAX_SECONDS)
                key = (_RETRIED, outcome.status_code, error, now + timedelta(seconds=delay))
        groups.setdefault(key, []).append(delivery_id)
    held: set[str] = set()
    for (statement, code, error, next_at), ids in groups.items():
        params: dict[str, Any] = {"b_ids": ids, "b_owner": owner, "b_code": code}
        if statement is _DELIVERED:
            params["b_now"] = now
        else:
            params["b_error"] = error
            if statement is _RETRIED:
                params["b_next"] = next_at
        held.update((await session.execute(statement, params)).scalars())
    return held


async def prune(session: AsyncSession, *, settings: Settings, batch: int = 1000) -> int:
    """Delete up to ``batch`` settled deliveries (delivered or failed) created more than ``RETENTION_DAYS``
    ago (0: keep all); one still pending or delivering is kept. The caller commits and calls again while it
    returns ``batch``."""
    if settings.RETENTION_DAYS <= 0:
        return 0
    horizon = utcnow() - timedelta(days=settings.RETENTION_DAYS)
    old = and_(NotificationDelivery.status.in_([DELIVERED, FAILED]), NotificationDelivery.created_at < horizon)
    ids = list((await session.execute(select(NotificationDelivery.id).where(old).limit(batch))).scalars())
    if ids:
        await session.execute(delete(NotificationDelivery).where(NotificationDelivery.id.in_(ids)))
    return len(ids)
