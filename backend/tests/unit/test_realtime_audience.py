"""Who the hub gives an event of no organisation to (pure logic: the hub's index and a client's pump with a
recording transport, no socket): an API token's to its owner's clients, a user's or an organisation's to
superusers', nobody else; a resynchronisation tells every client to read its account's lists again, after
its subscriptions' resyncs."""

from __future__ import annotations

import asyncio

from backend.app.core.events import (
    EventStream,
    EventType,
    Overflow,
    bus,
    platform_changed,
    resource_changed,
    token_changed,
)
from backend.app.runtime.realtime.access import Access
from backend.app.runtime.realtime.client import Client
from backend.app.runtime.realtime.hub import Hub


class Recorded(Client):
    """A client whose transport records the frames the pump sends."""

    def __init__(self, user_id: str, superuser: bool = False, organizations: frozenset[str] = frozenset()) -> None:
        super().__init__(Access(user_id, superuser, organizations), "test")
        self.sent: list[str] = []
        self.queued: list = []

    async def send_text(self, text: str, seq: int | None = None, kind: str | None = None) -> None:
        self.sent.append(text)

    def queue(self, evt) -> None:  # what the hub hands to the pump
        self.queued.append(evt)


async def test_the_hub_gives_account_and_platform_events_to_their_audience_only() -> None:
    hub = Hub(asyncio.get_running_loop())
    ada, ada_tab, bob, root = Recorded("ada"), Recorded("ada"), Recorded("bob"), Recorded("root", superuser=True)
    for client in (ada, ada_tab, bob, root):
        hub.enter(client, client.access.user_id, client.access.superuser)
    token = token_changed("ada", "created", "t1", "ci")
    user = platform_changed("user", "created", "u9", "carol@example.com")
    stack = resource_changed("org1", "stack", "created", "s1", "web")
    assert hub.wants(token) and hub.wants(user) and not hub.wants(stack)  # nobody follows org1 here
    for evt in (token, user, stack):
        hub.fan_out(evt)
    assert [e.data["resource"] for e in ada.queued] == ["token"] == [e.data["resource"] for e in ada_tab.queued]
    assert bob.queued == []
    assert [e.data["resource"] for e in root.queued] == ["user"]  # a superuser hears no one else's tokens

    # bob made superuser (his access read anew), root demoted, ada gone
    hub.enter(bob, "bob", True)
    hub.enter(root, "root", False)
    hub.remove(ada)
    hub.fan_out(platform_changed("organization", "created", "o2", "research"))
    hub.fan_out(token_changed("ada", "updated", "t1", "ci"))
    assert [e.data["resource"] for e in bob.queued] == ["organization"]
    assert [e.data["resource"] for e in root.queued] == ["user"]
    assert [e.data["action"] for e in ada_tab.queued] == ["created", "updated"] and len(ada.queued) == 1
    assert not hub.wants(token_changed("nobody", "created", "t2", "x"))


async def test_the_pump_checks_the_audience_again() -> None:
    ada, root = Recorded("ada"), Recorded("root", superuser=True)
    token, user = token_changed("ada", "created", "t1", "ci"), platform_changed("user", "created", "u9", "c@example.com")
    assert ada.hears(token) and not ada.hears(user)
    assert root.hears(user) and not root.hears(token)
    assert not Recorded("bob").hears(token)
    assert token.type is EventType.RESOURCE_CHANGED and token.organization_id == ""


async def test_a_resync_tells_the_account_lists_after_the_subscriptions() -> None:
    client = Recorded("ada", organizations=frozenset({"org1"}))
    client.organizations.add("org1")
    client.stream = EventStream(bus, None, 10)
    await client._resync(Overflow(dropped=3))
    assert client.sent == [
        '{"type":"resync","deployment_id":null,"organization_id":"org1","last_seq":null}',
        '{"type":"resync","deployment_id":null,"organization_id":null,"last_seq":null}',
    ]
    hub = Hub(asyncio.get_running_loop())
    lone = Recorded("bob")
    lone.stream = EventStream(bus, None, 10)
    hub.enter(lone, "bob", False)  # no subscription at all: still told after a missed bus
    hub.resync_all()
    assert isinstance(await anext(lone.stream), Overflow)
