"""Run a coroutine at once, in the caller's frame, and finish it in a task only if it has to wait.

The hub sends an event to each of its clients from the delivery itself (a plain callback on the loop)
through the connection's ASGI ``send``: a coroutine that, as long as the socket takes data, finishes without
ever waiting. A task per client and event would cost several times the send itself (a task, a turn of the
loop and a switch per client: on the benchmark machine ~20 us per client against ~4 us for the send);
:func:`start` instead runs the coroutine up to its first suspension. Most of the time it finishes there.
When it does wait (the server paused writing to a client that reads too slowly), :func:`start` returns the
rest, which a task awaits, so that the caller never waits for one slow client. Python 3.12's
``eager_start`` tasks do the same with a task object per call; this works from 3.11 and allocates nothing
when the coroutine finishes at once.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any


def start(coro: Awaitable[Any]) -> Awaitable[Any] | None:
    """Run ``coro`` until it finishes or first waits. None when it finished (its result is dropped; what it
    raised is raised here); otherwise an awaitable of the rest, to be awaited once by a task: it resumes
    ``coro`` where it stopped, and returns (or raises) what ``coro`` does. An awaitable that is not a
    coroutine (an ASGI ``send`` may return any) is awaited by one."""
    if type(coro) is not types.CoroutineType:
        coro = _awaited(coro)
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return _rest(coro, pending)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


@types.coroutine
def _rest(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """What ``await coro`` would have done from the point where ``coro`` yielded ``pending`` (the future it
    waits for): hand that to the awaiting task, then pass on what the task sends or throws in (its
    cancellation, for one) until ``coro`` returns."""
    try:
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task: coro handles it or raises it
                pending = coro.throw(exc)
            else:
                pending = coro.send(sent)
    except StopIteration as stop:
        return stop.value
    finally:
        coro.close()  # a no-op once it returned; ends it (its ``finally`` blocks run) if this rest was closed
