"""SQLite: the transport that crosses no process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from backend.app.runtime.event_transport.base import EventTransport, MessageHandler

logger = logging.getLogger("backend.app.runtime.event_transport")  # one logger name for the whole bus


class InProcessTransport(EventTransport):
    """SQLite: one process does everything, nothing crosses (the forwarder is not even installed)."""

    name = "memory"
    crosses_processes = False

    async def connect(self, on_message: MessageHandler | None) -> None:
        return None

    async def send(self, payloads: Sequence[str]) -> None:
        return None

    async def wait_closed(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None
