"""What the three drivers share: images, health waiting, label sweeps and inspection through the SDK.

About 500 lines because it is one base class (:class:`DockerEngine`) and the helpers of its steps; the parts
that stand alone live beside it (the gate's verdicts in ``health_gate.py``, its wake-ups in
``engine_events.py``, pulls in ``pull.py``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker.errors
from docker.models.containers import Container
from docker.models.images import Image

from backend.app.core.events import sleep_or_event
from backend.app.core.files import private_dir, write_private
from backend.app.engines import pull
from backend.app.engines.base import (
    DEPLOYMENT_LABEL,
    DeploySpec,
    Engine,
    EngineError,
    LogSink,
    PortBinding,
    ResolvedImage,
    ServiceState,
)
from backend.app.engines.connection import EngineSession
from backend.app.engines.document import (
    SERVICE_LABEL,
    active_services,
    completed_dependencies,
    desired_replicas,
    dump_document,
    label_document,
    load_document,
)
from backend.app.engines.engine_events import EngineWake
from backend.app.engines.health_gate import HealthGate, last_probe
from backend.app.models.enums import LogLevel

COMPOSE_FILE = "docker-compose.yml"
#: Seconds between two looks at the engine while waiting (the health gate: a quarter of a second of lag at most
#: once a container is healthy; two or three API calls for a small stack).
POLL_INTERVAL = 0.25


def compose_path(spec: DeploySpec) -> Path:
    return Path(spec.workdir) / COMPOSE_FILE


def deployment_filter(spec: DeploySpec) -> dict[str, str]:
    return {"label": f"{DEPLOYMENT_LABEL}={spec.deployment_id}"}


def pin_images(doc: dict[str, Any], pinned: Mapping[str, str]) -> dict[str, Any]:
    """``doc`` with each service of ``pinned`` running the pinned image reference instead of its own."""
    services = doc.get("services") or {}
    for service, reference in pinned.items():
        if isinstance(services.get(service), dict):
            services[service]["image"] = reference
    return doc


def without_tag(reference: str) -> str:
    """``registry:5000/app:1.2`` -> ``registry:5000/app`` (a digest is dropped too)."""
    name = reference.split("@", 1)[0]
    return name[: name.rfind(":")] if name.rfind(":") > name.rfind("/") else name


def repository_of(reference: str) -> str:
    """The repository of an image reference, normalised (``busybox:1.36`` and ``docker.io/library/busybox``
    are both ``busybox``)."""
    name = without_tag(reference)
    for prefix in ("docker.io/", "index.docker.io/"):
        name = name.removeprefix(prefix)
    return name.removeprefix("library/")


def image_digest(reference: str, attrs: Mapping[str, Any]) -> tuple[str, str]:
    """``(digest, exact reference)`` of an inspected image: its registry digest for ``reference``'s
    repository (``repo@sha256:...``), else its image id (which runs as is)."""
    if reference.startswith("sha256:"):
        return reference, reference
    if "@sha256:" in reference:
        return reference.split("@", 1)[1], reference
    repository = repository_of(reference)
    for entry in attrs.get("RepoDigests") or []:
        name, _, digest = str(entry).partition("@")
        if digest and repository_of(name) == repository:
            return digest, f"{without_tag(reference)}@{digest}"
    image_id = str(attrs.get("Id") or "")
    return image_id, image_id


def service_of(labels: Mapping[str, str]) -> str:
    return labels.get(SERVICE_LABEL) or labels.get("com.docker.compose.service") or "?"


def _decode(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


#: The shortest time between two looks woken by engine events (a burst of events is one look, not one each).
WAKE_SPACING = 0.02


async def poll_until(
    done: Callable[[], Awaitable[bool]], timeout: float, expired: Callable[[], Exception], *, wake: asyncio.Event | None = None
) -> None:
    """The one wait loop of the drivers: ``await done()`` every :data:`POLL_INTERVAL` seconds until it
    returns True; ``expired()`` is raised once ``timeout`` seconds have passed without that. ``wake``
    (:class:`~backend.app.engines.engine_events.EngineWake`'s event): set when the engine reports a change,
    it brings the next look forward (at most one every :data:`WAKE_SPACING` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        looked = time.monotonic()
        if wake is not None:
            wake.clear()  # an event from here on calls for another look
        if await done():
            return
        if time.monotonic() >= deadline:
            raise expired()
        if wake is None:
            await asyncio.sleep(POLL_INTERVAL)
            continue
        await sleep_or_event(POLL_INTERVAL, wake)
        await asyncio.sleep(max(0.0, looked + WAKE_SPACING - time.monotonic()))


_SERVICE_LEVEL = re.compile(r"\b(error|err|fatal|critical|crit|panic|emerg|warn|warning|debug|trace|info|notice)\b", re.IGNORECASE)
_LEVEL_OF_WORD = {
    "warn": LogLevel.WARNING,
    "warning": LogLevel.WARNING,
    "debug": LogLevel.DEBUG,
    "trace": LogLevel.DEBUG,
    "info": LogLevel.INFO,
    "notice": LogLevel.INFO,
}


def service_line_level(line: str) -> LogLevel:
    """The level of one line of a failed service's output, as the line itself tells it (``ERROR ...``,
    ``level=warn``, ``[debug]``: the first level word wins); a line that names none is part of the
    failure: ERROR."""
    match = _SERVICE_LEVEL.search(line[:200])
    return _LEVEL_OF_WORD.get(match.group(1).lower(), LogLevel.ERROR) if match else LogLevel.ERROR


class WaitReport:
    """The log of a wait-until-ready: each service whose state changed since the last round, then either
    "all services are running" or, at the deadline, a permanent EngineError naming the laggards."""

    def __init__(self, spec: DeploySpec, expected, log: LogSink) -> None:
        self.spec = spec
        self.expected = expected
        self.log = log
        self.reported: dict[str, str] = {}
        self.waiting: dict[str, str] = {}

    async def round(self, waiting: dict[str, str]) -> bool:
        """Report one round (``{service: what it waits for}``); True when nothing waits any more."""
        self.waiting = waiting
        for service, description in waiting.items():
            if self.reported.get(service) != description:
                self.reported[service] = description
                await self.log(LogLevel.INFO, f"waiting for {service}: {description}")
        if not waiting:
            await self.log(LogLevel.INFO, f"all services are running: {', '.join(sorted(self.expected))}")
        return not waiting

    def expired(self) -> EngineError:
        detail = "; ".join(f"{s} ({d})" for s, d in sorted(self.waiting.items()))
        return EngineError(f"services not ready after {self.spec.health_timeout:g}s: {detail}", transient=False)

    async def until_ready(self, compute: Callable[[], Awaitable[dict[str, str]]], *, wake: asyncio.Event | None = None) -> None:
        """Poll ``compute()`` (what still waits) until nothing does, within ``spec.health_timeout``; sooner after
        ``wake`` is set (:func:`poll_until`)."""

        async def done() -> bool:
            return await self.round(await compute())

        await poll_until(done, self.spec.health_timeout, self.expired, wake=wake)


class DockerEngine(Engine):
    """Base of the drivers: the parts that only need the SDK."""

    #: label swarm's copy of the document as a stack file (deploy.labels, configs, secrets)
    swarm_document = False

    def session(self) -> EngineSession:
        return EngineSession(self.connection)

    # ------------------------------------------------------------------ document

    def labelled_document(self, spec: DeploySpec) -> dict[str, Any]:
        return pin_images(label_document(load_document(spec.compose), spec.labels, swarm=self.swarm_document), spec.pinned_images)

    def prepared_document(self, spec: DeploySpec) -> dict[str, Any]:
        """The labelled document as ``prepare`` wrote it, or freshly labelled when it has not run."""
        path = compose_path(spec)
        if path.is_file():
            return load_document(path.read_text())
        return self.labelled_document(spec)

    async def resolved_document(self, spec: DeploySpec) -> dict[str, Any]:
        """The prepared document with variables substituted as the deploying tool will see them."""
        return self.prepared_document(spec)

    def write_project(self, spec: DeploySpec) -> dict[str, Any]:
        """Write the project directory from the stored snapshot: the labelled document (pinned images in
        place) in a 0700 directory, as a 0600 file (it holds the deployment's secret values). Returns the
        document written."""
        doc = self.labelled_document(spec)
        path = compose_path(spec)
        private_dir(path.parent, tighten=True)
        write_private(path, dump_document(doc))
        return doc

    def ensure_project(self, spec: DeploySpec) -> Path:
        """The project directory, rebuilt from the snapshot when this process has none (it did not deploy
        the deployment: another worker, another host, a fresh container). Every step that runs the tool in
        the directory calls this first, so no step needs a disk shared with whoever deployed."""
        path = compose_path(spec)
        if not path.is_file():
            self.write_project(spec)
        return path

    async def prepare(self, spec: DeploySpec, log: LogSink) -> None:
        doc = self.write_project(spec)
        path = compose_path(spec)
        # Named relative to the project: the deployment log never shows the host's directory layout.
        await log(
            LogLevel.INFO,
            f"wrote {path.name} of project {spec.project} ({len(doc['services'])} services, "
            f"labelled {DEPLOYMENT_LABEL}={spec.deployment_id})",
        )

    # ------------------------------------------------------------------ images

    async def ensure_image_list(
        self,
        session: EngineSession,
        images: Sequence[str],
        log: LogSink,
        spec: DeploySpec | None = None,
        inspected: dict[str, Image] | None = None,
    ) -> list[str]:
        """Pull what is missing, streamed (``engines/pull.py``): with the credentials of ``spec.registry_auth``
        whose server is the image's registry, progress to ``spec.pull_progress``, one log line per image pulled
        (its digest and size), all within ``spec.pull_timeout`` (past it: :class:`pull.PullTimedOut`, the pull in
        flight abandoned). The images that cannot be had, each a :class:`PullProblem` saying why: a refused
        login or an unknown image or tag is permanent, an unreachable registry transient. ``inspected`` receives
        each image present (or pulled) as the engine described it, by reference (for :meth:`resolve_images`)."""
        client = await session.client()
        missing: list[str] = []  # PullProblem: the text, and whether a retry may help
        registry_auth = spec.registry_auth if spec is not None else {}
        progress = spec.pull_progress if spec is not None else None
        # the deployment's pull timeout bounds the step's pulls together, not each one
        pull_timeout = spec.pull_timeout if spec is not None else None
        deadline = None if pull_timeout is None else time.monotonic() + pull_timeout
        for image in dict.fromkeys(images):
            try:
                present = await session.call(client.images.get, image)
                if inspected is not None:
                    inspected[image] = present
                await log(LogLevel.INFO, f"image {image} is present")
                continue
            except docker.errors.NotFound:
                pass
            auth = pull.auth_for(image, registry_auth)
            with_auth = " with the organisation's credentials for " + pull.registry_of(image) if auth else ""
            await log(LogLevel.INFO, f"image {image} is not present locally, pulling it{with_auth}")
            started = time.monotonic()
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                state = await pull.pull(client, image, auth=auth, progress=progress, timeout=left, timeout_label=pull_timeout)
            except pull.PullFailed as exc:
                missing.append(pull.PullProblem.of(exc))
                continue
            size = ""
            try:
                pulled = await session.call(client.images.get, image)
                if inspected is not None:
                    inspected[image] = pulled
                size = f", {pulled.attrs.get('Size', 0) / 1e6:.1f} MB"
            except docker.errors.NotFound:
                pass
            digest = state.digest or "digest unknown"
            await log(
                LogLevel.INFO, f"pulled image {image} ({digest}{size}, {state.layers_total} layers, {time.monotonic() - started:.1f} s)"
            )
        return missing

    async def ensure_images(self, spec: DeploySpec, log: LogSink) -> None:
        doc = await self.resolved_document(spec)
        images: dict[str, str] = {}
        for name, service in active_services(doc).items():
            image = service.get("image")
            if not image:
                raise EngineError(f"service {name} has no image (WindFlow deploys images, it does not build them)", transient=False)
            images[name] = str(image)
        async with self.session() as session:
            inspected: dict[str, Image] = {}  # each image inspected once: present, then resolved to its digest
            problems = await self.ensure_image_list(session, list(images.values()), log, spec, inspected)
            if not problems:
                spec.images = await self.resolve_images(session, spec, images, log, inspected)
        for problem in problems:
            await log(LogLevel.ERROR, problem)
        if problems:
            # retried only when every problem may pass (an unreachable registry); a refused login or an unknown
            # image fails at once
            transient = all(getattr(problem, "transient", False) for problem in problems)
            raise EngineError("; ".join(problems), transient=transient)

    async def resolve_images(
        self,
        session: EngineSession,
        spec: DeploySpec,
        images: Mapping[str, str],
        log: LogSink,
        inspected: Mapping[str, Image] | None = None,
    ) -> list[ResolvedImage]:
        """What each service's (present) image is: its registry digest, else its image id. A service whose
        image cannot be inspected (a swarm node's image, absent from the manager) is left out. ``inspected``:
        the images :meth:`ensure_image_list` inspected in this step, not asked for again."""
        client = await session.client()
        named = {name: str(service.get("image") or "") for name, service in (load_document(spec.compose).get("services") or {}).items()}
        resolved: list[ResolvedImage] = []
        for service, reference in images.items():
            image = (inspected or {}).get(reference)
            try:
                image = image or await session.call(client.images.get, reference)
            except docker.errors.NotFound:
                continue
            digest, exact = image_digest(reference, image.attrs)
            size = image.attrs.get("Size")
            resolved.append(ResolvedImage(service, named.get(service) or reference, digest, exact, int(size) if size is not None else None))
            pinned = " (pinned)" if service in spec.pinned_images else ""
            await log(LogLevel.INFO, f"{service}: image {named.get(service) or reference} is {digest}{pinned}")
        return resolved

    # ------------------------------------------------------------------ containers by label

    async def containers(self, session: EngineSession, spec: DeploySpec) -> list[Container]:
        client = await session.client()
        return await session.call(client.containers.list, all=True, filters=deployment_filter(spec), ignore_removed=True)

    async def inspect(self, spec: DeploySpec) -> list[ServiceState]:
        async with self.session() as session:
            containers = await self.containers(session, spec)
        return [state_of(c) for c in sorted(containers, key=lambda c: c.name)]

    async def _last_logs(self, session: EngineSession, container: Container, lines: int = 10) -> str:
        try:
            raw = await session.call(container.logs, stdout=True, stderr=True, tail=lines)
        except (EngineError, docker.errors.NotFound):
            return ""
        return _decode(raw).strip()

    async def wait_containers(
        self,
        session: EngineSession,
        spec: DeploySpec,
        expected: Mapping[str, int],
        log: LogSink,
        *,
        one_shot: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """The health gate (:mod:`backend.app.engines.health_gate`): poll the deployment's containers until
        each service has ``expected[service]`` containers up for their settle window. A container that exits,
        restarts or turns unhealthy, or whose healthcheck does not pass within its bound → permanent
        EngineError quoting its exit code or probe output and its last log lines; ``spec.health_timeout`` →
        permanent EngineError naming the services not ready."""
        gate = HealthGate(spec.stable_seconds)

        async def waiting_services() -> dict[str, str]:
            by_service: dict[str, list[Container]] = {}
            for container in await self.containers(session, spec):
                by_service.setdefault(service_of(container.labels), []).append(container)
            waiting: dict[str, str] = {}
            for service, count in expected.items():
                if count <= 0:
                    continue
                containers = by_service.get(service, [])
                ready = 0
                states: set[str] = set()
                for container in containers:
                    verdict = gate.judge(container.id, container.attrs, one_shot=service in one_shot)
                    if verdict.failed:
                        await self._fail(session, service, container, verdict.reason, log)
                    if verdict.ready:
                        ready += 1
                    else:
                        states.add(verdict.waiting)
                if ready < count:
                    waiting[service] = f"{ready}/{count} ready, {', '.join(sorted(states))}" if containers else "no container"
            return waiting

        report = WaitReport(spec, expected, log)
        if await report.round(await waiting_services()):
            return  # ready at the first look (no healthcheck, no settle window): no event stream to open
        # the engine's events of these containers bring the next look forward (a container turning healthy is
        # seen then, not up to a poll interval later); the verdicts are the same polled inspection's
        async with EngineWake(await session.client(), {DEPLOYMENT_LABEL: spec.deployment_id}) as wake:
            await report.until_ready(waiting_services, wake=wake.event)

    async def _fail(self, session: EngineSession, service: str, container: Container, what: str, log: LogSink) -> None:
        logs = await self._last_logs(session, container)
        for line in logs.splitlines():
            await log(service_line_level(line), f"{service} | {line}")
        message = f"service {service} {what}"
        if logs:
            message += "; last log lines:\n" + logs
        raise EngineError(message, transient=False, output_logged=True)

    async def wait_healthy(self, spec: DeploySpec, log: LogSink) -> None:
        services = active_services(await self.resolved_document(spec))
        expected = {name: desired_replicas(service) for name, service in services.items()}
        async with self.session() as session:
            await self.wait_containers(session, spec, expected, log, one_shot=completed_dependencies(services))

    # ------------------------------------------------------------------ removal

    async def sweep(self, session: EngineSession, spec: DeploySpec, log: LogSink, *, keep_volumes: bool) -> None:
        """Remove every container, network (and volume unless ``keep_volumes``) labelled with the
        deployment, whatever created it; EngineError listing what could not be removed."""
        client = await session.client()
        flt = deployment_filter(spec)
        for container in await self.containers(session, spec):
            await self._remove_object(session, f"container {container.name}", log, container.remove, force=True, v=not keep_volumes)
        for network in await session.call(client.networks.list, filters=flt):
            await self._remove_object(session, f"network {network.name}", log, network.remove)
        if not keep_volumes:
            for volume in await session.call(client.volumes.list, filters=flt):
                await self._remove_object(session, f"volume {volume.name}", log, volume.remove, force=True)
        left = await self.leftovers(session, spec, keep_volumes=keep_volumes)
        if left:
            raise EngineError(f"could not remove {', '.join(left)}", transient=True)

    async def _remove_object(self, session: EngineSession, what: str, log: LogSink, remove: Any, **kwargs: Any) -> None:
        """One removal of the sweep. Already gone is fine; any other refusal (still in use, being removed
        by the engine itself) is left to the final leftovers check, which names what remains."""
        await log(LogLevel.INFO, f"removing {what}")
        try:
            await session.call(remove, **kwargs)
        except docker.errors.NotFound:
            pass
        except EngineError as exc:
            if exc.message.startswith("cannot reach Docker engine"):
                raise
            await log(LogLevel.WARNING, f"could not remove {what} yet: {exc.message}")

    async def leftovers(self, session: EngineSession, spec: DeploySpec, *, keep_volumes: bool) -> list[str]:
        client = await session.client()
        flt = deployment_filter(spec)
        left = [f"container {c.name}" for c in await self.containers(session, spec)]
        left += [f"network {n.name}" for n in await session.call(client.networks.list, filters=flt)]
        if not keep_volumes:
            left += [f"volume {v.name}" for v in await session.call(client.volumes.list, filters=flt)]
        return left

    # ------------------------------------------------------------------ connection

    async def test_connection(self) -> dict:
        async with self.session() as session:
            client = await session.client()
            version = await session.call(client.version)
            info = await session.call(client.info)
        swarm = info.get("Swarm") or {}
        return {
            "version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
            "swarm_manager": bool(swarm.get("ControlAvailable")),
            "os": info.get("OperatingSystem") or version.get("Os"),
        }


def _ports_of(attrs: Mapping[str, Any]) -> tuple[PortBinding, ...]:
    """The container's ports (``NetworkSettings.Ports``), each binding of a published one apart."""
    ports: list[PortBinding] = []
    for container_port, bindings in sorted(((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items()):
        if not bindings:
            ports.append(PortBinding(container_port))
            continue
        for binding in bindings:
            ports.append(PortBinding(container_port, binding.get("HostIp") or None, binding.get("HostPort") or None))
    return tuple(ports)


def state_of(container: Container) -> ServiceState:
    attrs = container.attrs
    state = attrs.get("State", {})
    started = state.get("StartedAt")
    return ServiceState(
        service=service_of(container.labels),
        container_id=container.id,
        state=state.get("Status", "unknown"),
        health=(state.get("Health") or {}).get("Status"),
        exit_code=state.get("ExitCode"),
        name=container.name,
        restarts=int(attrs.get("RestartCount") or 0),
        image=(attrs.get("Config") or {}).get("Image"),
        ports=_ports_of(attrs),
        started_at=None if not started or started.startswith("0001-") else started,  # never started: Go's zero time
        probe=last_probe(attrs) or None,
    )
