"""A second WindFlow process for ``test_event_transport.py`` (run with ``python -m``; not a test module).

It reads one JSON spec on stdin::

    {"settings": {"DATABASE_URL": ..., "EVENT_BUS": ..., ...}, "channel": "..." | null, "listen": bool,
     "actions": [{"do": "publish" | "commit" | "commit_then_die" | "rollback", "event": <envelope>},
                 {"do": "logs", "deployment_id": ..., "lines": N, "prefix": "..."},
                 {"do": "wait_file", "path": ..., "timeout": 15},
                 {"do": "listen", "until": <deployment_id>, "timeout": 15}]}

The bus runs on the loop of one ``asyncio.run`` (like the backend and a Celery worker's loop).
``commit`` inserts an organisation whose id is the event's ``organization_id`` and queues the event on
that session; ``rollback`` does the same and rolls back. ``logs`` appends N persisted log lines to an
existing deployment (as the runner does) and commits: their event crosses as a pointer. ``wait_file``
waits until the test creates a file (a step the test controls).

It prints JSON lines: ``{"ready": status}`` once connected, ``{"received": envelope}`` for every event
delivered to its local subscribers during a ``listen`` action, and ``{"done": status, "flushed": bool}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

from backend.app.config import Settings
from backend.app.core.events import Event, bus, queue_event
from backend.app.database import build_engine
from backend.app.models import Organization
from backend.app.runtime.event_transport import (
    event_bus_status,
    flush_events,
    start_event_bus,
    stop_event_bus,
)


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def wait_connected(timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not event_bus_status()["connected"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"event bus not connected: {event_bus_status()}")
        await asyncio.sleep(0.02)


async def act(action: dict, settings: Settings) -> None:
    kind = action["do"]
    if kind == "listen":
        done = threading.Event()

        def on_event(evt: Event) -> None:
            emit(received=evt.to_dict())
            if evt.deployment_id == action["until"]:
                done.set()

        unsubscribe = bus.subscribe(on_event)
        try:
            deadline = time.monotonic() + action.get("timeout", 15)
            while not done.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            unsubscribe()
        return
    if kind == "wait_file":
        deadline = time.monotonic() + action.get("timeout", 15)
        while not Path(action["path"]).exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return
    if kind == "logs":
        from sqlalchemy.ext.asyncio import AsyncSession

        from backend.app.database import utcnow
        from backend.app.models import LogLevel
        from backend.app.services.deployments.logs import append_logs

        engine = build_engine(settings)
        try:
            async with AsyncSession(engine) as session:
                lines = [(LogLevel.INFO, f"{action['prefix']} {i}", utcnow()) for i in range(action["lines"])]
                await append_logs(session, deployment_id=action["deployment_id"], lines=lines)
                await session.commit()
            await flush_events(10)
        finally:
            await engine.dispose()
        return
    evt = Event.from_dict(action["event"])
    if kind == "publish":
        bus.publish(evt)
        return
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = build_engine(settings)
    try:
        async with AsyncSession(engine) as session:
            session.add(Organization(id=evt.organization_id, name=f"org-{evt.organization_id}"))
            queue_event(session, evt)
            await session.flush()
            if kind == "commit":
                await session.commit()
            elif kind == "commit_then_die":  # the process dies as its commit returns: its loop never runs again
                await session.commit()
                os._exit(3)
            else:
                await session.rollback()
    finally:
        await engine.dispose()


async def run_on_one_loop(spec: dict, settings: Settings) -> None:
    await start_event_bus(settings, listen=spec.get("listen", True), channel=spec.get("channel"))
    try:
        await wait_connected()
        emit(ready=event_bus_status())
        for action in spec["actions"]:
            await act(action, settings)
        flushed = await flush_events(10)
        emit(done=event_bus_status(), flushed=flushed)
    finally:
        await stop_event_bus()


def main() -> None:
    spec = json.loads(sys.stdin.read())
    settings = Settings(_env_file=None, **spec["settings"])
    asyncio.run(run_on_one_loop(spec, settings))


if __name__ == "__main__":
    main()
