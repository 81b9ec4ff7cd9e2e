"""The swarm driver: ``docker stack deploy`` on a swarm manager, health from the swarm's tasks.

Ports are rewritten to the long syntax with ``mode: host`` (published on the node running the task)
because the routing mesh (ingress, IPVS) is not available everywhere WindFlow runs; ``host_ip`` has no
meaning for swarm and is dropped with a warning. ``stack deploy`` never fails because an image is
missing: the swarm rejects the task later, so ``wait_healthy`` watches tasks and turns a rejected or
failed one into a permanent error quoting the swarm's reason (e.g. ``No such image``).

Stop scales every replicated service to 0, remembering its replica count in the service label
``windflow.replicas``; start restores it.

Private registries: the nodes pull for themselves, so ``stack deploy`` runs with ``--with-registry-auth`` and
the organisation's credentials for the registries the stack's images name, in a per-run CLI configuration file
(0600, in the session's private directory, gone when the command's session ends): the swarm hands them to the
nodes with the tasks. Never a command line, an environment value, a log line or the host's own
``~/.docker/config.json``; ``docker service inspect`` does not show them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
from docker.models.services import Service

from backend.app.core.files import private_dir, write_private
from backend.app.core.image_reference import DOCKER_HUB, registry_of
from backend.app.engines.base import DeploySpec, EngineError, LogSink, ServiceState, TargetConnection
from backend.app.engines.connection import EngineSession
from backend.app.engines.docker_base import (
    COMPOSE_FILE,
    DockerEngine,
    WaitReport,
    deployment_filter,
    pin_images,
    poll_until,
    service_line_level,
)
from backend.app.engines.document import active_services, dump_document, label_document, load_document, parse_ports
from backend.app.engines.process import CommandResult, failure, run_command
from backend.app.models.enums import LogLevel

REPLICAS_LABEL = "windflow.replicas"
STACK_LABEL = "com.docker.stack.namespace"
COMMAND_TIMEOUT = 300.0
REMOVE_TIMEOUT = 90.0

_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z?$")


def _parse_time(value: str | None) -> datetime:
    match = _TIMESTAMP.match((value or "").split("+")[0])
    if not match:
        return datetime.min.replace(tzinfo=UTC)
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}+00:00")


def host_mode_ports(service: dict[str, Any]) -> list[str]:
    """Rewrite ``service['ports']`` in place to long syntax with ``mode: host``; the warnings to log."""
    warnings = []
    if not service.get("ports"):
        return warnings
    rewritten = []
    for mapping in parse_ports(service["ports"]):
        if mapping.host_ip and mapping.host_ip not in ("0.0.0.0", "::"):
            warnings.append(
                f"port {mapping.host_ip}:{mapping.published}:{mapping.target}: swarm cannot bind a "
                f"host IP, publishing on every interface of the node instead"
            )
        entry: dict[str, Any] = {"target": mapping.target, "protocol": mapping.protocol, "mode": "host"}
        if mapping.published is not None:
            entry["published"] = mapping.published
        rewritten.append(entry)
    service["ports"] = rewritten
    return warnings


class SwarmEngine(DockerEngine):
    swarm_document = True

    def __init__(self, connection: TargetConnection) -> None:
        super().__init__(connection)
        docker_cli = shutil.which("docker")
        if not docker_cli:
            raise EngineError("the docker CLI is not installed (needed for `docker stack deploy`)", transient=False)
        self.docker = docker_cli

    # ------------------------------------------------------------------ document

    def stack_document(self, spec: DeploySpec) -> tuple[dict[str, Any], list[str]]:
        doc = pin_images(label_document(load_document(spec.compose), spec.labels, swarm=True), spec.pinned_images)
        warnings = []
        for service in doc["services"].values():
            warnings += host_mode_ports(service)
        return doc, warnings

    def labelled_document(self, spec: DeploySpec) -> dict[str, Any]:
        return self.stack_document(spec)[0]

    async def _docker(
        self,
        session: EngineSession,
        log: LogSink | None,
        *args: str,
        cwd: Path | None = None,
        timeout: float = COMMAND_TIMEOUT,
        capture_stdout: bool = False,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        return await run_command(
            [self.docker, *args], env=env or session.env, log=log, cwd=cwd, timeout=timeout, capture_stdout=capture_stdout
        )

    def registry_config(self, session: EngineSession, spec: DeploySpec, doc: dict[str, Any]) -> dict[str, str] | None:
        """The CLI environment pointing ``DOCKER_CONFIG`` at a configuration holding the credentials of the
        registries this document's images name (None when it names none WindFlow has credentials for). The file
        is 0600 in a 0700 directory of the session: it goes with the session."""
        auths: dict[str, dict[str, str]] = {}
        for service in active_services(doc).values():
            server = registry_of(str(service.get("image") or ""))
            found = spec.registry_auth.get(server)
            if not found or not found.get("username"):
                continue
            key = "https://index.docker.io/v1/" if server == DOCKER_HUB else server
            token = base64.b64encode(f"{found['username']}:{found.get('password', '')}".encode()).decode()
            auths[key] = {"auth": token}
        if not auths:
            return None
        directory = private_dir(session.material_dir / "docker-config")
        write_private(directory / "config.json", json.dumps({"auths": auths}))
        env = session.env
        env["DOCKER_CONFIG"] = str(directory)
        return env

    async def resolved_document(self, spec: DeploySpec) -> dict[str, Any]:
        path = self.ensure_project(spec)
        if "$" not in path.read_text().replace("$$", ""):
            return self.prepared_document(spec)
        async with self.session() as session:
            result = await self._docker(session, None, "stack", "config", "-c", str(path), cwd=path.parent, capture_stdout=True, timeout=60)
        if not result.ok:
            raise EngineError(f"invalid stack document: {result.error_excerpt()}", transient=False)
        return load_document(result.stdout)

    # ------------------------------------------------------------------ steps

    async def validate(self, spec: DeploySpec, log: LogSink) -> None:
        """``docker stack config`` on the document as written, then on the labelled, host-mode form."""
        tmp = Path(tempfile.mkdtemp(prefix="windflow-validate-"))
        try:
            raw = tmp / "raw.yml"
            write_private(raw, spec.compose)
            async with self.session() as session:
                result = await self._docker(session, log, "stack", "config", "-c", str(raw), cwd=tmp, capture_stdout=True, timeout=60)
                if not result.ok:
                    raise EngineError(f"invalid stack document: {result.error_excerpt()}", transient=False)
                doc, warnings = self.stack_document(spec)
                for warning in warnings:
                    await log(LogLevel.WARNING, warning)
                labelled = tmp / COMPOSE_FILE
                write_private(labelled, dump_document(doc))
                result = await self._docker(session, log, "stack", "config", "-c", str(labelled), cwd=tmp, capture_stdout=True, timeout=60)
                if not result.ok:
                    raise EngineError(f"invalid stack document once labelled: {result.error_excerpt()}", transient=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        await log(LogLevel.INFO, "stack document is valid")

    async def ensure_images(self, spec: DeploySpec, log: LogSink) -> None:
        """Best effort on the manager only: in a swarm the nodes pull for themselves, so an image missing
        here is a warning; a node that cannot get it rejects the task, which ``wait_healthy`` reports."""
        doc = await self.resolved_document(spec)
        images = {name: str(s["image"]) for name, s in active_services(doc).items() if s.get("image")}
        async with self.session() as session:
            inspected: dict = {}  # each image inspected once: present, then resolved to its digest
            problems = await self.ensure_image_list(session, list(images.values()), log, spec, inspected)
            spec.images = await self.resolve_images(session, spec, images, log, inspected)
        for problem in problems:
            await log(LogLevel.WARNING, f"{problem} (on the manager; the nodes must have it)")

    async def create_resources(self, spec: DeploySpec, log: LogSink) -> None:
        """Check the target is a swarm manager; ``stack deploy`` creates the labelled networks itself."""
        async with self.session() as session:
            client = await session.client()
            info = await session.call(client.info)
        if not (info.get("Swarm") or {}).get("ControlAvailable"):
            raise EngineError(
                f"{self.connection.endpoint} is not a swarm manager (Swarm: {(info.get('Swarm') or {}).get('LocalNodeState', 'inactive')})",
                transient=False,
            )
        await log(LogLevel.INFO, "target is a swarm manager; networks are created by `docker stack deploy`")

    async def start_services(self, spec: DeploySpec, log: LogSink) -> None:
        path = self.ensure_project(spec)
        async with self.session() as session:
            env = self.registry_config(session, spec, await self.resolved_document(spec))
            with_auth = ["--with-registry-auth"] if env is not None else []
            if env is not None:
                await log(LogLevel.INFO, "the nodes pull with the organisation's registry credentials (--with-registry-auth)")
            result = await self._docker(
                session,
                log,
                "stack",
                "deploy",
                *with_auth,
                "--resolve-image",
                "never",
                "--prune",
                "--detach=true",
                "--compose-file",
                str(path),
                spec.project,
                cwd=path.parent,
                env=env,
            )
        if not result.ok:
            raise failure("docker stack deploy", result)

    # ------------------------------------------------------------------ health

    async def services(self, session: EngineSession, spec: DeploySpec) -> list[Service]:
        client = await session.client()
        return await session.call(client.services.list, filters=deployment_filter(spec))

    def _short(self, spec: DeploySpec, service: Service) -> str:
        return service.name.removeprefix(spec.project + "_")

    async def wait_healthy(self, spec: DeploySpec, log: LogSink) -> None:
        doc = await self.resolved_document(spec)
        expected = set(active_services(doc))
        async with self.session() as session:
            await self._wait_tasks(session, spec, expected, log)

    async def _wait_tasks(self, session: EngineSession, spec: DeploySpec, expected: set[str], log: LogSink) -> None:
        """The health gate for tasks: each desired task running (the swarm reports a task with a healthcheck
        ``starting`` until it is healthy) for ``spec.stable_seconds`` on our clock; a task of this rollout
        that failed, was rejected or completed (a service that should run) fails it at once."""
        running_since: dict[str, float] = {}  # task id -> when this wait first saw it running

        def settled(task: dict[str, Any]) -> bool:
            first = running_since.setdefault(str(task.get("ID")), time.monotonic())
            return time.monotonic() - first >= spec.stable_seconds

        async def waiting_services() -> dict[str, str]:
            services = {self._short(spec, s): s for s in await self.services(session, spec)}
            waiting: dict[str, str] = {}
            for name in sorted(expected):
                service = services.get(name)
                if service is None:
                    waiting[name] = "no service"
                    continue
                try:
                    tasks = await session.call(service.tasks)
                except docker.errors.NotFound:
                    waiting[name] = "no service"
                    continue
                since = _parse_time(service.attrs.get("UpdatedAt"))
                mode = service.attrs["Spec"].get("Mode", {})
                ended = ("failed", "rejected") if "ReplicatedJob" in mode or "GlobalJob" in mode else ("failed", "rejected", "complete")
                for task in tasks:
                    status = task.get("Status") or {}
                    if status.get("State") in ended and _parse_time(task.get("CreatedAt")) >= since:
                        await self._task_failed(session, name, task, log)
                current = [t for t in tasks if t.get("DesiredState") == "running"]
                up = [t for t in current if (t.get("Status") or {}).get("State") == "running"]
                running = sum(1 for t in up if settled(t))
                if "Replicated" in mode:
                    desired = int(mode["Replicated"].get("Replicas", 1))
                else:
                    desired = max(1, len(current))
                if running < desired:
                    states = sorted({(t.get("Status") or {}).get("State", "?") for t in current}) or ["no task"]
                    if len(up) > running:
                        states.append("settling")
                    waiting[name] = f"{running}/{desired} running, {', '.join(states)}"
            return waiting

        await WaitReport(spec, expected, log).until_ready(waiting_services)

    async def _task_failed(self, session: EngineSession, name: str, task: dict[str, Any], log: LogSink) -> None:
        status = task.get("Status") or {}
        reason = status.get("Err") or status.get("Message") or "no reason given"
        message = f"service {name}: task {status.get('State')}: {reason}"
        container_id = (status.get("ContainerStatus") or {}).get("ContainerID")
        logs = ""
        if container_id:
            client = await session.client()
            try:
                container = await session.call(client.containers.get, container_id)
                logs = await self._last_logs(session, container)
            except (docker.errors.NotFound, EngineError):
                logs = ""
        for line in logs.splitlines():
            await log(service_line_level(line), f"{name} | {line}")
        if logs:
            message += "; last log lines:\n" + logs
        raise EngineError(message, transient=False, output_logged=True)

    # ------------------------------------------------------------------ lifecycle

    async def stop(self, spec: DeploySpec, log: LogSink) -> None:
        async with self.session() as session:
            for service in await self.services(session, spec):
                mode = service.attrs["Spec"].get("Mode", {})
                if "Replicated" not in mode:
                    await log(LogLevel.WARNING, f"{service.name} is a global service: it cannot be scaled to 0")
                    continue
                replicas = int(mode["Replicated"].get("Replicas", 1))
                if replicas == 0:
                    continue
                await log(LogLevel.INFO, f"scaling {service.name} from {replicas} to 0")
                result = await self._docker(
                    session,
                    log,
                    "service",
                    "update",
                    "--detach",
                    "--quiet",
                    "--replicas",
                    "0",
                    "--label-add",
                    f"{REPLICAS_LABEL}={replicas}",
                    service.name,
                )
                if not result.ok:
                    raise failure(f"scaling {service.name} to 0", result)
            await self._wait_no_running_tasks(session, spec, log)

    async def _wait_no_running_tasks(self, session: EngineSession, spec: DeploySpec, log: LogSink) -> None:
        running: list[str] = []

        async def all_stopped() -> bool:
            running.clear()
            for service in await self.services(session, spec):
                if "Replicated" not in service.attrs["Spec"].get("Mode", {}):
                    continue
                tasks = await session.call(service.tasks)
                running.extend(
                    service.name
                    for t in tasks
                    if (t.get("Status") or {}).get("State")
                    in ("running", "starting", "preparing", "assigned", "accepted", "ready", "pending", "new")
                )
            if not running:
                await log(LogLevel.INFO, "every task is stopped")
            return not running

        def expired() -> EngineError:
            return EngineError(f"tasks still running after {spec.health_timeout:g}s: {', '.join(sorted(set(running)))}", transient=True)

        await poll_until(all_stopped, spec.health_timeout, expired)

    async def start(self, spec: DeploySpec, log: LogSink) -> None:
        async with self.session() as session:
            expected = set()
            for service in await self.services(session, spec):
                expected.add(self._short(spec, service))
                remembered = (service.attrs["Spec"].get("Labels") or {}).get(REPLICAS_LABEL)
                if remembered is None:
                    continue
                await log(LogLevel.INFO, f"scaling {service.name} back to {remembered}")
                result = await self._docker(
                    session,
                    log,
                    "service",
                    "update",
                    "--detach",
                    "--quiet",
                    "--replicas",
                    str(remembered),
                    "--label-rm",
                    REPLICAS_LABEL,
                    service.name,
                )
                if not result.ok:
                    raise failure(f"scaling {service.name} to {remembered}", result)
            await self._wait_tasks(session, spec, expected, log)

    async def remove(self, spec: DeploySpec, log: LogSink, *, keep_volumes: bool = False) -> None:
        """``docker stack rm``, then remove whatever still carries the deployment label (task containers,
        networks, volumes unless ``keep_volumes``, configs, secrets), retrying while the swarm still
        holds some of them, until nothing is left."""
        async with self.session() as session:
            client = await session.client()
            result = await self._docker(session, log, "stack", "rm", spec.project)
            if not result.ok and "nothing found in stack" not in "\n".join(result.lines).lower():
                await log(LogLevel.WARNING, f"docker stack rm failed ({result.error_excerpt()}); removing by label")
            # Once its services are gone the swarm stops and reaps their task containers on its own,
            # which takes seconds; removing them by label right away is equivalent and faster.
            flt = deployment_filter(spec)
            still_there: list[EngineError] = []

            async def swept() -> bool:
                for service in await session.call(client.services.list, filters=flt):
                    with contextlib.suppress(docker.errors.NotFound):
                        await session.call(service.remove)
                try:
                    await self.sweep(session, spec, log, keep_volumes=keep_volumes)
                except EngineError as exc:  # a network or volume still in use by a task being torn down
                    if not exc.message.startswith("could not remove"):
                        raise
                    still_there[:] = [exc]
                    return False
                return True

            await poll_until(swept, REMOVE_TIMEOUT, lambda: still_there[0])
            for kind in (client.secrets, client.configs):
                for item in await session.call(kind.list, filters=flt):
                    await log(LogLevel.INFO, f"removing {item.name}")
                    try:
                        await session.call(item.remove)
                    except docker.errors.NotFound:
                        pass

    async def leftovers(self, session: EngineSession, spec: DeploySpec, *, keep_volumes: bool) -> list[str]:
        left = await super().leftovers(session, spec, keep_volumes=keep_volumes)
        left += [f"service {s.name}" for s in await self.services(session, spec)]
        return left

    async def inspect(self, spec: DeploySpec) -> list[ServiceState]:
        """The latest task of every slot of every service of the deployment."""
        states: list[ServiceState] = []
        async with self.session() as session:
            for service in await self.services(session, spec):
                latest: dict[Any, dict[str, Any]] = {}
                for task in await session.call(service.tasks):
                    slot = task.get("Slot") or task.get("NodeID")
                    if slot not in latest or _parse_time(task.get("CreatedAt")) > _parse_time(latest[slot].get("CreatedAt")):
                        latest[slot] = task
                for task in latest.values():
                    status = task.get("Status") or {}
                    container = status.get("ContainerStatus") or {}
                    states.append(
                        ServiceState(
                            service=self._short(spec, service),
                            container_id=container.get("ContainerID") or "",
                            state=status.get("State", "unknown"),
                            health=None,
                            exit_code=container.get("ExitCode"),
                        )
                    )
        return sorted(states, key=lambda s: (s.service, s.container_id))
