"""Sliding-window rate limits, keyed per client (address for login, account for failed logins, user for
deployments, hook for a deploy hook's calls).

:class:`SlidingWindowLimiter` keeps its hits in this process. :class:`RateLimiter` is what the routes use: the
same window in this process, or in Redis when one is configured (``RATE_LIMIT_REDIS_URL``, else the event
bus's Redis), so that every backend replica behind a proxy counts the same hits: two replicas allow a client
the limit once, not twice. Without Redis (SQLite, or PostgreSQL alone) each replica counts its own share.

Redis keeps one sorted set per key (``windflow:ratelimit:<scope>:<sha256 of the key>``, scored by Redis's own
clock so that replicas whose clocks differ agree), trimmed and counted by one Lua script: a check and its hit
are atomic across replicas. A Redis that does not answer lets the request through (with a warning at most
once a minute): these limits are about abuse, and a login must not fail because Redis is away.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
import uuid
from collections import defaultdict, deque

logger = logging.getLogger(__name__)


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


#: KEYS[1] the key's sorted set; ARGV: window (s), limit, member for this hit, "1" to record a hit (else check
#: only). Returns nil when allowed, else the seconds until the oldest hit leaves the window (as a string).
_SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
end
return false
"""
REDIS_TIMEOUT_SECONDS = 2.0


class RateLimiter:
    """One limit (``limit`` hits per ``window_seconds`` per key) shared by every replica through Redis when
    ``redis_url`` is given, else kept in this process (:class:`SlidingWindowLimiter`).

    ``hit`` records a hit unless the key is over the limit; ``retry_in`` only checks. Both return ``None``
    when the key may go on, else the seconds to wait."""

    def __init__(self, scope: str, limit: int, window_seconds: float = 60.0, *, redis_url: str | None = None) -> None:
        self.scope = scope
        self.limit = limit
        self.window = window_seconds
        self.redis_url = redis_url
        self._local = SlidingWindowLimiter(limit, window_seconds)
        self._warned_at = -math.inf

    @property
    def shared(self) -> bool:
        return self.redis_url is not None

    async def hit(self, key: str) -> float | None:
        if self.redis_url is None:
            return self._local.hit(key)
        return await self._redis(key, record=True)

    async def retry_in(self, key: str) -> float | None:
        if self.redis_url is None:
            return self._local.retry_in(key)
        return await self._redis(key, record=False)

    def retry_after_header(self, wait: float) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(wait)))}

    async def _redis(self, key: str, *, record: bool) -> float | None:
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        digest = hashlib.sha256(key.encode()).hexdigest()
        # A client per check, closed when it is done: only logins, deployment creations and hook calls are counted, and a
        # connection kept between them outlived its event loop (a test's, an app's) and was left to the garbage
        # collector unclosed, or broke with a Redis restart.
        client = Redis.from_url(
            self.redis_url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            client_name=f"windflow-ratelimit-{self.scope}",
        )
        try:
            answer = await client.eval(
                _SLIDING_WINDOW,
                1,
                f"windflow:ratelimit:{self.scope}:{digest}",
                self.window,
                self.limit,
                uuid.uuid4().hex,
                "1" if record else "0",
            )
        except (RedisError, OSError, TimeoutError) as exc:
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                logger.warning("rate limit %s: Redis did not answer (%s); requests are let through meanwhile", self.scope, exc)
            return None
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
        return None if answer is None else max(0.0, float(answer))

    def reset(self) -> None:
        self._local.reset()
