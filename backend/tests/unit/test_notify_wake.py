"""The sender loop runs a pass at once only for the events that may have queued deliveries (a deployment's
end, an automatic rollback); a deployment's other changes (pending, deploying, stopped, ...) queue nothing and
do not wake it (it still looks every NOTIFY_POLL_SECONDS)."""

from __future__ import annotations

import asyncio

import pytest

from backend.app.core.events import Event, EventType, RolledBackData, StatusChangedData
from backend.app.runtime.notifier import NotificationLoop
from backend.tests.conftest import make_settings


def _changed(new: str, old: str) -> Event:
    return Event.of(EventType.DEPLOYMENT_STATUS_CHANGED, "d1", "o1", StatusChangedData(new_status=new, old_status=old, name="web"))


@pytest.mark.parametrize(
    ("evt", "wakes"),
    [
        (_changed("failed", "deploying"), True),
        (_changed("running", "deploying"), True),
        (_changed("cancelled", "pending"), True),
        (_changed("deploying", "pending"), False),
        (_changed("pending", "running"), False),
        (_changed("stopped", "stopping"), False),
    ],
)
async def test_only_an_end_wakes_the_sender(evt: Event, wakes: bool) -> None:
    loop = NotificationLoop(make_settings("sqlite+aiosqlite:///unused.db"))
    loop._loop = asyncio.get_running_loop()
    loop._on_event(evt)
    await asyncio.sleep(0)  # wake() sets the flag through call_soon_threadsafe
    assert loop._wake.is_set() is wakes


async def test_a_rollback_wakes_the_sender() -> None:
    loop = NotificationLoop(make_settings("sqlite+aiosqlite:///unused.db"))
    loop._loop = asyncio.get_running_loop()
    data = RolledBackData(from_revision=2, to_revision=1, revision=3, reason="health gate")
    loop._on_event(Event.of(EventType.DEPLOYMENT_ROLLED_BACK, "d1", "o1", data))
    await asyncio.sleep(0)
    assert loop._wake.is_set()
