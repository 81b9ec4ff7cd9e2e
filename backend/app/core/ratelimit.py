"""A small sliding-window rate limiter, keyed per client (address for login, user for deployments).

State is per process: with several backend replicas each one enforces the limit on its own share of the
traffic. That keeps the embedded default dependency-free; the limits are about abuse, not accounting.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque


class SlidingWindowLimiter:
    def __init__(self, limit: int, window_seconds: float = 60.0, clock=time.monotonic) -> None:
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Record one hit for ``key``. Returns ``None`` if allowed, else seconds until retry is allowed."""
        now = self._clock()
        with self._lock:
            hits = self._hits[key]
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(0.0, hits[0] + self.window - now)
            hits.append(now)
            if len(self._hits) > 10_000:
                self._prune(now)
            return None

    def retry_in(self, key: str) -> float | None:
        """Like :meth:`hit` without recording anything: ``None`` if ``key`` may go on, else seconds to wait."""
        now = self._clock()
        with self._lock:
            hits = self._hits.get(key)
            if not hits:
                return None
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(0.0, hits[0] + self.window - now)
            return None

    def retry_after_header(self, wait: float) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(wait)))}

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]
