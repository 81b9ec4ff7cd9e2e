"""Celery's configuration for WindFlow: task names, the broker label and the application factory.

Used by the worker's entry module (``backend/app/celery_app.py``, what ``celery -A`` loads), by the embedded
worker's manager and by dispatch (which only sends tasks by name, so it never imports the tasks).

* Broker and result backend come from ``Settings`` (derived from ``DATABASE_URL`` with
  ``CELERY_BROKER_TYPE=database``: ``sqla+postgresql+psycopg://`` and ``db+postgresql+psycopg://``).
* JSON only, ``acks_late`` + ``reject_on_worker_lost``, prefetch 1, results expire after an hour.
* Tasks go to the default ``celery`` queue, so a worker started without ``-Q`` consumes them; the work of a
  placed target goes to that target's own queue instead (``services/targets/placement.py``), consumed by the
  workers that declare it (``WORKER_TARGETS``).
"""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab

from backend.app.config import Settings
from backend.app.runtime import sql_transport  # noqa: F401 - installs the fixed SQL transport for sqla+ URLs

DEPLOY_TASK = "windflow.deploy_stack"
RECOVERY_TASK = "windflow.retry_pending_deployments"
REAPER_TASK = "windflow.reap_expired_leases"
WATCH_TASK = "windflow.watch_deployments"
PURGE_TASK = "windflow.purge_consumed_messages"


def broker_label(settings: Settings) -> str:
    url = settings.celery_broker_url or ""
    if url.startswith("redis"):
        return "redis"
    if url.startswith("sqla+"):
        return "postgresql"
    return url.split(":", 1)[0] or "none"


def delivery_conf(broker_url: str | None, result_backend: str | None, *, polling_interval: float, queue: str = "celery") -> dict:
    """How tasks travel and are acknowledged (broker, serialisation, late acks, prefetch 1, transport
    options): WindFlow's app, and the benchmark's baseline app that must match it."""
    transport_options: dict = {}
    if broker_url and broker_url.startswith("sqla+"):
        transport_options["polling_interval"] = polling_interval
    elif broker_url and broker_url.startswith("redis"):
        # unacked deployments come back after this long if a worker vanished (recovery is usually faster)
        transport_options["visibility_timeout"] = 3600
    return {
        "broker_url": broker_url or "memory://",
        "result_backend": result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": queue,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "worker_send_task_events": False,
        "timezone": "UTC",
        "enable_utc": True,
    }


def create_celery(settings: Settings, *, set_as_current: bool = False, results: bool = True) -> Celery:
    """WindFlow's Celery application. ``results=False``: a publisher that never reads a task's result (the
    backend's dispatcher). Its messages are the same and the workers still store every result (the result
    backend is the worker's own setting); it only spares each send the result backend's preparation for a
    reader, which on Redis is a ``SUBSCRIBE`` to the task's result channel before each publish."""
    app = Celery("windflow", include=["backend.app.tasks.deployment_tasks"], set_as_current=set_as_current)
    broker = settings.celery_broker_url
    result_backend = settings.celery_result_backend if results else None
    app.conf.update(
        **delivery_conf(broker, result_backend, polling_interval=settings.CELERY_SQL_POLLING_INTERVAL),
        result_expires=settings.CELERY_RESULT_EXPIRES_SECONDS,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
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
            # the watcher: leader-elected inside the task like the reaper
            "watch-deployments": {
                "task": WATCH_TASK,
                "schedule": settings.DEPLOYMENT_WATCH_INTERVAL_SECONDS,
                "options": {"expires": max(1.0, settings.DEPLOYMENT_WATCH_INTERVAL_SECONDS)},
            },
            **(
                {"purge-consumed-messages": {"task": PURGE_TASK, "schedule": crontab(minute="*/10")}}
                if broker and broker.startswith("sqla+")
                else {}
            ),
        },
    )
    return app
