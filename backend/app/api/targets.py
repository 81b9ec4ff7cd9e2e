from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from backend.app.api.deps import CurrentUser, EntityQueryId, OwnedRow, PageDep, SessionDep, SettingsDep, search_query
from backend.app.api.responses import FILTERED_BY_ORGANIZATION, IN_ORGANIZATION, errors
from backend.app.models import Role, Target, TargetType
from backend.app.runtime import workers
from backend.app.schemas.compose_policy import ComposePolicyRules, RefusedKey
from backend.app.schemas.targets import TargetCreate, TargetPage, TargetRead, TargetTestResult, TargetUpdate
from backend.app.services.targets import compose_policy, target_service

router = APIRouter(prefix="/targets", tags=["targets"])

#: what a target's creation or change may refuse: a name taken, a target reaching the WindFlow host (superusers
#: only), credentials that do not fit the endpoint
_TARGET_RULES = (
    errors(
        conflict=["target_name_taken"],
        forbidden=["host_target_forbidden", "host_binding_forbidden"],
        invalid=["credentials_mismatch", "host_target_placed"],
    ),
)


TargetViewer = Annotated[Target, Depends(OwnedRow(Target, Role.VIEWER, param="target_id", noun="target"))]
TargetOperator = Annotated[Target, Depends(OwnedRow(Target, Role.OPERATOR, param="target_id", noun="target"))]
TargetAdmin = Annotated[Target, Depends(OwnedRow(Target, Role.ADMIN, param="target_id", noun="target"))]


@router.post("", response_model=TargetRead, status_code=status.HTTP_201_CREATED, responses=errors(IN_ORGANIZATION, *_TARGET_RULES))
async def create_target(body: TargetCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> TargetRead:
    """Register a Docker engine (admin or owner; unix:// and loopback: superusers only); credentials never returned."""
    target = await target_service.create(session, settings=settings, user=user, data=body)
    await session.commit()
    return target_service.to_read(target, settings, await workers.coverage(session))


@router.get("", response_model=TargetPage, responses=FILTERED_BY_ORGANIZATION)
async def list_targets(
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    page: PageDep,
    organization_id: Annotated[EntityQueryId | None, Query(description="only this organisation's targets")] = None,
    type: Annotated[TargetType | None, Query(description="docker or swarm")] = None,
    q: search_query("the name or endpoint contains this (any case)") = None,
) -> TargetPage:
    """Targets of the organisations you belong to, by name."""
    result = await target_service.list_for_user(session, user=user, page=page, organization_id=organization_id, type=type, q=q)
    coverage = await workers.coverage(session)
    return TargetPage.of(result, [target_service.to_read(t, settings, coverage) for t in result.items])


@router.get("/policy-rules", response_model=ComposePolicyRules)
async def get_policy_rules(_user: CurrentUser) -> ComposePolicyRules:
    """The compose keys every target refuses, whatever its policy, with what to write instead."""
    rules = compose_policy.HOST_FILE_RULES
    return ComposePolicyRules(always_refused=[RefusedKey(key=key, reason=reason) for key, reason in rules.items()])


@router.get("/{target_id}", response_model=TargetRead)
async def get_target(target: TargetViewer, session: SessionDep, settings: SettingsDep) -> TargetRead:
    """One target (any member of its organisation): ``served`` says whether its work runs now."""
    return target_service.to_read(target, settings, await workers.coverage(session))


@router.patch("/{target_id}", response_model=TargetRead, responses=errors(*_TARGET_RULES))
async def update_target(
    body: TargetUpdate, target: TargetAdmin, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> TargetRead:
    """Change a target (admin or owner; its compose policy on the WindFlow host: superusers only)."""
    await target_service.update(session, settings=settings, user=user, target=target, data=body)
    await session.commit()
    return target_service.to_read(target, settings, await workers.coverage(session))


@router.delete("/{target_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(conflict=["target_in_use"]))
async def delete_target(target: TargetAdmin, session: SessionDep) -> None:
    """Delete a target no deployment uses (admin or owner)."""
    await target_service.delete(session, target=target)
    await session.commit()


@router.post("/{target_id}/test", response_model=TargetTestResult)
async def test_target(target: TargetOperator, session: SessionDep, settings: SettingsDep) -> TargetTestResult:
    """Connect to the target's engine: its version and swarm role, or a failure category with a fixed message."""
    # Release the database connection before waiting on the network (up to 10 s for a dead engine).
    await session.close()
    return await target_service.test_target(target, settings)
