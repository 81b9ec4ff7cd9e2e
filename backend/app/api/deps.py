"""Dependencies shared by the routers: database session, settings, current user, role checks."""

from __future__ import annotations

import inspect
import json
import re
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from pydantic import StringConstraints
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from backend.app.config import Settings
from backend.app.core import security
from backend.app.core.exceptions import NotAuthenticated, NotFound, PermissionDenied
from backend.app.database import AsyncSessionLocal
from backend.app.models import Deployment, Organization, Role, User
from backend.app.services import pagination
from backend.app.services.identity import auth_service, organization_service


def get_settings(connection: HTTPConnection) -> Settings:
    return connection.app.state.settings


async def get_session(connection: HTTPConnection):
    """One session per request. The route commits what it changed; anything uncommitted rolls back. The audit
    trail's entry of the request is written in it once the route has answered (``api/audit_trail.py``): on
    SQLite a second session would wait for this one's write lock."""
    async with AsyncSessionLocal() as session:
        connection.state.db_session = session
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
#: An object id in a URL. Ids are UUIDs; anything with other characters cannot exist, and some (NUL) would
#: make PostgreSQL fail the lookup, so it is refused with 422 before reaching the database.
EntityId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="an object id (UUID)")]
#: The same rule for an id given as a query filter (``?stack_id=``), wrapped as ``Annotated[EntityQueryId | None, Query(...)]``
#: or used bare (FastAPI then reads it from the query string).
EntityQueryId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
SessionDep = Annotated[AsyncSession, Depends(get_session)]


def search_query(description: str) -> Any:
    """A listing's ``q`` (what a name, email... contains): at most 100 characters, no NUL (PostgreSQL's text
    cannot hold one: it answered 500)."""
    return Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$", description=description)]


def bearer_token(connection: HTTPConnection) -> str:
    """The ``Authorization: Bearer`` credential of an HTTP request or a WebSocket handshake."""
    header = connection.headers.get("authorization")
    if not header:
        raise NotAuthenticated()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthenticated("the Authorization header must be 'Bearer <token>'", code="invalid_token")
    return token.strip()


async def authenticate(connection: HTTPConnection, session: AsyncSession, settings: Settings, token: str) -> auth_service.Credential:
    """Resolve a bearer token for an HTTP request or a WebSocket (whose token comes in its first frame)."""
    credential = await resolve_token(session, settings, token)
    connection.state.user_id = credential.user.id
    connection.state.user_email = credential.user.email  # the audit entry's actor name, without a query
    connection.state.api_token_id = credential.api_token_id
    if credential.scopes is not None and connection.scope["type"] == "http":
        await _check_token_scope(connection, session, credential)
    return credential


async def resolve_token(session: AsyncSession, settings: Settings, token: str) -> auth_service.Credential:
    """The one credential check of a bearer token, whatever carries it: an HTTP request (through
    :func:`authenticate`), the ASGI WebSocket route or the WebSocket listener (``api/realtime_listener.py``)."""
    credential = await auth_service.credential_from_token(session, settings=settings, token=token)
    if token.startswith(security.API_TOKEN_PREFIX):
        # credential_from_token may have bumped the API token's last_used_at (already flushed, so the
        # session does not look dirty): commit it now, or a route that only reads would roll it back.
        await session.commit()
    if credential.organization_id is not None:
        # every organisation check (services/identity/organization_service.py) stops at this one
        credential.user.token_organization_id = credential.organization_id
    return credential


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: What the ``deploy`` scope may change: create a deployment, and roll out, start, stop, cancel one.
_DEPLOY_ROUTE = re.compile(r"^/api/v1/deployments(?:/(?P<id>[A-Za-z0-9_-]+)/(?:start|stop|redeploy|retry|cancel|revisions|rollback))?$")
#: Routes about the account itself (its tokens, password, sessions): an organisation-limited token cannot change them.
_ACCOUNT_ROUTE = re.compile(r"^/api/v1/(?:tokens|auth)(?:/|$)")


def _scope_refused(detail: str, credential: auth_service.Credential) -> PermissionDenied:
    return PermissionDenied(detail, code="token_scope", params={"scopes": list(credential.scopes or ())})


async def _check_token_scope(connection: HTTPConnection, session: AsyncSession, credential: auth_service.Credential) -> None:
    """The scopes of an API token, judged once per HTTP request: ``read`` reads only; ``deploy`` also creates
    deployments and operates them (of its ``stack_ids`` when it has some); ``admin`` has its owner's rights. Its
    ``organization_id`` is enforced by every organisation check (``organization_service``); the owner's role
    always applies too, so a scope never widens it."""
    method, path = connection.scope["method"], connection.scope["path"]
    scopes = set(credential.scopes or ())
    if method in READ_METHODS:
        return
    if "admin" in scopes:
        if credential.organization_id is not None and _ACCOUNT_ROUTE.match(path):
            raise _scope_refused("this API token is limited to one organisation: it cannot change your account or its tokens", credential)
        return
    match = _DEPLOY_ROUTE.match(path) if method == "POST" else None
    if "deploy" not in scopes or match is None:
        can = "create deployments and start, stop, redeploy or change them" if "deploy" in scopes else "only read (GET)"
        raise _scope_refused(
            f"this API token (scopes: {', '.join(sorted(scopes))}) may {can}: {method} {path} needs the admin scope", credential
        )
    if credential.stack_ids is None:
        return
    if match.group("id") is not None:
        deployment = await session.get(Deployment, match.group("id"))
        stack_id = deployment.stack_id if deployment is not None else None
        if deployment is None:
            return  # the route answers 404
    else:
        stack_id = _body_field(await connection.body(), "stack_id")  # type: ignore[attr-defined]
        if stack_id is None:
            return  # the route answers 422
    if stack_id not in credential.stack_ids:
        raise _scope_refused("this API token may deploy only its own stacks (stack_ids); this stack is not one of them", credential)


def _body_field(body: bytes, name: str) -> str | None:
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


async def get_current_user(connection: HTTPConnection, session: SessionDep, settings: SettingsDep) -> User:
    return (await authenticate(connection, session, settings, bearer_token(connection))).user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_superuser(user: CurrentUser) -> User:
    if not user.is_superuser:
        raise PermissionDenied("this needs a platform superuser", code="superuser_required")
    if not organization_service.platform_wide(user):
        raise PermissionDenied("this API token is limited to one organisation: platform routes need an unlimited one", code="token_scope")
    return user


Superuser = Annotated[User, Depends(get_superuser)]


class OrgAccess:
    """Loads the organisation in the path and checks the caller's role in it (404 outsider, 403 weak role)."""

    def __init__(self, minimum: Role) -> None:
        self.minimum = minimum

    async def __call__(
        self, organization_id: EntityId, request: Request, session: SessionDep, user: CurrentUser
    ) -> tuple[Organization, Role]:
        request.state.audit_organization_id = organization_id  # the audit trail's organisation (api/audit_trail.py)
        role = await organization_service.require_role(session, user=user, organization_id=organization_id, minimum=self.minimum)
        org = await session.get(Organization, organization_id)
        if org is None:  # pragma: no cover - require_role already answered 404
            raise NotFound("organization not found", code="organization_not_found")
        return org, role


class OwnedRow:
    """The one loader of a row an organisation owns (stack, target, deployment), named by the path
    parameter ``param`` (an :data:`EntityId`): the row if the caller holds ``minimum`` in its organisation;
    404 when it is missing *or another organisation's* (an outsider must not learn the id exists), 403 for a
    weaker role. ``options`` go to ``session.get`` (e.g. ``populate_existing``)."""

    def __init__(self, model: type, minimum: Role, *, param: str, noun: str, **options: Any) -> None:
        self.model, self.minimum, self.param, self.noun, self.options = model, minimum, param, noun, options
        keyword = inspect.Parameter.KEYWORD_ONLY
        # FastAPI reads the dependency's parameters from this signature: the path parameter keeps its name
        self.__signature__ = inspect.Signature(
            [
                inspect.Parameter(param, keyword, annotation=EntityId),
                inspect.Parameter("request", keyword, annotation=Request),
                inspect.Parameter("session", keyword, annotation=SessionDep),
                inspect.Parameter("user", keyword, annotation=CurrentUser),
            ]
        )

    async def __call__(self, *, request: Request, session: AsyncSession, user: User, **path: str) -> Any:
        try:
            entity = await organization_service.get_owned(
                session,
                user=user,
                model=self.model,
                entity_id=path[self.param],
                minimum=self.minimum,
                noun=self.noun,
                **self.options,
            )
        except (NotFound, PermissionDenied):
            # a refused change is recorded in the organisation of the row it aimed at (api/audit_trail.py)
            if request.method != "GET" and (found := await session.get(self.model, path[self.param])) is not None:
                request.state.audit_organization_id = found.organization_id
            raise
        request.state.audit_organization_id = entity.organization_id
        return entity


OrgViewer = Annotated[tuple[Organization, Role], Depends(OrgAccess(Role.VIEWER))]
OrgAdmin = Annotated[tuple[Organization, Role], Depends(OrgAccess(Role.ADMIN))]
OrgOwner = Annotated[tuple[Organization, Role], Depends(OrgAccess(Role.OWNER))]


def page_params(
    offset: Annotated[
        int,
        Query(
            ge=0,
            description=f"items to skip (at most {pagination.MAX_OFFSET}; deeper pages: use cursor)",
            # stated for clients; the 422 past it is offset_too_large, which names the cursor
            json_schema_extra={"maximum": pagination.MAX_OFFSET},
        ),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=pagination.MAX_LIMIT, description=f"items per page (1-{pagination.MAX_LIMIT})")] = 50,
    cursor: Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page (instead of offset)")] = None,
) -> pagination.PageParams:
    """``offset``/``limit``/``cursor`` of a listing; an offset past the bound is a 422 naming the cursor."""
    return pagination.PageParams(limit=limit, offset=offset, cursor=cursor)


PageDep = Annotated[pagination.PageParams, Depends(page_params)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
