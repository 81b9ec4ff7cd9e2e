"""What a deployment runs, as its target's engine reports it now: each service's containers with their state,
health, exit code, restarts, image and published ports (``GET /deployments/{id}/services``, the deployment
page's Services card).

Read from the engine at each call (``Engine.inspect``, by the deployment's label), never stored: a container
that exited or restarts in a loop shows so at once, whatever the deployment's status says. No transaction is
held during the engine call.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.exceptions import ServiceUnavailable
from backend.app.database import end_transaction
from backend.app.engines.base import EngineError, ServiceState
from backend.app.models import Deployment
from backend.app.schemas.deployments import ContainerPort, ContainerRead, DeploymentServices, ServiceRead
from backend.app.services.deployments.context import load_context


def _container(state: ServiceState) -> ContainerRead:
    running = state.state in ("running", "restarting", "paused")
    return ContainerRead(
        name=state.name or state.container_id[:12],
        state=state.state,
        health=state.health,
        exit_code=None if running else state.exit_code,
        restarts=state.restarts,
        image=state.image,
        ports=[ContainerPort(container_port=p.container_port, host_ip=p.host_ip, host_port=p.host_port) for p in state.ports],
        started_at=state.started,
    )


async def read(session: AsyncSession, *, settings: Settings, deployment: Deployment) -> DeploymentServices:
    """The deployment's containers by service, from its target's engine. ``engine_unavailable`` (503) when the
    engine does not answer; ``target_elsewhere`` (503) for a target only another host's workers reach."""
    context = await load_context(session, settings=settings, deployment=deployment)
    revision = deployment.revision
    await end_transaction(session)
    try:
        states = await context.engine.inspect(context.spec)
    except EngineError as exc:
        raise ServiceUnavailable(
            f"the target's Docker engine did not answer: {context.redactor(exc.message)}", code="engine_unavailable"
        ) from exc
    by_service: dict[str, list[ContainerRead]] = {}
    for state in states:
        by_service.setdefault(state.service, []).append(_container(state))
    return DeploymentServices(
        revision=revision,
        items=[
            ServiceRead(service=name, containers=sorted(containers, key=lambda c: c.name))
            for name, containers in sorted(by_service.items())
        ],
    )
