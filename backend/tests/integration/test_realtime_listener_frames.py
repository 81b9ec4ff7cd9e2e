"""Large messages from the WebSocket listener to a client that stopped reading arrive intact.

The listener (``api/realtime_listener.py``) writes frames with picows on the server's event loop and its own
transports, uvloop's under uvicorn. picows hands a frame over 8 KiB to the transport as its header (a view of a buffer picows reuses)
and its payload; uvloop keeps that view, not a copy, while the socket is backed up, so the next frame rewrote
the header still waiting to be sent, and a slow client read a garbled stream (seen once in CI, in
test_realtime.py's stalled client: a log frame that began ``{"{"type":``). Here a real picows server on uvloop
sends 30 messages of 20 KB each to a client that reads nothing until they are all written, through sockets
with small buffers; the client then reads them all and checks every one.
"""

from __future__ import annotations

import asyncio
import json
import socket

import picows
import uvloop

from backend.app.api.realtime_listener import FRAME_BYTES, send_message
from backend.app.runtime.realtime.frames import text_frame
from backend.tests.realtime_helpers import RawWS

#: different lengths, so that no two frames have the same header
MESSAGES = [json.dumps({"n": n, "pad": chr(ord("a") + n % 26) * (20_000 + 997 * n)}).encode() for n in range(30)]


#: the hub's events: every length class of a whole frame's header (7-bit, 16-bit) up to FRAME_BYTES, and larger
#: ones, which go out through picows in fragments, interleaved on the same socket
MIXED = [json.dumps({"n": n, "pad": "x" * size}).encode() for n, size in enumerate([0, 100, 110, 111, 112, 500, 8170, 8171, 20_000] * 4)]


async def _stalled_client_reads(port: int, sent: asyncio.Event, expected: list[bytes] = MESSAGES) -> list[bytes]:
    """The messages a client reads once the server wrote them all (it reads nothing before, then each as the
    server's ``json.dumps`` wrote it); stops at the first message that does not come whole within 10 s or
    does not parse (a garbled header announces more bytes than ever come)."""
    ws = await RawWS.connect(port, f"ws://127.0.0.1:{port}/")
    messages: list[bytes] = []
    try:
        await asyncio.wait_for(sent.wait(), 30)  # read nothing until the server wrote every message
        while len(messages) < len(expected):
            try:
                messages.append(json.dumps(await ws.recv(timeout=10)).encode())
            except (TimeoutError, ValueError):
                break
    finally:
        ws.writer.transport.abort()
    return messages


async def _scenario(messages: list[bytes] = MESSAGES, write=None) -> tuple[list[bytes], int]:
    sent = asyncio.Event()
    backed_up = []
    connections = []

    class Sender(picows.WSListener):
        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            connections.append(transport.underlying_transport)
            transport.underlying_transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            for payload in messages:
                (write or send_message)(transport, payload)
                backed_up.append(transport.underlying_transport.get_write_buffer_size())
            sent.set()

    # on the loop's own transports, as the listener runs (WebSocketListener.start: use_aiofastnet=False)
    server = await picows.ws_create_server(lambda _request: Sender(), "127.0.0.1", 0, use_aiofastnet=False)
    try:
        port = server.sockets[0].getsockname()[1]
        return await _stalled_client_reads(port, sent, messages), max(backed_up, default=0)
    finally:
        server.close()
        for connection in connections:
            connection.abort()


def test_large_messages_to_a_stalled_client_arrive_whole_and_in_order():
    assert asyncio.get_event_loop_policy().__class__ is not uvloop.EventLoopPolicy  # uvloop only in here
    received, backlog = uvloop.run(_scenario())
    assert backlog > len(MESSAGES[0]), "the socket never backed up: the test proves nothing"
    assert all(len(payload) > FRAME_BYTES for payload in MESSAGES)
    intact = [message for message, expected in zip(received, MESSAGES, strict=False) if message == expected]
    assert len(intact) == len(received) == len(MESSAGES), (
        f"{len(received)} message(s) read, {len(intact)} intact; the first that was not begins "
        f"{next((m[:40] for m, e in zip(received, MESSAGES, strict=False) if m != e), b'')!r}"
    )


def _as_the_hub_writes(transport: picows.WSTransport, payload: bytes) -> None:
    """What the hub does with an event (``runtime/realtime/hub.py``, ``_write_all``): its whole frame, built
    once, written to the socket under picows' transport; a larger one through the listener's ``send_message``."""
    frame = text_frame(payload)
    if frame is None:
        send_message(transport, payload)
    else:
        transport.underlying_transport.write(frame)


def test_frames_the_hub_builds_and_picows_fragments_arrive_whole_and_in_order_to_a_stalled_client():
    received, backlog = uvloop.run(_scenario(MIXED, _as_the_hub_writes))
    assert backlog > 8192, "the socket never backed up: the test proves nothing"
    assert {len(p) < 126 for p in MIXED} == {True, False} and any(len(p) > FRAME_BYTES for p in MIXED)
    assert [m for m in received] == MIXED
