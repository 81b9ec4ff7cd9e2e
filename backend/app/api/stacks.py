from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, status

from backend.app.api.deps import CurrentUser, EntityQueryId, OwnedRow, PageDep, SessionDep, search_query
from backend.app.api.responses import FILTERED_BY_ORGANIZATION, IN_ORGANIZATION, TEMPLATE_CHECKS, errors
from backend.app.database import end_transaction
from backend.app.models import Role, Stack
from backend.app.schemas.stacks import (
    StackCreate,
    StackPage,
    StackRead,
    StackRenderRequest,
    StackRenderResult,
    StackUpdate,
)
from backend.app.services.stacks import stack_service

router = APIRouter(prefix="/stacks", tags=["stacks"])

#: a stack's template and variable schema are checked when it is saved
_STACK_RULES = errors(TEMPLATE_CHECKS, conflict=["stack_exists"], invalid=["variables_twice"])


StackViewer = Annotated[Stack, Depends(OwnedRow(Stack, Role.VIEWER, param="stack_id", noun="stack"))]
StackOperator = Annotated[Stack, Depends(OwnedRow(Stack, Role.OPERATOR, param="stack_id", noun="stack"))]
StackAdmin = Annotated[Stack, Depends(OwnedRow(Stack, Role.ADMIN, param="stack_id", noun="stack"))]


@router.post("", response_model=StackRead, status_code=status.HTTP_201_CREATED, responses=errors(IN_ORGANIZATION, _STACK_RULES))
async def create_stack(body: StackCreate, user: CurrentUser, session: SessionDep) -> StackRead:
    """Create a stack (operator or higher); the template must render with the schema's defaults."""
    stack = await stack_service.create(session, user=user, data=body)
    await session.commit()
    return StackRead.model_validate(stack)


@router.get("", response_model=StackPage, responses=FILTERED_BY_ORGANIZATION)
async def list_stacks(
    user: CurrentUser,
    session: SessionDep,
    page: PageDep,
    organization_id: Annotated[EntityQueryId | None, Query(description="only this organisation's stacks")] = None,
    q: search_query("the name or description contains this (any case)") = None,
    source: Annotated[Literal["catalog", "user"] | None, Query(description="catalogue stacks, or your own")] = None,
) -> StackPage:
    """Stacks of the organisations you belong to, by name."""
    result = await stack_service.list_for_user(session, user=user, page=page, organization_id=organization_id, q=q, source=source)
    return StackPage.of(result, [StackRead.model_validate(s) for s in result.items])


@router.get("/{stack_id}", response_model=StackRead)
async def get_stack(stack: StackViewer) -> StackRead:
    """One stack (any member of its organisation)."""
    return StackRead.model_validate(stack)


@router.patch("/{stack_id}", response_model=StackRead, responses=errors(_STACK_RULES, invalid=["not_nullable"]))
async def update_stack(body: StackUpdate, stack: StackOperator, session: SessionDep) -> StackRead:
    """Change a stack (operator or higher); a new template or schema is validated like on create."""
    await stack_service.update(session, stack=stack, data=body)
    await session.commit()
    return StackRead.model_validate(stack)


@router.delete("/{stack_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_stack(stack: StackAdmin, session: SessionDep) -> None:
    """Delete a stack (admin or owner); its deployments keep running and keep their rendered document."""
    await stack_service.delete(session, stack=stack)
    await session.commit()


@router.post("/{stack_id}/render", response_model=StackRenderResult, responses=errors(TEMPLATE_CHECKS))
async def render_stack(body: StackRenderRequest, stack: StackOperator, session: SessionDep) -> StackRenderResult:
    """Preview the compose document for these values (operator or higher); secrets are shown as ***."""
    await end_transaction(session)  # rendering may take seconds: hold no transaction (on SQLite, no write lock)
    return StackRenderResult(compose=await stack_service.render(stack, body.variables))
