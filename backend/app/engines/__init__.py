"""Docker drivers behind one interface (:class:`~backend.app.engines.base.Engine`).

``engine_for(connection)`` picks the driver for a target: a swarm target deploys stacks with
``docker stack deploy``; a docker target with the compose CLI (``docker compose`` v2, else
``docker-compose`` v1), a requirement that ``scripts/setup-docker.sh`` and the image install. Without
one, the deployment fails at once saying so (``ComposeEngine`` raises a permanent error).
"""

from __future__ import annotations

from backend.app.engines.base import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    DeploySpec,
    Engine,
    EngineError,
    LogSink,
    ResolvedImage,
    ServiceState,
    TargetConnection,
    deployment_labels,
    project_name,
)
from backend.app.engines.compose import ComposeEngine
from backend.app.engines.swarm import SwarmEngine
from backend.app.models.enums import TargetType


def engine_for(connection: TargetConnection) -> Engine:
    if connection.type == TargetType.SWARM:
        return SwarmEngine(connection)
    return ComposeEngine(connection)


__all__ = [
    "DEPLOYMENT_LABEL",
    "MANAGED_LABEL",
    "ComposeEngine",
    "DeploySpec",
    "Engine",
    "EngineError",
    "LogSink",
    "ResolvedImage",
    "ServiceState",
    "SwarmEngine",
    "TargetConnection",
    "deployment_labels",
    "engine_for",
    "project_name",
]
