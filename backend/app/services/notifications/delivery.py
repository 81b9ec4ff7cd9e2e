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
from typing import Any

import httpx
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core import security
from backend.app.database import utcnow
from backend.app.models import NotificationChannel, NotificationDelivery
from backend.app.services.hooks.signature import sign
from backend.app.services.notifications import egress

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


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The client a sender keeps for its deliveries (its connections and TLS context reused): no redirects
    followed, no proxy from the environment, ``NOTIFY_TIMEOUT_SECONDS`` per request, every connection to an
    address checked by ``egress`` (public, or in ``NOTIFY_ALLOWED_NETWORKS``)."""
    return httpx.AsyncClient(
        timeout=settings.NOTIFY_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False, transport=egress.transport(settings)
    )


async def _post(settings: Settings, url: str, content: bytes, headers: dict[str, str], client: httpx.AsyncClient | None) -> Outcome:
    try:
        if client is None:
            async with http_client(settings) as own:
                response = await own.post(url, content=content, headers={"Content-Type": "application/json", **headers})
        else:
            response = await client.post(url, content=content, headers={"Content-Type": "application/json", **headers})
    except egress.EgressRefused as exc:
        return Outcome(False, None, f"refused, nothing sent: {exc}", final=True)
    except httpx.TimeoutException:
        return Outcome(False, None, f"no answer within {settings.NOTIFY_TIMEOUT_SECONDS:g} s")
    except httpx.HTTPError as exc:
        return Outcome(False, None, f"{type(exc).__name__}: could not reach the receiver")
    if 200 <= response.status_code < 300:
        return Outcome(True, response.status_code)
    return Outcome(False, response.status_code, f"the receiver answered {response.status_code}")


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
    settings: Settings, *, channel: NotificationChannel, delivery: NotificationDelivery, client: httpx.AsyncClient | None = None
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


async def settle(session: AsyncSession, *, settings: Settings, delivery_id: str, owner: str, attempts: int, outcome: Outcome) -> bool:
    """Record an attempt's outcome if ``owner`` still holds the delivery (the caller commits)."""
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "last_status_code": outcome.status_code}
    if outcome.ok:
        values.update(status=DELIVERED, delivered_at=utcnow(), last_error=None)
    elif attempts >= settings.NOTIFY_MAX_ATTEMPTS or outcome.final:
        values.update(status=FAILED, last_error=(outcome.error or "")[:500])
    else:
        delay = min(settings.NOTIFY_BACKOFF_SECONDS * 2 ** (attempts - 1), settings.NOTIFY_BACKOFF_MAX_SECONDS)
        values.update(status=PENDING, next_attempt_at=utcnow() + timedelta(seconds=delay), last_error=(outcome.error or "")[:500])
    result = await session.execute(
        update(NotificationDelivery)
        .where(NotificationDelivery.id == delivery_id, NotificationDelivery.status == DELIVERING, NotificationDelivery.lease_owner == owner)
        .values(**values)
    )
    return result.rowcount == 1


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
