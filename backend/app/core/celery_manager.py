"""Execution mode and the embedded Celery worker.

The backend decides, continuously, how deployments run:

* ``external``: Celery is usable and at least one external worker sends heartbeats;
* ``embedded``: Celery is usable, no external worker is present and ``CELERY_AUTO_START_WORKER`` is on, so
  the backend runs ``celery -A backend.app.celery_app worker`` as a child process;
* ``asyncio``: Celery is disabled, impossible (SQLite), its broker does not answer, or no worker can run:
  deployments run in-process (the fallback).

The monitor loop re-evaluates every few seconds (the guide's mode 3): if external workers disappear the
embedded worker starts; if they come back it is stopped. An embedded worker that dies is restarted up to
3 times; stopping sends SIGTERM to its process group, then SIGKILL after a grace period. It has the
parent-death signal: if the backend is killed, so is its embedded worker (and, through Celery's own
``PR_SET_PDEATHSIG`` on pool children, the work it was doing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from enum import StrEnum

from backend.app import database
from backend.app.config import Settings
from backend.app.engines.process import die_with_parent
from backend.app.runtime import metrics, workers
from backend.app.runtime.celery_config import broker_label, create_celery
from backend.app.runtime.worker_watchdog import EXIT_DEGRADED

logger = logging.getLogger("backend.app.celery")

MONITOR_SECONDS = 3.0
MAX_RESTARTS = 3
STOP_GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 60.0


class ExecutionMode(StrEnum):
    EXTERNAL = "external"
    EMBEDDED = "embedded"
    ASYNCIO = "asyncio"


@dataclass(frozen=True)
class Reason:
    """Why the execution mode is what it is: a stable ``code`` with the ``params`` it quotes (a client words
    it in its own language) and the English ``text`` (the log's and the API clients' words)."""

    code: str
    text: str
    params: dict = field(default_factory=dict)


#: Every code a :class:`Reason` may carry (the web UI words each one: ``system.reasons`` in its catalogues).
REASON_CODES = (
    "celery_disabled",
    "sqlite_no_broker",
    "starting",
    "broker_unreachable",
    "external_workers",
    "other_process_workers",
    "no_worker_autostart_off",
    "embedded_starting",
    "embedded_running",
    "embedded_failed",
    "embedded_cannot_start",
)


def unavailable_reason(settings: Settings) -> Reason | None:
    """Why Celery cannot be used with this configuration (``Settings.celery_unavailable_reason``), coded."""
    text = settings.celery_unavailable_reason
    if text is None:
        return None
    return Reason("celery_disabled" if not settings.CELERY_ENABLED else "sqlite_no_broker", text)


RUNNING = Reason("embedded_running", "embedded worker running")
GAVE_UP = Reason("embedded_failed", f"embedded worker failed {MAX_RESTARTS} times", {"times": MAX_RESTARTS})


@dataclass
class ModeReport:
    mode: ExecutionMode
    why: Reason
    broker: str | None = None
    broker_ok: bool | None = None
    workers: list[dict] = field(default_factory=list)
    embedded: dict | None = None

    @property
    def reason(self) -> str:
        return self.why.text

    def to_dict(self) -> dict:
        return {
            "mode": str(self.mode),
            "reason": self.reason,
            "reason_code": self.why.code,
            "reason_params": self.why.params,
            "broker": self.broker,
            "broker_ok": self.broker_ok,
            "workers": self.workers,
            "embedded_worker": self.embedded,
        }


def check_broker(settings: Settings, celery_app, timeout: float = 3.0) -> str | None:
    """``None`` when the broker accepts a connection, else the error (blocking: run in a thread)."""
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=timeout)
            if settings.celery_broker_url and settings.celery_broker_url.startswith("sqla+"):
                conn.default_channel  # noqa: B018 - opens the SQL engine (the migration step created kombu's tables)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable now"
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


class EmbeddedWorker:
    """One ``celery worker`` child process in its own process group."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: asyncio.subprocess.Process | None = None
        self.name = f"embedded-{os.getpid()}@{socket.gethostname()}"
        self.restarts = 0
        self.stopping = False
        self._reader: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def crashed(self) -> bool:
        return self.process is not None and self.process.returncode is not None and not self.stopping

    @property
    def left_degraded(self) -> bool:
        """It exited because its watchdog found it executing nothing (``runtime/worker_watchdog.py``)."""
        return self.crashed and self.process.returncode == EXIT_DEGRADED

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "backend.app.celery_app",
            "worker",
            f"--concurrency={s.CELERY_WORKER_CONCURRENCY}",
            f"--pool={s.CELERY_WORKER_POOL}",
            f"--loglevel={s.CELERY_WORKER_LOGLEVEL}",
            "-n",
            self.name,
            "--without-gossip",
            "--without-mingle",
        ]

    async def start(self) -> None:
        self.stopping = False
        # it serves every target that is not placed, whatever WORKER_TARGETS the backend's environment holds
        env = {
            **os.environ,
            **self.settings.as_environment(),
            "WINDFLOW_WORKER_KIND": "embedded",
            "PYTHONUNBUFFERED": "1",
            "WORKER_TARGETS": "",
        }
        spawning = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *self.command(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                # a kill -9 of the backend takes its embedded worker along (whose pool children and their
                # compose commands follow): nothing of the old executor runs beside the reclaimed attempt
                preexec_fn=die_with_parent(),
            )
        )
        try:
            self.process = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # the manager is stopping while the process is being created: keep hold of it, so that stop()
            # ends it instead of leaving a worker behind that nobody manages
            self.process = await spawning
            raise
        self._reader = asyncio.create_task(self._forward_output(self.process), name="embedded-worker-output")

    async def _forward_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        worker_log = logging.getLogger("celery.embedded")
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                worker_log.info("%s", line)

    async def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> bool:
        """Wait for the worker's first heartbeat (it writes one when it is ready to consume)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self.alive:
                return False
            async with database.AsyncSessionLocal() as session:
                present = await workers.serving_workers(session)
            if any(w.name == self.name for w in present):
                return True
            await asyncio.sleep(0.25)
        return False

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the worker's process group, SIGKILL it after ``grace`` seconds."""
        self.stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            logger.warning("Embedded Celery worker did not stop within %gs: killing it", grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2)

    def info(self) -> dict:
        return {
            "name": self.name,
            "pid": self.process.pid if self.process else None,
            "alive": self.alive,
            "restarts": self.restarts,
            "returncode": self.process.returncode if self.process else None,
        }


class CeleryManager:
    """Owns the execution mode and the embedded worker for one backend process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._celery = None
        self.embedded = EmbeddedWorker(settings) if settings.CELERY_AUTO_START_WORKER else None
        self.report = ModeReport(ExecutionMode.ASYNCIO, unavailable_reason(settings) or Reason("starting", "starting"))
        self._task: asyncio.Task | None = None
        self._announcer: asyncio.Task | None = None
        self._gave_up = False

    @property
    def celery(self):
        """A Celery app configured from *these* settings (the publisher side of this backend)."""
        if self._celery is None:
            self._celery = create_celery(self.settings)
        return self._celery

    @property
    def mode(self) -> ExecutionMode:
        return self.report.mode

    @property
    def celery_usable(self) -> bool:
        return self.report.mode is not ExecutionMode.ASYNCIO

    async def start(self) -> None:
        reason = unavailable_reason(self.settings)
        if reason:
            logger.warning("Celery unavailable (%s): deployments run in-process (asyncio fallback)", reason.text)
            self.report = ModeReport(ExecutionMode.ASYNCIO, reason)
            return
        await self.evaluate()
        self._task = asyncio.create_task(self._monitor(), name="celery-manager")

    async def stop(self) -> None:
        for task in (self._task, self._announcer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.embedded is not None and self.embedded.alive:
            logger.info("Stopping embedded Celery worker")
            await self.embedded.stop()

    async def _monitor(self) -> None:
        checks = database.OutageLog("execution mode check", logger)
        while True:
            await asyncio.sleep(MONITOR_SECONDS)
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the monitor must survive a database hiccup
                checks.failed(exc)  # the mode stays as it was until the database answers
            else:
                checks.succeeded()

    async def evaluate(self) -> ModeReport:
        broker = broker_label(self.settings)
        broker_error = await asyncio.to_thread(check_broker, self.settings, self.celery)
        async with database.AsyncSessionLocal() as session:
            present = await workers.list_workers(session, include_stale=False)
        own = self.embedded.name if self.embedded else None
        # a degraded worker (alive, but its pool runs nothing) is no capacity: with none other left, the
        # embedded worker starts (HA mode 3); the degraded one leaves by itself (runtime/worker_watchdog.py)
        # only workers of the shared queue replace the embedded worker: one that serves placed targets alone
        # (WORKER_TARGETS) leaves the targets that are not placed to it
        external = [w for w in present if w.name != own and w.kind == "external" and w.serving and w.shared_queue]
        listed = [w.to_dict() for w in present]

        if broker_error:
            why = Reason("broker_unreachable", f"broker {broker} unreachable: {broker_error}", {"broker": broker, "error": broker_error})
            self._set(ExecutionMode.ASYNCIO, why, broker, False, listed)
            return self.report
        if external:
            if self.embedded is not None and self.embedded.alive:
                logger.info("External Celery worker(s) detected (%s): stopping the embedded worker", external[0].name)
                await self.embedded.stop()
            why = Reason("external_workers", f"{len(external)} external worker(s)", {"count": len(external)})
            self._set(ExecutionMode.EXTERNAL, why, broker, True, listed)
            return self.report
        if self.embedded is None:
            others = [w for w in present if w.name != own and w.serving and w.shared_queue]
            if others:  # another replica's embedded worker serves the queue
                why = Reason("other_process_workers", f"{len(others)} worker(s) of other processes", {"count": len(others)})
                self._set(ExecutionMode.EXTERNAL, why, broker, True, listed)
            else:
                why = Reason("no_worker_autostart_off", "no Celery worker and CELERY_AUTO_START_WORKER=false")
                self._set(ExecutionMode.ASYNCIO, why, broker, True, listed)
            return self.report
        if self.embedded.alive:
            self._set(ExecutionMode.EMBEDDED, RUNNING, broker, True, listed)
            return self.report
        if self._gave_up:
            self._set(ExecutionMode.ASYNCIO, GAVE_UP, broker, True, listed)
            return self.report
        if self.embedded.left_degraded:
            # a repair, not a crash: the worker's watchdog made it leave because it ran nothing
            logger.warning("Embedded Celery worker left because it was degraded (exit %s): starting a fresh one", EXIT_DEGRADED)
            metrics.EMBEDDED_WORKER_RESTARTS.inc()
        elif self.embedded.crashed:
            if self.embedded.restarts >= MAX_RESTARTS:
                self._gave_up = True
                logger.error(
                    "Embedded Celery worker died %d times: giving up, deployments run in-process (asyncio fallback)",
                    MAX_RESTARTS + 1,
                )
                self._set(ExecutionMode.ASYNCIO, GAVE_UP, broker, True, listed)
                return self.report
            self.embedded.restarts += 1
            metrics.EMBEDDED_WORKER_RESTARTS.inc()
            logger.warning(
                "Embedded Celery worker exited with code %s: restarting (%d/%d)",
                self.embedded.process.returncode,
                self.embedded.restarts,
                MAX_RESTARTS,
            )
        await self._start_embedded(broker, listed)
        return self.report

    async def _start_embedded(self, broker: str, listed: list[dict]) -> None:
        assert self.embedded is not None
        logger.info("Starting embedded Celery worker... (Démarrage du worker Celery intégré...)")
        try:
            await self.embedded.start()
        except OSError as exc:
            logger.error("Embedded Celery worker failed to start (Échec du démarrage du worker intégré): %s", exc)
            self._gave_up = True
            why = Reason("embedded_cannot_start", f"embedded worker cannot start: {exc}", {"error": str(exc)})
            self._set(ExecutionMode.ASYNCIO, why, broker, True, listed)
            return
        # Messages sent while it boots wait in the broker, so the mode is "embedded" right away.
        self._set(ExecutionMode.EMBEDDED, Reason("embedded_starting", "embedded worker starting"), broker, True, listed)
        self._announcer = asyncio.create_task(self._announce_ready(), name="embedded-worker-ready")

    async def _announce_ready(self) -> None:
        assert self.embedded is not None
        if await self.embedded.wait_ready():
            logger.info("Embedded Celery worker started (Worker Celery intégré démarré avec succès): %s", self.embedded.name)
            if self.report.mode is ExecutionMode.EMBEDDED:
                self.report.why = RUNNING
        elif not self.embedded.alive and self.embedded.process is not None:
            logger.error(
                "Embedded Celery worker failed to start (Échec du démarrage du worker intégré): exit code %s",
                self.embedded.process.returncode,
            )

    def _set(self, mode: ExecutionMode, reason: Reason, broker: str | None, broker_ok: bool | None, listed: list[dict]) -> None:
        if mode is not self.report.mode:
            log = logger.warning if mode is ExecutionMode.ASYNCIO else logger.info
            log("Execution mode: %s (%s)", mode, reason.text)
        self.report = ModeReport(mode, reason, broker, broker_ok, listed, self.embedded.info() if self.embedded else None)
