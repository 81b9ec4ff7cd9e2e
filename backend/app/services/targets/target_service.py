"""Targets: CRUD with role checks, encrypted credentials, connection tests, the host's local engine.

Credentials (TLS CA / client certificate / key, ``tls_verify``, SSH key) are stored together as one
Fernet-encrypted JSON document in ``targets.credentials_encrypted``. They are decrypted only here
(:func:`credentials`), and every decrypted secret is registered with the log redactor at that moment, so
a driver that echoes one into a log line or error message prints ``***`` instead.

Services take the caller's session and never commit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker.errors
import requests.exceptions
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.events import queue_event, resource_changed
from backend.app.core.exceptions import Conflict, PermissionDenied, ValidationFailed
from backend.app.core.logging import redact, register_secret
from backend.app.core.security import decrypt_secret, encrypt_secret
from backend.app.engines import TargetConnection, engine_for
from backend.app.models import Deployment, Role, Target, TargetType, User
from backend.app.schemas.targets import (
    CREDENTIAL_FIELDS,
    TEST_FAILURE_MESSAGES,
    TLS_FIELDS,
    TargetCreate,
    TargetRead,
    TargetTestResult,
    TargetUpdate,
    TestFailure,
    credential_problem,
)
from backend.app.services import pagination
from backend.app.services.identity import organization_service
from backend.app.services.targets import placement
from backend.app.services.targets.compose_policy import ComposePolicy, is_host_endpoint

logger = logging.getLogger(__name__)

LOCAL_DOCKER_SOCKET = "/var/run/docker.sock"
LOCAL_TARGET_NAME = "local"
#: Seconds ``test_target`` waits for an engine before reporting it unreachable.
TEST_TIMEOUT_SECONDS = 10.0


# --- credentials ----------------------------------------------------------------------------------


def credentials(target: Target, settings: Settings) -> dict[str, Any]:
    """The target's decrypted credentials, every field of ``CREDENTIAL_FIELDS`` present (absent ones None).

    Each secret is registered with the log redactor before it is returned.
    """
    stored: dict[str, Any] = {}
    if target.credentials_encrypted:
        stored = json.loads(decrypt_secret(settings, target.credentials_encrypted))
    result: dict[str, Any] = {field: stored.get(field) for field in CREDENTIAL_FIELDS}
    result["tls_verify"] = stored.get("tls_verify", True) is not False
    for field in (*TLS_FIELDS, "ssh_key"):
        if result[field]:
            register_secret(result[field])  # every form: stripped, each line of a PEM body
    return result


def _store_credentials(target: Target, settings: Settings, creds: dict[str, Any]) -> None:
    """Encrypt what is set (``tls_verify`` only when false); ``None`` when nothing is."""
    kept = {field: creds[field] for field in (*TLS_FIELDS, "ssh_key") if creds.get(field)}
    if creds.get("tls_verify") is False:
        kept["tls_verify"] = False
    for field in (*TLS_FIELDS, "ssh_key"):
        if field in kept:
            register_secret(kept[field])
    target.credentials_encrypted = encrypt_secret(settings, json.dumps(kept)) if kept else None


def connection_for(target: Target, settings: Settings) -> TargetConnection:
    """How a driver reaches the target's engine (credentials decrypted, and registered with the redactor)."""
    return connection_from(target, credentials(target, settings))


def connection_from(target: Target, creds: dict[str, Any]) -> TargetConnection:
    """How a driver reaches the target's engine, from its credentials already decrypted (:func:`credentials`)."""
    return TargetConnection(
        type=TargetType(target.type),
        endpoint=target.endpoint,
        tls_ca=creds["tls_ca"],
        tls_cert=creds["tls_cert"],
        tls_key=creds["tls_key"],
        tls_verify=creds["tls_verify"],
        ssh_key=creds["ssh_key"],
    )


def policy_of(target: Target) -> ComposePolicy:
    """The target's compose policy (the default, everything denied, when none was set).

    Options the stored JSON has but this version does not know are ignored (they stay denied).
    """
    stored = target.compose_policy if isinstance(target.compose_policy, dict) else {}
    return ComposePolicy.model_validate({k: v for k, v in stored.items() if k in ComposePolicy.model_fields})


def reaches_host(endpoint: str) -> bool:
    """Whether ``endpoint`` reaches the WindFlow host itself: a unix socket, or a loopback address.

    (A DNS name that resolves to the host is not detected; see docs/security.md.)
    """
    if is_host_endpoint(endpoint):
        return True
    host = (urlsplit(endpoint).hostname or "").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _require_superuser_for_host(user: User, endpoint: str, what: str) -> None:
    if not user.is_superuser and reaches_host(endpoint):
        raise PermissionDenied(
            f"only a platform superuser may {what} a target that reaches the WindFlow host itself "
            f"({endpoint}): its engine is root on that host; register a remote engine (tcp:// or ssh://) instead",
            code="host_target_forbidden",
            params={"endpoint": endpoint},
        )


def to_read(target: Target, settings: Settings, coverage: placement.Coverage | None = None) -> TargetRead:
    """The API view: whether credentials exist, never their value; with ``coverage`` (the live workers'
    declarations), whether and by how many workers its work runs."""
    creds = credentials(target, settings)
    coverage = coverage or placement.Coverage()
    return TargetRead(
        id=target.id,
        organization_id=target.organization_id,
        name=target.name,
        description=target.description,
        type=target.type,
        endpoint=target.endpoint,
        max_concurrent_deployments=target.max_concurrent_deployments,
        is_active=target.is_active,
        has_tls=any(creds[field] for field in TLS_FIELDS),
        tls_verify=creds["tls_verify"],
        has_ssh_key=bool(creds["ssh_key"]),
        compose_policy=policy_of(target),
        placed=target.placed,
        host=target.host,
        served=coverage.served(target_id=target.id, placed=target.placed),
        workers=coverage.workers(target_id=target.id, placed=target.placed),
        created_at=target.created_at,
        updated_at=target.updated_at,
    )


# --- CRUD -----------------------------------------------------------------------------------------


def _host_binding_forbidden() -> PermissionDenied:
    return PermissionDenied(
        "only a platform superuser may bind a target to a host (host): it says which host's workers reach the engine",
        code="host_binding_forbidden",
    )


def _name_taken(name: str) -> Conflict:
    return Conflict(
        f"a target named {name!r} already exists in this organization; pick another name",
        code="target_name_taken",
        params={"name": name},
    )


async def create(session: AsyncSession, *, settings: Settings, user: User, data: TargetCreate) -> Target:
    """Create a target in ``data.organization_id`` (default: the caller's default organisation); admin or higher."""
    organization_id = await organization_service.resolve_organization(
        session, user=user, organization_id=data.organization_id, minimum=Role.ADMIN
    )
    _require_superuser_for_host(user, data.endpoint, "register")
    if data.host is not None and not user.is_superuser:
        raise _host_binding_forbidden()
    target = Target(
        organization_id=organization_id,
        name=data.name,
        description=data.description,
        type=data.type,
        endpoint=data.endpoint,
        max_concurrent_deployments=data.max_concurrent_deployments,
        is_active=True,
        compose_policy=data.compose_policy.model_dump() if data.compose_policy else None,
        placed=data.placed or data.host is not None,
        host=data.host,
    )
    _store_credentials(target, settings, data.credentials())
    session.add(target)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise _name_taken(data.name) from exc
    queue_event(session, resource_changed(organization_id, "target", "created", target.id, target.name))
    return target


TARGETS_BY_NAME = pagination.Ordering("targets", (Target.name, Target.id))


async def list_for_user(
    session: AsyncSession,
    *,
    user: User,
    page: pagination.PageParams,
    organization_id: str | None = None,
    type: TargetType | None = None,
    q: str | None = None,
) -> pagination.Page:
    """Targets of the organisations ``user`` belongs to (every one for a superuser), by name.

    Filtering on an organisation the user does not belong to answers 404, like reading it would.
    """
    scope = await organization_service.readable_partitions(
        session, user=user, org_column=Target.organization_id, organization_id=organization_id
    )
    query = select(Target)
    if type is not None:
        query = query.where(Target.type == type)
    if q:
        query = query.where(pagination.contains(Target.name, q) | pagination.contains(Target.endpoint, q))
    return await pagination.paginate(session, query=query, ordering=TARGETS_BY_NAME, params=page, partitions=scope)


async def update(session: AsyncSession, *, settings: Settings, user: User, target: Target, data: TargetUpdate) -> Target:
    """Apply the fields sent. Credentials sent replace the stored ones field by field; ``null`` removes one.

    The merged result is checked as a whole: switching a tcp target to ``unix://`` while it keeps TLS
    material is refused with a message saying which fields to clear. Moving a target onto the WindFlow
    host, or changing the compose policy of a target on it, takes a platform superuser.
    """
    changes = data.model_dump(exclude_unset=True)
    cred_changes = {field: changes.pop(field) for field in CREDENTIAL_FIELDS if field in changes}
    endpoint = changes.get("endpoint", target.endpoint)
    if "endpoint" in changes and changes["endpoint"] != target.endpoint:
        _require_superuser_for_host(user, endpoint, "point at the WindFlow host")
    if "compose_policy" in changes:
        for reached in {target.endpoint, endpoint}:
            _require_superuser_for_host(user, reached, "change the compose policy of")
        changes["compose_policy"] = data.compose_policy.model_dump() if data.compose_policy else None
    if cred_changes or "endpoint" in changes:
        creds = credentials(target, settings)
        creds.update(cred_changes)
        if creds["tls_verify"] is None:
            creds["tls_verify"] = True
        problem = credential_problem(endpoint, creds)
        if problem:
            raise ValidationFailed(problem, code="credentials_mismatch")
        if cred_changes:
            _store_credentials(target, settings, creds)
    if "host" in changes and changes["host"] != target.host and not user.is_superuser:
        raise _host_binding_forbidden()
    if changes.get("host", target.host) is not None:
        if changes.get("placed") is False:
            raise ValidationFailed(
                "a target bound to a host is always placed: only that host's workers reach it; set host to null first",
                code="host_target_placed",
            )
        changes["placed"] = True
    name = changes.get("name", target.name)  # read before a failed flush makes the row unreadable
    for field, value in changes.items():
        setattr(target, field, value)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise _name_taken(name) from exc
    queue_event(session, resource_changed(target.organization_id, "target", "updated", target.id, target.name))
    return target


async def delete(session: AsyncSession, *, target: Target) -> None:
    """Delete a target no deployment references (409 otherwise: deployments keep their target)."""
    used = (await session.execute(select(func.count()).select_from(Deployment).where(Deployment.target_id == target.id))).scalar_one()
    if used:
        raise _in_use(target, used)
    event = resource_changed(target.organization_id, "target", "deleted", target.id, target.name)
    await session.delete(target)
    try:
        await session.flush()
    except IntegrityError as exc:  # a deployment was created between the count and the delete
        raise _in_use(target, 1) from exc
    queue_event(session, event)


def _in_use(target: Target, count: int) -> Conflict:
    return Conflict(
        f"target {target.name!r} is used by {count} deployment(s); delete those deployments first "
        "(or deactivate the target with PATCH is_active=false)",
        code="target_in_use",
    )


# --- engine ---------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    while exc is not None and len(found) < 16 and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def failure_category(exc: BaseException, endpoint: str) -> TestFailure:
    """The coarse category of a failed connection test.

    Deliberately coarse: every transport failure (refused, reset, closed without an answer, timed out, no
    such host, no such socket, permission denied on a socket) is ``unreachable``, so the test cannot be used
    to probe which ports are open on a network or which files exist on the WindFlow host. A unix socket
    answers ``unreachable`` for every failure.
    """
    if is_host_endpoint(endpoint):
        return TestFailure.UNREACHABLE
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, (ssl.SSLError, requests.exceptions.SSLError, docker.errors.TLSParameterError)):
            return TestFailure.TLS
        if isinstance(link, docker.errors.APIError):
            if link.status_code in (401, 403):
                return TestFailure.AUTHENTICATION
            if "https server" in str(link).lower():
                return TestFailure.TLS
            return TestFailure.NOT_DOCKER
        if isinstance(link, (requests.exceptions.JSONDecodeError, requests.exceptions.InvalidJSONError)):
            return TestFailure.NOT_DOCKER
    text = " ".join(str(link) for link in chain).lower()
    if endpoint.startswith("ssh://") and ("permission denied" in text or "host key" in text):
        return TestFailure.AUTHENTICATION
    return TestFailure.UNREACHABLE


async def test_target(target: Target, settings: Settings, *, timeout: float = TEST_TIMEOUT_SECONDS) -> TargetTestResult:
    """Ask the target's engine who it is. Never raises: a failure is ``ok=False`` with a category and that
    category's fixed message, never the driver's own text (see :func:`failure_category`).

    The connection (and decryption) happens before any network wait, so the caller may close its database
    session first.
    """
    connection = connection_for(target, settings)
    try:
        async with asyncio.timeout(timeout):
            info = await engine_for(connection).test_connection()
    except Exception as exc:  # noqa: BLE001 - a test reports, it never turns into a 500
        category = TestFailure.UNREACHABLE if isinstance(exc, TimeoutError) else failure_category(exc, target.endpoint)
        logger.info("testing target %s failed (%s): %s", target.id, category, redact(f"{type(exc).__name__}: {exc}"))
        return TargetTestResult(ok=False, category=category, error=TEST_FAILURE_MESSAGES[category])
    return TargetTestResult(
        ok=True,
        version=info.get("version"),
        api_version=info.get("api_version"),
        swarm_manager=info.get("swarm_manager"),
        os=info.get("os"),
    )


test_target.__test__ = False  # not a pytest test, whatever module imports it


async def ensure_local_target(
    session: AsyncSession, *, organization_id: str, settings: Settings, socket_path: str = LOCAL_DOCKER_SOCKET
) -> Target | None:
    """Give an organisation without targets a ``local`` target on the host's Docker socket, if there is one.

    Called at first-run setup so a fresh install can deploy at once. Always type ``docker``: whether the
    engine is a swarm manager can change later, and a swarm target is an explicit choice. ``settings`` is
    for symmetry with the other entry points (no credentials are stored for a unix socket).
    """
    if not Path(socket_path).exists():
        return None
    existing = (
        await session.execute(select(func.count()).select_from(Target).where(Target.organization_id == organization_id))
    ).scalar_one()
    if existing:
        return None
    target = Target(
        organization_id=organization_id,
        name=LOCAL_TARGET_NAME,
        description="The Docker engine of the WindFlow host (created at setup)",
        type=TargetType.DOCKER,
        endpoint=f"unix://{socket_path}",
        max_concurrent_deployments=2,
        is_active=True,
    )
    session.add(target)
    await session.flush()
    return target
