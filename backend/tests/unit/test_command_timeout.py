"""``run_command``'s timeout counts from before the process starts: a caller descheduled right after the
start (a loaded machine) must not find a command already finished and escape a bound shorter than the time
that passed. A real process (``true``) and a loop blocked for 0.3 s right after the spawn stand for that."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from backend.app.engines.base import EngineError
from backend.app.engines.process import run_command


async def test_a_bound_shorter_than_the_time_passed_is_a_timeout_even_if_the_command_finished():
    loop = asyncio.get_running_loop()
    # runs in the loop's next turn, while create_subprocess_exec waits for its pipes: the child finishes
    # during it, so the whole result is buffered when the command's own wait begins
    loop.call_soon(time.sleep, 0.3)
    with pytest.raises(EngineError) as caught:
        await run_command(["true"], env={"PATH": os.environ["PATH"]}, log=None, timeout=0.05)
    assert caught.value.transient and "did not finish within 0.05s" in caught.value.message


async def test_a_command_within_its_bound_answers():
    result = await run_command(["sh", "-c", "echo done >&2"], env={"PATH": os.environ["PATH"]}, log=None, timeout=30)
    assert result.ok and result.lines == ["done"]
