"""Notification channels of an organisation (owners and admins): create, list, change, delete, send a test,
read the delivery log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from backend.app.api.deps import CurrentUser, EntityQueryId, OwnedRow, PageDep, SessionDep, SettingsDep
from backend.app.api.responses import FILTERED_BY_ORGANIZATION, IN_ORGANIZATION, errors
from backend.app.core.delivery_words import delivery_error_words
from backend.app.models import NotificationChannel, NotificationDelivery, Role
from backend.app.runtime import notifier
from backend.app.schemas.notifications import ChannelCreate, ChannelPage, ChannelRead, ChannelUpdate, DeliveryPage, DeliveryRead
from backend.app.services.notifications import channel_service

router = APIRouter(prefix="/notification-channels", tags=["notifications"])

#: a field that does not fit the channel's kind (an email channel's url, a webhook's address, ...), or a URL
#: whose host is not a public address (NOTIFY_ALLOWED_NETWORKS)
_FIELDS = errors(invalid=["channel_field_invalid", "channel_url_not_allowed"])
ChannelDep = Annotated[NotificationChannel, Depends(OwnedRow(NotificationChannel, Role.ADMIN, param="channel_id", noun="channel"))]


def read_model(settings, channel: NotificationChannel) -> ChannelRead:
    return ChannelRead(
        id=channel.id,
        organization_id=channel.organization_id,
        name=channel.name,
        kind=channel.kind,
        url_host=channel_service.url_host(settings, channel),
        address=channel.address,
        has_secret=channel.secret_encrypted is not None,
        events=list(channel.events or []),
        enabled=channel.enabled,
        created_at=channel.created_at,
        updated_at=channel.updated_at,
    )


def delivery_model(delivery: NotificationDelivery) -> DeliveryRead:
    deployment = (delivery.payload or {}).get("deployment") or {}
    error_code, error_params = delivery_error_words(delivery.last_error)
    return DeliveryRead(
        id=delivery.id,
        event=delivery.event,
        status=delivery.status,
        attempts=delivery.attempts,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        last_error_code=error_code,
        last_error_params=error_params,
        created_at=delivery.created_at,
        next_attempt_at=delivery.next_attempt_at,
        delivered_at=delivery.delivered_at,
        deployment_id=deployment.get("id"),
        deployment_name=deployment.get("name"),
    )


@router.post("", response_model=ChannelRead, status_code=status.HTTP_201_CREATED, responses=errors(IN_ORGANIZATION, _FIELDS))
async def create_channel(body: ChannelCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> ChannelRead:
    """A channel of an organisation (admins): its URL and secret are stored encrypted and never shown again."""
    channel = await channel_service.create(session, settings=settings, user=user, data=body)
    await session.commit()
    return read_model(settings, channel)


@router.get("", response_model=ChannelPage, responses=errors(FILTERED_BY_ORGANIZATION, forbidden=["role_required"]))
async def list_channels(
    user: CurrentUser, session: SessionDep, settings: SettingsDep, page: PageDep, organization_id: EntityQueryId | None = None
) -> ChannelPage:
    """The channels of the organisations you administer, by name."""
    result = await channel_service.page(session, user=user, organization_id=organization_id, params=page)
    return ChannelPage.of(result, [read_model(settings, c) for c in result.items])


@router.get("/{channel_id}", response_model=ChannelRead)
async def get_channel(channel: ChannelDep, settings: SettingsDep) -> ChannelRead:
    return read_model(settings, channel)


@router.patch("/{channel_id}", response_model=ChannelRead, responses=_FIELDS)
async def update_channel(body: ChannelUpdate, channel: ChannelDep, session: SessionDep, settings: SettingsDep) -> ChannelRead:
    """Change a channel: only the fields sent (``secret: null`` removes the signature)."""
    channel = await channel_service.update(session, settings=settings, channel=channel, data=body)
    await session.commit()
    return read_model(settings, channel)


@router.delete("/{channel_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_channel(channel: ChannelDep, session: SessionDep) -> None:
    """Delete a channel and its delivery log."""
    await channel_service.delete(session, channel=channel)
    await session.commit()


@router.post("/{channel_id}/test", response_model=DeliveryRead, status_code=status.HTTP_202_ACCEPTED)
async def test_channel(channel: ChannelDep, session: SessionDep) -> DeliveryRead:
    """Queue a ``test`` delivery; its outcome appears in the delivery log."""
    delivery = await channel_service.queue_test(session, channel=channel)
    await session.commit()
    notifier.wake_all()
    return delivery_model(delivery)


@router.get("/{channel_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(channel: ChannelDep, session: SessionDep, page: PageDep) -> DeliveryPage:
    """The channel's deliveries, newest first: status, attempts, the receiver's last status code, the last error."""
    result = await channel_service.deliveries(session, channel=channel, params=page)
    return DeliveryPage.of(result, [delivery_model(d) for d in result.items])
