"""What a new organisation starts with: the stack catalogue, and for the first one the local engine.

Used by first-run setup, ``POST /organizations`` and ``windflow create-admin``; the catalogue is also
synchronised into every organisation at start-up. Takes the caller's session and never commits.

Only the first organisation (first-run setup) gets the host's Docker socket as target ``local``: the
socket is root on the host, so other organisations (tenants) get it only when a superuser adds it.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.services.stacks import catalog
from backend.app.services.targets import target_service

logger = logging.getLogger(__name__)


async def provision_organization(session: AsyncSession, *, settings: Settings, organization_id: str, local_target: bool = False) -> None:
    if local_target:
        await target_service.ensure_local_target(session, organization_id=organization_id, settings=settings)
    if settings.STACKS_CATALOG_ENABLED:
        stats = await catalog.load_catalog(
            session, organization_id=organization_id, directory=settings.STACKS_DEFINITIONS_DIR, strategy=settings.STACKS_LOAD_STRATEGY
        )
        logger.info(
            "stack catalogue loaded into organization %s: created=%d updated=%d skipped=%d errors=%d",
            organization_id,
            stats["created"],
            stats["updated"],
            stats["skipped"],
            stats["errors"],
        )


async def sync_catalog_on_startup(settings: Settings) -> None:
    """Bring every organisation's catalogue stacks up to date (never prevents start-up)."""
    if not settings.STACKS_CATALOG_ENABLED:
        return
    from backend.app import database

    try:
        async with database.AsyncSessionLocal() as session:
            await catalog.sync_catalog(session, settings=settings)
            await session.commit()
    except Exception:
        logger.exception("stack catalogue synchronisation failed")
