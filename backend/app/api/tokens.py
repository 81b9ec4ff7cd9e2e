from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from backend.app.api.deps import CurrentUser, EntityId, PageDep, SessionDep, search_query
from backend.app.api.responses import errors
from backend.app.schemas.tokens import ApiTokenCreate, ApiTokenCreated, ApiTokenPage, ApiTokenRead
from backend.app.services.identity import user_service

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", response_model=ApiTokenCreated, status_code=status.HTTP_201_CREATED)
async def create_token(body: ApiTokenCreate, user: CurrentUser, session: SessionDep) -> ApiTokenCreated:
    """Create a personal API token. The token is in this response only: store it now."""
    token, clear = await user_service.create_api_token(session, user=user, data=body)
    await session.commit()
    return ApiTokenCreated(**ApiTokenRead.model_validate(token).model_dump(), token=clear)


@router.get("", response_model=ApiTokenPage)
async def list_tokens(
    user: CurrentUser,
    session: SessionDep,
    page: PageDep,
    q: search_query("the name contains this (any case)") = None,
    active: Annotated[bool | None, Query(description="true: only usable tokens; false: only revoked or expired")] = None,
) -> ApiTokenPage:
    """Your API tokens (never their values), newest first."""
    result = await user_service.list_api_tokens(session, user=user, page=page, q=q, active=active)
    return ApiTokenPage.of(result, [ApiTokenRead.model_validate(t) for t in result.items])


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(not_found=["token_not_found"]))
async def revoke_token(token_id: EntityId, user: CurrentUser, session: SessionDep) -> None:
    """Revoke one of your API tokens."""
    await user_service.revoke_api_token(session, user=user, token_id=token_id)
    await session.commit()
