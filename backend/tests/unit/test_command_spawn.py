"""How ``run_command`` starts a command: behind ``setpriv --pdeathsig KILL`` where it can (no ``preexec_fn``, so
no ``fork()`` of the whole backend), else with the ``preexec_fn``; either way a program that cannot be run is a
permanent error naming it. That the command dies with its executor is
``tests/celery/test_self_healing.py::test_compose_children_die_with_their_executor``."""

from __future__ import annotations

import os

import pytest

from backend.app.engines import process
from backend.app.engines.base import EngineError


async def test_a_program_that_does_not_exist_is_a_permanent_error_naming_it():
    with pytest.raises(EngineError) as caught:
        await process.run_command(["windflow-no-such-program"], env={"PATH": os.environ["PATH"]}, log=None, timeout=30)
    assert caught.value.message.startswith("cannot run windflow-no-such-program:")
    assert caught.value.transient is False


async def test_without_setpriv_the_command_runs_with_the_preexec_fn(monkeypatch):
    monkeypatch.setattr(process, "_setpriv_prefix", lambda: None)
    lines: list[str] = []

    async def log(level, line):
        lines.append(line)

    result = await process.run_command(["sh", "-c", "echo started >&2"], env={"PATH": os.environ["PATH"]}, log=log, timeout=30)
    assert result.ok and lines == ["started"]


async def test_the_command_is_the_process_started_in_its_own_session():
    """``setpriv`` execs the command in its own process: the pid started (the session's leader, which a cancel
    kills by group) is the command's, which reports its arguments unchanged."""
    result = await process.run_command(
        ["sh", "-c", 'echo "$$ $(ps -o sid= -p $$) $0 $1"', "name", "arg"],
        env={"PATH": os.environ["PATH"]},
        log=None,
        timeout=30,
        capture_stdout=True,
    )
    pid, sid, name, arg = result.stdout.split()
    assert pid == sid and (name, arg) == ("name", "arg")
