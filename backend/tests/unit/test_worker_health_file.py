"""The worker's health note (runtime/worker_watchdog.write_health_file) and the container health check that
reads it (deploy/healthcheck.py check_worker, which imports nothing of WindFlow): written after each heartbeat,
fresh and of a live process = healthy; degraded, stale, of a dead process, or absent = unhealthy with a reason."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest

from backend.app.runtime import worker_watchdog, workers
from backend.tests.processes import REPO_ROOT


@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("windflow_healthcheck", REPO_ROOT / "deploy" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_check_reads_where_the_worker_writes(healthcheck):
    assert healthcheck.HEALTH_DIR == worker_watchdog.HEALTH_DIR
    assert healthcheck.STALE_AFTER_SECONDS == workers.STALE_AFTER_SECONDS
    assert healthcheck.STALE_AFTER_SECONDS > workers.HEARTBEAT_SECONDS


def test_a_fresh_note_of_a_live_healthy_worker_is_healthy(healthcheck, tmp_path):
    directory = tmp_path / "health"
    assert "no fresh heartbeat" in healthcheck.check_worker(directory)  # nothing written yet
    worker_watchdog.write_health_file("w1@h", workers.HEALTHY, None, directory)
    assert (directory.stat().st_mode & 0o777) == 0o700
    assert healthcheck.check_worker(directory) is None
    # stale: the heartbeat has not reached the database for longer than a worker counts as alive
    assert "no fresh heartbeat" in healthcheck.check_worker(directory, now=time.time() + workers.STALE_AFTER_SECONDS + 1)


def test_a_degraded_worker_is_unhealthy_with_its_problem(healthcheck, tmp_path):
    worker_watchdog.write_health_file("w1@h", workers.DEGRADED, "pool_dead: no live pool process", tmp_path)
    assert healthcheck.check_worker(tmp_path) == "w1@h is degraded: pool_dead: no live pool process"


def test_the_note_of_a_dead_process_or_garbage_counts_for_nothing(healthcheck, tmp_path):
    gone = 4_000_000 + os.getpid() % 100_000  # above any pid_max
    (tmp_path / f"{gone}.json").write_text(f'{{"name": "old", "pid": {gone}, "state": "healthy", "problem": null, "at": {time.time()}}}')
    (tmp_path / "junk.json").write_text("not json")
    assert "no fresh heartbeat" in healthcheck.check_worker(tmp_path)


def test_a_directory_that_is_not_ours_is_neither_written_nor_believed(healthcheck, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "health"
    link.symlink_to(target)
    worker_watchdog.write_health_file("w1@h", workers.HEALTHY, None, link)
    assert list(target.iterdir()) == []  # not written through a symlink
    (target / f"{os.getpid()}.json").write_text(f'{{"name": "w", "pid": {os.getpid()}, "state": "healthy", "at": {time.time()}}}')
    assert "no fresh heartbeat" in healthcheck.check_worker(link)
    target.chmod(0o777)  # a directory others may write to: its notes could be anyone's
    assert "no fresh heartbeat" in healthcheck.check_worker(target)
    target.chmod(0o700)
    assert healthcheck.check_worker(target) is None
