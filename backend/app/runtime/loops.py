"""Periodic work: one small base for every loop of the backend (like Prefect's ``LoopService``).

A :class:`LoopService` runs :meth:`LoopService.run_once` every ``interval`` seconds (the first pass after
``first_delay``), under a PostgreSQL advisory lock when it has a ``lock_key`` (:func:`leader_lock`: one
runner at a time across processes, whatever runs it: a backend's loop or a Celery beat task calling
:meth:`LoopService.once`), until :meth:`LoopService.stop` or cancellation.

A failed pass never stops the loop: it is reported through :class:`database.OutageLog` (a traceback for a
real error, one line per database outage) and the next pass runs at the usual interval, or after a growing,
jittered delay (:class:`Backoff`) when the loop sets ``backoff_max``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text

from backend.app import database
from backend.app.core.events import sleep_or_event

logger = logging.getLogger(__name__)
_local_locks: dict[int, asyncio.Lock] = {}


@contextlib.asynccontextmanager
async def leader_lock(key: int) -> AsyncIterator[bool]:
    """Yield True in the one process that holds the lock, False elsewhere (never blocks).

    PostgreSQL: a session-level advisory lock (it goes with the server's session, so a restart leaves none
    held); SQLite deployments are single-process: an asyncio lock per key."""
    engine = database.get_engine()
    if engine.dialect.name != "postgresql":
        local = _local_locks.setdefault(key, asyncio.Lock())
        if local.locked():
            yield False
            return
        async with local:
            yield True
        return
    async with engine.connect() as conn:
        acquired = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar()
        await conn.commit()
        try:
            yield bool(acquired)
        finally:
            if acquired:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                await conn.commit()


def jittered(delay: float, spread: float = 0.2) -> float:
    """``delay`` spread uniformly by ±``spread`` (so that processes that failed together do not retry together)."""
    return delay * random.uniform(1 - spread, 1 + spread)


class Backoff:
    """An exponential delay between ``minimum`` and ``maximum``: :meth:`next` gives the current one (jittered)
    and doubles it; :meth:`reset` goes back to ``minimum``."""

    def __init__(self, minimum: float, maximum: float, factor: float = 2.0) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.factor = factor
        self.delay = minimum

    def reset(self) -> None:
        self.delay = self.minimum

    def next(self) -> float:
        """The delay to wait now (jittered); the following one grows up to ``maximum``."""
        delay = jittered(self.delay)
        self.delay = min(self.delay * self.factor, self.maximum)
        return delay


class LoopService:
    """A periodic pass: subclasses set ``name`` and ``interval`` (seconds) and write :meth:`run_once`.

    ``lock_key``: the pass runs only in the process holding that advisory lock (:meth:`once` returns None
    elsewhere). ``first_delay``: the wait before the first pass (default: ``interval``). ``backoff_max``:
    after a failed pass, wait a jittered, doubling delay from ``interval`` up to this instead of ``interval``.
    :meth:`should_continue` is checked before each wait (a loop that has nothing left to do ends)."""

    name: str = "loop"
    interval: float = 60.0
    first_delay: float | None = None
    lock_key: int | None = None
    backoff_max: float | None = None
    log: logging.Logger = logger

    def __init__(self) -> None:
        self._stopped = asyncio.Event()
        self.outage = database.OutageLog(self.name, self.log)

    async def run_once(self) -> Any:
        raise NotImplementedError

    async def once(self) -> Any:
        """One pass; with a ``lock_key``, only where the lock is free (None elsewhere)."""
        if self.lock_key is None:
            return await self.run_once()
        async with leader_lock(self.lock_key) as leader:
            if not leader:
                self.log.debug("%s: another process is running it", self.name)
                return None
            return await self.run_once()

    def should_continue(self) -> bool:
        return True

    def stop(self) -> None:
        """End the loop at its next wait (a pass under way finishes)."""
        self._stopped.set()

    async def run(self) -> None:
        backoff = Backoff(self.interval, self.backoff_max) if self.backoff_max is not None else None
        delay = self.interval if self.first_delay is None else self.first_delay
        while self.should_continue():
            if await sleep_or_event(delay, self._stopped):
                return
            delay = self.interval
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the loop alive
                self.outage.failed(exc)
                if backoff is not None:
                    delay = backoff.next()
            else:
                self.outage.succeeded()
                if backoff is not None:
                    backoff.reset()
