from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backend.app import database
from backend.app.core.exceptions import DATABASE_RETRY_AFTER_SECONDS
from backend.app.runtime import event_transport, workers

router = APIRouter(tags=["system"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Database, broker, workers, event bus and execution mode: 200 unless the database is down."""
    settings = request.app.state.settings
    manager = request.app.state.celery_manager
    report = manager.report
    db_error = await database.check_database()
    if settings.celery_unavailable_reason:
        broker = {"status": "disabled", "reason": settings.celery_unavailable_reason}
    else:
        broker = {"type": report.broker, "status": "ok" if report.broker_ok else "error"}
    live = [w for w in report.workers if w.get("alive") and w.get("state", "healthy") == "healthy"]
    sick = [w for w in report.workers if w.get("alive") and w.get("state") == "degraded"]
    unserved = await _unserved_targets() if db_error is None else []
    degraded = (not settings.celery_unavailable_reason and (report.broker_ok is False or bool(sick))) or bool(unserved)
    body = {
        "status": "unavailable" if db_error else ("degraded" if degraded else "ok"),
        "version": settings.VERSION,
        "database": {
            "status": "ok" if db_error is None else "error",
            "kind": str(settings.database_kind),
            **({"error": db_error} if db_error else {}),
        },
        "broker": broker,
        "workers": {
            "count": len(live),
            "external": sum(1 for w in live if w.get("kind") == "external"),
            "embedded": sum(1 for w in live if w.get("kind") == "embedded"),
            # alive but executing nothing (runtime/worker_watchdog.py): not counted above, leaving by itself
            "degraded": [{"kind": w.get("kind"), "problem": w.get("problem")} for w in sick],
        },
        # placed targets whose work no live worker runs (WORKER_TARGETS): their deployments wait (ids only: this
        # page answers anyone)
        "targets": {"unserved": unserved},
        "execution_mode": str(manager.mode),
        "execution_reason": report.reason,
        "execution_reason_code": report.why.code,
        "event_bus": event_transport.event_bus_status(),
    }
    if db_error is None:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})


async def _unserved_targets() -> list[str]:
    try:
        async with database.AsyncSessionLocal() as session:
            # a read: on SQLite not queued behind a writer's lock (BEGIN, not BEGIN IMMEDIATE), as check_database
            await session.connection(execution_options={"sqlite_deferred": True})
            return [target_id for target_id, _name in await workers.unserved_targets(session)]
    except Exception:  # noqa: BLE001 - the database answered a moment ago; this part of the page is best effort
        return []
