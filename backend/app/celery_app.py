"""The Celery application: ``celery -A backend.app.celery_app worker`` / ``beat``.

* Broker and result backend come from ``Settings`` (derived from ``DATABASE_URL`` with
  ``CELERY_BROKER_TYPE=database``: ``sqla+postgresql+psycopg://`` and ``db+postgresql+psycopg://``).
* JSON only, ``acks_late`` + ``reject_on_worker_lost``, prefetch 1, results expire after an hour.
* Tasks go to the default ``celery`` queue, so a worker started without ``-Q`` consumes them.
* Every worker node writes a heartbeat row (``backend.app.core.workers``): kombu's SQL transport has no
  broadcast, so ``celery inspect ping`` cannot see workers on the PostgreSQL broker.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading

from celery import Celery, signals
from celery.schedules import crontab

from backend.app.config import BrokerType, Settings, get_settings
from backend.app.core import sql_transport  # noqa: F401 - installs the fixed SQL transport for sqla+ URLs

logger = logging.getLogger(__name__)

DEPLOY_TASK = "windflow.deploy_stack"
RECOVERY_TASK = "windflow.retry_pending_deployments"
REAPER_TASK = "windflow.reap_expired_leases"
PURGE_TASK = "windflow.purge_consumed_messages"


def broker_label(settings: Settings) -> str:
    url = settings.celery_broker_url or ""
    if url.startswith("redis"):
        return "redis"
    if url.startswith("sqla+"):
        return "postgresql"
    return url.split(":", 1)[0] or "none"


def create_celery(settings: Settings, *, set_as_current: bool = False) -> Celery:
    app = Celery("windflow", include=["backend.app.tasks.deployment_tasks"], set_as_current=set_as_current)
    broker = settings.celery_broker_url
    transport_options: dict = {}
    if broker and broker.startswith("sqla+"):
        transport_options["polling_interval"] = settings.CELERY_SQL_POLLING_INTERVAL
    elif broker and broker.startswith("redis"):
        # unacked deployments come back after this long if a worker vanished (recovery is usually faster)
        transport_options["visibility_timeout"] = 3600
    app.conf.update(
        broker_url=broker or "memory://",
        result_backend=settings.celery_result_backend,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_expires=settings.CELERY_RESULT_EXPIRES_SECONDS,
        task_default_queue="celery",
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        worker_send_task_events=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "retry-pending-deployments": {
                "task": RECOVERY_TASK,
                "schedule": crontab(minute=f"*/{settings.RECOVERY_INTERVAL_MINUTES}"),
                "kwargs": {
                    "max_age_minutes": settings.RECOVERY_MAX_AGE_MINUTES,
                    "timeout_minutes": settings.RECOVERY_TIMEOUT_MINUTES,
                },
            },
            # leader-elected inside the task (advisory lock): cheap, every few seconds; a message that
            # waited longer than one interval is dropped rather than run late
            "reap-expired-leases": {
                "task": REAPER_TASK,
                "schedule": settings.REAPER_INTERVAL_SECONDS,
                "options": {"expires": max(1.0, settings.REAPER_INTERVAL_SECONDS)},
            },
            **(
                {"purge-consumed-messages": {"task": PURGE_TASK, "schedule": crontab(minute="*/10")}}
                if broker and broker.startswith("sqla+")
                else {}
            ),
        },
    )
    return app


settings = get_settings()
celery_app = create_celery(settings, set_as_current=True)
app = celery_app  # `celery -A backend.app.celery_app` finds `app` or `celery_app`


def _invoked_as_celery_cli() -> bool:
    return os.path.basename(sys.argv[0]) in {"celery", "__main__.py"} and any(
        cmd in sys.argv for cmd in ("worker", "beat")
    )


if settings.celery_unavailable_reason and _invoked_as_celery_cli():
    sys.exit(f"WindFlow: Celery cannot run with this configuration: {settings.celery_unavailable_reason}")


# --- worker process lifecycle ------------------------------------------------------------------

_heartbeat_stop = threading.Event()
_heartbeat_thread: threading.Thread | None = None


def _worker_kind() -> str:
    return os.environ.get("WINDFLOW_WORKER_KIND", "external")


@signals.worker_process_init.connect
def _on_child_start(**_kwargs) -> None:
    from backend.app.tasks import worker_runtime

    worker_runtime.reset_after_fork()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _redact_celery_logs(logger=None, **_kwargs) -> None:
    """Celery configures its own handlers; every one of them gets WindFlow's redaction filter."""
    from backend.app.core.logging import RedactingFilter, add_file_handler

    if logger is None:
        return
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
    from backend.app.migrate import upgrade_sync

    if settings.RUN_MIGRATIONS_ON_STARTUP or (settings.celery_broker_url or "").startswith("sqla+"):
        # a throwaway engine on a throwaway loop: nothing of it is inherited by the forked pool
        upgrade_sync(settings, schema=settings.RUN_MIGRATIONS_ON_STARTUP)


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_kwargs) -> None:
    name = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"
    concurrency = getattr(getattr(sender, "controller", None), "concurrency", None) or 1
    global _heartbeat_thread
    _heartbeat_thread = threading.Thread(
        target=_heartbeat_loop, args=(name, int(concurrency)), name="windflow-heartbeat", daemon=True
    )
    _heartbeat_thread.start()
    logger.info("WindFlow %s worker %s ready (broker: %s)", _worker_kind(), name, broker_label(settings))


def _heartbeat_loop(name: str, concurrency: int) -> None:
    from backend.app import database
    from backend.app.core import workers
    from backend.app.tasks import worker_runtime

    async def beat() -> None:
        async with database.AsyncSessionLocal() as session:
            await workers.write_heartbeat(
                session, name=name, kind=_worker_kind(), hostname=socket.gethostname(), pid=os.getpid(),
                broker=broker_label(settings), concurrency=concurrency,
            )

    while not _heartbeat_stop.is_set():
        try:
            worker_runtime.run(beat(), timeout=30)
        except Exception:  # noqa: BLE001 - a missed beat is retried; the worker keeps working
            logger.warning("worker heartbeat failed", exc_info=True)
        _heartbeat_stop.wait(workers.HEARTBEAT_SECONDS)


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender=None, **_kwargs) -> None:
    from backend.app import database
    from backend.app.core import workers
    from backend.app.tasks import worker_runtime

    _heartbeat_stop.set()
    if _heartbeat_thread is not None:
        _heartbeat_thread.join(timeout=10)  # a beat in flight must not re-create the row we delete
    name = getattr(sender, "hostname", None) or f"celery@{socket.gethostname()}"

    async def remove() -> None:
        async with database.AsyncSessionLocal() as session:
            await workers.remove_heartbeat(session, name)

    try:
        worker_runtime.run(remove(), timeout=10)
    except Exception:  # noqa: BLE001
        logger.warning("could not remove the heartbeat of %s", name, exc_info=True)


__all__ = ["BrokerType", "app", "celery_app", "create_celery"]
