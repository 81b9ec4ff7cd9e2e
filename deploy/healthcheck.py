#!/usr/bin/env python3
"""Container health checks of the WindFlow image (``windflow-healthcheck [backend|worker|beat]``).

Without an argument the role is read from the container's command line (PID 1), so the image's single
``HEALTHCHECK`` fits the backend, the workers and beat alike.

* ``backend``: ``GET /health`` on this container answers 200 (it answers 503 when the database is down).
* ``worker``: a Celery worker of this container has a fresh heartbeat row, and it is not ``degraded``
  (alive but executing nothing: its watchdog says why, and makes it leave so the container restarts). Workers are seen through their
  heartbeats, not ``celery inspect ping``: kombu's SQL transport (the PostgreSQL broker) has no broadcast,
  so a ping never reaches a worker there. The heartbeat is written by the worker's own thread every few
  seconds and only once it is ready to consume, so a fresh one means "started and connected to the database".
* ``beat``: nothing to ask (beat serves nothing and writes no heartbeat); the container runs while beat does.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import urllib.error
import urllib.request


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


def check_worker() -> str | None:
    from backend.app import database
    from backend.app.runtime import workers

    hostname = socket.gethostname()

    async def own_workers() -> list:
        try:
            async with database.AsyncSessionLocal() as session:
                present = await workers.list_workers(session, include_stale=False)
        finally:
            await database.get_engine().dispose()
        return [w for w in present if w.hostname == hostname]

    try:
        mine = asyncio.run(own_workers())
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", with the reason
        return f"cannot read worker heartbeats: {type(exc).__name__}: {exc}"
    if not mine:
        return f"no fresh heartbeat from a worker on {hostname} (not ready yet, or cannot reach the database)"
    sick = [f"{w.name} is degraded: {w.problem}" for w in mine if not w.serving]
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
