"""The hub's writes of an event to the clients that take whole frames (pure logic: recording writers, no socket):
one frame per event, the same bytes for every client; a client whose write fails is closed and the others
still get the event; a text too large for one frame goes through each client's ``send_now``; a client that
cannot take the event now gets it through its pump. ``test_realtime_listener_frames.py`` checks the frames
on real sockets."""

from __future__ import annotations

import asyncio
import json

from backend.app.core.events import Event, EventType
from backend.app.runtime.realtime.access import Access
from backend.app.runtime.realtime.client import Client
from backend.app.runtime.realtime.frames import FRAME_BYTES
from backend.app.runtime.realtime.hub import Hub

DEPLOYMENT = "d-1"


class Writer(Client):
    """A client the hub may write to directly (as a listener's: ``write_frame``), recording what it got."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(Access("u-1", False, frozenset({"o-1"})), "test")
        self.direct = True
        self.idle = True
        self.frames: list[bytes] = []
        self.messages: list[dict] = []
        self.queued: list[Event] = []
        self.closed_with: tuple[str, int] | None = None
        self.fail = fail
        self.write_frame = self._write

    def _write(self, frame: bytes) -> None:
        if self.fail:
            raise ConnectionResetError("peer gone")
        self.frames.append(frame)

    async def send_text(self, text: str, seq: int | None = None, kind: str | None = None) -> None:
        raise AssertionError("not through the pump")

    def send_now(self, message: dict) -> bool:
        self.messages.append(message)
        return True

    def queue(self, evt: Event) -> None:
        self.queued.append(evt)

    def close(self, reason: str, code: int = 1000) -> None:
        self.closed_with = (reason, code)
        self.direct = False


def progress(step_name: str) -> Event:
    data = {"progress": 10, "current_step": 1, "total_steps": 6, "step_name": step_name}
    return Event(EventType.DEPLOYMENT_PROGRESS, DEPLOYMENT, "o-1", data)


async def _hub(*clients: Writer) -> Hub:
    hub = Hub(asyncio.get_running_loop())
    for client in clients:
        hub.follow(client, DEPLOYMENT)
    return hub


async def test_one_frame_for_every_client_and_a_failed_write_closes_only_its_client() -> None:
    first, broken, last = Writer(), Writer(fail=True), Writer()
    hub = await _hub(first, broken, last)
    hub.fan_out(progress("Start services"))
    assert first.frames == last.frames and len(first.frames) == 1
    frame = first.frames[0]
    assert frame[0] == 0x81  # final text frame, not masked
    length, start = (frame[1], 2) if frame[1] < 126 else (int.from_bytes(frame[2:4], "big"), 4)
    assert length == len(frame) - start
    assert json.loads(frame[start:])["data"]["step_name"] == "Start services"
    assert broken.frames == [] and broken.closed_with is not None and broken.closed_with[1] == 1011
    assert "peer gone" in broken.closed_with[0]
    hub.fan_out(progress("Wait until services are running and healthy"))  # the closed client is passed over
    assert len(first.frames) == len(last.frames) == 2 and broken.queued and not broken.frames


async def test_a_text_too_large_for_one_frame_goes_through_send_now() -> None:
    client = Writer()
    hub = await _hub(client)
    hub.fan_out(progress("x" * (FRAME_BYTES + 1)))
    assert client.frames == [] and len(client.messages) == 1
    assert json.loads(client.messages[0]["text"])["data"]["step_name"] == "x" * (FRAME_BYTES + 1)


async def test_a_client_busy_writing_gets_the_event_through_its_pump() -> None:
    ready, backed_up = Writer(), Writer()
    backed_up.writing = True  # its socket's buffer is full (the listener's pause_writing)
    hub = await _hub(ready, backed_up)
    evt = progress("Start services")
    hub.fan_out(evt)
    assert len(ready.frames) == 1
    assert backed_up.frames == [] and backed_up.queued == [evt]
