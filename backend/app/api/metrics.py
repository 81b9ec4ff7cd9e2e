from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from backend.app.api.deps import SessionDep
from backend.app.runtime import metrics

router = APIRouter(tags=["system"])


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(session: SessionDep) -> Response:
    """Prometheus exposition format."""
    await metrics.refresh_from_database(session)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
