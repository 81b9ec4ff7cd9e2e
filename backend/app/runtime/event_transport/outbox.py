"""The outbox: the encoded events of this process waiting to be sent, and the flush waiters."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque

logger = logging.getLogger("backend.app.runtime.event_transport")  # one logger name for the whole bus

MAX_QUEUED = 10_000  # events waiting to be sent, at most (the oldest are dropped first)


class Outbox:
    """Thread-safe FIFO of encoded events (``(kind, json)``: an event or a log pointer) with flush waiters.

    ``enqueued`` counts events accepted, ``completed`` events sent or dropped; a waiter created when
    ``enqueued`` was N is resolved once ``completed`` reaches N.
    """

    def __init__(self, limit: int = MAX_QUEUED) -> None:
        self._lock = threading.Lock()
        self._items: deque[tuple[str, str]] = deque()
        self._limit = limit
        self._waiters: list[tuple[int, concurrent.futures.Future[bool]]] = []
        self.enqueued = 0
        self.completed = 0
        self.dropped = 0

    def pending(self) -> int:
        return self.enqueued - self.completed

    def put(self, item: tuple[str, str]) -> bool:
        """Queue an event; returns ``False`` when the oldest queued event had to be dropped for it."""
        with self._lock:
            overflow = len(self._items) >= self._limit
            if overflow:
                self._items.popleft()
                self.dropped += 1
                self.completed += 1
            self._items.append(item)
            self.enqueued += 1
            ready = self._take_ready()
        _settle(ready, True)
        return not overflow

    def take(self, count: int) -> list[tuple[str, str]]:
        with self._lock:
            return [self._items.popleft() for _ in range(min(count, len(self._items)))]

    def requeue(self, batch: list[tuple[str, str]]) -> None:
        with self._lock:
            self._items.extendleft(reversed(batch))

    def done(self, sent: int, dropped: int = 0) -> None:
        with self._lock:
            self.completed += sent + dropped
            self.dropped += dropped
            ready = self._take_ready()
        _settle(ready, True)

    def drop_all(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self.dropped += count
            self.completed += count
            waiters, self._waiters = self._waiters, []
        _settle([future for _, future in waiters], False)
        return count

    def waiter(self) -> concurrent.futures.Future[bool]:
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        with self._lock:
            if self.completed >= self.enqueued:
                future.set_result(True)
            else:
                self._waiters.append((self.enqueued, future))
        return future

    def _take_ready(self) -> list[concurrent.futures.Future[bool]]:
        ready = [future for target, future in self._waiters if target <= self.completed]
        if ready:
            self._waiters = [(t, f) for t, f in self._waiters if t > self.completed]
        return ready


def _settle(futures: list[concurrent.futures.Future[bool]], value: bool) -> None:
    for future in futures:
        try:
            future.set_result(value)
        except concurrent.futures.InvalidStateError:  # the waiter gave up (timeout) meanwhile
            pass
