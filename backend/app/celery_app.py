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
    broker_label,
    create_celery,
)

logger = logging.getLogger(__name__)

settings = get_settings()
celery_app = create_celery(settings, set_as_current=True)
app = celery_app  # `celery -A backend.app.celery_app` finds `app` or `celery_app`


def _invoked_as_celery_cli() -> bool:
    return os.path.basename(sys.argv[0]) in {"celery", "__main__.py"} and any(
        cmd in sys.argv for cmd in ("worker", "beat")
    )


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


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    name = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"
    controller = getattr(sender, "controller", None)
    concurrency = getattr(controller, "concurrency", None) or 1
    with contextlib.suppress(Exception):  # what the pool can run at once: a solo pool runs one task, whatever --concurrency says
        concurrency = int(controller.pool.info.get("max-concurrency") or concurrency)
    global _heartbeat_thread, _monitor
    _monitor = WorkerMonitor(name, int(concurrency), controller, sender)
    _heartbeat_thread = threading.Thread(target=_monitor.run, name="windflow-heartbeat", daemon=True)
    _heartbeat_thread.start()
    logger.info("WindFlow %s worker %s ready (broker: %s)", _worker_kind(), name, broker_label(settings))


class WorkerMonitor:
    """The main process's heartbeat and watchdog (``runtime/worker_watchdog.py``): once a second it judges
    whether the worker executes, writes its heartbeat (every few seconds, and at once when the verdict
    changes) and makes a worker that stayed degraded leave."""

    def __init__(self, name: str, concurrency: int, controller, consumer) -> None:
        from backend.app.runtime.worker_watchdog import Watchdog

        self.name, self.concurrency, self.controller, self.consumer = name, concurrency, controller, consumer
        self.watchdog = Watchdog(concurrency=concurrency, stall_seconds=settings.WORKER_STALL_SECONDS)
        self.verdict = None
        self.sql_broker = (settings.celery_broker_url or "").startswith("sqla+")
        self.pids: set[int] = set()  # the pool's processes at the last look

    def pool_pids(self) -> list[int] | None:
        """The pool's process ids, or None for a pool without processes of its own (solo, threads)."""
        pool = getattr(self.controller, "pool", None)
        try:
            pids = (pool.info or {}).get("processes") if pool is not None else None
        except Exception:  # noqa: BLE001 - a pool being torn down has no info
            return []
        return None if pids is None else [int(pid) for pid in pids]

    def observe(self, messages_waiting: bool | None):
        from celery.worker import state

        from backend.app.runtime import worker_watchdog
        from backend.app.runtime.sql_transport import POLLS

        now = time.monotonic()
        pids = self.pool_pids()
        live = self.concurrency if pids is None else worker_watchdog.live_processes(pids)
        reserved = {r.id: r.name for r in list(state.reserved_requests)}
        active = [r.id for r in list(state.active_requests)]
        verdict = self.watchdog.judge(
            now, live=live, reserved=reserved, active=active,
            poll_age=POLLS.age(now) if self.sql_broker else None, messages_waiting=messages_waiting,
        )
        if verdict.healthy != (self.verdict is None or self.verdict.healthy):
            if verdict.healthy:
                logger.warning("worker %s is healthy again", self.name)
            else:
                logger.error("worker %s is degraded: %s", self.name, verdict.problem)
        self.verdict = verdict
        return verdict

    def lost_children(self) -> set[int]:
        """Pool processes seen at the last look that are gone now (billiard replaces them)."""
        from backend.app.runtime.worker_watchdog import process_state

        current = set(self.pool_pids() or [])
        lost = {pid for pid in self.pids - current if process_state(pid) in (None, "Z")}
        self.pids = current
        return lost

    async def _expire_leases_of(self, pids: set[int]) -> None:
        """Deployments run by pool processes that died are orphans now: the reaper (or the redelivered
        message) reclaims them at once instead of a lease later."""
        from backend.app import database
        from backend.app.runtime import workers

        async with database.AsyncSessionLocal() as session:
            expired = await workers.expire_leases_of(session, hostname=socket.gethostname(), pids=pids)
            await session.commit()
        if expired:
            logger.warning("worker %s: %d deployment(s) of pool process(es) %s that died: their leases expire now",
                           self.name, expired, sorted(pids))

    async def _messages_waiting(self) -> bool | None:
        """Whether the PostgreSQL broker's queue has visible messages (asked only when polls look stale)."""
        from sqlalchemy import text

        from backend.app import database
        from backend.app.runtime.sql_transport import POLLS

        age = POLLS.age()
        if not self.sql_broker or age is None or age < settings.WORKER_STALL_SECONDS:
            return None
        async with database.AsyncSessionLocal() as session:
            return bool((await session.execute(text("SELECT EXISTS (SELECT 1 FROM kombu_message WHERE visible)"))).scalar())

    def run(self) -> None:
        from backend.app import database
        from backend.app.runtime import worker_loop, workers

        last_beat = 0.0
        reported = None
        while not _heartbeat_stop.is_set():
            try:
                waiting = worker_loop.run(self._messages_waiting(), timeout=10)
            except Exception:  # noqa: BLE001 - the database may be down: the consumer's poll age alone says nothing
                waiting = None
            verdict = self.observe(waiting)
            if lost := self.lost_children():
                try:
                    worker_loop.run(self._expire_leases_of(lost), timeout=10)
                except Exception:  # noqa: BLE001 - the leases then expire by themselves
                    logger.warning("could not expire the leases of dead pool processes %s", sorted(lost), exc_info=True)
            state = workers.HEALTHY if verdict.healthy else workers.DEGRADED
            if time.monotonic() - last_beat >= workers.HEARTBEAT_SECONDS or (state, verdict.problem) != reported:

                async def beat() -> None:
                    async with database.AsyncSessionLocal() as session:
                        await workers.write_heartbeat(
                            session, name=self.name, kind=_worker_kind(), hostname=socket.gethostname(),
                            pid=os.getpid(), broker=broker_label(settings), concurrency=self.concurrency,
                            state=state, problem=verdict.problem, live_processes=verdict.live,
                            pool_pids=sorted(self.pids) or None,
                        )

                try:
                    worker_loop.run(beat(), timeout=30)
                    last_beat, reported = time.monotonic(), (state, verdict.problem)
                except Exception:  # noqa: BLE001 - a missed beat is retried; the worker keeps working
                    logger.warning("worker heartbeat failed", exc_info=True)
            if not verdict.healthy and verdict.degraded_for >= settings.WORKER_LEAVE_AFTER_SECONDS:
                self.leave(f"degraded for {verdict.degraded_for:.0f}s: {verdict.problem}")
            _heartbeat_stop.wait(1.0)

    def leave(self, reason: str, exit_code: int | None = None) -> None:
        """Exit now, without waiting for a pool that will not finish: messages back to the queue, pool
        processes killed, the heartbeat row marked (a degraded worker) or removed (a shutdown)."""
        from backend.app.runtime import worker_loop, worker_watchdog, workers
        from backend.app.runtime.sql_transport import release_deliveries

        degraded = exit_code is None
        logger.critical(
            "worker %s leaves: %s. Its messages go back to the queue%s", self.name, reason,
            "; its supervisor (compose restart, systemd, the backend's embedded-worker manager) starts a fresh one"
            if degraded else "",
        )
        _heartbeat_stop.set()
        with contextlib.suppress(Exception):  # Redis: unacknowledged messages back in the queue now
            self.consumer.task_consumer.channel.qos.restore_unacked_once()
        if self.sql_broker:
            try:
                released = release_deliveries(settings.sync_database_url, hostname=socket.gethostname(), pid=os.getpid())
                logger.warning("worker %s put %d message(s) back in the queue", self.name, released)
            except Exception as exc:  # noqa: BLE001 - the reaper puts them back once this heartbeat is stale
                logger.warning("worker %s could not put its messages back (%s): the reaper will", self.name, exc)
        pool = set(self.pool_pids() or [])
        worker_watchdog.kill_processes(pool)

        async def mark() -> None:
            from backend.app import database

            async with database.AsyncSessionLocal() as session:
                await workers.expire_leases_of(session, hostname=socket.gethostname(), pids=pool | {os.getpid()})
                if degraded:
                    await workers.write_heartbeat(
                        session, name=self.name, kind=_worker_kind(), hostname=socket.gethostname(), pid=os.getpid(),
                        broker=broker_label(settings), concurrency=self.concurrency, state=workers.DEGRADED,
                        problem=f"left: {reason}"[:500], live_processes=0,
                    )
                else:
                    await workers.remove_heartbeat(session, self.name)

        with contextlib.suppress(Exception):
            worker_loop.run(mark(), timeout=5)
        logging.shutdown()
        os._exit(worker_watchdog.EXIT_DEGRADED if degraded else exit_code)


_monitor: WorkerMonitor | None = None


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
            running = [r for r in list(state.active_requests)]
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
    except Exception:  # noqa: BLE001
        logger.warning("could not remove the heartbeat of %s", name, exc_info=True)


__all__ = [
    "DEPLOY_TASK",
    "PURGE_TASK",
    "REAPER_TASK",
    "RECOVERY_TASK",
    "BrokerType",
    "app",
    "celery_app",
    "create_celery",
]
