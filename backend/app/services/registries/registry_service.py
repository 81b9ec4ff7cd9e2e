"""Registries: CRUD with role checks (admins manage, members read), the encrypted password, a login test,
and the credentials a deployment's pulls use.

The password is stored Fernet-encrypted in ``registries.password_encrypted``; it is decrypted only here
(:func:`password_of`, :func:`auth_configs`), and registered with the log redactor at that moment, so any
driver that echoes it prints ``***``. Services take the caller's session and never commit.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.events import queue_event, resource_changed
from backend.app.core.exceptions import Conflict
from backend.app.core.image_reference import DOCKER_HUB
from backend.app.core.logging import redact, register_secret
from backend.app.core.security import decrypt_secret, encrypt_secret
from backend.app.models import Registry, Role, User
from backend.app.schemas.registries import (
    REGISTRY_TEST_MESSAGES,
    RegistryCreate,
    RegistryRead,
    RegistryTestCategory,
    RegistryTestResult,
    RegistryUpdate,
)
from backend.app.services import pagination
from backend.app.services.identity import organization_service

if TYPE_CHECKING:  # imported by the login test only: with its CLI's rich and pygments, 0.1 s of CPU per process
    import httpx

logger = logging.getLogger(__name__)

#: Seconds a login test waits for the registry (each request)
TEST_TIMEOUT_SECONDS = 10.0


def password_of(registry: Registry, settings: Settings) -> str:
    """The decrypted password, registered with the log redactor first."""
    password = decrypt_secret(settings, registry.password_encrypted)
    register_secret(password)
    return password


def to_read(registry: Registry) -> RegistryRead:
    return RegistryRead(
        id=registry.id,
        organization_id=registry.organization_id,
        name=registry.name,
        server=registry.server,
        username=registry.username,
        has_password=bool(registry.password_encrypted),
        created_at=registry.created_at,
        updated_at=registry.updated_at,
    )


def _taken(field: str, value: str) -> Conflict:
    return Conflict(
        f"a registry with this {field} ({value!r}) already exists in this organization; pick another {field} or change that registry",
        code=f"registry_{field}_taken",
        params={field: value},
    )


async def _check_unique(session: AsyncSession, organization_id: str, *, name: str, server: str, own_id: str | None = None) -> None:
    for field, value in (("name", name), ("server", server)):
        query = select(Registry.id).where(Registry.organization_id == organization_id, getattr(Registry, field) == value)
        found = (await session.execute(query)).scalars().first()
        if found is not None and found != own_id:
            raise _taken(field, value)


async def create(session: AsyncSession, *, settings: Settings, user: User, data: RegistryCreate) -> Registry:
    """A registry in ``data.organization_id`` (default: the caller's default organisation); admin or higher."""
    organization_id = await organization_service.resolve_organization(
        session, user=user, organization_id=data.organization_id, minimum=Role.ADMIN
    )
    await _check_unique(session, organization_id, name=data.name, server=data.server)
    register_secret(data.password)
    registry = Registry(
        organization_id=organization_id,
        name=data.name,
        server=data.server,
        username=data.username,
        password_encrypted=encrypt_secret(settings, data.password),
    )
    session.add(registry)
    try:
        await session.flush()
    except IntegrityError as exc:  # created concurrently
        raise _taken("name", data.name) from exc
    queue_event(session, resource_changed(organization_id, "registry", "created", registry.id, registry.name))
    return registry


REGISTRIES_BY_NAME = pagination.Ordering("registries", (Registry.name, Registry.id))


async def list_for_user(
    session: AsyncSession, *, user: User, page: pagination.PageParams, organization_id: str | None = None, q: str | None = None
) -> pagination.Page:
    """Registries of the organisations ``user`` belongs to (every one for a superuser), by name."""
    scope = await organization_service.readable_partitions(
        session, user=user, org_column=Registry.organization_id, organization_id=organization_id
    )
    query = select(Registry)
    if q:
        query = query.where(pagination.contains(Registry.name, q) | pagination.contains(Registry.server, q))
    return await pagination.paginate(session, query=query, ordering=REGISTRIES_BY_NAME, params=page, partitions=scope)


async def update(session: AsyncSession, *, settings: Settings, registry: Registry, data: RegistryUpdate) -> Registry:
    changes = data.model_dump(exclude_unset=True)
    name, server = changes.get("name", registry.name), changes.get("server", registry.server)
    await _check_unique(session, registry.organization_id, name=name, server=server, own_id=registry.id)
    password = changes.pop("password", None)
    if password is not None:
        register_secret(password)
        registry.password_encrypted = encrypt_secret(settings, password)
    for field, value in changes.items():
        setattr(registry, field, value)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise _taken("name", name) from exc
    queue_event(session, resource_changed(registry.organization_id, "registry", "updated", registry.id, name))
    return registry


async def delete(session: AsyncSession, *, registry: Registry) -> None:
    event = resource_changed(registry.organization_id, "registry", "deleted", registry.id, registry.name)
    await session.delete(registry)
    await session.flush()
    queue_event(session, event)


async def auth_configs(session: AsyncSession, *, settings: Settings, organization_id: str) -> dict[str, dict[str, str]]:
    """``{server: {"username", "password", "serveraddress"}}`` of an organisation's registries, decrypted (and
    registered with the redactor): what a run's pulls give the engine's auth parameter."""
    rows = (await session.execute(select(Registry).where(Registry.organization_id == organization_id))).scalars().all()
    return {row.server: {"username": row.username, "password": password_of(row, settings), "serveraddress": row.server} for row in rows}


# --- login test -----------------------------------------------------------------------------------


def _is_loopback(server: str) -> bool:
    host = server.rsplit(":", 1)[0] if not server.endswith("]") else server
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bearer_params(header: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in header[len("bearer") :].split(","):
        key, _, value = part.strip().partition("=")
        if key:
            params[key.lower()] = value.strip().strip('"')
    return params


async def _login(client: httpx.AsyncClient, base: str, username: str, password: str) -> RegistryTestCategory:
    """Docker's registry login: ``GET /v2/`` with basic auth, or the bearer token service it names."""
    response = await client.get(f"{base}/v2/", auth=(username, password))
    if response.status_code == 200:
        return RegistryTestCategory.OK
    if response.status_code != 401:
        return RegistryTestCategory.AUTHENTICATION if response.status_code == 403 else RegistryTestCategory.NOT_REGISTRY
    challenge = response.headers.get("www-authenticate", "")
    if not challenge.lower().startswith("bearer"):
        return RegistryTestCategory.AUTHENTICATION if challenge.lower().startswith("basic") else RegistryTestCategory.NOT_REGISTRY
    params = _bearer_params(challenge)
    realm = params.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        return RegistryTestCategory.NOT_REGISTRY
    query = {key: params[key] for key in ("service", "scope") if key in params}
    token = await client.get(realm, params=query, auth=(username, password))
    if token.status_code == 200:
        return RegistryTestCategory.OK
    return RegistryTestCategory.AUTHENTICATION if token.status_code in (401, 403) else RegistryTestCategory.NOT_REGISTRY


def _category_of(exc: BaseException) -> RegistryTestCategory:
    link: BaseException | None = exc
    while link is not None:
        if isinstance(link, ssl.SSLError):
            return RegistryTestCategory.TLS
        link = link.__cause__ or link.__context__
    return RegistryTestCategory.UNREACHABLE


async def test_login(registry: Registry, settings: Settings, *, timeout: float = TEST_TIMEOUT_SECONDS) -> RegistryTestResult:
    """Log in to the registry as a pull would. Never raises; the message is the category's fixed text.

    Like Docker, HTTPS first; a loopback registry (which Docker treats as insecure) may answer in plain HTTP.
    """
    password = password_of(registry, settings)
    base_host = "registry-1.docker.io" if registry.server == DOCKER_HUB else registry.server
    bases = [f"https://{base_host}"] + ([f"http://{base_host}"] if _is_loopback(base_host) else [])
    category = RegistryTestCategory.UNREACHABLE
    import httpx

    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for base in bases:
            try:
                category = await _login(client, base, registry.username, password)
                break
            except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                category = _category_of(exc)
                logger.info(
                    "testing registry %s at %s failed (%s): %s", registry.id, base, category, redact(f"{type(exc).__name__}: {exc}")
                )
    return RegistryTestResult(ok=category is RegistryTestCategory.OK, category=category, message=REGISTRY_TEST_MESSAGES[category])


test_login.__test__ = False
