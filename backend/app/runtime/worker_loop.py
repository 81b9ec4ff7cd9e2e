"""The asyncio side of a Celery worker process.

Celery tasks are synchronous; WindFlow's runner is async and its database engine (asyncpg/aiosqlite) and
event bus are bound to one event loop. Each worker process therefore owns one long-lived loop running in a
daemon thread; tasks submit coroutines to it and wait for the result. The loop (and so the engine pool
and the bus) is created lazily *in the process that uses it*, so prefork children never inherit a parent's
loop or connections across ``fork``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None


def _start_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    threading.Thread(target=run, name="windflow-worker-loop", daemon=True).start()
    ready.wait()
    return loop


def get_loop() -> asyncio.AbstractEventLoop:
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid():
            _loop = _start_loop()
            _pid = os.getpid()
            asyncio.run_coroutine_threadsafe(_init_process(), _loop).result()
        return _loop


async def _init_process() -> None:
    """Per-process initialisation on the worker loop: a fresh database engine and the event bus."""
    from backend.app import database
    from backend.app.config import get_settings

    settings = get_settings()
    database.configure(settings)
    from backend.app.runtime import event_transport

    try:
        await event_transport.start_event_bus(settings, listen=False)  # workers only send
    except Exception:
        logger.warning("worker: event bus did not start", exc_info=True)


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on this process's worker loop and return its result (blocking the calling thread)."""
    future = asyncio.run_coroutine_threadsafe(coro, get_loop())
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise


def reset_after_fork() -> None:
    """Forget the parent's loop in a freshly forked child (``worker_process_init``)."""
    global _loop, _pid
    _loop = None
    _pid = None
