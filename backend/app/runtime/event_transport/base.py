"""The transports' constants and what every transport is: one connection to a message server."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from backend.app.core.events import sleep_or_event

logger = logging.getLogger("backend.app.runtime.event_transport")  # one logger name for the whole bus


EventBusKind = Literal["memory", "postgres", "redis"]

PG_CHANNEL = "windflow_events"
REDIS_CHANNEL = "windflow:events"
DEFAULT_REDIS_BROKER_URL = "redis://127.0.0.1:6379/1"  # the broker Settings.celery_broker_url derives
# PostgreSQL: "the payload string must be shorter than 8000 bytes" (NOTIFY, default configuration).
PG_MAX_PAYLOAD = 7999
# Redis accepts up to 512 MB; a smaller cap keeps one huge event from stalling slow subscribers.
REDIS_MAX_PAYLOAD = 1_000_000
HEARTBEAT_SECONDS = 15.0
CONNECT_TIMEOUT_SECONDS = 10.0
# Connections are named (PostgreSQL application_name, Redis CLIENT SETNAME) this prefix + 12 hex of the
# process's origin, so that an operator can tell them apart in pg_stat_activity / CLIENT LIST.
CONNECTION_NAME_PREFIX = "windflow-events-"


class PayloadRejected(Exception):
    """The server refused these payloads although the connection is fine: resending will not help."""


MessageHandler = Callable[[str | bytes], None]


class EventTransport(ABC):
    """One connection to a message server: listen on a channel and send payloads to it.

    ``connect`` returns once the process is listening (so nothing sent afterwards is missed);
    ``wait_closed`` returns or raises when the connection is lost; ``send`` raises
    :class:`PayloadRejected` for payloads the server refuses and any other exception for a broken
    connection (after which ``wait_closed`` returns).
    """

    name: str
    channel: str = ""
    max_payload: int = PG_MAX_PAYLOAD
    crosses_processes = True

    @abstractmethod
    async def connect(self, on_message: MessageHandler | None) -> None: ...

    @abstractmethod
    async def send(self, payloads: Sequence[str]) -> None: ...

    @abstractmethod
    async def wait_closed(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


async def watch(lost: asyncio.Event, heartbeat: float, probe: Callable[[], Awaitable[bool]]) -> bool:
    """A transport's ``wait_closed``: until ``lost`` is set (True), probing the connection after every
    ``heartbeat`` seconds without news. ``probe`` raises when the connection is broken and returns False
    when there is none any more (closed meanwhile: then this returns False)."""
    while not lost.is_set():
        if not await sleep_or_event(heartbeat, lost) and not await probe():
            return False
    return True
