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
from datetime import datetime
from pathlib import Path
from typing import Any

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
    """A driver failure. ``transient`` says whether retrying the same request may succeed.

    Raise a subclass where the engine's answer is known, so the decision is made from the type (and, for
    an API answer, its status code), not by matching the message later: :class:`EngineUnreachable` (no
    answer at all), :class:`EngineTimeout` (no answer in time), :class:`EngineRejected` (the engine
    answered with an error status). A bare ``EngineError`` is for what only the text describes (a CLI's
    output), classified once where it is raised.

    ``output_logged``: the message quotes output (a failed service's last lines) that the driver has already
    written to the deployment's log line by line, each at its own level; the runner then logs the first line
    only, so each line of the failure appears once.
    """

    def __init__(self, message: str, *, transient: bool, output_logged: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.output_logged = output_logged

    @property
    def summary(self) -> str:
        """What the log still needs of the message: all of it, or its first line when the output it quotes
        was logged already."""
        return self.message.splitlines()[0] if self.output_logged and self.message else self.message


class EngineUnreachable(EngineError):
    """The engine did not answer (connection refused, DNS, TLS handshake, socket gone): always transient."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


class EngineTimeout(EngineError):
    """A request or command did not finish in time: transient."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


#: Engine API statuses worth a retry: throttled, or a proxy/daemon that is briefly unavailable.
TRANSIENT_STATUS_CODES = frozenset({408, 429, 502, 503, 504})


class EngineRejected(EngineError):
    """The engine answered with an error status. 4xx are permanent (the same request fails again), the
    gateway/throttling codes are transient; Docker's generic 500 carries the real cause only in its text,
    so for it the caller passes the classification of the message."""

    def __init__(self, message: str, status_code: int | None, *, transient_500: bool = False) -> None:
        if status_code in TRANSIENT_STATUS_CODES:
            transient = True
        elif status_code is None or status_code >= 500:
            transient = transient_500
        else:
            transient = False
        super().__init__(message, transient=transient)
        self.status_code = status_code


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


@dataclass(frozen=True)
class ResolvedImage:
    """A service's image as resolved after the pull.

    ``digest``: the registry digest (``sha256:...``) when the engine knows one for the image's repository,
    else the local image id (``sha256:...``, an image built or loaded on the engine). ``reference`` runs
    exactly that image: ``repo@sha256:...``, or the image id.
    """

    service: str
    image: str
    digest: str
    reference: str
    #: bytes the image takes on the engine (its layers unpacked, as ``docker image ls`` counts it); None: unknown
    size: int | None = None

    def record(self) -> dict[str, Any]:
        return {"service": self.service, "image": self.image, "digest": self.digest, "reference": self.reference, "size": self.size}


@dataclass
class DeploySpec:
    deployment_id: str
    compose: str
    workdir: Path
    project: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    health_timeout: float = 120.0
    #: the health gate's settle window: a container without a health check counts as ready once it has
    #: stayed up this long (one that exits right after starting fails the deployment, not seen "running" by
    #: a lucky first poll); one with a health check once it is healthy (engines/health_gate.py)
    stable_seconds: float = 3.0
    #: service -> image reference to run instead of the document's (``ResolvedImage.reference``): a rollback
    #: runs the exact images its revision recorded
    pinned_images: dict[str, str] = field(default_factory=dict)
    #: filled by ``ensure_images``: what each service's image resolved to
    images: list[ResolvedImage] = field(default_factory=list)
    #: registry server -> ``{username, password, serveraddress}`` (decrypted): the pulls' auth parameter,
    #: never shown (``services/deployments/context.py`` loads it with the run's other credentials)
    registry_auth: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    #: seconds the images step's pulls may take together (None: no bound); past it the pull in flight is
    #: abandoned and the deployment fails, saying so (``engines/pull.py``)
    pull_timeout: float | None = None
    #: seconds one ``compose up`` may run (``DEPLOYMENT_UP_TIMEOUT_SECONDS`` or the stack's own); past it its process group is
    #: killed and the deployment fails, naming the step (``engines/compose.py``)
    up_timeout: float = 600.0
    #: where ``up_timeout`` comes from, named when it is reached: the setting or the stack's ``x-windflow.up_timeout``
    up_timeout_source: str = "DEPLOYMENT_UP_TIMEOUT_SECONDS"
    #: told where each image's pull stands, at most a few times a second (``engines/pull.py``)
    pull_progress: Callable[[Any], Awaitable[None]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.project = self.project or project_name(self.deployment_id)
        self.labels = self.labels or deployment_labels(self.deployment_id)


@dataclass(frozen=True)
class PortBinding:
    """One port of a container: ``80/tcp``, and where the host publishes it (none: not published)."""

    container_port: str
    host_ip: str | None = None
    host_port: str | None = None


@dataclass(frozen=True)
class ServiceState:
    service: str
    container_id: str
    state: str  # running, exited, created, restarting, ...
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    exit_code: int | None = None
    # What a deployment's page shows of each container (GET /deployments/{id}/services); a driver that
    # cannot tell leaves the defaults.
    name: str = ""
    restarts: int = 0
    image: str | None = None
    ports: tuple[PortBinding, ...] = ()
    started_at: str | None = None
    #: the last healthcheck probe's exit code and output (container text: redact before showing it)
    probe: str | None = None

    @property
    def started(self) -> datetime | None:
        """``started_at`` read: Docker's RFC 3339, nanoseconds included (read down to microseconds); None when
        the engine did not say or said something else."""
        try:
            return datetime.fromisoformat(self.started_at) if self.started_at else None
        except ValueError:
            return None


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
        """Make every image available (``spec.pinned_images`` in place of the document's), then record in
        ``spec.images`` what each resolved to; permanent EngineError naming the image when it cannot be had."""

    @abc.abstractmethod
    async def create_resources(self, spec: DeploySpec, log: LogSink) -> None:
        """Create networks and volumes (labelled)."""

    @abc.abstractmethod
    async def start_services(self, spec: DeploySpec, log: LogSink) -> None:
        """Create and start every service."""

    @abc.abstractmethod
    async def wait_healthy(self, spec: DeploySpec, log: LogSink) -> None:
        """The health gate: wait until every service runs (and is healthy when it has a healthcheck) and has
        stayed so for its settle window, within ``spec.health_timeout``; a permanent EngineError quoting the
        failing service (exit code or probe output, last lines) as soon as one exits, restarts or turns
        unhealthy."""

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

    async def inspect_managed(self) -> dict[str, list[ServiceState]] | None:
        """Every container WindFlow manages on this engine, by deployment id, in one look (the watcher's pass
        over a target); None when the driver cannot tell them apart so (the caller inspects each deployment)."""
        return None

    async def test_connection(self) -> dict:
        """``{"version": ..., "api_version": ..., "swarm_manager": bool, "os": ...}`` or EngineError."""
        raise NotImplementedError
