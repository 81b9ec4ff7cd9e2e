"""An organisation's notification channels: managed by its owners and admins; the deliveries of each."""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core import security
from backend.app.core.exceptions import ValidationFailed
from backend.app.database import utcnow
from backend.app.models import NotificationChannel, NotificationDelivery, Organization, Role, User
from backend.app.models.base import new_id
from backend.app.schemas.notifications import ChannelCreate, ChannelUpdate
from backend.app.services import pagination
from backend.app.services.identity import organization_service
from backend.app.services.notifications import egress
from backend.app.services.notifications.outbox import TEST_EVENT

CHANNELS_BY_NAME = pagination.Ordering("channels", (NotificationChannel.name, NotificationChannel.id))
DELIVERIES_BY_AGE = pagination.Ordering("deliveries", (NotificationDelivery.created_at, NotificationDelivery.id), descending=True)


def url_host(settings: Settings, channel: NotificationChannel) -> str | None:
    if not channel.url_encrypted:
        return None
    return urlsplit(security.decrypt_secret(settings, channel.url_encrypted)).hostname


async def _check_url(settings: Settings, url: str) -> None:
    reason = await egress.check_url(settings, url)
    if reason is not None:
        raise ValidationFailed(reason, code="channel_url_not_allowed")


async def create(session: AsyncSession, *, settings: Settings, user: User, data: ChannelCreate) -> NotificationChannel:
    organization_id = await organization_service.resolve_organization(
        session, user=user, organization_id=data.organization_id, minimum=Role.ADMIN
    )
    if data.url:
        await _check_url(settings, data.url)
    channel = NotificationChannel(
        organization_id=organization_id,
        name=data.name,
        kind=data.kind,
        url_encrypted=security.encrypt_secret(settings, data.url) if data.url else None,
        address=data.address,
        secret_encrypted=security.encrypt_secret(settings, data.secret) if data.secret else None,
        events=list(dict.fromkeys(data.events)),
        enabled=data.enabled,
    )
    session.add(channel)
    await session.flush()
    return channel


async def page(session: AsyncSession, *, user: User, organization_id: str | None, params: pagination.PageParams) -> pagination.Page:
    """The channels of the organisations where ``user`` is an admin (or of ``organization_id``)."""
    partitions: list[list] | None
    if organization_id is not None:
        await organization_service.require_role(session, user=user, organization_id=organization_id, minimum=Role.ADMIN)
        partitions = [[NotificationChannel.organization_id == organization_id]]
    elif organization_service.platform_wide(user):
        partitions = None
    else:
        ids = await organization_service.admin_organization_ids(session, user=user)
        partitions = [[NotificationChannel.organization_id == org_id] for org_id in ids]
    return await pagination.paginate(
        session, query=select(NotificationChannel), ordering=CHANNELS_BY_NAME, params=params, partitions=partitions
    )


async def update(session: AsyncSession, *, settings: Settings, channel: NotificationChannel, data: ChannelUpdate) -> NotificationChannel:
    fields = data.model_fields_set
    if "url" in fields and data.url is not None:
        if channel.kind == "email":
            raise ValidationFailed("an email channel takes address, not url", code="channel_field_invalid")
        await _check_url(settings, data.url)
        channel.url_encrypted = security.encrypt_secret(settings, data.url)
    if "address" in fields and data.address is not None:
        if channel.kind != "email":
            raise ValidationFailed(f"a {channel.kind} channel takes url, not address", code="channel_field_invalid")
        channel.address = data.address
    if "secret" in fields:
        if data.secret is not None and channel.kind != "webhook":
            raise ValidationFailed("only a webhook channel signs with a secret", code="channel_field_invalid")
        channel.secret_encrypted = security.encrypt_secret(settings, data.secret) if data.secret else None
    for name in ("name", "enabled"):
        if name in fields and getattr(data, name) is not None:
            setattr(channel, name, getattr(data, name))
    if data.events is not None:
        channel.events = list(dict.fromkeys(data.events))
    channel.updated_at = utcnow()
    await session.flush()
    return channel


async def delete(session: AsyncSession, *, channel: NotificationChannel) -> None:
    await session.delete(channel)
    await session.flush()


async def queue_test(session: AsyncSession, *, channel: NotificationChannel) -> NotificationDelivery:
    """A ``test`` delivery for the channel, sent by the senders like any other."""
    org = await session.get(Organization, channel.organization_id)
    delivery_id = new_id()
    body = {
        "id": delivery_id,
        "event": TEST_EVENT,
        "occurred_at": utcnow().isoformat().replace("+00:00", "Z"),
        "organization": {"id": channel.organization_id, "name": org.name if org else ""},
        "deployment": None,
    }
    delivery = NotificationDelivery(
        id=delivery_id, channel_id=channel.id, organization_id=channel.organization_id, event=TEST_EVENT, payload=body
    )
    session.add(delivery)
    await session.flush()
    return delivery


async def deliveries(session: AsyncSession, *, channel: NotificationChannel, params: pagination.PageParams) -> pagination.Page:
    query = select(NotificationDelivery).where(NotificationDelivery.channel_id == channel.id)
    return await pagination.paginate(session, query=query, ordering=DELIVERIES_BY_AGE, params=params)
