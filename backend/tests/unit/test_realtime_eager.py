"""runtime/realtime/eager.py: a coroutine run at once up to its first wait, its rest finished by a task."""

from __future__ import annotations

import asyncio

import pytest

from backend.app.runtime.realtime import eager


async def test_a_coroutine_that_never_waits_finishes_inside_start():
    done = []

    async def send() -> str:
        done.append("sent")
        return "ignored"

    assert eager.start(send()) is None
    assert done == ["sent"]  # before start returned: no task, no turn of the loop


async def test_a_coroutine_that_waits_is_finished_by_whoever_awaits_its_rest():
    gate = asyncio.Event()
    steps = []

    async def send() -> str:
        steps.append("began")
        await gate.wait()
        steps.append("finished")
        return "result"

    rest = eager.start(send())
    assert rest is not None and steps == ["began"]
    task = asyncio.create_task(_await(rest))
    await asyncio.sleep(0.01)
    assert steps == ["began"] and not task.done()  # still waiting for the gate, without blocking this coroutine
    gate.set()
    assert await asyncio.wait_for(task, 5) == "result"
    assert steps == ["began", "finished"]


async def test_what_the_coroutine_raises_is_raised_by_start_or_by_its_rest():
    async def fails_at_once() -> None:
        raise ConnectionError("gone")

    with pytest.raises(ConnectionError, match="gone"):
        eager.start(fails_at_once())

    gate = asyncio.Event()

    async def fails_later() -> None:
        await gate.wait()
        raise OSError("reset")

    rest = eager.start(fails_later())
    task = asyncio.create_task(_await(rest))
    gate.set()
    with pytest.raises(OSError, match="reset"):
        await asyncio.wait_for(task, 5)


async def test_cancelling_the_task_that_awaits_the_rest_cancels_the_coroutine_where_it_waits():
    lock = asyncio.Lock()
    never = asyncio.Event()
    seen = []

    async def send() -> None:
        async with lock:
            try:
                await never.wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

    rest = eager.start(send())
    assert lock.locked()
    task = asyncio.create_task(_await(rest))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"] and not lock.locked()  # its ``async with`` released the lock


async def test_a_timeout_around_the_rest_ends_a_send_that_never_completes():
    never = asyncio.Event()

    async def send() -> None:
        await never.wait()

    rest = eager.start(send())

    async def bounded() -> None:
        async with asyncio.timeout(0.05):
            await rest

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bounded(), 5)


async def test_sends_through_one_lock_keep_their_order_when_the_first_has_to_wait():
    """The client's frames stay in order: a send the hub began that waits holds the client's send lock, and
    what the pump sends next waits for it."""
    lock = asyncio.Lock()
    writable = asyncio.Event()
    wire = []

    async def send(text: str) -> None:
        async with lock:
            await writable.wait()
            wire.append(text)

    rest = eager.start(send("first"))
    assert rest is not None
    finish = asyncio.create_task(_await(rest))
    later = asyncio.create_task(send("second"))
    await asyncio.sleep(0.01)
    writable.set()
    await asyncio.wait_for(asyncio.gather(finish, later), 5)
    assert wire == ["first", "second"]


async def _await(awaitable):
    return await awaitable
