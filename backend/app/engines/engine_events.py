"""Waking a wait on the engine's own events, so that the health gate reacts when a container changes.

The drivers' waits poll the engine every :data:`~backend.app.engines.docker_base.POLL_INTERVAL` seconds
(``poll_until``). A container that turns healthy right after a poll was seen up to that long later: on a
rollout of a stack whose healthcheck probes every second, a quarter of a second of the rollout was that lag
(bench/README.md, rollout.py). :class:`EngineWake` follows the engine's event stream (``GET /events``)
for the deployment's containers in a thread of its own and sets an :class:`asyncio.Event` on each event that
may change the gate's verdict (a start, an exit, a restart, a health status); the wait then polls at once.

It only wakes the poll: the gate judges the same inspection data as before, and the poll every
``POLL_INTERVAL`` stays, so a stream that cannot be opened (an engine refusing it, a proxy cutting it, more
than :data:`MAX_STREAMS` waits in this process) or an event that is missed changes nothing but the lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from typing import Any

import docker

#: The container events that may change a health gate's verdict (``health_status`` matches every
#: ``health_status: <status>``; the healthcheck's own ``exec_*`` events, one set per probe, are left out).
WAKING_EVENTS = ("create", "start", "restart", "die", "kill", "stop", "oom", "destroy", "pause", "unpause", "health_status")

#: Event streams open at once in this process (each holds a connection and a thread); waits beyond it poll.
MAX_STREAMS = 32
_streams = threading.BoundedSemaphore(MAX_STREAMS)


class EngineWake:
    """``async with EngineWake(client, labels) as wake``: ``wake.event`` is set on each engine event of a container
    carrying every label of ``labels`` (``{"windflow.deployment_id": id}``) from the moment the stream is open
    until the block ends. The stream opens in the background: the caller does not wait for it."""

    def __init__(self, client: docker.DockerClient, labels: Mapping[str, str]) -> None:
        self.client = client
        self.filters: dict[str, Any] = {
            "type": ["container"],
            "label": [f"{key}={value}" for key, value in labels.items()],
            "event": list(WAKING_EVENTS),
        }
        self.event = asyncio.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._stream: Any = None
        self._slot = False

    async def __aenter__(self) -> EngineWake:
        self._slot = _streams.acquire(blocking=False)
        if self._slot:
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._follow, args=(loop,), name="windflow-engine-events", daemon=True).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            _close(stream)  # ends the thread's read; the thread releases the slot

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        stream = None
        try:
            try:
                stream = self.client.api.events(decode=True, filters=self.filters)
            except Exception:  # noqa: BLE001 - no stream: the wait polls as it always did
                return
            with self._lock:
                if self._closed:
                    return
                self._stream = stream
            for _ in stream:
                try:
                    loop.call_soon_threadsafe(self.event.set)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return
        except Exception:  # noqa: BLE001 - a stream cut (by close() or the engine) ends the wake-ups, not the wait
            return
        finally:
            if stream is not None:
                _close(stream)
            _streams.release()


def _close(stream: Any) -> None:
    """Close an SDK event stream (a ``CancellableStream``: it shuts its socket down, which ends a read blocked on
    it in another thread); closing twice, or a stream whose socket is already gone, is fine."""
    with contextlib.suppress(Exception):
        stream.close()
