"""Events across processes: PostgreSQL LISTEN/NOTIFY, Redis pub/sub, or nothing (SQLite).

Deployments run in Celery worker processes and several backend replicas may serve WebSockets, so an
event committed in one process must reach the subscribers of every other process (docs/architecture.md,
"Events across processes")::

    before_commit (PostgreSQL bus, a session on its database) -> pg_notify in the transaction itself
    after_commit -> bus.publish(evt) -+-> local subscribers, at once
                                      +-> forwarder (events not sent in their transaction): encode -> outbox
    sender task  -> outbox -> transport.send -> NOTIFY windflow_events / PUBLISH windflow:events
    listener     -> message of another origin -> receiver task -> bus.deliver(evt) -> local subscribers

Invariants and trade-offs:

* **No echo.** Every message carries the ``origin`` id of the process that sent it (new after a
  ``fork``); a process ignores its own messages, so its subscribers get each of its events exactly once,
  from ``publish``.
* **With the commit only.** With PostgreSQL, a session of the bus's database sends its events with
  ``pg_notify`` on its own connection just before committing (:meth:`_Runtime.send_in_transaction`):
  PostgreSQL delivers them when, and only if, the transaction commits, so they are neither sent for a
  rolled-back change nor lost when the process dies right after its commit, and listeners have them as
  soon as the commit is done (no sender task to wait for: ~1 ms less from commit to the WebSocket). Other
  events (Redis, a session committing off the bus's loop) are forwarded by ``bus.publish``, which only the
  ``after_commit`` hook of ``events.py`` calls for queued events.
* **Order.** PostgreSQL delivers the notifications of committed transactions in commit order; otherwise
  one sender per process sends its events in publish order over one connection. One receiver task per
  process delivers them in arrival order (a log pointer is resolved before what follows it).
* **Log lines travel as pointers.** A ``DEPLOYMENT_LOGS_UPDATE`` crosses processes as
  ``(deployment, first_seq, last_seq)``, never as text: the lines are already persisted with their
  ``seq``. The receiver reads from the database the lines after the last ``seq`` it delivered for that
  deployment up to ``last_seq`` and delivers them as ordinary ``DEPLOYMENT_LOGS_UPDATE`` events, so a lost
  notification is repaired by the next one. It reads nothing when no local subscriber follows the
  deployment. NOTIFY's 8000-byte limit therefore never applies to log text.
* **Delivery is at least once while connected, best effort otherwise.** Events published while the
  connection is down wait in the outbox (at most :data:`MAX_QUEUED`, oldest dropped first) and are sent
  after reconnecting. An event may be sent twice when the connection drops after the server accepted it.
  Neither NOTIFY nor pub/sub stores messages: a *listener* that is disconnected misses what is sent
  meanwhile. Clients recover log lines with ``since_seq`` and statuses by reading the deployment.
* **Size.** Any other event that does not fit a payload (an enormous ``error_message``) has its longest
  strings truncated with a ``...[truncated N characters]`` marker (:func:`encode_envelope`). Payloads are
  ASCII JSON, so bytes equal characters whatever the server encoding.
* **Never crashes its host.** A lost connection is logged as a warning and retried with exponential
  backoff; only configuration errors (``EVENT_BUS=postgres`` with SQLite, ...) raise, at start.
* **A database restart is ordinary.** With PostgreSQL, the backoff is cut short as soon as any connection
  of the process to the database succeeds again (a pool ``connect`` event), so the process listens again
  within moments of the server's return, not after a backoff grown during the outage. Once it listens again,
  :meth:`~backend.app.core.events.LocalEventBus.missed` tells the local subscribers that events of other
  processes may have been missed meanwhile: the real-time clients resynchronise (``resync`` frames, log
  lines read from the database).

The bus runs on the event loop that awaited :func:`start_event_bus`: the backend's loop, or the long-lived
loop of a Celery worker process (``backend.app.runtime.worker_loop``). :func:`flush_events` works from
any loop.

The package, along those seams: ``wire`` (the encoding across processes), ``base`` (the constants and the
transport interface), one module per transport (``memory``, ``postgres_notify``, ``redis_pubsub``),
``selection`` (which transport the settings choose), ``outbox`` and ``runtime`` (the supervisor that
reconnects with backoff, the sender and the receiver; the process's state, its fork hook and the public API
re-exported here).
"""

from __future__ import annotations

from backend.app.runtime.event_transport.base import (
    CONNECTION_NAME_PREFIX,
    PG_CHANNEL,
    PG_MAX_PAYLOAD,
    REDIS_CHANNEL,
    REDIS_MAX_PAYLOAD,
    EventBusKind,
    EventTransport,
    MessageHandler,
    PayloadRejected,
)
from backend.app.runtime.event_transport.memory import InProcessTransport
from backend.app.runtime.event_transport.postgres_notify import PostgresNotifyTransport
from backend.app.runtime.event_transport.redis_pubsub import RedisTransport
from backend.app.runtime.event_transport.runtime import (
    BACKOFF_MAX_SECONDS,
    BACKOFF_MIN_SECONDS,
    build_transport,
    event_bus_status,
    flush_events,
    start_event_bus,
    stop_event_bus,
)
from backend.app.runtime.event_transport.selection import (
    event_bus_redis_url,
    postgres_dsn,
    resolve_event_bus_kind,
)
from backend.app.runtime.event_transport.wire import (
    TRUNCATION_MARKER,
    LogPointer,
    encode_envelope,
)

__all__ = [
    "BACKOFF_MAX_SECONDS",
    "BACKOFF_MIN_SECONDS",
    "CONNECTION_NAME_PREFIX",
    "PG_CHANNEL",
    "PG_MAX_PAYLOAD",
    "REDIS_CHANNEL",
    "REDIS_MAX_PAYLOAD",
    "TRUNCATION_MARKER",
    "EventBusKind",
    "EventTransport",
    "InProcessTransport",
    "LogPointer",
    "MessageHandler",
    "PayloadRejected",
    "PostgresNotifyTransport",
    "RedisTransport",
    "build_transport",
    "encode_envelope",
    "event_bus_redis_url",
    "event_bus_status",
    "flush_events",
    "postgres_dsn",
    "resolve_event_bus_kind",
    "start_event_bus",
    "stop_event_bus",
]
