from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from pydantic import Field

from backend.app.api.deps import CurrentUser, SessionDep, Superuser
from backend.app.runtime import workers
from backend.app.schemas.common import RequestModel
from backend.app.services.deployments import recovery

router = APIRouter(prefix="/system", tags=["system"])


class RecoveryRequest(RequestModel):
    max_age_minutes: Annotated[float, Field(ge=0, le=10_000)] = 2
    timeout_minutes: Annotated[float, Field(gt=0, le=100_000)] = 60


@router.get("/workers")
async def get_workers(request: Request, session: SessionDep, user: CurrentUser) -> dict:
    """Celery workers seen through their heartbeats, and how deployments run right now (host names and PIDs
    for platform superusers only)."""
    manager = request.app.state.celery_manager
    listed = await workers.list_workers(session)
    return {
        "execution_mode": str(manager.mode),
        # in English; reason_code and reason_params let a client word it (the web UI in French or English)
        "reason": manager.report.reason,
        "reason_code": manager.report.why.code,
        "reason_params": manager.report.why.params,
        "broker": manager.report.broker,
        "broker_ok": manager.report.broker_ok,
        "workers": [_public(w.to_dict(), user.is_superuser) for w in listed],
        "embedded_worker": _public(manager.report.embedded, user.is_superuser),
    }


def _public(worker: dict | None, superuser: bool) -> dict | None:
    """A worker without the WindFlow host's name and PIDs, nor the ids of the targets it serves (any
    organisation's: ``shared_queue`` still says whether it runs the targets that are not placed), unless the
    caller is a platform superuser."""
    if worker is None or superuser:
        return worker
    return {key: (None if key in ("hostname", "pid", "name", "targets") else value) for key, value in worker.items()}


@router.get("/recovery")
async def get_recovery(session: SessionDep, _user: CurrentUser) -> dict:
    """The last recovery report and cumulative totals."""
    state = await recovery.last_report(session)
    return {"last": (state or {}).get("last"), "totals": (state or {}).get("totals", {})}


@router.post("/recovery")
async def run_recovery(request: Request, session: SessionDep, _admin: Superuser, body: RecoveryRequest | None = None) -> dict:
    """Run recovery now (superusers): stuck ``pending`` deployments are retried, timed-out ones failed."""
    body = body or RecoveryRequest()
    return await recovery.recover_pending_deployments(
        session,
        max_age_minutes=body.max_age_minutes,
        timeout_minutes=body.timeout_minutes,
        settings=request.app.state.settings,
        dispatch=request.app.state.dispatcher.dispatch,
    )
