"""``/api/v1/registries``: an organisation's container registry credentials (admins manage, members read,
operators test); the password is never returned."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from backend.app.api.deps import CurrentUser, EntityQueryId, OwnedRow, PageDep, SessionDep, SettingsDep, search_query
from backend.app.api.responses import FILTERED_BY_ORGANIZATION, IN_ORGANIZATION, errors
from backend.app.models import Registry, Role
from backend.app.schemas.registries import (
    RegistryCreate,
    RegistryPage,
    RegistryRead,
    RegistryTestResult,
    RegistryUpdate,
)
from backend.app.services.registries import registry_service

router = APIRouter(prefix="/registries", tags=["registries"])

_TAKEN = errors(conflict=["registry_name_taken", "registry_server_taken"])

RegistryViewer = Annotated[Registry, Depends(OwnedRow(Registry, Role.VIEWER, param="registry_id", noun="registry"))]
RegistryOperator = Annotated[Registry, Depends(OwnedRow(Registry, Role.OPERATOR, param="registry_id", noun="registry"))]
RegistryAdmin = Annotated[Registry, Depends(OwnedRow(Registry, Role.ADMIN, param="registry_id", noun="registry"))]


@router.post("", response_model=RegistryRead, status_code=status.HTTP_201_CREATED, responses=errors(IN_ORGANIZATION, _TAKEN))
async def create_registry(body: RegistryCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> RegistryRead:
    """Store a registry's credentials (admin or owner); the password is stored encrypted, never returned."""
    registry = await registry_service.create(session, settings=settings, user=user, data=body)
    await session.commit()
    return registry_service.to_read(registry)


@router.get("", response_model=RegistryPage, responses=FILTERED_BY_ORGANIZATION)
async def list_registries(
    user: CurrentUser,
    session: SessionDep,
    page: PageDep,
    organization_id: Annotated[EntityQueryId | None, Query(description="only this organisation's registries")] = None,
    q: search_query("the name or server contains this (any case)") = None,
) -> RegistryPage:
    """Registries of the organisations you belong to, by name."""
    result = await registry_service.list_for_user(session, user=user, page=page, organization_id=organization_id, q=q)
    return RegistryPage.of(result, [registry_service.to_read(r) for r in result.items])


@router.get("/{registry_id}", response_model=RegistryRead)
async def get_registry(registry: RegistryViewer) -> RegistryRead:
    """One registry (any member of its organisation)."""
    return registry_service.to_read(registry)


@router.patch("/{registry_id}", response_model=RegistryRead, responses=_TAKEN)
async def update_registry(body: RegistryUpdate, registry: RegistryAdmin, session: SessionDep, settings: SettingsDep) -> RegistryRead:
    """Change a registry (admin or owner); a password sent replaces the stored one."""
    await registry_service.update(session, settings=settings, registry=registry, data=body)
    await session.commit()
    return registry_service.to_read(registry)


@router.delete("/{registry_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_registry(registry: RegistryAdmin, session: SessionDep) -> None:
    """Delete a registry (admin or owner): later pulls from its server go without credentials."""
    await registry_service.delete(session, registry=registry)
    await session.commit()


@router.post("/{registry_id}/test", response_model=RegistryTestResult)
async def test_registry(registry: RegistryOperator, session: SessionDep, settings: SettingsDep) -> RegistryTestResult:
    """Log in to the registry (operator or higher): ``{ok, category, message}``, the message fixed per category."""
    await session.close()  # release the database connection before waiting on the network
    return await registry_service.test_login(registry, settings)
