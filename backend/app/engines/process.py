"""Running the docker/compose CLIs: output streamed line by line, the whole process group killed on
cancellation or timeout, and the command killed with the executor that started it.

Each command runs in its own session (``start_new_session=True``) so that ``os.killpg`` reaches the
compose plugin and anything else the docker CLI spawned, not only the CLI itself.

Its own session also means a ``kill -9`` of the executor would leave it running, finishing (or fighting)
containers while the reaper hands the deployment to another executor. So every command is started with
the parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, :func:`die_with_parent`): when the
thread that started it dies (the worker's loop thread, the backend's event loop: they live as long as
their process), the kernel kills it. The compose plugin is run directly (``compose_cli``), so the
process that talks to the engine is the one that gets the signal.

The signal is armed by util-linux's ``setpriv --pdeathsig KILL -- <command>`` (it sets it, then execs the
command in the same process) where it is installed, rather than by a ``preexec_fn``: a ``preexec_fn`` makes
Python ``fork()`` the whole backend (page tables of a few hundred MB, then copy-on-write faults) instead of
``vfork()``; that start took 100-125 ms at a load of 10 against under 1 ms (bench/README.md, issue 23), and
a deploy starts two commands. Without ``setpriv`` the ``preexec_fn`` (:func:`die_with_parent`) arms it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from backend.app.engines.base import EngineError, EngineTimeout, EngineUnreachable, LogSink
from backend.app.engines.connection import is_transient, is_unreachable, signal_reaches
from backend.app.models.enums import LogLevel

#: Seconds between SIGTERM and SIGKILL when a command is cancelled or times out.
KILL_GRACE = 5.0
_LINE_LIMIT = 1 << 20


def level_for(line: str) -> LogLevel:
    lowered = line.lower()
    if "error" in lowered or "failed" in lowered:
        return LogLevel.ERROR
    if "warning" in lowered or "warn" in lowered:
        return LogLevel.WARNING
    return LogLevel.INFO


@dataclass
class CommandResult:
    returncode: int
    lines: list[str]  # the last lines of stdout+stderr, in arrival order
    stdout: str  # full stdout when captured, else ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_excerpt(self, limit: int = 8) -> str:
        """The lines worth quoting: those that look like errors, else the last ones."""
        errors = [line for line in self.lines if level_for(line) is LogLevel.ERROR]
        chosen = errors[-limit:] if errors else self.lines[-limit:]
        return "\n".join(chosen) or f"exit status {self.returncode}"


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True) if sys.platform == "linux" else None


def die_with_parent(sig: int = signal.SIGKILL):
    """A ``preexec_fn`` giving the child the parent-death signal ``sig`` (Linux; a no-op elsewhere).

    Built in the parent (it records the parent's pid) and run in the child between fork and exec, where
    only async-signal-safe work belongs: one ``prctl`` call and a ``getppid`` check for the race in
    which the parent died before the signal was armed.
    """
    parent = os.getpid()

    def arm() -> None:
        if _libc is None:
            return
        if _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return arm


@functools.cache
def _setpriv_prefix() -> tuple[str, ...] | None:
    """``setpriv --pdeathsig KILL --`` when this host's ``setpriv`` arms the parent-death signal (Linux,
    util-linux 2.33 or later), else None (the ``preexec_fn`` does). Asked once per process."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    true = shutil.which("true")
    if setpriv is None or true is None:
        return None
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    try:
        probe = subprocess.run([*prefix, true], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return prefix if probe.returncode == 0 else None


async def _spawn_argv(argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], Callable[[], None] | None]:
    """What to start for ``argv`` so that it dies with this thread: ``setpriv ... -- argv`` (no ``preexec_fn``,
    so a ``vfork``), or ``argv`` with :func:`die_with_parent`. A program that cannot be run raises ``OSError``
    here, as starting it would (``setpriv`` would only exit 127)."""
    cached = getattr(_setpriv_prefix, "cache_info", None)
    prefix = _setpriv_prefix() if cached and cached().currsize else await asyncio.to_thread(_setpriv_prefix)
    if prefix is None:
        return list(argv), die_with_parent()
    program = argv[0]
    found = program if os.sep in program else shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None or not os.access(found, os.X_OK) or os.path.isdir(found):
        raise FileNotFoundError(errno.ENOENT, "no such executable", program)
    return [*prefix, *argv], None


def group_alive(pgid: int) -> bool:
    return signal_reaches(os.killpg, pgid)


async def _terminate_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL what is left after KILL_GRACE, reap the leader."""
    pgid = proc.pid  # session leader: its pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE)
    while group_alive(pgid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    await proc.wait()
    # Members re-parented to init disappear once init reaps them; do not wait forever for a bad init.
    deadline = time.monotonic() + 2
    while group_alive(pgid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def run_command(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log: LogSink | None,
    cwd: Path | None = None,
    timeout: float = 600.0,
    capture_stdout: bool = False,
    stdin: bytes | None = None,
) -> CommandResult:
    """Run ``argv``; every stderr line (and stdout line unless ``capture_stdout``) goes to ``log`` as it
    arrives. Timeout → transient EngineError. Cancellation kills the process group and re-raises.

    The ``timeout`` counts from before the process is started: its start (a fork and an exec) is part of
    the command's time, and a caller descheduled meanwhile (a loaded machine) cannot find the command
    already finished and so escape a bound shorter than that."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        spawned, preexec = await _spawn_argv(argv, env)
        proc = await asyncio.create_subprocess_exec(
            *spawned,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=preexec,
            limit=_LINE_LIMIT,
        )
    except OSError as exc:
        raise EngineError(f"cannot run {argv[0]}: {exc}", transient=False) from exc

    tail: collections.deque[str] = collections.deque(maxlen=200)
    captured: list[str] = []

    async def pump(stream: asyncio.StreamReader, to_log: bool) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode(errors="replace")
            if not to_log:
                captured.append(line.rstrip("\r\n"))
                continue
            line = line.strip()
            if not line:
                continue
            tail.append(line)
            if log is not None:
                await log(level_for(line), line)

    async def communicate() -> int:
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            await proc.stdin.drain()
            proc.stdin.close()
        assert proc.stdout is not None and proc.stderr is not None
        await asyncio.gather(pump(proc.stdout, not capture_stdout), pump(proc.stderr, True))
        return await proc.wait()

    try:
        returncode = await asyncio.wait_for(communicate(), max(timeout - (loop.time() - started), 0))
    except TimeoutError:
        await asyncio.shield(_terminate_group(proc))
        raise EngineTimeout(f"`{' '.join(argv[-3:])}` did not finish within {timeout:g}s") from None
    except BaseException:
        # Cancelled (or the log sink failed): nothing of this command may outlive the step. Shielded so
        # that a second cancellation cannot interrupt the cleanup.
        await asyncio.shield(_terminate_group(proc))
        raise
    return CommandResult(returncode, list(tail), "\n".join(captured))


def failure(what: str, result: CommandResult) -> EngineError:
    """EngineError for a failed command, classified by what the tool printed."""
    excerpt = result.error_excerpt()
    if is_unreachable(excerpt):
        return EngineUnreachable(f"{what} failed: {excerpt}")
    return EngineError(f"{what} failed: {excerpt}", transient=is_transient(excerpt))
