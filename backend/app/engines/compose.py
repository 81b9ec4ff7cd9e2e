"""The compose driver: ``docker compose`` (v2), else ``docker-compose`` (v1), as a subprocess."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.app.engines.base import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    DeploySpec,
    EngineError,
    EngineTimeout,
    LogSink,
    ServiceState,
    TargetConnection,
)
from backend.app.engines.compose_cli import (
    check_document,
    compose_is_v2,
    find_compose_command,
    known_valid,
    remember_valid,
)
from backend.app.engines.compose_judge import certainly_valid
from backend.app.engines.connection import EngineSession
from backend.app.engines.docker_base import DockerEngine, compose_path, state_of
from backend.app.engines.document import load_document
from backend.app.engines.process import CommandResult, failure, run_command
from backend.app.models.enums import LogLevel

#: A compose v2 progress line saying a container is being started ("Container wf-1234-web-1  Starting").
_STARTING = re.compile(r"\bContainer\s+\S+\s+Start(ing|ed)\b")

#: A compose v2 line saying a container waits for the services it depends on ("Container wf-1234-db-1  Waiting").
_WAITING = re.compile(r"\bContainer\s+(\S+)\s+Waiting\b")

#: Seconds a compose command may run (images are already local, so this is generous); ``up`` has the
#: deployment's own bound (``DeploySpec.up_timeout``).
COMMAND_TIMEOUT = 600.0
CONFIG_TIMEOUT = 60.0


class ComposeEngine(DockerEngine):
    """Deploys with the compose CLI; health, inspection and the final sweep go through the SDK."""

    def __init__(self, connection: TargetConnection, command: tuple[str, ...] | None = None) -> None:
        super().__init__(connection)
        found = command or find_compose_command()
        if not found:
            raise EngineError(
                "no compose tool found (neither `docker compose` nor `docker-compose`): install "
                "compose v2 where WindFlow runs (bash scripts/setup-docker.sh does)",
                transient=False,
            )
        self.command = tuple(found)
        self.v2 = compose_is_v2(self.command)
        #: the running ``up`` of each deployment between create_resources and start_services
        self._up: dict[str, asyncio.Task] = {}

    # ------------------------------------------------------------------ plumbing

    def _argv(self, spec: DeploySpec, file: Path, project_dir: Path, *args: str) -> list[str]:
        argv = [*self.command]
        if self.v2:
            argv += ["--progress", "plain"]
        argv += ["--ansi", "never", "--project-name", spec.project, "--file", str(file), "--project-directory", str(project_dir), *args]
        return argv

    async def _compose(
        self,
        session: EngineSession,
        spec: DeploySpec,
        log: LogSink | None,
        *args: str,
        file: Path | None = None,
        timeout: float = COMMAND_TIMEOUT,
        capture_stdout: bool = False,
    ) -> CommandResult:
        file = file or compose_path(spec)
        workdir = Path(spec.workdir)
        project_dir = workdir if workdir.is_dir() else file.parent
        argv = self._argv(spec, file, project_dir, *args)
        return await run_command(argv, env=session.env, log=log, cwd=project_dir, timeout=timeout, capture_stdout=capture_stdout)

    async def _run(self, spec: DeploySpec, log: LogSink, what: str, *args: str) -> None:
        async with self.session() as session:
            result = await self._compose(session, spec, log, *args)
        if not result.ok:
            raise failure(what, result)

    async def _run_up(self, spec: DeploySpec, log: LogSink, step: Callable[[], str]) -> None:
        """``compose up`` within ``spec.up_timeout``: past it the process group is killed (``run_command``) and the
        step fails for good (a retry would hang the same way), naming the step, the setting and what compose
        was still waiting for."""
        waiting: list[str] = []

        async def follow(level: LogLevel, line: str) -> None:
            if found := _WAITING.search(line):
                waiting.append(found.group(1))
            await log(level, line)

        async with self.session() as session:
            try:
                result = await self._compose(session, spec, follow, *self._up_args(), timeout=spec.up_timeout)
            except EngineTimeout:
                still = f"; compose was still waiting for its dependencies {', '.join(dict.fromkeys(waiting))}" if waiting else ""
                raise EngineError(
                    f"step {step()} timed out: `compose up` did not finish within {spec.up_timeout:g} s "
                    f"({spec.up_timeout_source}){still}; its processes were killed",
                    transient=False,
                ) from None
        if not result.ok:
            raise failure("compose up", result)

    async def resolved_document(self, spec: DeploySpec) -> dict[str, Any]:
        """``compose config``: the document after compose's own interpolation and profile selection
        (only run when the document has something to interpolate)."""
        path = self.ensure_project(spec)
        if "$" not in path.read_text().replace("$$", ""):
            return self.prepared_document(spec)
        async with self.session() as session:
            result = await self._compose(session, spec, None, "config", timeout=CONFIG_TIMEOUT, capture_stdout=True)
        if not result.ok:
            raise EngineError(f"invalid compose document: {result.error_excerpt()}", transient=False)
        return load_document(result.stdout)

    # ------------------------------------------------------------------ steps

    async def validate(self, spec: DeploySpec, log: LogSink) -> None:
        """``compose config -q`` on a temporary copy of the document (the one compose runner,
        :func:`~backend.app.engines.compose_cli.check_document`), so the message is the tool's own;
        then our labelling must accept it too (e.g. labels of a known form). A document this process's
        compose tool already accepted (at deployment creation) is not run through it twice, and neither is one
        the in-process judge is certain of (:func:`~backend.app.engines.compose_judge.certainly_valid`):
        ``compose up`` reads the same document next and stays the final judge (its refusal fails the
        deployment with the tool's message)."""
        if known_valid(spec.compose, self.command):
            self.labelled_document(spec)
            await log(LogLevel.INFO, "compose document is valid (checked by docker compose config at creation)")
            return
        if self.v2 and certainly_valid(spec.compose):
            self.labelled_document(spec)
            await log(LogLevel.INFO, "compose document is valid (checked in process; compose up is the final judge)")
            return
        result = await check_document(spec.compose, command=self.command, timeout=CONFIG_TIMEOUT, log=log)
        if not result.ok:
            raise EngineError(f"invalid compose document: {result.error_excerpt()}", transient=False)
        self.labelled_document(spec)
        remember_valid(spec.compose, self.command)
        await log(LogLevel.INFO, "compose document is valid")

    def _up_args(self) -> list[str]:
        args = ["up", "--detach", "--no-build", "--remove-orphans"]
        if self.v2:
            args += ["--pull", "never"]
        return args

    async def create_resources(self, spec: DeploySpec, log: LogSink) -> None:
        """Start the single ``compose up --detach`` of this deployment and follow its creation phase.

        Raw compose creates networks, volumes and containers and starts them in one process; running
        ``up --no-start`` first would pay a second process and a second pass over the project (about
        70-170 ms). So this step launches ``up`` and returns when compose begins starting containers;
        :meth:`start_services` waits for the same process to finish. Compose v1 prints no "Starting"
        line: there the whole ``up`` belongs to this step.
        """
        starting = asyncio.Event()

        async def follow(level: LogLevel, line: str) -> None:
            await log(level, line)
            if _STARTING.search(line):
                starting.set()

        def step() -> str:  # the runner's step the hang belongs to
            return "Start services" if starting.is_set() else "Create networks and volumes"

        up = asyncio.create_task(self._run_up(spec, follow, step), name=f"up-{spec.project}")
        self._up[spec.deployment_id] = up
        waiter = asyncio.create_task(starting.wait())
        try:
            await asyncio.wait({up, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
            self._up.pop(spec.deployment_id, None)
            raise
        finally:
            waiter.cancel()
        if up.done():
            up.result()  # raises the compose failure, if any; else start_services finds it done

    async def start_services(self, spec: DeploySpec, log: LogSink) -> None:
        up = self._up.pop(spec.deployment_id, None)
        if up is None:  # create_resources was not called (a start after a restart of this process)
            self.ensure_project(spec)
            await self._run_up(spec, log, lambda: "Start services")
            return
        await up  # cancelling this step cancels `up`, which kills compose's process group

    async def _abandon_up(self, spec: DeploySpec) -> None:
        up = self._up.pop(spec.deployment_id, None)
        if up is not None and not up.done():
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)

    async def stop(self, spec: DeploySpec, log: LogSink) -> None:
        self.ensure_project(spec)  # rebuilt from the snapshot where this process never deployed it
        await self._run(spec, log, "compose stop", "stop")

    async def start(self, spec: DeploySpec, log: LogSink) -> None:
        self.ensure_project(spec)
        await self._run(spec, log, "compose start", "start")

    async def remove(self, spec: DeploySpec, log: LogSink, *, keep_volumes: bool = False) -> None:
        """``compose down`` in the project directory (rebuilt from the snapshot when missing), then a sweep
        by label so that nothing is left even after a failed ``down`` or without a directory."""
        await self._abandon_up(spec)  # a cancelled deployment may still have its `up` running
        try:
            self.ensure_project(spec)
        except (OSError, EngineError) as exc:
            await log(LogLevel.WARNING, f"cannot write the project directory ({exc}); removing by label")
        async with self.session() as session:
            if compose_path(spec).is_file():
                args = ["down", "--remove-orphans"] + ([] if keep_volumes else ["--volumes"])
                result = await self._compose(session, spec, log, *args)
                if not result.ok:
                    await log(LogLevel.WARNING, f"compose down failed ({result.error_excerpt()}); removing by label")
            await self.sweep(session, spec, log, keep_volumes=keep_volumes)

    async def inspect_managed(self) -> dict[str, list[ServiceState]]:
        """Every container labelled ``windflow.managed=true`` on the engine, by deployment id: one list call (with
        the SDK's inspection of each container) for all the deployments of a target."""
        async with self.session() as session:
            client = await session.client()
            containers = await session.call(
                client.containers.list, all=True, filters={"label": f"{MANAGED_LABEL}=true"}, ignore_removed=True
            )
        by_deployment: dict[str, list[ServiceState]] = {}
        for container in sorted(containers, key=lambda c: c.name):
            deployment_id = (container.labels or {}).get(DEPLOYMENT_LABEL)
            if deployment_id:
                by_deployment.setdefault(deployment_id, []).append(state_of(container))
        return by_deployment
