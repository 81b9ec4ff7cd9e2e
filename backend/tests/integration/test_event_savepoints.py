"""Events queued on a session are published by its real commit, not when a SAVEPOINT is released; a
rolled-back SAVEPOINT takes back the events queued inside it and only those."""

from __future__ import annotations

import uuid

from backend.app.core.events import Event, EventType, bus, queue_event


def _event(step: int) -> Event:
    return Event(
        EventType.DEPLOYMENT_PROGRESS,
        str(uuid.uuid4()),
        str(uuid.uuid4()),
        {"progress": step, "current_step": step, "total_steps": 3, "step_name": f"step {step}"},
    )


async def test_savepoints_neither_publish_early_nor_drop_what_came_before(session) -> None:
    before, inside_released, inside_rolled_back, after = (_event(n) for n in range(4))
    ids = {e.deployment_id for e in (before, inside_released, inside_rolled_back, after)}
    received: list[Event] = []
    unsubscribe = bus.subscribe(received.append, filter=lambda e: e.deployment_id in ids)
    try:
        queue_event(session, before)
        async with session.begin_nested():
            queue_event(session, inside_released)
        assert received == []  # a released SAVEPOINT is not the commit
        try:
            async with session.begin_nested():
                queue_event(session, inside_rolled_back)
                raise RuntimeError("roll this SAVEPOINT back")
        except RuntimeError:
            pass
        queue_event(session, after)
        assert received == []
        await session.commit()
    finally:
        unsubscribe()
    assert received == [before, inside_released, after]


async def test_a_rolled_back_transaction_publishes_nothing(session) -> None:
    dropped = _event(0)
    received: list[Event] = []
    unsubscribe = bus.subscribe(received.append, filter=lambda e: e.deployment_id == dropped.deployment_id)
    try:
        queue_event(session, dropped)
        async with session.begin_nested():
            pass
        await session.rollback()
        await session.commit()
    finally:
        unsubscribe()
    assert received == []
