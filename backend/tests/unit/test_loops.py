"""runtime/loops.py: the periodic-loop base (interval, outage logging, backoff with jitter, stop, should_continue)."""

from __future__ import annotations

import asyncio
import logging

from backend.app.runtime import loops


class _Counting(loops.LoopService):
    name = "test loop"
    interval = 0.01

    def __init__(self, fail: int = 0, passes: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.fail = fail
        self.passes = passes

    def should_continue(self) -> bool:
        return self.passes is None or self.calls < self.passes

    async def run_once(self) -> int:
        self.calls += 1
        if self.calls <= self.fail:
            raise RuntimeError("boom")
        return self.calls


async def test_a_failed_pass_is_logged_and_the_loop_goes_on(caplog):
    loop = _Counting(fail=2, passes=4)
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(loop.run(), 5)
    assert loop.calls == 4
    assert sum("test loop failed" in r.getMessage() for r in caplog.records) == 2


async def test_stop_ends_the_loop_at_its_next_wait():
    loop = _Counting()
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.05)
    loop.stop()
    await asyncio.wait_for(task, 1)
    assert loop.calls >= 1


async def test_once_without_lock_runs_the_pass():
    assert await _Counting().once() == 1


def test_backoff_doubles_with_jitter_up_to_its_maximum_and_resets():
    backoff = loops.Backoff(1.0, 4.0)
    delays = [backoff.next() for _ in range(4)]
    for delay, nominal in zip(delays, (1.0, 2.0, 4.0, 4.0), strict=True):
        assert nominal * 0.8 <= delay <= nominal * 1.2
    backoff.reset()
    assert backoff.delay == 1.0
    assert all(0.8 <= loops.jittered(1.0) <= 1.2 for _ in range(100))


async def test_a_cancel_that_meets_the_event_ends_the_loop() -> None:
    """Python 3.11's ``asyncio.wait_for`` returns the inner result and drops a cancellation that arrives as the
    inner wait completes: a loop cancelled at the moment its wake event was set went on forever, and the app's
    shutdown, which waits for its loops, never ended (seen: a Celery test stuck in the lifespan's exit)."""
    event = asyncio.Event()
    passes = 0

    async def loop_forever() -> None:
        nonlocal passes
        while True:
            event.clear()
            await loops.sleep_or_event(30, event)
            passes += 1

    task = asyncio.create_task(loop_forever())
    await asyncio.sleep(0)  # the loop waits on the event
    event.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled(), f"the loop went on after its cancellation ({passes} passes)"
    assert passes == 0
