"""What WindFlow's PostgreSQL broker channel (``runtime/sql_transport.py``) relies on in kombu's SQL transport.

The channel takes messages with its own statement (kombu's ``_get`` plus the record of who took it) and
hooks kombu's acknowledgement, reject and restore. If kombu changes its table layout or those methods, the
channel must be revisited: these checks fail first."""

from __future__ import annotations

import inspect

from kombu.transport import sqlalchemy as kombu_sql
from kombu.transport.virtual import base as virtual

from backend.app.runtime import sql_transport


def test_kombu_message_table_has_the_columns_the_channel_reads_and_writes():
    metadata = sql_transport.broker_metadata()
    columns = set(metadata.tables["kombu_message"].columns.keys())
    assert {"id", "visible", "timestamp", "payload", "version", "queue_id"} <= columns
    assert metadata.tables["kombu_message"].c.version.type.python_type is int


def test_kombu_hides_a_delivered_message_and_never_shows_it_again():
    """The channel's _take mirrors kombu's _get: select a visible message, flip it invisible, commit."""
    source = inspect.getsource(kombu_sql.Channel._get)
    assert "visible != False" in source and "msg.visible = False" in source
    assert "order_by(self.message_cls.sent_at)" in source


def test_the_methods_the_channel_hooks_keep_their_signatures():
    assert list(inspect.signature(virtual.Channel.basic_ack).parameters) == ["self", "delivery_tag", "multiple"]
    assert list(inspect.signature(virtual.Channel.basic_reject).parameters) == ["self", "delivery_tag", "requeue"]
    assert list(inspect.signature(virtual.Channel._restore).parameters) == ["self", "message"]
    # a requeued reject and a channel's restore at close both go through _restore
    assert "_restore_at_beginning" in inspect.getsource(virtual.QoS.reject)
    assert "self.channel._restore" in inspect.getsource(virtual.QoS.restore_unacked)
    assert sql_transport.Channel.__mro__[1] is kombu_sql.Channel


def test_kombu_still_passes_every_transport_option_to_create_engine():
    """Why the channel builds its own engine (``polling_interval`` would reach ``create_engine``)."""
    assert "transport_options" in inspect.getsource(kombu_sql.Channel._engine_from_config)
