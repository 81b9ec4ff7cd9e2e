"""The one interface every Docker driver implements (compose, single container, swarm).

The runner walks a deployment through the steps below, reporting progress between them, and streams
every line a driver emits into the deployment's persisted log through ``log``.

Errors: a driver raises :class:`EngineError` with ``transient=True`` when retrying may help (engine
unreachable, timeout) and ``transient=False`` when it cannot (invalid compose document, image missing
with no registry, port already allocated). The message quotes what the engine said.

Cancellation: the runner cancels the asyncio task running a step. A driver that runs a subprocess must
kill its whole process group on ``asyncio.CancelledError`` and re-raise.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from backend.app.models.enums import LogLevel, TargetType

#: ``await log(level, message)`` appends one line to the deployment's log.
LogSink = Callable[[LogLevel, str], Awaitable[None]]

MANAGED_LABEL = "windflow.managed"
DEPLOYMENT_LABEL = "windflow.deployment_id"


def project_name(deployment_id: str) -> str:
    """Compose/stack project name derived from the deployment id: unique, valid for compose and swarm."""
    return "wf-" + deployment_id.replace("-", "")[:24]


def deployment_labels(deployment_id: str) -> dict[str, str]:
    return {MANAGED_LABEL: "true", DEPLOYMENT_LABEL: deployment_id}


class EngineError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class TargetConnection:
    """How to reach one Docker engine. TLS material is PEM text (decrypted by the caller)."""

    type: TargetType
    endpoint: str
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    ssh_key: str | None = None


@dataclass
class DeploySpec:
    deployment_id: str
    compose: str
    workdir: Path
    project: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    health_timeout: float = 120.0

    def __post_init__(self) -> None:
        self.project = self.project or project_name(self.deployment_id)
        self.labels = self.labels or deployment_labels(self.deployment_id)


@dataclass(frozen=True)
class ServiceState:
    service: str
    container_id: str
    state: str  # running, exited, created, restarting, ...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    exit_code: int | None = None


class Engine(abc.ABC):
    """One implementation per target kind. Every method is idempotent where it can be."""

    def __init__(self, connection: TargetConnection) -> None:
        self.connection = connection

    @abc.abstractmethod
    async def validate(self, spec: DeploySpec, log: LogSink) -> None:
        """Check the rendered document with the real tool; permanent EngineError when invalid."""

    @abc.abstractmethod
    async def prepare(self, spec: DeploySpec, log: LogSink) -> None:
        """Write the project directory (labelled compose file) under ``spec.workdir``."""

    @abc.abstractmethod
    async def ensure_images(self, spec: DeploySpec, log: LogSink) -> None:
        """Make every image available; permanent EngineError naming the image when it cannot be had."""

    @abc.abstractmethod
    async def create_resources(self, spec: DeploySpec, log: LogSink) -> None:
        """Create networks and volumes (labelled)."""

    @abc.abstractmethod
    async def start_services(self, spec: DeploySpec, log: LogSink) -> None:
        """Create and start every service."""

    @abc.abstractmethod
    async def wait_healthy(self, spec: DeploySpec, log: LogSink) -> None:
        """Wait until every service runs (and is healthy when it has a healthcheck) within
        ``spec.health_timeout``; EngineError quoting the failing service otherwise."""

    @abc.abstractmethod
    async def stop(self, spec: DeploySpec, log: LogSink) -> None:
        """Stop every container of the deployment, keeping them."""

    @abc.abstractmethod
    async def start(self, spec: DeploySpec, log: LogSink) -> None:
        """Start the stopped containers again."""

    @abc.abstractmethod
    async def remove(self, spec: DeploySpec, log: LogSink, *, keep_volumes: bool = False) -> None:
        """Remove containers, networks (and volumes unless ``keep_volumes``) labelled with the deployment."""

    @abc.abstractmethod
    async def inspect(self, spec: DeploySpec) -> list[ServiceState]:
        """The deployment's containers as the engine sees them (by label)."""

    async def test_connection(self) -> dict:
        """``{"version": ..., "api_version": ..., "swarm_manager": bool, "os": ...}`` or EngineError."""
        raise NotImplementedError
