"""kombu's SQL transport as WindFlow configures it: polling interval honoured, consumed rows purged."""

from __future__ import annotations

import pytest
from kombu import Connection
from sqlalchemy import text

from backend.app.celery_app import DEPLOY_TASK, create_celery
from backend.app.runtime.sql_transport import purge_consumed_messages
from backend.tests.conftest import make_settings

pytestmark = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)


def test_polling_interval_reaches_the_transport_not_the_engine(db):
    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True, CELERY_SQL_POLLING_INTERVAL=0.05)
    app = create_celery(settings)
    assert app.conf.broker_url.startswith("sqla+postgresql+psycopg://")
    assert app.conf.result_backend.startswith("db+postgresql+psycopg://")
    with app.connection_for_write() as conn:
        channel = conn.default_channel  # stock kombu 5.7 raises TypeError here (polling_interval -> create_engine)
        assert conn.transport.polling_interval == 0.05
        assert type(channel).__module__ == "backend.app.runtime.sql_transport"


def test_consumed_messages_are_purged_and_queued_ones_kept(db):
    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    app = create_celery(settings)
    queue = "windflow-purge-test"
    for n in range(3):
        app.send_task(DEPLOY_TASK, args=(f"id-{n}",), queue=queue)
    with Connection(settings.celery_broker_url, transport_options={"polling_interval": 0.05}) as conn:
        simple = conn.SimpleQueue(queue)
        for _ in range(2):
            simple.get(timeout=5).ack()
        simple.close()

    engine_url = settings.sync_database_url
    from sqlalchemy import create_engine

    engine = create_engine(engine_url)
    try:
        mine = text(
            "SELECT m.visible, count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id "
            "WHERE q.name = :queue GROUP BY m.visible"
        )
        with engine.connect() as c:
            counts = dict(c.execute(mine, {"queue": queue}).all())
        assert counts == {True: 1, False: 2}
        # one row per transaction: a backlog is deleted in short batches, every consumed row still goes
        assert purge_consumed_messages(engine_url, older_than_minutes=0, batch_size=1) >= 2  # leftovers too
        with engine.connect() as c:
            counts = dict(c.execute(mine, {"queue": queue}).all())
        assert counts == {True: 1}, "a message still waiting for a worker is never purged"
    finally:
        engine.dispose()


# --- LISTEN/NOTIFY: a waiting consumer is woken by the publish, polling stays the fallback ------------------


def _queue_name() -> str:
    import uuid

    return f"windflow-notify-{uuid.uuid4().hex[:8]}"


def test_a_waiting_consumer_is_woken_by_the_publish_not_the_next_poll(db):
    """A consumer polling every 30 s and waiting on an empty queue takes a message published meanwhile at once:
    the publish's NOTIFY (sent when its insert commits) ends the wait."""
    import threading
    import time

    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    queue = _queue_name()
    options = {"polling_interval": 30}
    with Connection(settings.celery_broker_url, transport_options=options) as consumer, Connection(settings.celery_broker_url) as producer:
        waiting = consumer.SimpleQueue(queue)
        with pytest.raises(waiting.Empty):
            waiting.get(timeout=0.3)  # the queue is declared and the consumer listens from now on
        listener = consumer.transport._listener
        assert listener is not None and listener.listening

        publisher = producer.SimpleQueue(queue)
        threading.Timer(0.5, publisher.put, args=({"n": 1},)).start()
        started = time.monotonic()
        message = waiting.get(timeout=20)
        waited = time.monotonic() - started
        message.ack()
        assert message.payload == {"n": 1}
        assert waited < 10, f"taken after {waited:.1f} s: the consumer waited for a poll, not the notification"
        assert listener.notifications >= 1
        publisher.close()
        waiting.close()


def test_a_message_published_without_a_notification_is_still_taken_by_the_fallback_poll(db, monkeypatch):
    """A message no NOTIFY announced (published by a process without WindFlow's transport) waits at most the
    fallback poll of a listening consumer."""
    import threading
    import time

    from kombu.transport import sqlalchemy as kombu_sql

    from backend.app.runtime import sql_transport

    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    queue = _queue_name()
    with Connection(settings.celery_broker_url, transport_options={"polling_interval": 0.1}) as consumer:
        waiting = consumer.SimpleQueue(queue)
        with pytest.raises(waiting.Empty):
            waiting.get(timeout=0.3)
        assert consumer.transport._listener.listening
        monkeypatch.setattr(sql_transport.Channel, "_put", kombu_sql.Channel._put)  # stock kombu: no NOTIFY
        with Connection(settings.celery_broker_url) as producer:
            publisher = producer.SimpleQueue(queue)
            threading.Timer(0.3, publisher.put, args=({"n": 2},)).start()  # published while the consumer waits
            started = time.monotonic()
            message = waiting.get(timeout=sql_transport.LISTENING_POLL_INTERVAL * 10)
            waited = time.monotonic() - started
            message.ack()
            publisher.close()
        assert message.payload == {"n": 2}
        assert consumer.transport._listener.notifications == 0
        assert waited >= sql_transport.LISTENING_POLL_INTERVAL * 0.9, "taken before the fallback poll: it was not waiting"
        waiting.close()


def test_a_freed_prefetch_slot_wakes_the_waiting_consumer(db):
    """An ack (from the pool's result thread) ends the consumer's wait: a consumer whose prefetch was full
    polls again at once instead of after the fallback interval."""
    import threading
    import time

    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    with Connection(settings.celery_broker_url) as consumer:
        waiting = consumer.SimpleQueue(_queue_name())
        with pytest.raises(waiting.Empty):
            waiting.get(timeout=0.3)
        listener = consumer.transport._listener
        threading.Timer(0.3, consumer.transport.wake).start()
        started = time.monotonic()
        listener.wait(30)
        assert time.monotonic() - started < 10
        waiting.close()


def test_a_taken_message_put_back_notifies_the_listeners(db):
    """A message given back by a worker that leaves (``release_deliveries``; the reaper's restore uses the same
    statement shape) is visible again and announced to the listening consumers, as a publish is."""
    import os
    import socket

    import psycopg

    from backend.app.runtime.sql_transport import NOTIFY_CHANNEL, release_deliveries

    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    queue = _queue_name()
    with Connection(settings.celery_broker_url) as conn:
        simple = conn.SimpleQueue(queue)
        simple.put({"n": 3})
        taken = simple.get(timeout=10)  # recorded as taken by this process
        dsn = settings.sync_database_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as listener:
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            assert release_deliveries(settings.sync_database_url, hostname=socket.gethostname(), pid=os.getpid()) == 1
            assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == [NOTIFY_CHANNEL]
        taken.ack()
        simple.close()


# --- the publish's cost: one statement and a commit that does not wait for the disk ------------------------


def test_a_publish_and_a_take_are_one_statement_each_and_do_not_wait_for_the_disk(db):
    """Issue 23: a publish on the PostgreSQL broker was four round trips (the queue's row, the insert, the
    NOTIFY, a commit waiting for its WAL flush), a take five (the queue's row, the select, the hide, the record
    of who took it, the commit); each is one statement and an asynchronous commit. The messages are taken in
    order, recorded while held and forgotten on the ack."""
    import os
    import socket

    from sqlalchemy import event

    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    queue = _queue_name()
    with Connection(settings.celery_broker_url) as producer, Connection(settings.celery_broker_url) as consumer:
        channel = producer.default_channel
        publisher = producer.SimpleQueue(queue)
        taker = consumer.SimpleQueue(queue)
        publisher.put({"n": 0})  # the queue's row is read (declared) once per channel
        assert taker.get(timeout=5).payload == {"n": 0}
        assert channel.session.execute(text("SHOW synchronous_commit")).scalar() == "off"
        channel.session.commit()
        statements: list[str] = []

        def seen(conn, cursor, statement, *args) -> None:
            statements.append(statement)

        engine = channel.session.get_bind()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            publisher.put({"n": 1})
            published, statements[:] = list(statements), []
            message = taker.get(timeout=5)
            taken = list(statements)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        assert len(published) == 1 and "INSERT INTO kombu_message" in published[0] and "pg_notify" in published[0], published
        assert len(taken) == 1 and "FOR UPDATE SKIP LOCKED" in taken[0] and "INSERT INTO broker_deliveries" in taken[0], taken
        assert message.payload == {"n": 1}
        held = text("SELECT hostname, pid FROM broker_deliveries WHERE delivery_tag = :tag")
        session = consumer.default_channel.session
        assert session.execute(held, {"tag": str(message.delivery_tag)}).all() == [(socket.gethostname(), os.getpid())]
        session.commit()
        message.ack()
        assert session.execute(held, {"tag": str(message.delivery_tag)}).all() == []
        session.commit()
        taker.close()
        publisher.close()


def test_a_queue_row_gone_under_a_channel_is_looked_up_again(db):
    """A channel remembers each queue's id; a publish to a queue whose row was removed since (nothing of
    kombu's or WindFlow's does it, an operator might) declares it again instead of failing."""
    from sqlalchemy import create_engine

    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    queue = _queue_name()
    with Connection(settings.celery_broker_url) as producer:
        publisher = producer.SimpleQueue(queue)
        publisher.put({"n": 0})
        engine = create_engine(settings.sync_database_url)
        try:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM kombu_message WHERE queue_id = (SELECT id FROM kombu_queue WHERE name = :q)"), {"q": queue})
                conn.execute(text("DELETE FROM kombu_queue WHERE name = :q"), {"q": queue})
        finally:
            engine.dispose()
        publisher.put({"n": 1})
        with Connection(settings.celery_broker_url) as consumer:
            taker = consumer.SimpleQueue(queue)
            assert taker.get(timeout=5).payload == {"n": 1}
            taker.close()
        publisher.close()


class _RoundTrips:
    """A TCP relay in front of PostgreSQL that counts round trips: on each connection, a turn is the client
    speaking after the server did (or first)."""

    def __init__(self, host: str, port: int) -> None:
        import socket
        import threading

        self._upstream = (host, port)
        self._lock = threading.Lock()
        self.turns = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            speaking = {"client": False}
            threading.Thread(target=self._pump, args=(client, upstream, speaking, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, speaking, False), daemon=True).start()

    def _pump(self, source, sink, speaking: dict, from_client: bool) -> None:
        with source, sink:
            while data := self._read(source):
                with self._lock:
                    if from_client and not speaking["client"]:
                        self.turns += 1
                    speaking["client"] = from_client
                sink.sendall(data)

    @staticmethod
    def _read(sock) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def close(self) -> None:
        self._server.close()


def test_a_publish_a_take_and_an_ack_are_each_one_round_trip_after_the_pools_check(db):
    """Issue 23: each ran as a transaction of the channel's session, which psycopg sends as three round trips
    (``BEGIN``, the statement, ``COMMIT``) after the pool's liveness check; each statement is atomic by itself,
    so it runs in autocommit mode: the check and one round trip."""
    from sqlalchemy import make_url

    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    url = make_url(settings.celery_broker_url)
    relay = _RoundTrips(url.host or "127.0.0.1", url.port or 5432)
    through_relay = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    queue = _queue_name()
    try:
        with Connection(through_relay) as producer, Connection(through_relay) as consumer:
            publisher = producer.SimpleQueue(queue)
            taker = consumer.SimpleQueue(queue)
            publisher.put({"n": 0})  # connections opened, the queue declared and its id read
            taker.get(timeout=5).ack()
            relay.turns = 0
            publisher.put({"n": 1})
            published = relay.turns
            relay.turns = 0
            message = taker.get(timeout=5)
            taken = relay.turns
            relay.turns = 0
            message.ack()
            acked = relay.turns
            assert message.payload == {"n": 1}
            assert (published, taken, acked) == (2, 2, 2)
            taker.close()
            publisher.close()
    finally:
        relay.close()


def test_a_consumer_whose_first_poll_outlasts_its_drain_still_listens_after_it(db, monkeypatch):
    """On a loaded machine a poll can take longer than the drain's timeout (CI: a consumer's first drain of
    0.3 s): the LISTEN is opened all the same, so the next wait is woken by a NOTIFY, not a poll interval."""
    import time

    from backend.app.runtime import sql_transport

    original = sql_transport.Channel._get

    def slow_get(self, queue):
        time.sleep(0.5)
        return original(self, queue)

    settings = make_settings(db.settings.DATABASE_URL, CELERY_ENABLED=True)
    with Connection(settings.celery_broker_url, transport_options={"polling_interval": 30}) as consumer:
        waiting = consumer.SimpleQueue(_queue_name())
        monkeypatch.setattr(sql_transport.Channel, "_get", slow_get)
        with pytest.raises(waiting.Empty):
            waiting.get(timeout=0.3)  # one poll of 0.5 s: the drain's time is up when it finds nothing
        assert consumer.transport._listener is not None and consumer.transport._listener.listening
        waiting.close()
