from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backend.app import database

router = APIRouter(tags=["system"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Liveness and dependencies: 200 when the database answers, 503 otherwise."""
    settings = request.app.state.settings
    db_error = await database.check_database()
    body = {
        "status": "ok" if db_error is None else "unavailable",
        "version": settings.VERSION,
        "database": {
            "status": "ok" if db_error is None else "error",
            "kind": str(settings.database_kind),
            **({"error": db_error} if db_error else {}),
        },
    }
    return JSONResponse(body, status_code=200 if db_error is None else 503)
