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
unit test; :class:`WorkerMonitor` feeds it from the worker's own state and carries out the verdict.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from celery.worker import state
from sqlalchemy import bindparam, text

from backend.app import database
from backend.app.config import Settings
from backend.app.runtime import worker_loop, workers
from backend.app.runtime.celery_config import broker_label
from backend.app.runtime.sql_transport import POLLS, release_deliveries
from backend.app.services.targets import placement

logger = logging.getLogger(__name__)

#: where a worker notes each heartbeat it wrote (``deploy/healthcheck.py`` reads it: the container's health check
#: then needs neither WindFlow's imports nor a database round trip, which took 20 s and more on a loaded machine)
HEALTH_DIR = Path(tempfile.gettempdir()) / "windflow-worker-health"


def write_health_file(name: str, state: str, problem: str | None, directory: Path = HEALTH_DIR) -> None:
    """``<pid>.json`` with the heartbeat just written to the database (name, state, problem, time), replaced
    atomically; a directory that is not this user's own (another user made it first) is left alone."""
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return
        path = directory / f"{os.getpid()}.json"
        temporary = directory / f".{os.getpid()}.tmp"
        temporary.write_text(json.dumps({"name": name, "pid": os.getpid(), "state": state, "problem": problem, "at": time.time()}))
        os.replace(temporary, path)
    except OSError as exc:
        logger.debug("could not write the health file: %s", exc)


#: ``EX_TEMPFAIL``: the worker left because it stopped executing; a supervisor should start it again
EXIT_DEGRADED = 75

#: /proc states of a process that can run a task (running, sleeping, disk sleep, idle)
_RUNNABLE = frozenset("RSDI")


def _stat_after_name(pid: int) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after the process name (state, parent id, ...); empty when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``R``, ``S``, ``T`` stopped, ``Z`` zombie, ...), or None."""
    fields = _stat_after_name(pid)
    return fields[0].decode() if fields else None


def parent_of(pid: int) -> int | None:
    """The parent process id of ``pid``, or None when it is gone."""
    fields = _stat_after_name(pid)
    return int(fields[1]) if len(fields) > 1 else None


def live_processes(pids: Iterable[int]) -> int:
    return sum(1 for pid in pids if (process_state(pid) or "X") in _RUNNABLE)


def kill_processes(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass(frozen=True)
class Problem:
    """One reason a worker executes nothing: a stable ``code`` with the numbers it quotes (``params``, which a
    client words in its own language: ``/system/workers``' ``problems``) and the English ``text``."""

    code: str
    text: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"code": self.code, "params": self.params}


#: Every code a :class:`Problem` may carry (the web UI words each one: ``system.problems`` in its catalogues).
PROBLEM_CODES = ("pool_not_refilled", "task_not_started", "consumer_stalled", "left_degraded")


@dataclass(frozen=True)
class Verdict:
    live: int
    concurrency: int
    problems: tuple[Problem, ...] = ()
    #: seconds the worker has been degraded without a break (0 when healthy)
    degraded_for: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def problem(self) -> str | None:
        return "; ".join(p.text for p in self.problems)[:500] if self.problems else None

    @property
    def coded(self) -> list[dict] | None:
        """The problems as codes and params (what the heartbeat row keeps beside the text)."""
        return [p.to_dict() for p in self.problems] or None


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
        problems: list[Problem] = []
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
                seconds = round(now - self._short_since)
                problems.append(
                    Problem(
                        "pool_not_refilled",
                        f"the pool has {live}/{self.concurrency} live processes and has not refilled for {seconds}s",
                        {"live": live, "concurrency": self.concurrency, "seconds": seconds},
                    )
                )
        else:
            self._short_since = None

        idle = live - len(active)
        waiting = [(at, name, rid) for rid, (at, name) in self.waiting_since.items()]
        if waiting and idle > 0:
            at, name, request_id = min(waiting)
            if now - at >= self.stall_seconds:
                seconds = round(now - at)
                problems.append(
                    Problem(
                        "task_not_started",
                        f"task {name}[{request_id}] received {seconds}s ago was not started although {idle} pool process(es) are idle",
                        {"task": f"{name}[{request_id}]", "seconds": seconds, "idle": idle},
                    )
                )

        if poll_age is not None and poll_age >= self.stall_seconds and messages_waiting and len(reserved) < self.concurrency:
            seconds = round(poll_age)
            problems.append(
                Problem(
                    "consumer_stalled",
                    f"the consumer has not fetched from the broker for {seconds}s while messages wait",
                    {"seconds": seconds},
                )
            )

        if problems:
            self._degraded_since = self._degraded_since if self._degraded_since is not None else now
        else:
            self._degraded_since = None
        degraded_for = 0.0 if self._degraded_since is None else now - self._degraded_since
        return Verdict(live=live, concurrency=self.concurrency, problems=tuple(problems), degraded_for=degraded_for)


class WorkerMonitor:
    """A worker main process's heartbeat and watchdog (started by ``celery_app.py`` when the worker is
    ready, on a thread of its own): once a second it judges whether the worker executes (:class:`Watchdog`),
    expires the leases of pool processes that died, writes the heartbeat (every few seconds, and at once when
    the verdict changes) and makes a worker that stayed degraded :meth:`leave`."""

    def __init__(
        self,
        name: str,
        kind: str,
        concurrency: int,
        controller,
        consumer,
        *,
        settings: Settings,
        stop: threading.Event,
        targets: list[str] | None = None,
    ) -> None:
        self.name, self.kind, self.concurrency = name, kind, concurrency
        #: what its heartbeat says it serves (``WORKER_TARGETS`` resolved; None: the shared queue only)
        self.targets = targets
        self.controller, self.consumer = controller, consumer  # Celery's WorkController and Consumer
        self.settings, self.stop = settings, stop
        self.watchdog = Watchdog(concurrency=concurrency, stall_seconds=settings.WORKER_STALL_SECONDS)
        self.verdict = None
        self.sql_broker = (settings.celery_broker_url or "").startswith("sqla+")
        self.pids: set[int] = set()  # the pool's processes at the last look
        self.thread: threading.Thread | None = None  # the one running run()
        self._last_beat = 0.0  # when the last heartbeat was written (monotonic)
        self._reported: tuple | None = None  # the (health, problem) it said

    def pool_pids(self) -> list[int] | None:
        """The pool's process ids, or None for a pool without processes of its own: the solo pool lists the
        worker's own process (never to be counted, nor killed, as a pool process), the threads pool none."""
        pool = getattr(self.controller, "pool", None)
        try:
            pids = (pool.info or {}).get("processes") if pool is not None else None
        except Exception:  # noqa: BLE001 - a pool being torn down has no info
            return []
        if pids is None:
            return None
        # a process being replaced (killed, not forked again yet) is listed without a pid
        own = [int(pid) for pid in pids if pid is not None and int(pid) != os.getpid()]
        return None if pids and not own else own

    def observe(self, messages_waiting: bool | None, pids: list[int] | None):
        """Judge the worker now; ``pids``: the pool's process ids as :meth:`pool_pids` gave them this look."""
        now = time.monotonic()
        live = self.concurrency if pids is None else live_processes(pids)
        reserved = {r.id: r.name for r in list(state.reserved_requests)}
        active = [r.id for r in list(state.active_requests)]
        verdict = self.watchdog.judge(
            now,
            live=live,
            reserved=reserved,
            active=active,
            poll_age=POLLS.age(now) if self.sql_broker else None,
            messages_waiting=messages_waiting,
        )
        if verdict.healthy != (self.verdict is None or self.verdict.healthy):
            if verdict.healthy:
                logger.warning("worker %s is healthy again", self.name)
            else:
                logger.error("worker %s is degraded: %s", self.name, verdict.problem)
        self.verdict = verdict
        return verdict

    def lost_children(self, pids: list[int] | None) -> set[int]:
        """Pool processes seen at the last look that are gone now (billiard replaces them); ``pids`` as in
        :meth:`observe`."""
        current = set(pids or [])
        lost = {pid for pid in self.pids - current if process_state(pid) in (None, "Z")}
        # one that is no longer listed but still exists stays known: a pool being torn down lists nothing
        self.pids = current | (self.pids - current - lost)
        return lost

    def pool_to_kill(self) -> set[int]:
        """The pool processes to kill as the worker leaves: those the pool lists now and those seen before that
        are still this process's children. During a warm shutdown the pool may list none (it is being torn
        down) while its processes, stopped or hung, still exist: they must not outlive the worker."""
        known = set(self.pool_pids() or []) | self.pids
        return {pid for pid in known if parent_of(pid) == os.getpid()}

    async def _expire_leases_of(self, pids: set[int]) -> None:
        """Deployments run by pool processes that died are orphans now: the reaper (or the redelivered
        message) reclaims them at once instead of a lease later."""
        async with database.AsyncSessionLocal() as session:
            expired = await workers.expire_leases_of(session, hostname=socket.gethostname(), pids=pids)
            await session.commit()
        if expired:
            logger.warning(
                "worker %s: %d deployment(s) of pool process(es) %s that died: their leases expire now", self.name, expired, sorted(pids)
            )

    def queues(self) -> list[str]:
        """The queues this worker consumes: the shared one, or those of the targets it declares."""
        if self.targets is None:
            return [placement.SHARED_QUEUE]
        return [placement.SHARED_QUEUE if t == placement.SHARED else placement.queue_name(t) for t in self.targets]

    def _polls_stale(self) -> bool:
        """On the PostgreSQL broker, whether the consumer's last poll is older than ``WORKER_STALL_SECONDS``."""
        age = POLLS.age()
        return self.sql_broker and age is not None and age >= self.settings.WORKER_STALL_SECONDS

    async def _messages_waiting(self) -> bool:
        """Whether this worker's queues on the PostgreSQL broker have visible messages (asked by :meth:`_look`
        only when :meth:`_polls_stale`; a message waiting in a queue it does not consume, such as a placed
        target's that no worker serves, is not its business)."""
        query = text(
            "SELECT EXISTS (SELECT 1 FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id WHERE m.visible AND q.name IN :queues)"
        ).bindparams(bindparam("queues", expanding=True))
        async with database.AsyncSessionLocal() as session:
            return bool((await session.execute(query, {"queues": self.queues()})).scalar())

    def run(self) -> None:
        """Once a second until stopped. An unexpected error in one look is logged and the next look runs: a
        thread that died would leave a worker that runs tasks with no heartbeat (seen as gone)."""
        self.thread = threading.current_thread()
        while not self.stop.is_set():
            try:
                self._look()
            except Exception:
                logger.exception("worker %s: the watchdog's look failed; the next one runs in a second", self.name)
            self.stop.wait(1.0)

    def _look(self) -> None:
        """One look: is the worker executing, did pool processes die, and the heartbeat when it is due."""
        waiting = None
        if self._polls_stale():  # else nothing to ask the database: no hop to the worker's loop every second
            try:
                waiting = worker_loop.run(self._messages_waiting(), timeout=10)
            except Exception:  # noqa: BLE001 - the database may be down: the consumer's poll age alone says nothing
                waiting = None
        pids = self.pool_pids()  # the pool's info, read once a look
        verdict = self.observe(waiting, pids)
        if lost := self.lost_children(pids):
            try:
                worker_loop.run(self._expire_leases_of(lost), timeout=10)
            except Exception:
                logger.warning("could not expire the leases of dead pool processes %s", sorted(lost), exc_info=True)
        health = workers.HEALTHY if verdict.healthy else workers.DEGRADED
        if time.monotonic() - self._last_beat >= workers.HEARTBEAT_SECONDS or (health, verdict.problem) != self._reported:

            async def beat(health: str = health, verdict=verdict) -> None:
                async with database.AsyncSessionLocal() as session:
                    await self._write_heartbeat(
                        session,
                        state=health,
                        problem=verdict.problem,
                        problem_codes=verdict.coded,
                        live_processes=verdict.live,
                        pool_pids=sorted(self.pids) or None,
                    )

            try:
                worker_loop.run(beat(), timeout=30)
                self._last_beat, self._reported = time.monotonic(), (health, verdict.problem)
            except Exception:
                logger.warning("worker heartbeat failed", exc_info=True)
            else:
                write_health_file(self.name, health, verdict.problem)
        if not verdict.healthy and verdict.degraded_for >= self.settings.WORKER_LEAVE_AFTER_SECONDS:
            seconds = round(verdict.degraded_for)
            left = Problem("left_degraded", f"degraded for {seconds}s", {"seconds": seconds})
            self.leave(f"{left.text}: {verdict.problem}", problems=[left, *verdict.problems])

    async def _write_heartbeat(self, session, **state) -> None:
        """This worker's heartbeat row: who it is (name, kind, host, pid, broker, concurrency, targets) and ``state``."""
        await workers.write_heartbeat(
            session,
            name=self.name,
            kind=self.kind,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            broker=broker_label(self.settings),
            concurrency=self.concurrency,
            targets=self.targets,
            **state,
        )

    def leave(self, reason: str, exit_code: int | None = None, problems: list[Problem] | None = None) -> None:
        """Exit now, without waiting for a pool that will not finish: messages back to the queue, pool
        processes killed, the heartbeat row marked (a degraded worker) or removed (a shutdown)."""
        degraded = exit_code is None
        logger.critical(
            "worker %s leaves: %s. Its messages go back to the queue%s",
            self.name,
            reason,
            "; its supervisor (compose restart, systemd, the backend's embedded-worker manager) starts a fresh one" if degraded else "",
        )
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5)  # a beat in flight must not re-create the row removed below
        with contextlib.suppress(Exception):  # Redis: unacknowledged messages back in the queue now
            self.consumer.task_consumer.channel.qos.restore_unacked_once()
        if self.sql_broker:
            try:
                released = release_deliveries(self.settings.sync_database_url, hostname=socket.gethostname(), pid=os.getpid())
                logger.warning("worker %s put %d message(s) back in the queue", self.name, released)
            except Exception as exc:  # noqa: BLE001 - the reaper puts them back once this heartbeat is stale
                logger.warning("worker %s could not put its messages back (%s): the reaper will", self.name, exc)
        pool = self.pool_to_kill()
        kill_processes(pool)

        async def mark() -> None:
            async with database.AsyncSessionLocal() as session:
                await workers.expire_leases_of(session, hostname=socket.gethostname(), pids=pool | {os.getpid()})
                if degraded:
                    await self._write_heartbeat(
                        session,
                        state=workers.DEGRADED,
                        problem=f"left: {reason}"[:500],
                        problem_codes=[p.to_dict() for p in problems or ()] or None,
                        live_processes=0,
                    )
                else:
                    await workers.remove_heartbeat(session, self.name)

        try:
            worker_loop.run(mark(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - the row goes stale by itself; say why it was not updated
            logger.warning("worker %s could not update its heartbeat row as it left: %r", self.name, exc)
        logging.shutdown()
        os._exit(EXIT_DEGRADED if degraded else exit_code)
