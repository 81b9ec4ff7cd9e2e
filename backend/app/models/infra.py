"""Targets (Docker engines) and stacks (compose templates with a typed variable schema)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from backend.app.database import Base
from backend.app.models.base import IdMixin, TimestampMixin
from backend.app.models.enums import TargetType
from backend.app.models.identity import _enum


class Target(IdMixin, TimestampMixin, Base):
    __tablename__ = "targets"
    __table_args__ = (UniqueConstraint("organization_id", "name", name="uq_targets_org_name"),)

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str | None] = mapped_column(String(500))
    type: Mapped[TargetType] = mapped_column(_enum(TargetType, "target_type"), nullable=False)
    endpoint: Mapped[str] = mapped_column(String(500), nullable=False)
    #: Fernet-encrypted JSON of TLS material / SSH key; never returned by the API.
    credentials_encrypted: Mapped[str | None] = mapped_column(Text)
    max_concurrent_deployments: Mapped[int] = mapped_column(Integer, default=2, nullable=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    #: The compose policy (``services.targets.compose_policy.ComposePolicy`` as JSON); null = the default, all denied.
    compose_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: Placed: its work (deploy, stop, delete) goes through a queue of its own, consumed only by the workers that
    #: declare it (``WORKER_TARGETS``); not placed: the shared queue, which every worker without a declaration
    #: consumes (``services/targets/placement.py``)
    placed: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false", nullable=False)
    #: The host whose local engine this is (``HOST_ID`` of a worker declaring ``local``): only processes of that
    #: host reach it; null = any process reaches the endpoint
    host: Mapped[str | None] = mapped_column(String(255))


class Stack(IdMixin, TimestampMixin, Base):
    __tablename__ = "stacks"
    __table_args__ = (UniqueConstraint("organization_id", "name", name="uq_stacks_org_name"),)

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(50), default="1.0.0", nullable=False)
    template: Mapped[str] = mapped_column(Text, nullable=False)
    variables: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, nullable=False)
    #: the variables as their author wrote them (YAML or JSON), when they were given as text; ``variables``
    #: is what it reads as, in canonical form
    variables_source: Mapped[str | None] = mapped_column(Text)
    #: "user" for stacks created through the API, "catalog" for stacks_definitions/*.yaml.
    source: Mapped[str] = mapped_column(String(20), default="user", nullable=False)


class Registry(IdMixin, TimestampMixin, Base):
    """A container registry's credentials for one organisation: its deployments' pulls from ``server`` use them.

    ``server`` is the normalised registry host (``registry.example.com``, ``127.0.0.1:5000``, ``docker.io``),
    the way an image reference names it; the password (or token) is Fernet-encrypted, never returned."""

    __tablename__ = "registries"
    __table_args__ = (
        UniqueConstraint("organization_id", "name", name="uq_registries_org_name"),
        UniqueConstraint("organization_id", "server", name="uq_registries_org_server"),
    )

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    server: Mapped[str] = mapped_column(String(255), nullable=False)
    username: Mapped[str] = mapped_column(String(255), nullable=False)
    password_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
