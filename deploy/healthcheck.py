#!/usr/bin/env python3
"""Container health checks of the WindFlow image (``windflow-healthcheck [backend|worker|beat]``).

Without an argument the role is read from the container's command line (PID 1), so the image's single
``HEALTHCHECK`` fits the backend, the workers and beat alike.

* ``backend``: ``GET /health`` on this container answers 200 (it answers 503 when the database is down).
* ``worker``: a Celery worker of this container wrote its heartbeat row to the database within the last
  ``STALE_AFTER_SECONDS``, and it is not ``degraded`` (alive but executing nothing: its watchdog says why, and
  makes it leave so the container restarts). Workers are seen through their heartbeats, not ``celery inspect
  ping``: kombu's SQL transport (the PostgreSQL broker) has no broadcast, so a ping never reaches a worker
  there. The heartbeat is written by the worker's own thread every few seconds and only once it is ready to
  consume; after each one it writes, the thread notes it in ``<tmp>/windflow-worker-health/<pid>.json``
  (``runtime/worker_watchdog.py``), which this check reads: a fresh note of a live process means "started,
  and reached the database a few seconds ago", with no import of WindFlow and no database round trip (those
  took 20 s and more per check on a loaded machine, longer than the check's timeout).
* ``beat``: nothing to ask (beat serves nothing and writes no heartbeat); the container runs while beat does.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def check_backend() -> str | None:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health"
    try:
        with urllib.request.urlopen(url, timeout=8) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}: {exc.read()[:500].decode(errors='replace')}"
    except OSError as exc:
        return f"{url}: {exc}"
    return None


#: ``runtime/worker_watchdog.py``'s HEALTH_DIR and ``runtime/workers.py``'s STALE_AFTER_SECONDS (this file
#: imports nothing of WindFlow; backend/tests/unit/test_worker_health_file.py checks they agree)
HEALTH_DIR = Path(tempfile.gettempdir()) / "windflow-worker-health"
STALE_AFTER_SECONDS = 12.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def check_worker(directory: Path = HEALTH_DIR, now: float | None = None) -> str | None:
    now = time.time() if now is None else now
    try:
        info = os.lstat(directory)
        # the worker's own directory (it runs as the image's user; ``docker exec`` runs this check as root),
        # that nobody else may write to
        ours = stat.S_ISDIR(info.st_mode) and os.getuid() in (0, info.st_uid) and not info.st_mode & 0o022
    except OSError:
        ours = False
    fresh = []
    for path in sorted(directory.glob("*.json")) if ours else []:
        try:
            note = json.loads(path.read_text())
            pid, at = int(note["pid"]), float(note["at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid) and 0 <= now - at <= STALE_AFTER_SECONDS:
            fresh.append(note)
    if not fresh:
        return f"no fresh heartbeat from a worker on {socket.gethostname()} (not ready yet, or cannot reach the database)"
    sick = [f"{note.get('name')} is degraded: {note.get('problem')}" for note in fresh if note.get("state") != "healthy"]
    return "; ".join(sick) or None


def check_beat() -> str | None:
    return None


CHECKS = {"backend": check_backend, "worker": check_worker, "beat": check_beat}


def container_role(argv: list[str] | None = None) -> str:
    """``worker`` or ``beat`` for ``celery ... worker|beat`` containers, else ``backend``.

    ``argv`` defaults to PID 1's command line: ``tini -- windflow-entrypoint <command>`` in the image.
    """
    if argv is None:
        try:
            with open("/proc/1/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            return "backend"
    if any(arg == "celery" or arg.endswith("/celery") for arg in argv):
        for role in ("worker", "beat"):
            if role in argv:
                return role
    return "backend"


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] not in CHECKS):
        print(f"usage: windflow-healthcheck [{'|'.join(CHECKS)}]", file=sys.stderr)
        return 2
    role = argv[1] if len(argv) == 2 else container_role()
    problem = CHECKS[role]()
    if problem:
        print(f"{role} unhealthy: {problem}", file=sys.stderr)
        return 1
    print(f"{role} healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
