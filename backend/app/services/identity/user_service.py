"""Users (administered by superusers) and personal API tokens."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.core import security
from backend.app.core.events import platform_changed, queue_event, token_changed
from backend.app.core.exceptions import Conflict, NotFound, ValidationFailed
from backend.app.database import utcnow
from backend.app.models import ApiToken, RefreshToken, Stack, User
from backend.app.schemas.auth import UserCreate, UserUpdate
from backend.app.schemas.tokens import ApiTokenCreate
from backend.app.services import pagination
from backend.app.services.identity import organization_service


async def create_user(session: AsyncSession, *, data: UserCreate) -> User:
    user = User(
        email=data.email,
        hashed_password=security.hash_password(data.password),
        full_name=data.full_name,
        is_superuser=data.is_superuser,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a user with email {data.email} already exists", code="user_exists", params={"email": data.email}) from exc
    queue_event(session, platform_changed("user", "created", user.id, user.email))
    return user


USERS_BY_AGE = pagination.Ordering("users", (User.created_at, User.id))


async def list_users(session: AsyncSession, *, page: pagination.PageParams, q: str | None = None) -> pagination.Page:
    query = select(User)
    if q:
        query = query.where(pagination.contains(User.email, q) | pagination.contains(User.full_name, q))
    return await pagination.paginate(session, query=query, ordering=USERS_BY_AGE, params=page)


async def get_user(session: AsyncSession, *, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}", code="user_not_found")
    return user


_NULLABLE_USER_FIELDS = frozenset({"full_name"})


async def update_user(session: AsyncSession, *, user: User, data: UserUpdate, actor: User) -> User:
    changes = data.model_dump(exclude_unset=True)
    if user.id == actor.id and (changes.get("is_active") is False or changes.get("is_superuser") is False):
        raise ValidationFailed("you cannot deactivate or demote yourself; ask another superuser", code="self_lockout")
    for field, value in changes.items():
        if value is None and field not in _NULLABLE_USER_FIELDS:
            raise ValidationFailed(
                f"{field} cannot be null; leave it out to keep the current value", code="not_nullable", params={"field": field}
            )
        if field == "password":
            user.hashed_password = security.hash_password(value)
        else:
            setattr(user, field, value)
    if changes.get("is_active") is False or "password" in changes:
        await _revoke_sessions(session, user)
    await session.flush()
    queue_event(session, platform_changed("user", "updated", user.id, user.email))
    return user


async def _revoke_sessions(session: AsyncSession, user: User) -> None:
    from sqlalchemy import update

    now = utcnow()
    await session.execute(
        update(RefreshToken).where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    user.token_generation = (user.token_generation or 0) + 1  # outstanding access tokens stop working


async def _check_token_limits(session: AsyncSession, *, user: User, data: ApiTokenCreate) -> tuple[list[str], list[str] | None]:
    """The token's scopes (sorted, once each) and stacks, after checking its organisation is one of ``user``'s
    and its stacks are that organisation's (422 with a code otherwise)."""
    scopes = sorted(set(data.scopes))
    if data.organization_id is not None and (
        "\x00" in data.organization_id
        or await organization_service.role_in(session, user=user, organization_id=data.organization_id) is None
    ):
        raise ValidationFailed("organization_id must be an organisation you belong to", code="token_organization_invalid")
    if data.stack_ids is None:
        return scopes, None
    if scopes != ["deploy"]:
        raise ValidationFailed('stack_ids limits the deploy scope: give scopes ["deploy"] alone', code="token_stacks_need_deploy")
    if data.organization_id is None:
        raise ValidationFailed("stack_ids needs the organization_id its stacks belong to", code="token_stacks_need_organization")
    stack_ids = sorted(set(data.stack_ids))
    found = set(
        (
            await session.execute(
                select(Stack.id).where(
                    Stack.id.in_([s for s in stack_ids if "\x00" not in s]), Stack.organization_id == data.organization_id
                )
            )
        ).scalars()
    )
    if missing := [s for s in stack_ids if s not in found]:
        raise ValidationFailed(
            f"these stacks are not in the token's organisation: {', '.join(missing)}",
            code="token_stack_invalid",
            params={"stack_ids": missing},
        )
    return scopes, stack_ids


async def create_api_token(session: AsyncSession, *, user: User, data: ApiTokenCreate) -> tuple[ApiToken, str]:
    scopes, stack_ids = await _check_token_limits(session, user=user, data=data)
    clear = security.generate_api_token()
    token = ApiToken(
        user_id=user.id,
        name=data.name,
        prefix=clear[:10],
        token_hash=security.hash_api_token(clear),
        expires_at=utcnow() + timedelta(days=data.expires_in_days) if data.expires_in_days else None,
        scopes=scopes,
        organization_id=data.organization_id,
        stack_ids=stack_ids,
    )
    session.add(token)
    await session.flush()
    queue_event(session, token_changed(user.id, "created", token.id, token.name))
    return token, clear


TOKENS_NEWEST_FIRST = pagination.Ordering("tokens", (ApiToken.created_at, ApiToken.id), descending=True)


async def list_api_tokens(
    session: AsyncSession, *, user: User, page: pagination.PageParams, q: str | None = None, active: bool | None = None
) -> pagination.Page:
    """The user's tokens, newest first; ``q``: the name contains it; ``active``: usable ones (not revoked,
    not expired), or the others."""
    query = select(ApiToken).where(ApiToken.user_id == user.id)
    if q:
        query = query.where(pagination.contains(ApiToken.name, q))
    if active is not None:
        usable = ApiToken.revoked_at.is_(None) & (ApiToken.expires_at.is_(None) | (ApiToken.expires_at > utcnow()))
        query = query.where(usable if active else ~usable)
    return await pagination.paginate(session, query=query, ordering=TOKENS_NEWEST_FIRST, params=page)


async def revoke_api_token(session: AsyncSession, *, user: User, token_id: str) -> ApiToken:
    token = await session.get(ApiToken, token_id)
    if token is None or token.user_id != user.id:
        raise NotFound("API token not found", code="token_not_found")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        await session.flush()
        queue_event(session, token_changed(user.id, "updated", token.id, token.name))
    return token
