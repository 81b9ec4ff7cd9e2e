"""Bench-only Celery app: the raw-Celery baseline of ``dispatch_latency.py``.

One no-op task that returns the moment its body starts. The worker is started by the benchmark as

    celery -A _celery_noop worker --concurrency=4 -Q <queue> -n wfbench-noop@%h

(``PYTHONPATH`` holds ``bench/`` and the repository) with the broker, result backend and SQL polling
interval in ``WFBENCH_*`` variables. Its delivery settings are WindFlow's own
(``backend.app.runtime.celery_config.delivery_conf``: ``worker_prefetch_multiplier=1``, ``task_acks_late``,
``task_reject_on_worker_lost``, JSON, the same ``polling_interval`` for the SQL broker), with a prefork pool
(the ``celery worker`` default, as for the product guide's command, docs/architecture.md#the-product-guide), concurrency 4, and the same (fixed) kombu SQL
transport, which WindFlow installs by importing ``backend.app.runtime.sql_transport``
(kombu's own passes ``polling_interval`` to ``create_engine`` and fails). It does *not* import
``backend.app.celery_app``: that module's signal handlers would register this worker as a WindFlow
worker (heartbeat rows, migrations).
"""

from __future__ import annotations

import os
import time

from celery import Celery

import backend.app.runtime.sql_transport  # noqa: F401 - the SQL transport WindFlow uses for sqla+ URLs
from backend.app.runtime.celery_config import delivery_conf

NOOP_TASK = "wfbench.noop"


def create_noop_app(broker_url: str, result_backend: str, queue: str, polling_interval: float = 0.1) -> Celery:
    app = Celery("wfbench_noop", set_as_current=False)
    app.conf.update(delivery_conf(broker_url, result_backend, polling_interval=polling_interval, queue=queue))

    @app.task(name=NOOP_TASK)
    def noop(sent_at: float) -> dict:
        return {"started": time.time(), "sent": sent_at}

    return app


if "WFBENCH_BROKER_URL" in os.environ:  # the worker process (`celery -A _celery_noop worker`)
    app = create_noop_app(
        os.environ["WFBENCH_BROKER_URL"],
        os.environ["WFBENCH_RESULT_BACKEND"],
        os.environ["WFBENCH_QUEUE"],
        float(os.environ.get("WFBENCH_POLLING_INTERVAL", "0.1")),
    )
