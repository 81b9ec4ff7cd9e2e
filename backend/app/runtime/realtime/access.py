"""Access: which organisations' events a real-time client may receive, and the credential it connected with.

A stack-limited API token (``stack_ids``) receives, in its organisation, only the events of the deployments
of its stacks and the changes of those stacks (:meth:`Access.hears_stack`): an event names its deployment,
not the deployment's stack, so :func:`stack_of` reads it once per deployment (a deployment never changes
stack) and keeps it in a bounded cache of the process.

:func:`load_access` reads every user's memberships and account, and the rows of their API tokens, in one
short transaction; :func:`refreshed` judges a client's credential with them by the rules of every HTTP
request (``auth_service.credential_refusal``). :class:`AccessRegistry` re-reads them every
:data:`ACCESS_REFRESH_SECONDS`, in one batch for every client of the process, and hands each client its
new :class:`Access` (the client then drops what it no longer allows, or closes).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select

from backend.app import database
from backend.app.models import ApiToken, Deployment, Membership, User
from backend.app.runtime.loops import LoopService
from backend.app.services.identity import auth_service

logger = logging.getLogger(__name__)

ACCESS_REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Access:
    """Which organisations' events a user may receive right now."""

    user_id: str
    superuser: bool
    organizations: frozenset[str]
    api_token_id: str | None = None
    revoked: str | None = None  # why the credential no longer works
    #: the token generation of the access token the client authenticated with (None for an API token); a
    #: password change or ``POST /auth/logout-all`` bumps the user's, which closes the client
    generation: int | None = None
    #: the account as last read (``is_active``, ``token_generation``), None when it is gone
    account: Any = field(default=None, compare=False, repr=False)
    #: a stack-limited API token's stacks: the events of other stacks' deployments are not for it; None: all
    stacks: frozenset[str] | None = None

    def allows(self, organization_id: str) -> bool:
        return self.revoked is None and (self.superuser or organization_id in self.organizations)

    def allows_deployment(self, organization_id: str, stack_id: str | None) -> bool:
        """A deployment's events: its organisation's, and of one of the token's stacks when it has some."""
        return self.allows(organization_id) and (self.stacks is None or stack_id in self.stacks)

    def hears_stack(self, evt: Any, stack_id: str | None) -> bool:
        """For a stack-limited access (``stacks``), whether an event of an allowed organisation is of its
        stacks: a deployment's when ``stack_id`` (the deployment's, from :func:`stack_of`) is one of them; an
        organisation's ``RESOURCE_CHANGED`` when it is about one of them (other stacks, targets, members: no)."""
        if self.stacks is None:
            return True
        if evt.deployment_id:
            return stack_id in self.stacks
        data = evt.data or {}
        return data.get("resource") == "stack" and data.get("id") in self.stacks


#: deployment id -> its stack's id, for the stack-limited clients (:func:`stack_of`); bounded, oldest out
_STACK_OF: dict[str, str | None] = {}
_STACK_OF_BOUND = 20_000


async def stack_of(deployment_id: str) -> str | None:
    """The stack of a deployment (None when it is gone and was never read), read once per process."""
    if deployment_id in _STACK_OF:
        return _STACK_OF[deployment_id]
    async with database.AsyncSessionLocal() as session:
        row = (await session.execute(select(Deployment.stack_id).where(Deployment.id == deployment_id))).first()
    if row is None:  # not found (yet, or any more): asked again next time
        return None
    if len(_STACK_OF) >= _STACK_OF_BOUND:
        del _STACK_OF[next(iter(_STACK_OF))]
    _STACK_OF[deployment_id] = row.stack_id
    return row.stack_id


class AccessHolder(Protocol):
    """What the registry needs of a client (:class:`~backend.app.runtime.realtime.client.Client`)."""

    access: Access

    async def set_access(self, access: Access) -> None: ...


async def load_access(user_ids: set[str], token_ids: set[str]) -> tuple[dict[str, Access], dict[str, Any]]:
    """Every user's access (memberships and account) and the rows of the API tokens, read in one short
    transaction; :func:`refreshed` judges each client's credential with them."""
    users: dict[str, Any] = {}
    orgs: dict[str, set[str]] = {}
    api_tokens: dict[str, Any] = {}
    ids, tokens = sorted(user_ids), sorted(token_ids)
    async with database.AsyncSessionLocal() as session:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for row in await session.execute(
                select(User.id, User.is_active, User.is_superuser, User.token_generation).where(User.id.in_(chunk))
            ):
                users[row.id] = row
            for uid, org in await session.execute(
                select(Membership.user_id, Membership.organization_id).where(Membership.user_id.in_(chunk))
            ):
                orgs.setdefault(uid, set()).add(org)
        for start in range(0, len(tokens), 500):
            chunk = tokens[start : start + 500]
            for row in await session.execute(
                select(ApiToken.id, ApiToken.revoked_at, ApiToken.expires_at, ApiToken.organization_id, ApiToken.stack_ids).where(
                    ApiToken.id.in_(chunk)
                )
            ):
                api_tokens[row.id] = row
    access = {}
    for uid in user_ids:
        account = users.get(uid)
        access[uid] = Access(uid, bool(account and account.is_superuser), frozenset(orgs.get(uid, ())), account=account)
    return access, api_tokens


def refreshed(current: Access, fresh: Access, api_tokens: dict[str, Any]) -> Access:
    """``current``'s credential with ``fresh``'s memberships, revoked when the credential check of every HTTP
    request (``auth_service.credential_refusal``) would now refuse it: its API token revoked or expired, the
    account deactivated or gone, or signed out everywhere since it authenticated (token generation)."""
    api_token = api_tokens.get(current.api_token_id)
    refusal = auth_service.credential_refusal(
        fresh.account,
        api_token=api_token,
        api_token_used=current.api_token_id is not None,
        generation=current.generation,
        now=datetime.now(UTC),
    )
    superuser, organizations = fresh.superuser, fresh.organizations
    if (limit := getattr(api_token, "organization_id", None)) is not None:
        # an organisation-limited API token: that organisation's events only (a superuser's too)
        organizations = frozenset({limit}) if superuser or limit in organizations else frozenset()
        superuser = False
    stack_ids = getattr(api_token, "stack_ids", None)
    return Access(
        fresh.user_id,
        superuser,
        organizations,
        current.api_token_id,
        refusal.detail if refusal is not None else None,
        current.generation,
        fresh.account,
        frozenset(stack_ids) if stack_ids is not None else None,
    )


def credential_access(fresh: Access, api_tokens: dict[str, Any], api_token_id: str | None, generation: int) -> Access:
    """The access of a client that just authenticated: API token, or access token of ``generation``."""
    return refreshed(
        Access(fresh.user_id, fresh.superuser, fresh.organizations, api_token_id, generation=None if api_token_id else generation),
        fresh,
        api_tokens,
    )


class AccessRegistry:
    """The clients of this process, whose access is refreshed together (one query batch per period)."""

    def __init__(self) -> None:
        self.clients: set[AccessHolder] = set()
        self._task: asyncio.Task | None = None

    def add(self, client: AccessHolder) -> None:
        self.clients.add(client)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="realtime-access")

    def discard(self, client: AccessHolder) -> None:
        self.clients.discard(client)

    async def refresh(self) -> None:
        clients = list(self.clients)
        if not clients:
            return
        access, api_tokens = await load_access(
            {c.access.user_id for c in clients}, {c.access.api_token_id for c in clients if c.access.api_token_id}
        )
        for client in clients:
            await client.set_access(refreshed(client.access, access[client.access.user_id], api_tokens))

    async def _refresh_loop(self) -> None:
        await _AccessRefresh(self).run()


class _AccessRefresh(LoopService):
    """Every ``ACCESS_REFRESH_SECONDS`` while the registry has clients: a database hiccup keeps the last known
    access (the pass is retried at the next period)."""

    name = "real time: refreshing client access"
    log = logger

    def __init__(self, registry: AccessRegistry) -> None:
        super().__init__()
        self.registry = registry

    @property
    def interval(self) -> float:  # type: ignore[override]  # read at each period (tests shorten it)
        return ACCESS_REFRESH_SECONDS

    def should_continue(self) -> bool:
        return bool(self.registry.clients)

    async def run_once(self) -> None:
        await self.registry.refresh()


registry = AccessRegistry()
