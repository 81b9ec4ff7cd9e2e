from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from backend.app.schemas.common import PageFields, RequestModel, ResponseModel

NotificationEvent = Literal[
    "deployment.succeeded",
    "deployment.failed",
    "deployment.cancelled",
    "deployment.rolled_back",
    "deployment.recovered",
    "deployment.stuck",
    "target.unreachable",
]
ChannelKind = Literal["webhook", "slack", "discord", "email"]
Url = Annotated[
    str, Field(min_length=8, max_length=2000, pattern=r"^https?://[^\s@/]+(/\S*)?$", description="http(s)://host/path, no credentials")
]
Address = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+$")]
Secret = Annotated[str, Field(min_length=8, max_length=500)]


class ChannelCreate(RequestModel):
    organization_id: str | None = Field(default=None, max_length=64, description="defaults to your default organisation")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    kind: ChannelKind
    url: Url | None = Field(default=None, description="webhook, slack, discord: where to POST (stored encrypted, never shown again)")
    address: Address | None = Field(default=None, description="email: the recipient")
    secret: Secret | None = Field(default=None, description="webhook: the key of X-WindFlow-Signature-256 (stored encrypted)")
    events: list[NotificationEvent] = Field(min_length=1, max_length=7)
    enabled: bool = True

    @model_validator(mode="after")
    def _target_fits_kind(self) -> ChannelCreate:
        if self.kind == "email" and (self.address is None or self.url is not None):
            raise ValueError("an email channel takes address (and no url)")
        if self.kind != "email" and (self.url is None or self.address is not None):
            raise ValueError(f"a {self.kind} channel takes url (and no address)")
        if self.secret is not None and self.kind != "webhook":
            raise ValueError("only a webhook channel signs with a secret")
        return self


class ChannelUpdate(RequestModel):
    """Only the fields sent change."""

    name: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    url: Url | None = None
    address: Address | None = None
    secret: Secret | None = None
    events: list[NotificationEvent] | None = Field(default=None, min_length=1, max_length=7)
    enabled: bool | None = None


class ChannelRead(ResponseModel):
    id: str
    organization_id: str
    name: str
    kind: ChannelKind
    url_host: str | None = Field(description="the URL's host only (the URL is a credential for Slack and Discord)")
    address: str | None
    has_secret: bool
    events: list[str]
    enabled: bool
    created_at: datetime
    updated_at: datetime


class ChannelPage(PageFields):
    items: list[ChannelRead]


class DeliveryRead(ResponseModel):
    id: str = Field(description="the delivery id (X-WindFlow-Delivery)")
    event: str
    status: Literal["pending", "delivering", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None = Field(description="why the last attempt failed, in English")
    last_error_code: str | None = Field(
        default=None, description="the code of last_error's sentence (core/delivery_words.py); null: a text without one"
    )
    last_error_params: dict[str, str] = Field(default_factory=dict, description="the values last_error's sentence quotes")
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    deployment_id: str | None
    deployment_name: str | None


class DeliveryPage(PageFields):
    items: list[DeliveryRead]
