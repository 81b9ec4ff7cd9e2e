from __future__ import annotations

from fastapi import APIRouter, status

from backend.app.api.deps import EntityId, PageDep, SessionDep, Superuser, search_query
from backend.app.api.responses import errors
from backend.app.schemas.auth import UserCreate, UserPage, UserRead, UserUpdate
from backend.app.services.identity import user_service

router = APIRouter(prefix="/users", tags=["users"])

_CHANGE = errors(not_found=["user_not_found"], invalid=["self_lockout", "not_nullable"])


@router.post("", response_model=UserRead, status_code=status.HTTP_201_CREATED, responses=errors(conflict=["user_exists"]))
async def create_user(body: UserCreate, session: SessionDep, _admin: Superuser) -> UserRead:
    """Create a user (superusers only)."""
    user = await user_service.create_user(session, data=body)
    await session.commit()
    return UserRead.model_validate(user)


@router.get("", response_model=UserPage)
async def list_users(
    session: SessionDep,
    _admin: Superuser,
    page: PageDep,
    q: search_query("the email or name contains this (any case)") = None,
) -> UserPage:
    """List users (superusers only)."""
    result = await user_service.list_users(session, page=page, q=q)
    return UserPage.of(result, [UserRead.model_validate(u) for u in result.items])


@router.get("/{user_id}", response_model=UserRead, responses=errors(not_found=["user_not_found"]))
async def get_user(user_id: EntityId, session: SessionDep, _admin: Superuser) -> UserRead:
    """One user (superusers only)."""
    return UserRead.model_validate(await user_service.get_user(session, user_id=user_id))


@router.patch("/{user_id}", response_model=UserRead, responses=_CHANGE)
async def update_user(user_id: EntityId, body: UserUpdate, session: SessionDep, admin: Superuser) -> UserRead:
    """Change a user's name, password, active flag or superuser flag (superusers only)."""
    user = await user_service.update_user(session, user=await user_service.get_user(session, user_id=user_id), data=body, actor=admin)
    await session.commit()
    return UserRead.model_validate(user)


@router.post("/{user_id}/deactivate", response_model=UserRead, responses=_CHANGE)
async def deactivate_user(user_id: EntityId, session: SessionDep, admin: Superuser) -> UserRead:
    """Deactivate a user: their tokens stop working at once (superusers only)."""
    user = await user_service.update_user(
        session, user=await user_service.get_user(session, user_id=user_id), data=UserUpdate(is_active=False), actor=admin
    )
    await session.commit()
    return UserRead.model_validate(user)
