"""A worker is healthy only if it executes.

A Celery worker's main process can stay alive, heartbeat and consume while nothing it receives ever runs:
billiard's pool stops replacing killed children, a child killed (or stopped) while holding the pool's
shared queue lock leaves every other child waiting for that lock, or the consumer stops fetching after a
broker outage. Seen from outside it looks perfectly healthy. The watchdog looks where the work happens,
from the main process, once a second:

* **pool short** — fewer live pool processes (running or sleeping: not stopped, zombie or gone) than the
  worker's concurrency, for longer than the bound: the pool does not refill;
* **not started** — a task received longer than the bound ago that no pool process has started while at
  least one live process is idle;
* **not fetching** (PostgreSQL broker) — the consumer has not completed a poll for longer than the bound
  while it has free slots and messages wait in the queue.

Any of these makes the worker ``degraded``: its heartbeat row says so with the problem (``/health``,
``/api/v1/system/workers``, ``/metrics``), dispatch and the embedded worker's manager stop counting on it,
and once it has stayed degraded for ``WORKER_LEAVE_AFTER_SECONDS`` it **leaves**: its messages go back to
the queue, its pool processes are killed and the process exits with :data:`EXIT_DEGRADED`, so that its
supervisor (compose ``restart:``, systemd, the backend's embedded-worker manager) starts a fresh one.

:class:`Watchdog` is the judgement alone (pure: the caller passes what it saw), so that each rule has a fast
unit test; ``celery_app.py`` feeds it and carries out the verdict.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

#: ``EX_TEMPFAIL``: the worker left because it stopped executing; a supervisor should start it again
EXIT_DEGRADED = 75

#: /proc states of a process that can run a task (running, sleeping, disk sleep, idle)
_RUNNABLE = frozenset("RSDI")


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``R``, ``S``, ``T`` stopped, ``Z`` zombie, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def live_processes(pids: Iterable[int]) -> int:
    return sum(1 for pid in pids if (process_state(pid) or "X") in _RUNNABLE)


def kill_processes(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass(frozen=True)
class Verdict:
    live: int
    concurrency: int
    problems: tuple[str, ...] = ()
    #: seconds the worker has been degraded without a break (0 when healthy)
    degraded_for: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def problem(self) -> str | None:
        return "; ".join(self.problems)[:500] if self.problems else None


@dataclass
class Watchdog:
    concurrency: int
    stall_seconds: float
    #: request id -> (monotonic time first seen waiting, task name)
    waiting_since: dict[str, tuple[float, str]] = field(default_factory=dict)
    _short_since: float | None = None
    _degraded_since: float | None = None

    def judge(
        self,
        now: float,
        *,
        live: int,
        reserved: dict[str, str],
        active: Iterable[str],
        poll_age: float | None = None,
        messages_waiting: bool | None = None,
    ) -> Verdict:
        """What the worker looks like at ``now``: ``reserved`` maps the ids of the tasks it holds (started or
        not) to their names, ``active`` the ones a pool process started; ``poll_age`` seconds since the
        consumer's last completed poll (None: not known for this broker); ``messages_waiting`` whether the
        queue has visible messages (None: not known). Called about once a second: a task counts as waiting
        from the first call that sees it reserved and not started."""
        problems: list[str] = []
        active = set(active)
        for request_id in list(self.waiting_since):
            if request_id not in reserved or request_id in active:
                del self.waiting_since[request_id]  # done, started, or given back
        for request_id, name in reserved.items():
            if request_id not in active:
                self.waiting_since.setdefault(request_id, (now, name))

        if live < self.concurrency:
            self._short_since = self._short_since if self._short_since is not None else now
            if now - self._short_since >= self.stall_seconds:
                problems.append(
                    f"the pool has {live}/{self.concurrency} live processes and has not refilled for "
                    f"{now - self._short_since:.0f}s"
                )
        else:
            self._short_since = None

        idle = live - len(active)
        waiting = [(at, name, rid) for rid, (at, name) in self.waiting_since.items()]
        if waiting and idle > 0:
            at, name, request_id = min(waiting)
            if now - at >= self.stall_seconds:
                problems.append(
                    f"task {name}[{request_id}] received {now - at:.0f}s ago was not started although "
                    f"{idle} pool process(es) are idle"
                )

        if (
            poll_age is not None
            and poll_age >= self.stall_seconds
            and messages_waiting
            and len(reserved) < self.concurrency
        ):
            problems.append(f"the consumer has not fetched from the broker for {poll_age:.0f}s while messages wait")

        if problems:
            self._degraded_since = self._degraded_since if self._degraded_since is not None else now
        else:
            self._degraded_since = None
        degraded_for = 0.0 if self._degraded_since is None else now - self._degraded_since
        return Verdict(live=live, concurrency=self.concurrency, problems=tuple(problems), degraded_for=degraded_for)
