"""Redis pub/sub."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from backend.app.runtime.event_transport.base import (
    CONNECT_TIMEOUT_SECONDS,
    HEARTBEAT_SECONDS,
    REDIS_CHANNEL,
    REDIS_MAX_PAYLOAD,
    EventTransport,
    MessageHandler,
    PayloadRejected,
    watch,
)

logger = logging.getLogger("backend.app.runtime.event_transport")  # one logger name for the whole bus


class RedisTransport(EventTransport):
    """Redis pub/sub: a pubsub connection to listen, the client's pool to ``PUBLISH``.

    redis-py's own pub/sub reconnection is disabled (``Retry(NoBackoff(), 0)``) so that a lost
    connection surfaces here and goes through the same reconnect path, status and logs as PostgreSQL.
    """

    name = "redis"
    max_payload = REDIS_MAX_PAYLOAD

    def __init__(
        self,
        url: str,
        channel: str = REDIS_CHANNEL,
        *,
        client_name: str = "windflow-events",
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.url = url
        self.channel = channel
        self.client_name = client_name
        self.heartbeat = heartbeat
        self._client = None
        self._pubsub = None
        self._reader: asyncio.Task | None = None
        self._lost = asyncio.Event()
        self._reader_error: BaseException | None = None

    async def connect(self, on_message: MessageHandler | None) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._lost = asyncio.Event()
        self._reader_error = None
        client = Redis.from_url(
            self.url,
            client_name=self.client_name,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            health_check_interval=int(self.heartbeat),
        )
        self._client = client
        try:
            await client.ping()
            if on_message is not None:
                self._pubsub = client.pubsub()
                await self._pubsub.subscribe(self.channel)
                # SUBSCRIBE only counts once the server confirms it: wait for the confirmation.
                deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
                while True:
                    message = await self._pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "subscribe":
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"Redis did not confirm SUBSCRIBE {self.channel}")
                self._reader = asyncio.create_task(self._read(self._pubsub, on_message), name="event-bus-redis-reader")
        except BaseException:
            await self.close()
            raise

    async def _read(self, pubsub, on_message: MessageHandler) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=self.heartbeat)
                if message is not None and message["type"] == "message":
                    on_message(message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the subscription means reconnecting
            self._reader_error = exc
            self._lost.set()

    async def send(self, payloads: Sequence[str]) -> None:
        from redis.exceptions import ResponseError

        client = self._client
        if client is None:
            self._lost.set()
            raise ConnectionError("not connected to Redis")
        try:
            async with client.pipeline(transaction=True) as pipe:
                for payload in payloads:
                    pipe.publish(self.channel, payload)
                await pipe.execute()
        except ResponseError as exc:
            raise PayloadRejected(str(exc)) from exc
        except BaseException:
            self._lost.set()
            raise

    async def wait_closed(self) -> None:
        if await watch(self._lost, self.heartbeat, self._probe) and self._reader_error is not None:
            raise ConnectionError(f"subscription lost: {self._reader_error}")

    async def _probe(self) -> bool:
        if self._client is None:
            return False
        await asyncio.wait_for(self._client.ping(), self.heartbeat)
        return True

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        for resource in (pubsub, client):
            if resource is not None:
                try:
                    await resource.aclose()
                except Exception:
                    logger.debug("closing the Redis event bus connection failed", exc_info=True)
        if client is not None:
            # A connection killed server-side can make aclose() fail half-way: close every socket of the
            # pool anyway, or it is left to the garbage collector (a ResourceWarning, seen in the tests).
            try:
                await client.connection_pool.disconnect(inuse_connections=True)
            except Exception:
                logger.debug("closing the Redis event bus connection pool failed", exc_info=True)
