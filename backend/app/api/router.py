"""The ``/api/v1`` router: every resource router, each declaring its own prefix and tags."""

from fastapi import APIRouter

from backend.app.api import (
    audit,
    auth,
    deployments,
    hooks,
    notifications,
    organizations,
    realtime,
    registries,
    stacks,
    system,
    targets,
    tokens,
    users,
)

api_router = APIRouter(prefix="/api/v1")
for module in (auth, users, organizations, tokens, targets, registries, stacks, deployments, realtime, system, audit, notifications):
    api_router.include_router(module.router)
api_router.include_router(hooks.router)
api_router.include_router(hooks.stack_router)
api_router.include_router(hooks.public)
