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
