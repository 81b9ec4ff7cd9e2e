"""Docker drivers behind one interface (:class:`~backend.app.engines.base.Engine`).

``engine_for(connection)`` picks the driver for a target: a swarm target deploys stacks with
``docker stack deploy``; a docker target uses the compose CLI when one is installed here, else the
Docker SDK alone (:class:`ContainerEngine`).
"""

from __future__ import annotations

from backend.app.engines.base import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    DeploySpec,
    Engine,
    EngineError,
    LogSink,
    ServiceState,
    TargetConnection,
    deployment_labels,
    project_name,
)
from backend.app.engines.compose import ComposeEngine
from backend.app.engines.compose_cli import find_compose_command
from backend.app.engines.container import ContainerEngine
from backend.app.engines.swarm import SwarmEngine
from backend.app.models.enums import TargetType


def engine_for(connection: TargetConnection) -> Engine:
    if connection.type == TargetType.SWARM:
        return SwarmEngine(connection)
    command = find_compose_command()
    if command:
        return ComposeEngine(connection, command=command)
    return ContainerEngine(connection)


__all__ = [
    "DEPLOYMENT_LABEL",
    "MANAGED_LABEL",
    "ComposeEngine",
    "ContainerEngine",
    "DeploySpec",
    "Engine",
    "EngineError",
    "LogSink",
    "ServiceState",
    "SwarmEngine",
    "TargetConnection",
    "deployment_labels",
    "engine_for",
    "project_name",
]
