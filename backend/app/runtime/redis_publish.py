"""Send WindFlow's deploy tasks to a Redis broker with one ``LPUSH`` on an asyncio connection.

``celery.send_task`` on Redis is a blocking kombu call (so it runs on a publishing thread) that takes about 2 ms
on a 2-core machine before the message reaches Redis: the producer pool, the queue's declaration, the
retry wrapper and the signals around a single ``LPUSH``. This module sends the same message from the event loop:

* the task message is Celery's own (``app.amqp.as_task_v2``: protocol 2 headers, ``[args, kwargs, embed]``
  body), with what ``send_task`` adds outside a worker (``reply_to`` the app's thread id);
* it is wrapped as kombu's Redis transport wraps it (``Channel.prepare_message`` and ``basic_publish``: the
  body base64-encoded, ``delivery_mode`` 2, priority 0, the anonymous exchange with the queue as routing key,
  a fresh ``delivery_tag``);
* and pushed with ``LPUSH`` onto the queue's list, the key kombu uses for priority 0, where the workers'
  ``BRPOP`` takes it. ``backend/tests/celery/test_dispatch_publish.py`` checks that the message equals what
  ``send_task`` pushes for the same task, ids aside, and the Celery suites run every Redis-mode deployment through it.

Only for a plain broker configuration (:func:`supports`): ``redis://`` or ``rediss://`` without
``broker_use_ssl``, no ``global_keyprefix`` or other key layout option. Anything else goes through kombu
(``dispatch.publish``), as every publish from inside a worker does (a task's own sends carry its ids).

A publish that fails raises like kombu's does, and the caller falls back the same way. A message pushed
twice (a reconnect that retried the ``LPUSH`` whose answer was lost) is harmless: the runner's claim lets one
execution through.
"""

from __future__ import annotations

import asyncio
import base64

from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps
from kombu.utils.uuid import uuid

from backend.app.runtime.celery_config import DEPLOY_TASK

#: transport options that change where or how kombu's Redis transport stores a message
_KEY_LAYOUT_OPTIONS = frozenset({"global_keyprefix", "sep", "priority_steps", "queue_order_strategy"})
CONNECT_TIMEOUT_SECONDS = 2.0


def supports(celery_app) -> bool:
    """Whether this module sends the messages of ``celery_app``'s broker the way kombu would."""
    conf = celery_app.conf
    url = conf.broker_url or ""
    if not url.startswith(("redis://", "rediss://")) or conf.broker_use_ssl:
        return False
    if _KEY_LAYOUT_OPTIONS & set(conf.broker_transport_options or {}):
        return False
    return conf.task_protocol == 2 and conf.task_serializer == "json" and not conf.task_compression


#: The message header of a deploy task pushed while the transaction creating its deployment was committing
#: (``Dispatcher.commit_and_dispatch_new``): the runner looks for a row it does not find yet again for a while.
SENT_BEFORE_COMMIT_HEADER = "windflow_sent_before_commit"


def message(
    celery_app, deployment_id: str, *, queue: str | None = None, countdown: float | None = None, before_commit: bool = False
) -> tuple[str, str, str]:
    """(task id, list key, payload) of ``deployment_id``'s deploy task, as ``send_task`` would push it (with
    ``headers={SENT_BEFORE_COMMIT_HEADER: True}`` when ``before_commit``)."""
    task_id = uuid()
    headers, properties, body, _ = celery_app.amqp.as_task_v2(
        task_id, DEPLOY_TASK, args=(deployment_id,), kwargs={}, countdown=countdown, reply_to=celery_app.thread_oid, ignore_result=None
    )
    if before_commit:
        headers[SENT_BEFORE_COMMIT_HEADER] = True  # where send_task_message puts a send's own headers
    content_type, content_encoding, data = serialize(body, serializer="json")
    key = queue or celery_app.conf.task_default_queue
    properties.update(
        delivery_mode=2,
        delivery_info={"exchange": "", "routing_key": key},
        priority=0,
        body_encoding="base64",
        delivery_tag=uuid(),
    )
    envelope = {
        "body": base64.b64encode(data.encode("utf-8")).decode("ascii"),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": properties,
    }
    return task_id, key, json_dumps(envelope)


class RedisTaskPublisher:
    """One Redis client per event loop (a loop's connections cannot serve another loop), made on first use."""

    def __init__(self, celery_app) -> None:
        self.celery_app = celery_app
        self._clients: dict[asyncio.AbstractEventLoop, object] = {}

    def _client(self):
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        loop = asyncio.get_running_loop()
        for gone in [other for other in self._clients if other.is_closed()]:
            del self._clients[gone]  # its connections went with their loop
        client = self._clients.get(loop)
        if client is None:
            # one immediate reconnect: an idle connection the server (restarted) dropped is found at the next send.
            # No socket timeout: every caller bounds its command as a whole (dispatch.ENQUEUE_TIMEOUT_SECONDS), and
            # with one redis-py sends through wait_for, a task of its own: the LPUSH would leave a loop turn after
            # the push started, not in its first step (see Dispatcher.commit_and_dispatch_new).
            client = Redis.from_url(
                self.celery_app.conf.broker_url,
                socket_timeout=None,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 1),
                client_name="windflow-dispatch",
            )
            self._clients[loop] = client
        return client

    async def publish(self, deployment_id: str, queue: str | None = None, countdown: float | None = None) -> str:
        task_id, key, payload = message(self.celery_app, deployment_id, queue=queue, countdown=countdown)
        await self.push(key, payload)
        return task_id

    async def push(self, key: str, payload: str) -> None:
        """``LPUSH`` a message made by :func:`message` onto its queue's list."""
        await self._client().lpush(key, payload)

    async def withdraw(self, key: str, payload: str) -> bool:
        """Take a pushed message back from its list: True when it was still there (no worker took it)."""
        return bool(await self._client().lrem(key, 1, payload))

    async def aclose(self) -> None:
        """Close this loop's client (the others belong to loops that are gone or will close their own)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
