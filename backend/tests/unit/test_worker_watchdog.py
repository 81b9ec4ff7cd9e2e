"""The worker watchdog's rules (``runtime/worker_watchdog.py``), one by one, on what a worker looks like.

The real-process behaviour (a stopped pool reported degraded, the worker leaving, its deployments run
elsewhere) is tested in ``tests/celery/test_worker_health.py``; here each rule's bound and its reset."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from backend.app.runtime.worker_watchdog import Watchdog, live_processes, process_state

STALL = 10.0


def dog(concurrency: int = 2) -> Watchdog:
    return Watchdog(concurrency=concurrency, stall_seconds=STALL)


def test_a_full_idle_pool_is_healthy():
    verdict = dog().judge(0.0, live=2, reserved={}, active=[])
    assert verdict.healthy and verdict.problem is None and verdict.degraded_for == 0


def test_a_short_pool_is_degraded_only_after_the_bound_and_healthy_again_once_refilled():
    watchdog = dog()
    assert watchdog.judge(0.0, live=1, reserved={}, active=[]).healthy  # billiard refills within a second
    assert watchdog.judge(9.0, live=1, reserved={}, active=[]).healthy
    verdict = watchdog.judge(10.0, live=0, reserved={}, active=[])
    assert not verdict.healthy
    assert "0/2 live processes" in verdict.problem and "10s" in verdict.problem
    assert verdict.coded == [{"code": "pool_not_refilled", "params": {"live": 0, "concurrency": 2, "seconds": 10}}]
    assert watchdog.judge(15.0, live=0, reserved={}, active=[]).degraded_for == 5.0
    assert watchdog.judge(16.0, live=2, reserved={}, active=[]).healthy
    assert watchdog.judge(17.0, live=1, reserved={}, active=[]).healthy  # a new shortage starts a new bound


def test_a_received_task_that_no_idle_process_starts_is_degraded():
    watchdog = dog()
    reserved = {"t1": "windflow.deploy_stack"}
    assert watchdog.judge(0.0, live=2, reserved=reserved, active=[]).healthy
    verdict = watchdog.judge(10.0, live=2, reserved=reserved, active=[])
    assert not verdict.healthy
    assert "windflow.deploy_stack[t1]" in verdict.problem and "2 pool process(es) are idle" in verdict.problem
    assert verdict.coded == [{"code": "task_not_started", "params": {"task": "windflow.deploy_stack[t1]", "seconds": 10, "idle": 2}}]
    # started at last: healthy, and forgotten
    assert watchdog.judge(11.0, live=2, reserved=reserved, active=["t1"]).healthy
    assert watchdog.waiting_since == {}


def test_a_task_waiting_behind_busy_processes_is_not_a_problem():
    watchdog = dog()
    reserved = {"a": "x", "b": "x", "c": "x"}
    for now in (0.0, 30.0, 60.0):
        assert watchdog.judge(now, live=2, reserved=reserved, active=["a", "b"]).healthy


def test_a_task_counts_as_waiting_from_the_first_look_that_sees_it():
    watchdog = dog()
    assert watchdog.judge(0.0, live=2, reserved={}, active=[]).healthy
    assert watchdog.judge(5.0, live=2, reserved={"t": "x"}, active=[]).healthy
    assert watchdog.judge(14.0, live=2, reserved={"t": "x"}, active=[]).healthy
    assert not watchdog.judge(15.0, live=2, reserved={"t": "x"}, active=[]).healthy
    # given back (the consumer restored it): forgotten
    assert watchdog.judge(16.0, live=2, reserved={}, active=[]).healthy
    assert watchdog.judge(30.0, live=2, reserved={"t": "x"}, active=[]).healthy


def test_a_consumer_that_stopped_fetching_while_messages_wait_is_degraded():
    watchdog = dog()
    assert watchdog.judge(0.0, live=2, reserved={}, active=[], poll_age=30.0, messages_waiting=False).healthy
    assert watchdog.judge(0.0, live=2, reserved={}, active=[], poll_age=30.0, messages_waiting=None).healthy
    assert watchdog.judge(0.0, live=2, reserved={}, active=[], poll_age=2.0, messages_waiting=True).healthy
    # a full prefetch window does not poll, and is not stuck
    full = {"a": "x", "b": "x"}
    assert watchdog.judge(0.0, live=2, reserved=full, active=["a", "b"], poll_age=30.0, messages_waiting=True).healthy
    verdict = watchdog.judge(0.0, live=2, reserved={}, active=[], poll_age=30.0, messages_waiting=True)
    assert not verdict.healthy and "has not fetched from the broker for 30s" in verdict.problem
    assert verdict.coded == [{"code": "consumer_stalled", "params": {"seconds": 30}}]


def test_live_processes_count_neither_a_stopped_nor_a_dead_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_state(child.pid) in {"S", "R"}
        assert live_processes([child.pid]) == 1
        child.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while process_state(child.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process_state(child.pid) == "T"
        assert live_processes([child.pid]) == 0
        child.send_signal(signal.SIGCONT)
        child.kill()
        while process_state(child.pid) not in {"Z", None} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert live_processes([child.pid]) == 0  # a zombie is not a pool process
    finally:
        child.kill()
        child.wait()
    assert process_state(child.pid) is None


def test_a_pool_process_being_replaced_is_listed_without_a_pid_and_skipped():
    """billiard lists a pool process it is replacing (killed, not forked again yet) with pid None: the monitor
    reads the others; ``int(None)`` killed its heartbeat thread, and the worker, still running tasks, looked gone."""
    import os
    import threading
    from types import SimpleNamespace

    from backend.app.config import Settings
    from backend.app.runtime.worker_watchdog import WorkerMonitor

    pool = SimpleNamespace(info={"processes": [4242, None, os.getpid(), 4343]})
    monitor = WorkerMonitor(
        "w@h", "external", 2, SimpleNamespace(pool=pool), None, settings=Settings(_env_file=None), stop=threading.Event()
    )
    assert monitor.pool_pids() == [4242, 4343]


def test_an_error_in_one_look_does_not_end_the_heartbeat_thread():
    import threading
    from types import SimpleNamespace

    from backend.app.config import Settings
    from backend.app.runtime.worker_watchdog import WorkerMonitor

    stop = threading.Event()
    monitor = WorkerMonitor("w@h", "external", 1, SimpleNamespace(pool=None), None, settings=Settings(_env_file=None), stop=stop)
    looks = []

    def look() -> None:
        looks.append(1)
        if len(looks) == 1:
            raise TypeError("int() argument must be ... not 'NoneType'")
        stop.set()

    monitor._look = look
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and len(looks) == 2  # the second look ran after the first one failed


class _Pool:
    """Celery's pool as the monitor reads it: ``info["processes"]``, or an error once it is being torn down."""

    def __init__(self, pids: list[int] | None) -> None:
        self.pids = pids

    @property
    def info(self) -> dict:
        if self.pids is None:
            raise RuntimeError("the pool is being torn down")
        return {"processes": self.pids}


def test_a_worker_leaving_mid_teardown_kills_the_pool_processes_the_pool_no_longer_lists(tmp_path):
    """A warm shutdown tears the pool down: it may list no process while its processes, stopped here, still
    exist. The worker that leaves then must still kill them (CI: a stopped pool process outlived its worker),
    and nothing that is not its child."""
    from types import SimpleNamespace

    from backend.app.runtime.worker_watchdog import WorkerMonitor
    from backend.tests.conftest import make_settings

    pool = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        for child in pool:
            child.send_signal(signal.SIGSTOP)
        controller = SimpleNamespace(pool=_Pool([child.pid for child in pool]))
        monitor = WorkerMonitor(
            "w@host", "external", 2, controller, None, settings=make_settings(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}"), stop=None
        )
        assert monitor.lost_children(monitor.pool_pids()) == set()  # a look while the pool lists them
        controller.pool = _Pool(None)
        assert monitor.lost_children(monitor.pool_pids()) == set()  # not listed now, yet not gone: not lost
        assert monitor.pool_to_kill() == {child.pid for child in pool}
        pool[0].kill()
        pool[0].wait()  # gone (its pid may be anyone's next): not killed
        assert monitor.pool_to_kill() == {pool[1].pid}
        monitor.pids.add(1)  # a pid known from the pool that is not this process's child now: never killed
        assert monitor.pool_to_kill() == {pool[1].pid}
    finally:
        for child in pool:
            child.kill()
            child.wait()
