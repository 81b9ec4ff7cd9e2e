"""Authentication: first-run setup, login, refresh-token rotation, logout, token resolution.

Services never commit; the route (or CLI) that calls them owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core import security
from backend.app.core.exceptions import Conflict, NotAuthenticated, PermissionDenied
from backend.app.database import utcnow
from backend.app.models import ApiToken, Membership, Organization, RefreshToken, Role, User

_SETUP_LOCK_KEY = 0x5746_5345_5455_50  # "WFSETUP": any constant no other advisory lock uses


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int


async def user_count(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(User))).scalar_one()


async def setup_first_admin(
    session: AsyncSession, *, email: str, password: str, organization_name: str, full_name: str | None = None
) -> User:
    """Create the first superuser and its organisation. Refused once any user exists.

    Two setups racing would both count zero users and create two superusers. PostgreSQL serialises them
    with a transaction-scoped advisory lock (the loser then counts one user); SQLite already does, since
    every transaction there begins with ``BEGIN IMMEDIATE``.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SETUP_LOCK_KEY})
    if await user_count(session) > 0:
        raise Conflict("setup has already been done: log in instead", code="already_set_up")
    user = User(email=email.lower(), hashed_password=security.hash_password(password), full_name=full_name, is_superuser=True)
    org = Organization(name=organization_name)
    session.add_all([user, org])
    await session.flush()
    session.add(Membership(user_id=user.id, organization_id=org.id, role=Role.OWNER))
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent setup won the race
        raise Conflict("setup has already been done: log in instead", code="already_set_up") from exc
    return user


async def authenticate(session: AsyncSession, *, email: str, password: str) -> User:
    email = email.strip().lower()
    # No stored email holds a NUL, and PostgreSQL would fail the query on one: treat it as unknown.
    user = None if "\x00" in email else (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
    if user is None:
        security.verify_password(password, security.dummy_password_hash())
        raise NotAuthenticated("incorrect email or password", code="invalid_credentials")
    if not security.verify_password(password, user.hashed_password):
        raise NotAuthenticated("incorrect email or password", code="invalid_credentials")
    if not user.is_active:
        raise NotAuthenticated("this account is deactivated; ask an administrator", code="inactive_user")
    return user


async def issue_tokens(session: AsyncSession, *, settings: Settings, user: User, family_id: str | None = None) -> Tokens:
    access = security.create_access_token(settings, user.id, user.token_generation)
    family = family_id or uuid.uuid4().hex
    refresh = security.create_refresh_token(settings, user.id, family)
    session.add(RefreshToken(jti=refresh.jti, user_id=user.id, family_id=family, expires_at=refresh.expires_at))
    await session.flush()
    return Tokens(access.token, refresh.token, settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60)


async def rotate_refresh_token(session: AsyncSession, *, settings: Settings, token: str) -> Tokens:
    """Exchange a refresh token for a new pair; the old one is revoked.

    Presenting an already-revoked refresh token means it was stolen or replayed: the whole family
    (every token descended from the same login) is revoked, logging out the thief and the victim.
    One exception: a token rotated less than ``REFRESH_TOKEN_REUSE_SECONDS`` ago whose login is still
    live gets another pair. The client that rotated it may never have received the answer (the tab
    reloaded mid-request, the network dropped it), and would otherwise be logged out.
    """
    try:
        claims = security.decode_token(settings, token, "refresh")
    except security.TokenError as exc:
        raise NotAuthenticated(str(exc), code=exc.code) from exc
    stored = await session.get(RefreshToken, claims["jti"], with_for_update=True)
    if stored is None:
        raise NotAuthenticated("refresh token is unknown; log in again", code="invalid_token")
    if stored.revoked_at is not None and not await _reusable(session, settings, stored):
        await _revoke_family(session, stored.family_id)
        raise NotAuthenticated("refresh token was already used or revoked; log in again", code="token_revoked")
    user = await session.get(User, stored.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("this account is deactivated; ask an administrator", code="inactive_user")
    tokens = await issue_tokens(session, settings=settings, user=user, family_id=stored.family_id)
    new_claims = security.decode_token(settings, tokens.refresh_token, "refresh")
    if stored.revoked_at is None:
        stored.revoked_at = utcnow()
        stored.replaced_by = new_claims["jti"]
    await session.flush()
    return tokens


async def _reusable(session: AsyncSession, settings: Settings, stored: RefreshToken) -> bool:
    """Whether a revoked refresh token is one rotated within the reuse window of a login still live
    (a logout, a password change or a detected replay leaves no live token in the family)."""
    if stored.replaced_by is None or stored.revoked_at is None:
        return False
    if (utcnow() - stored.revoked_at).total_seconds() > settings.REFRESH_TOKEN_REUSE_SECONDS:
        return False
    # a login refreshed every 15 minutes for a week has hundreds of rotated tokens: stop at the first live one
    return bool(await session.scalar(select(exists().where(RefreshToken.family_id == stored.family_id, RefreshToken.revoked_at.is_(None)))))


async def _revoke_family(session: AsyncSession, family_id: str) -> None:
    await session.execute(
        update(RefreshToken).where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )


async def logout(session: AsyncSession, *, settings: Settings, user: User, refresh_token: str | None) -> int:
    """Revoke one refresh token (and its family), or every refresh token of ``user`` when none is given."""
    if refresh_token:
        try:
            claims = security.decode_token(settings, refresh_token, "refresh")
        except security.TokenError as exc:
            raise NotAuthenticated(str(exc), code=exc.code) from exc
        stored = await session.get(RefreshToken, claims["jti"])
        if stored is None or stored.user_id != user.id:
            raise NotAuthenticated("refresh token is unknown", code="invalid_token")
        result = await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == stored.family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    else:
        result = await session.execute(
            update(RefreshToken).where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
    return result.rowcount


async def revoke_all_sessions(session: AsyncSession, *, user: User) -> None:
    """Invalidate every access token of ``user`` (generation bump) and revoke every refresh token.

    Personal API tokens are separate credentials, listed and revoked under ``/tokens``.
    """
    await session.execute(
        update(User)
        .where(User.id == user.id)
        .values(token_generation=User.token_generation + 1)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(RefreshToken).where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    await session.refresh(user, ["token_generation"])


async def change_password(session: AsyncSession, *, settings: Settings, user: User, current_password: str, new_password: str) -> Tokens:
    """Change ``user``'s password after checking the current one; every other session ends. Returns a
    fresh token pair for the caller's own session."""
    if not security.verify_password(current_password, user.hashed_password):
        raise PermissionDenied("the current password is incorrect", code="invalid_credentials")
    user.hashed_password = security.hash_password(new_password)
    await session.flush()
    await revoke_all_sessions(session, user=user)
    return await issue_tokens(session, settings=settings, user=user)


@dataclass(frozen=True)
class Credential:
    """What a bearer token proved: the user, until when, and through which API token (if one)."""

    user: User
    expires_at: datetime | None
    api_token_id: str | None = None
    #: the API token's limits (``models.ApiToken``): ``None`` for an access token (the user's own rights)
    scopes: tuple[str, ...] | None = None
    organization_id: str | None = None
    stack_ids: tuple[str, ...] | None = None


async def user_from_token(session: AsyncSession, *, settings: Settings, token: str) -> User:
    """Resolve a bearer credential (access JWT or personal API token) to an active user."""
    return (await credential_from_token(session, settings=settings, token=token)).user


async def credential_from_token(session: AsyncSession, *, settings: Settings, token: str) -> Credential:
    """:func:`user_from_token`, also telling when the credential expires (WebSocket re-authentication)."""
    now = utcnow()
    api_token = None
    if token.startswith(security.API_TOKEN_PREFIX):
        api_token = (
            await session.execute(select(ApiToken).where(ApiToken.token_hash == security.hash_api_token(token)))
        ).scalar_one_or_none()
        user_id, expires_at, generation = (api_token.user_id, api_token.expires_at, None) if api_token else (None, None, None)
    else:
        try:
            claims = security.decode_token(settings, token, "access")
        except security.TokenError as exc:
            raise NotAuthenticated(str(exc), code=exc.code) from exc
        user_id, expires_at, generation = claims["sub"], datetime.fromtimestamp(claims["exp"], UTC), claims.get("gen", 0)
    user = await session.get(User, user_id) if user_id is not None else None
    refusal = credential_refusal(
        user, api_token=api_token, api_token_used=token.startswith(security.API_TOKEN_PREFIX), generation=generation, now=now
    )
    if refusal is not None:
        raise refusal
    if api_token is not None and (api_token.last_used_at is None or (now - api_token.last_used_at).total_seconds() > 60):
        api_token.last_used_at = now
    if api_token is None:
        return Credential(user, expires_at)
    stacks = tuple(api_token.stack_ids) if api_token.stack_ids is not None else None
    return Credential(user, expires_at, api_token.id, tuple(api_token.scopes or ("admin",)), api_token.organization_id, stacks)


def credential_refusal(
    user: Any, *, api_token: Any = None, api_token_used: bool = False, generation: int | None = None, now: datetime
) -> NotAuthenticated | None:
    """Why a credential no longer works, or ``None``: the one rule, for each HTTP request and for the real-time
    clients, whose credentials are judged again every few seconds (``runtime/realtime/access.py``).

    ``user`` is the account (``is_active``, ``token_generation``; a row or a model) or ``None`` when it is gone.
    For a personal API token (``api_token_used``), ``api_token`` is its row (``revoked_at``, ``expires_at``), or
    ``None`` when unknown; for an access token, ``generation`` is the token generation it carries: a password
    change or ``POST /auth/logout-all`` bumps the account's, and every older access token stops working.
    """
    if api_token_used:
        if api_token is None or api_token.revoked_at is not None:
            return NotAuthenticated("API token is invalid or revoked", code="invalid_token")
        if api_token.expires_at is not None and api_token.expires_at <= now:
            return NotAuthenticated("API token has expired; create a new one", code="token_expired")
    if user is None:
        return NotAuthenticated("the user of this token no longer exists", code="invalid_token")
    if not user.is_active:
        return NotAuthenticated("this account is deactivated; ask an administrator", code="inactive_user")
    if not api_token_used and generation != user.token_generation:
        return NotAuthenticated("this token was revoked (password changed or logged out everywhere); log in again", code="token_revoked")
    return None
