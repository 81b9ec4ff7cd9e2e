from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.security import OAuth2PasswordRequestForm

from backend.app.api.deps import CurrentUser, SessionDep, SettingsDep, client_address
from backend.app.api.responses import AUTH_CODES, RATE_LIMITED, errors
from backend.app.core.exceptions import NotAuthenticated, RateLimited
from backend.app.schemas.auth import (
    LogoutRequest,
    MembershipRead,
    MeRead,
    PasswordChange,
    RefreshRequest,
    SetupRequest,
    SetupStatus,
    TokenPair,
)
from backend.app.services import provisioning
from backend.app.services.identity import auth_service, organization_service

router = APIRouter(prefix="/auth", tags=["auth"])


async def _check_login_rate(request: Request) -> None:
    limiter = request.app.state.login_limiter
    wait = await limiter.hit(client_address(request))
    if wait is not None:
        seconds = max(1, round(wait))
        raise RateLimited(
            f"too many login attempts from your address; retry in {seconds} s",
            headers=limiter.retry_after_header(wait),
            params={"scope": "address", "seconds": seconds},
        )


@router.get("/setup", response_model=SetupStatus)
async def setup_status(session: SessionDep) -> SetupStatus:
    """Whether first-run setup is still to be done (no user exists yet)."""
    return SetupStatus(needed=await auth_service.user_count(session) == 0)


@router.post("/setup", response_model=TokenPair, status_code=status.HTTP_201_CREATED, responses=errors(conflict=["already_set_up"]))
async def setup(body: SetupRequest, session: SessionDep, settings: SettingsDep) -> TokenPair:
    """First run only: create the superuser and their organisation, and log them in."""
    user = await auth_service.setup_first_admin(
        session, email=body.email, password=body.password, organization_name=body.organization_name, full_name=body.full_name
    )
    # A fresh install can deploy at once: the host's Docker socket, when there is one, becomes target "local".
    organization_id = await organization_service.default_organization_id(session, user=user)
    if organization_id is not None:
        await provisioning.provision_organization(session, settings=settings, organization_id=organization_id, local_target=True)
    tokens = await auth_service.issue_tokens(session, settings=settings, user=user)
    await session.commit()
    return TokenPair(access_token=tokens.access_token, refresh_token=tokens.refresh_token, expires_in=tokens.expires_in)


@router.post(
    "/login",
    response_model=TokenPair,
    dependencies=[Depends(_check_login_rate)],
    responses=errors(RATE_LIMITED, unauthenticated=["invalid_credentials", "inactive_user"]),
)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, session: SessionDep, settings: SettingsDep
) -> TokenPair:
    """Log in with the OAuth2 password form (``username`` is the email); failures are limited per account too."""
    # Keyed on the name as typed (normalised), known account or not: the answer and its timing say
    # nothing about whether the account exists. Checked before the password, so a limited guess learns nothing.
    account = form.username.strip().lower()[:320]
    limiter = request.app.state.account_login_limiter
    wait = await limiter.retry_in(account)
    if wait is not None:
        seconds = max(1, round(wait))
        raise RateLimited(
            f"too many failed login attempts for this account; retry in {seconds} s",
            headers=limiter.retry_after_header(wait),
            params={"scope": "account", "seconds": seconds},
        )
    try:
        user = await auth_service.authenticate(session, email=form.username, password=form.password)
    except NotAuthenticated as exc:
        if exc.code == "invalid_credentials":
            await limiter.hit(account)
        raise
    tokens = await auth_service.issue_tokens(session, settings=settings, user=user)
    await session.commit()
    return TokenPair(access_token=tokens.access_token, refresh_token=tokens.refresh_token, expires_in=tokens.expires_in)


@router.post("/refresh", response_model=TokenPair, responses=errors(unauthenticated=AUTH_CODES))
async def refresh(body: RefreshRequest, session: SessionDep, settings: SettingsDep) -> TokenPair:
    """Exchange a refresh token for a new token pair (the old refresh token stops working)."""
    try:
        tokens = await auth_service.rotate_refresh_token(session, settings=settings, token=body.refresh_token)
    except Exception:
        await session.commit()  # keep a family revocation triggered by a replayed token
        raise
    await session.commit()
    return TokenPair(access_token=tokens.access_token, refresh_token=tokens.refresh_token, expires_in=tokens.expires_in)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(user: CurrentUser, session: SessionDep, settings: SettingsDep, body: LogoutRequest | None = None) -> None:
    """Revoke the given refresh token, or every refresh token of the current user."""
    await auth_service.logout(session, settings=settings, user=user, refresh_token=body.refresh_token if body else None)
    await session.commit()


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_everywhere(user: CurrentUser, session: SessionDep) -> None:
    """End every session of the current user: all access and refresh tokens stop working at once."""
    await auth_service.revoke_all_sessions(session, user=user)
    await session.commit()


@router.post("/password", response_model=TokenPair, responses=errors(forbidden=["invalid_credentials"]))
async def change_password(body: PasswordChange, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> TokenPair:
    """Change your password (the current one is required); every other session ends, a new token pair is returned."""
    tokens = await auth_service.change_password(
        session, settings=settings, user=user, current_password=body.current_password, new_password=body.new_password
    )
    await session.commit()
    return TokenPair(access_token=tokens.access_token, refresh_token=tokens.refresh_token, expires_in=tokens.expires_in)


@router.get("/me", response_model=MeRead)
async def me(user: CurrentUser, session: SessionDep) -> MeRead:
    """The current user with their organisation memberships."""
    await session.refresh(user, ["memberships"])
    memberships = []
    for membership in user.memberships:
        await session.refresh(membership, ["organization"])
        memberships.append(
            MembershipRead(
                organization_id=membership.organization_id,
                organization_name=membership.organization.name,
                role=membership.role,
            )
        )
    return MeRead(
        id=user.id,
        email=user.email,
        full_name=user.full_name,
        is_active=user.is_active,
        is_superuser=user.is_superuser,
        created_at=user.created_at,
        memberships=memberships,
        default_organization_id=await organization_service.default_organization_id(session, user=user),
    )
