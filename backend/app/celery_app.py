"""The Celery application: ``celery -A backend.app.celery_app worker`` / ``beat`` (an entry point).

* Its configuration (broker, serialisation, acks, beat schedule) is ``runtime/celery_config.py``.
* Every worker node writes a heartbeat row (``backend.app.runtime.workers``): kombu's SQL transport has no
  broadcast, so ``celery inspect ping`` cannot see workers on the PostgreSQL broker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time

from celery import signals

from backend.app.config import BrokerType, get_settings
from backend.app.runtime.celery_config import (
    DEPLOY_TASK,
    PURGE_TASK,
    REAPER_TASK,
    RECOVERY_TASK,
    WATCH_TASK,
    broker_label,
    create_celery,
)
from backend.app.runtime.worker_watchdog import WorkerMonitor

logger = logging.getLogger(__name__)

settings = get_settings()
celery_app = create_celery(settings, set_as_current=True)
app = celery_app  # `celery -A backend.app.celery_app` finds `app` or `celery_app`


def _invoked_as_celery_cli() -> bool:
    return os.path.basename(sys.argv[0]) in {"celery", "__main__.py"} and any(cmd in sys.argv for cmd in ("worker", "beat"))


if settings.celery_unavailable_reason and _invoked_as_celery_cli():
    sys.exit(f"WindFlow: Celery cannot run with this configuration: {settings.celery_unavailable_reason}")

#: WindFlow's settings for the *embedded* worker (the guide's "Configuration du Worker Intégré"). The celery
#: CLI reads every ``CELERY_WORKER_<OPTION>`` variable as that option's default (click's auto envvar prefix),
#: and parses the worker's options only after loading this module: an exported ``CELERY_WORKER_POOL=solo``
#: would silently turn the guide's ``celery -A backend.app.celery_app worker --concurrency=4`` into a solo
#: worker. The embedded worker gets these settings as explicit flags (``core/celery_manager.py``) instead.
EMBEDDED_WORKER_VARIABLES = ("CELERY_WORKER_CONCURRENCY", "CELERY_WORKER_POOL", "CELERY_WORKER_LOGLEVEL")

if _invoked_as_celery_cli():
    for _name in EMBEDDED_WORKER_VARIABLES:
        os.environ.pop(_name, None)


# --- worker process lifecycle ------------------------------------------------------------------

_heartbeat_stop = threading.Event()
_heartbeat_thread: threading.Thread | None = None


def _worker_kind() -> str:
    return os.environ.get("WINDFLOW_WORKER_KIND", "external")


@signals.worker_process_init.connect
def _on_child_start(**_kwargs) -> None:
    from backend.app.runtime import worker_loop

    worker_loop.reset_after_fork()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _redact_celery_logs(logger=None, **_kwargs) -> None:
    """Celery configures its own handlers; every one of them gets WindFlow's redaction filter.

    WindFlow's own records follow ``LOG_LEVEL`` (INFO by default) whatever ``--loglevel`` the worker got
    (Celery's default is WARNING): the guide's ``grep "emit_" logs/backend.log`` finds the events of
    deployments that ran on ``celery -A backend.app.celery_app worker --concurrency=4`` too."""
    from backend.app.core.logging import RedactingFilter, add_file_handler

    if logger is None:
        return
    logging.getLogger("backend").setLevel(settings.LOG_LEVEL)
    if settings.LOG_FILE:
        add_file_handler(logger, settings.LOG_FILE)
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


#: What the tasks import when they first run (each inside its task, so that the backend, which only sends
#: them, never loads the runner's world): the deployment runner, the periodic jobs, the dispatch and events.
TASK_MODULES = (
    "backend.app.services.deployments.runner",
    "backend.app.runtime.background",
    "backend.app.runtime.dispatch",
    "backend.app.runtime.event_transport",
)


@signals.worker_init.connect
def _preload_task_modules(**_kwargs) -> None:
    """Imported once in the worker's main process, before its pool forks: each pool process inherits them
    instead of importing them again at its first task (about 1 s of CPU each, four times per worker)."""
    import importlib

    for name in TASK_MODULES:
        importlib.import_module(name)


@signals.worker_init.connect
@signals.beat_init.connect
def _prepare_database(**_kwargs) -> None:
    """Before the first broker connection: schema and kombu's tables, created once under the migration's
    advisory lock, so any number of workers (and beat) can start at the same moment on a fresh database."""
    from backend.app.database import STARTUP_WAIT_SECONDS
    from backend.app.migrate import upgrade_sync

    if settings.RUN_MIGRATIONS_ON_STARTUP or (settings.celery_broker_url or "").startswith("sqla+"):
        # a throwaway engine on a throwaway loop: nothing of it is inherited by the forked pool. A worker
        # (re)started while its database restarts waits for it, as the backend does, rather than exiting.
        upgrade_sync(settings, schema=settings.RUN_MIGRATIONS_ON_STARTUP, wait_seconds=STARTUP_WAIT_SECONDS)


#: what this worker serves when it declares targets (``WORKER_TARGETS``), resolved at its start; None: the
#: shared queue, as every worker without a declaration
_served: list[str] | None = None


@signals.worker_init.connect
def _serve_declared_targets(sender=None, **_kwargs) -> None:
    """A worker that declares targets consumes their queues instead of the shared one
    (``services/targets/placement.py``): resolved once, at start-up, after the schema is in place. A
    declaration that resolves to nothing stops the worker with the reason (it would serve nothing)."""
    global _served
    from backend.app.services.targets import placement

    declaration = placement.Declaration.parse(settings.WORKER_TARGETS)
    if declaration.everything:
        return
    try:
        resolved = _resolve_declaration(declaration)
    except Exception as exc:
        logger.exception("WORKER_TARGETS could not be resolved")
        sys.exit(f"WindFlow: WORKER_TARGETS could not be resolved ({type(exc).__name__}; see the log above)")
    for problem in resolved.problems:
        logger.warning("WORKER_TARGETS: %s", problem)
    queues = resolved.queues()
    if not queues:
        sys.exit(
            f"WindFlow: WORKER_TARGETS={settings.WORKER_TARGETS!r} names no target this worker can serve: " + "; ".join(resolved.problems)
        )
    if sender is not None:
        sender.app.amqp.queues.select(queues)
    _served = resolved.heartbeat_targets()
    names = ", ".join(f"{name} ({target_id})" for target_id, name in resolved.names.items())
    logger.info(
        "this worker serves %s%s (host %s)",
        names or "no placed target",
        " and the shared queue" if resolved.shared else "",
        settings.host_id,
    )


def _resolve_declaration(declaration):
    """:func:`placement.resolve` on a throwaway engine and loop (nothing of it reaches the forked pool)."""
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker

    from backend.app.database import build_engine
    from backend.app.services.targets import placement

    async def run():
        engine = build_engine(settings)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                resolved = await placement.resolve(session, settings=settings, declaration=declaration)
                await session.commit()
                return resolved
        finally:
            await engine.dispose()

    return asyncio.run(run())


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    name = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"
    controller = getattr(sender, "controller", None)
    concurrency = getattr(controller, "concurrency", None) or 1
    with contextlib.suppress(Exception):  # what the pool can run at once: a solo pool runs one task, whatever --concurrency says
        concurrency = int(controller.pool.info.get("max-concurrency") or concurrency)
    global _heartbeat_thread, _monitor
    _monitor = WorkerMonitor(
        name,
        _worker_kind(),
        int(concurrency),
        controller,
        sender,
        settings=settings,
        stop=_heartbeat_stop,
        targets=_served,
    )
    _heartbeat_thread = threading.Thread(target=_monitor.run, name="windflow-heartbeat", daemon=True)
    _heartbeat_thread.start()
    if _served is not None:  # placed next to its targets: it watches its host's (beat's task may run elsewhere)
        threading.Thread(target=_watch_this_host, name="windflow-host-watch", daemon=True).start()
    logger.info("WindFlow %s worker %s ready (broker: %s)", _worker_kind(), name, broker_label(settings))


_monitor: WorkerMonitor | None = None


def _watch_this_host() -> None:
    """The watcher's pass over the targets bound to this worker's host, every
    ``DEPLOYMENT_WATCH_INTERVAL_SECONDS`` (``runtime/background.py::WatchLoop``, under that host's lock: one
    process of the host at a time). Beat's watcher task runs where the shared queue is consumed, which may be
    another host, whose processes cannot reach this host's engine."""
    from backend.app.runtime import event_transport, worker_loop
    from backend.app.runtime.background import watch_once

    async def one_pass() -> None:
        await watch_once(settings, shared=False)
        await event_transport.flush_events(5.0)

    interval = settings.DEPLOYMENT_WATCH_INTERVAL_SECONDS
    while not _heartbeat_stop.wait(interval):
        try:
            worker_loop.run(one_pass(), timeout=max(30.0, 5 * interval))
        except Exception:  # the database or the engine may be away: the next pass tries again
            logger.warning("the watcher pass over this host's targets failed", exc_info=True)


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(sig=None, how=None, exitcode=None, **_kwargs) -> None:
    """SIGTERM (warm shutdown) waits for running tasks: give them ``WORKER_SHUTDOWN_GRACE_SECONDS``, but
    never wait for a pool that runs nothing (broken, or only tasks it never started)."""
    monitor = _monitor
    if monitor is None:
        return

    def guard() -> None:
        from celery.worker import state

        began = time.monotonic()
        idle_since = None
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            running = list(state.active_requests)
            verdict = monitor.verdict
            if running and (verdict is None or verdict.healthy):
                idle_since = None
            else:
                idle_since = idle_since or now
            if now - began >= settings.WORKER_SHUTDOWN_GRACE_SECONDS:
                monitor.leave(f"{sig or 'shutdown'}: still running after {settings.WORKER_SHUTDOWN_GRACE_SECONDS:g}s", exitcode or 1)
            if idle_since is not None and now - idle_since >= 3:
                monitor.leave(f"{sig or 'shutdown'}: nothing left to finish", exitcode or 0)

    threading.Thread(target=guard, name="windflow-shutdown-guard", daemon=True).start()


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender=None, **_kwargs) -> None:
    from backend.app import database
    from backend.app.runtime import worker_loop, workers

    _heartbeat_stop.set()
    if _heartbeat_thread is not None:
        _heartbeat_thread.join(timeout=10)  # a beat in flight must not re-create the row we delete
    name = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"

    async def remove() -> None:
        async with database.AsyncSessionLocal() as session:
            await workers.remove_heartbeat(session, name)

    try:
        worker_loop.run(remove(), timeout=10)
    except Exception:
        logger.warning("could not remove the heartbeat of %s", name, exc_info=True)


__all__ = [
    "DEPLOY_TASK",
    "PURGE_TASK",
    "REAPER_TASK",
    "RECOVERY_TASK",
    "WATCH_TASK",
    "BrokerType",
    "app",
    "celery_app",
    "create_celery",
]
