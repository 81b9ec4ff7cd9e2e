"""Real-time clients (WebSocket and SSE): subscriptions, catch-up by ``seq``, access, backpressure.

One :class:`~.client.Client` per WebSocket connection or SSE stream. It owns one bounded queue (an
:class:`~backend.app.core.events.EventStream`) and one *pump* task that sends what is queued. The clients
of an event loop share one :class:`~.hub.Hub`, the loop's only subscriber on the bus, which indexes them by the
deployments and organisations they subscribed to and hands each event to those clients only. Invariants:

* **No gap, no duplicate** for a deployment's log lines. Subscribing adds the deployment to the filter
  *first*, then sends the persisted lines after ``since_seq`` (read by pages), remembering the last
  ``seq`` sent; live lines at or below it are skipped, and a live batch that starts beyond it is preceded
  by the missing lines read from the database. Subscribing holds the client's lock, so the pump sends
  nothing in between.
* **A slow client never delays anyone.** The bus only appends to the client's bounded queue; when the
  queue is full the events are dropped and the pump, on reaching the :class:`~backend.app.core.events.Overflow`
  marker, sends a ``resync`` frame per subscription (with the last ``seq`` sent) and resumes the log
  lines from the database. A client that does not accept a frame within :data:`~.client.SEND_TIMEOUT_SECONDS`
  is disconnected.
* **One encoding, one send per client, no task per client.** An event is encoded once
  (:func:`~.frames.encode_event`) whatever the number of clients. When a client's pump is idle (nothing
  queued, lock free, no earlier send waiting for the socket), the hub does what the pump would
  (:meth:`~.client.Client.advance` for log lines and deletions) and sends that text through the
  connection's ASGI ``send`` from the delivery itself (:meth:`~.client.Client.send_now`), run at once up to
  where it would wait (:mod:`.eager`): while the socket takes data it never waits, and a send that has to
  (a client reading too slowly) finishes in a task of its own while the hub goes on. Anything else (a
  queue, log lines that need a catch-up, SSE) takes the pump, so order and the invariants above hold.
* **Access follows memberships.** :class:`~.access.AccessRegistry` re-reads, every :data:`~.access.ACCESS_REFRESH_SECONDS`
  and in one batch for every client of the process, each user's organisations, active flag and API token;
  events of an organisation a user left are no longer sent, its subscriptions end with an ``error`` frame,
  and a deactivated user or revoked token closes the client (WebSocket code 4401).

The package, along its seams: ``access`` (who may receive what: :class:`~.access.Access`, the credential
check and the registry that refreshes every client's access), ``frames`` (the JSON of the frames, an event
encoded once), ``hub`` (one per event loop: the index of the clients and the fan-out), ``eager`` (a send run at once,
finished by a task only if it has to wait) and ``client`` (a
client's subscriptions, catch-up, queue and pump; the WebSocket and SSE transports subclass it in
``api/realtime.py``).
"""
