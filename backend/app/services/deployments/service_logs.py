"""Live container output of a running deployment (``docker compose logs -f --tail N``), not persisted.

The containers labelled ``windflow.deployment_id=<id>`` on the deployment's target (local socket, TCP+TLS
or SSH, through the same :class:`~backend.app.engines.connection.EngineSession` as the drivers) are
followed with the Docker API, one reader thread per container. Lines are labelled with their compose
(or swarm) service, redacted with the deployment's own secrets (its decrypted secret variables) and the
server-wide patterns (their colours kept: :mod:`backend.app.services.deployments.log_text`), and sent in batches. Exited
containers are followed too: their last output is sent, then their stream ends. The stream ends, with a final
``SERVICE_LOGS_END`` frame, when the deployment leaves ``running`` or every container stream has ended;
stopping the follower (the client unsubscribed or left) closes the Docker streams.

Limitation: on a Swarm target only the tasks scheduled on the manager node the target points at are
followed (``docker service logs`` across nodes is not used).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.events import Event, EventType, bus, iso_utc
from backend.app.core.exceptions import Conflict, NotFound, ServiceUnavailable
from backend.app.core.security import EncryptedValues
from backend.app.engines.base import DEPLOYMENT_LABEL, TargetConnection
from backend.app.engines.connection import EngineSession
from backend.app.models import Deployment, DeploymentStatus, Target
from backend.app.services.deployments import redaction
from backend.app.services.deployments.log_text import redact_keeping_colours
from backend.app.services.targets import placement, target_service

logger = logging.getLogger(__name__)

BATCH_LINES = 500
BATCH_SECONDS = 0.05
MAX_LINE_CHARS = 8000
QUEUE_BOUND = 20_000  # lines waiting to be sent; beyond it the oldest are dropped (live output, not a log)
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) ")

Send = Callable[[dict], Awaitable[None]]


@dataclass(frozen=True)
class Ended:
    """Why a follower's stream ended: the words (English, in ``reason``) and their stable ``code`` with the
    ``params`` it quotes, which a client words in its own language (``SERVICE_LOGS_END``)."""

    reason: str
    code: str
    params: dict[str, str] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        return {"reason": self.reason, "code": self.code, "params": self.params}


async def prepare(session: AsyncSession, *, settings: Settings, deployment: Deployment, tail: int) -> ServiceLogFollower:
    """Check the deployment runs and gather what following it needs (no engine call yet)."""
    if deployment.status is not DeploymentStatus.RUNNING:
        raise Conflict(
            f"this deployment is {deployment.status}; service logs are available while it is running",
            code="deployment_not_running",
            params={"status": str(deployment.status)},
        )
    target = await session.get(Target, deployment.target_id)
    if target is None:
        raise NotFound("the deployment's target no longer exists", code="target_not_found")
    if not placement.reachable_here(target, settings):  # the same socket path here is another host's engine
        raise ServiceUnavailable(
            f"the live output of target {target.name}'s containers is not available here: it is the engine of host "
            f"{target.host}, which only that host's workers reach",
            code="target_elsewhere",
            params={"target": target.name, "host": target.host},
        )
    credentials = target_service.credentials(target, settings)  # decrypted once, for the connection and the redactor
    secrets = [*EncryptedValues(deployment.variables).secret_values(settings), *redaction.target_secrets(target, credentials)]
    return ServiceLogFollower(
        deployment.id,
        deployment.organization_id,
        target_service.connection_from(target, credentials),
        redaction.deployment_redactor(settings, deployment.id, secrets=secrets),
        tail,
    )


class ServiceLogFollower:
    def __init__(
        self, deployment_id: str, organization_id: str, connection: TargetConnection, redact_line: Callable[[str], str], tail: int
    ) -> None:
        self.deployment_id = deployment_id
        self.organization_id = organization_id
        self.connection = connection
        self.redact = redact_line
        self.tail = tail
        self.task: asyncio.Task | None = None
        self._streams: list[Any] = []
        self._stopping = threading.Event()
        self.lines_sent = 0

    def start(self, send: Send, on_end: Callable[[], object] | None = None) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(send, on_end), name=f"service-logs-{self.deployment_id}")

    async def stop(self) -> None:
        self._stopping.set()
        self._close_streams()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def _close_streams(self) -> None:
        for stream in list(self._streams):
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - already closed or broken: the reader thread ends either way
                pass

    def _envelope(self, kind: str, data: dict) -> dict:
        return {
            "type": kind,
            "deployment_id": self.deployment_id,
            "organization_id": self.organization_id,
            "timestamp": iso_utc(datetime.now(UTC)),
            "data": data,
        }

    async def _run(self, send: Send, on_end: Callable[[], object] | None) -> None:
        end = Ended("stopped", "stopped")
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[tuple[str, str, str | None, str] | None] = asyncio.Queue()
        status_changes = bus.stream(
            lambda e: (
                e.deployment_id == self.deployment_id and e.type in (EventType.DEPLOYMENT_STATUS_CHANGED, EventType.DEPLOYMENT_DELETED)
            ),
            maxsize=16,
        )
        try:
            async with EngineSession(self.connection) as engine:
                client = await engine.client()
                # Every container of the deployment, the exited ones too: their last output is what explains
                # them (a one-shot job, a service that crashed); their stream ends after it.
                containers = await engine.call(
                    client.containers.list, all=True, filters={"label": f"{DEPLOYMENT_LABEL}={self.deployment_id}"}
                )
                if not containers:
                    end = Ended("the deployment has no container", "no_container")
                    return
                readers = [self._reader(client, c, loop, lines) for c in containers]
                for reader in readers:
                    reader.start()
                end = await self._pump(send, lines, status_changes, len(readers))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - tell the client why its stream ended
            logger.warning("service logs of deployment %s ended: %s", self.deployment_id, exc)
            end = Ended(self.redact(f"the engine stream failed: {exc}"), "engine_failed")
        finally:
            status_changes.close()
            self._stopping.set()
            self._close_streams()
            if not self._cancelled():
                try:
                    await send(self._envelope("SERVICE_LOGS_END", end.data()))
                except Exception:  # noqa: BLE001 - the client is gone
                    pass
                if on_end is not None:
                    on_end()

    def _cancelled(self) -> bool:
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0

    async def _pump(self, send: Send, lines: asyncio.Queue, status_changes, readers: int) -> Ended:
        status_wait = asyncio.ensure_future(status_changes.__anext__())
        try:
            while True:
                get = asyncio.ensure_future(lines.get())
                done, _ = await asyncio.wait({get, status_wait}, return_when=asyncio.FIRST_COMPLETED)
                if status_wait in done:
                    get.cancel()
                    evt = status_wait.result()
                    if isinstance(evt, Event) and (evt.type is EventType.DEPLOYMENT_DELETED or evt.data.get("new_status") != "running"):
                        status = evt.data.get("new_status", "deleted")
                        return Ended(f"the deployment is {status}", "deployment_left_running", {"status": status})
                    status_wait = asyncio.ensure_future(status_changes.__anext__())
                    continue
                batch = []
                item = get.result()
                deadline = asyncio.get_running_loop().time() + BATCH_SECONDS
                while True:
                    if item is None:
                        readers -= 1
                    else:
                        batch.append(item)
                    if len(batch) >= BATCH_LINES or lines.empty() and asyncio.get_running_loop().time() >= deadline:
                        break
                    if lines.empty():
                        await asyncio.sleep(0.005)
                        if lines.empty():
                            break
                    item = lines.get_nowait()
                if batch:
                    await send(
                        self._envelope(
                            "SERVICE_LOGS",
                            {
                                "lines": [
                                    {
                                        "service": service,
                                        "container": container,
                                        "timestamp": stamp,
                                        "message": redact_keeping_colours(self.redact, message),
                                    }
                                    for service, container, stamp, message in batch
                                ]
                            },
                        )
                    )
                    self.lines_sent += len(batch)
                if readers <= 0 and lines.empty():
                    return Ended("every container of the deployment stopped", "containers_stopped")
        finally:
            status_wait.cancel()

    def _reader(self, client, container, loop: asyncio.AbstractEventLoop, lines: asyncio.Queue) -> threading.Thread:
        labels = container.labels or {}
        service = labels.get("com.docker.compose.service") or labels.get("com.docker.swarm.service.name") or container.name
        name = container.name

        def put(item) -> None:
            if lines.qsize() >= QUEUE_BOUND and item is not None:
                return
            lines.put_nowait(item)

        def put_many(items: list) -> None:
            for item in items:
                put(item)

        def run() -> None:
            try:
                stream = client.api.logs(container.id, stream=True, follow=True, timestamps=True, tail=self.tail if self.tail else 0)
                self._streams.append(stream)
                if self._stopping.is_set():
                    stream.close()
                    return
                pending = b""
                for chunk in stream:
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    batch = []
                    for raw in complete:
                        text = raw.decode("utf-8", "replace").rstrip("\r")
                        match = _TIMESTAMP.match(text)
                        stamp = match.group(1) if match else None
                        message = text[match.end() :] if match else text
                        batch.append((service, name, stamp, message[:MAX_LINE_CHARS]))
                    if batch:  # one wake-up of the loop per chunk read, not per line
                        loop.call_soon_threadsafe(put_many, batch)
                if pending:
                    loop.call_soon_threadsafe(put, (service, name, None, pending.decode("utf-8", "replace")))
            except Exception as exc:  # noqa: BLE001 - a closed stream (stop) or a vanished container
                if not self._stopping.is_set():
                    logger.debug("service logs of container %s ended: %s", name, exc)
            finally:
                try:
                    loop.call_soon_threadsafe(put, None)
                except RuntimeError:  # the loop has closed
                    pass

        return threading.Thread(target=run, name=f"service-logs-{name}", daemon=True)
