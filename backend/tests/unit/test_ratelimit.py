"""SlidingWindowLimiter with an injected clock."""

from __future__ import annotations

import threading

import pytest

from backend.app.core.ratelimit import SlidingWindowLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_allows_up_to_the_limit_then_refuses(clock):
    limiter = SlidingWindowLimiter(3, window_seconds=60, clock=clock)
    assert [limiter.hit("a") for _ in range(3)] == [None, None, None]
    assert limiter.hit("a") == pytest.approx(60.0)
    assert limiter.hit("a") == pytest.approx(60.0)  # refused hits do not extend the wait


def test_wait_counts_down_to_the_oldest_hit_leaving_the_window(clock):
    limiter = SlidingWindowLimiter(2, window_seconds=60, clock=clock)
    limiter.hit("a")  # t=1000
    clock.now += 10
    limiter.hit("a")  # t=1010
    clock.now += 5  # t=1015
    assert limiter.hit("a") == pytest.approx(45.0)  # the t=1000 hit leaves at 1060
    clock.now = 1059.9
    assert limiter.hit("a") == pytest.approx(0.1)
    clock.now = 1060.0
    assert limiter.hit("a") is None  # exactly one window later the oldest hit no longer counts
    assert limiter.hit("a") == pytest.approx(10.0)  # now full again until the t=1010 hit leaves


def test_window_slides_rather_than_resets(clock):
    limiter = SlidingWindowLimiter(2, window_seconds=60, clock=clock)
    limiter.hit("a")  # t=1000
    clock.now = 1059
    limiter.hit("a")  # t=1059
    clock.now = 1061  # a fixed window starting at 1000 would allow 2 more; sliding allows one
    assert limiter.hit("a") is None
    assert limiter.hit("a") == pytest.approx(58.0)


def test_keys_are_independent(clock):
    limiter = SlidingWindowLimiter(1, window_seconds=60, clock=clock)
    assert limiter.hit("10.0.0.1") is None
    assert limiter.hit("10.0.0.1") is not None
    assert limiter.hit("10.0.0.2") is None


def test_reset_forgets_everything(clock):
    limiter = SlidingWindowLimiter(1, window_seconds=60, clock=clock)
    limiter.hit("a")
    assert limiter.hit("a") is not None
    limiter.reset()
    assert limiter.hit("a") is None


@pytest.mark.parametrize(("wait", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_header_rounds_up_to_whole_seconds(wait, header):
    assert SlidingWindowLimiter(1).retry_after_header(wait) == {"Retry-After": header}


def test_idle_keys_are_pruned_when_many(clock):
    limiter = SlidingWindowLimiter(5, window_seconds=60, clock=clock)
    for i in range(10_001):
        limiter.hit(f"old-{i}")
    clock.now += 61
    limiter.hit("new")  # the 10 002nd key triggers pruning of everything that left the window
    assert set(limiter._hits) == {"new"}


def test_concurrent_hits_never_exceed_the_limit(clock):
    limiter = SlidingWindowLimiter(50, window_seconds=60, clock=clock)
    results: list[float | None] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            outcome = limiter.hit("shared")
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is None for r in results) == 50
    assert len(results) == 200


def test_default_clock_is_monotonic():
    limiter = SlidingWindowLimiter(1, window_seconds=0.05)
    assert limiter.hit("a") is None
    wait = limiter.hit("a")
    assert wait is not None and 0 < wait <= 0.05
