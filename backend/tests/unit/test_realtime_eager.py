"""runtime/realtime/eager.py: a coroutine run at once up to its first wait, its rest finished by a task; and
``Client.send_now``, the hub's send built on it (a client whose socket is a flag: pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from backend.app.runtime.realtime import client as client_module
from backend.app.runtime.realtime import eager
from backend.app.runtime.realtime.access import Access
from backend.app.runtime.realtime.client import Client


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


async def test_an_awaitable_that_is_not_a_coroutine_is_started_too():
    done = asyncio.get_running_loop().create_future()
    rest = eager.start(done)  # a future (an ASGI send may return any awaitable)
    assert rest is not None
    task = asyncio.create_task(_await(rest))
    done.set_result("sent")
    assert await asyncio.wait_for(task, 5) == "sent"
    finished = asyncio.get_running_loop().create_future()
    finished.set_result(None)
    assert eager.start(finished) is None


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


_EVENT = {"type": "websocket.send", "text": "event 1"}  # the hub's ASGI message of an event


class _Socket(Client):
    """A client whose socket takes frames only while ``writable`` is set (pure logic: no server)."""

    def __init__(self) -> None:
        super().__init__(Access("user", False, frozenset({"org"})), "websocket")
        self.direct = True
        self.writable = asyncio.Event()
        self.writable.set()
        self.wire: list[str] = []

    async def send_text(self, text: str, seq: int | None = None, kind: str | None = None) -> None:
        await self.writable.wait()
        self.wire.append(text)


async def test_the_hub_s_send_finishes_at_once_while_the_socket_takes_it():
    client = _Socket()
    assert client.send_now(_EVENT) is True
    assert client.wire == ["event 1"] and not client.writing and not client.send_lock.locked()


async def test_a_send_that_waits_for_its_socket_holds_the_client_until_it_is_done_and_frames_keep_their_order():
    client = _Socket()
    client.writable.clear()  # the server paused writing to this client
    assert client.send_now(_EVENT) is True  # under way: the hub goes on to its next client at once
    assert client.wire == [] and client.writing and client.send_lock.locked()
    answer = asyncio.create_task(client.send({"type": "pong"}))  # what is sent next (pump, answers) waits
    await asyncio.sleep(0.01)
    assert client.wire == [] and not answer.done()
    client.writable.set()
    await asyncio.wait_for(answer, 5)
    assert client.wire == ["event 1", '{"type":"pong"}']
    assert not client.writing and not client.send_lock.locked()
    await client.stop()


async def test_a_send_that_waits_too_long_closes_the_client(monkeypatch):
    monkeypatch.setattr(client_module, "SEND_TIMEOUT_SECONDS", 0.05)
    client = _Socket()
    client.writable.clear()
    assert client.send_now(_EVENT) is True
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1008 and "did not read" in client.close_reason
    await asyncio.sleep(0)
    assert not client.send_lock.locked() and not client.writing and not client.direct
    await client.stop()


async def test_a_send_that_fails_at_once_closes_the_client_and_never_raises_into_the_hub():
    client = _Socket()

    async def gone(text: str, seq: int | None = None, kind: str | None = None) -> None:
        raise ConnectionResetError("peer gone")

    client.send_text = gone
    assert client.send_now(_EVENT) is False
    assert client.closed.is_set() and client.close_code == 1011 and "peer gone" in client.close_reason


async def _await(awaitable):
    return await awaitable
