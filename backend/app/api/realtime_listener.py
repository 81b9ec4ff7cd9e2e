"""``/api/v1/ws`` on a listener of its own (``WS_PORT``): the same protocol as the ASGI route, sent by picows.

Why a second listener: through uvicorn's ASGI ``send`` the server frames every event once per connection,
which costs ~6 µs of CPU per client and event more than writing one frame (bench/README.md, "The fan-out
through the ASGI interface"); ASGI has no way to hand a server a frame built once. picows' public
``WSTransport.send`` builds the frame in C at about the cost of a raw write. The listener runs in the
backend's event loop (started and stopped by the application's lifespan), so its clients share the loop's
hub, the access registry and the metrics with the ASGI route's; :func:`backend.app.api.realtime.serve` runs
the protocol (first-frame authentication through the one credential check, subscriptions, resume by
``seq``, heartbeats) for both. The proxy routes ``/api/v1/ws`` here (deploy/nginx.conf); the ASGI route stays
for clients that only know the server's own address.

What differs from uvicorn, and how it is bounded: picows delivers frames, not messages, so a fragmented
message is put together here (at most :data:`MAX_MESSAGE_BYTES`); a client that sends faster than its frames
are handled stops being read (``pause_reading``) past :data:`INBOX_BOUND` frames; a socket whose buffer is
full (picows' ``pause_writing``) makes the hub queue that client's events for its pump, which waits for
``resume_writing`` within the send timeout. A message over :data:`FRAME_BYTES` goes out in fragments of at most
that size (see :func:`send_message`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import picows

from backend.app.api.realtime import Connection, WebSocketClient, serve
from backend.app.config import Settings
from backend.app.runtime.realtime import frames
from backend.app.runtime.realtime.access import Access

logger = logging.getLogger(__name__)

PATH = "/api/v1/ws"
MAX_MESSAGE_BYTES = 1 << 20  # a client's message (its frames put together); the protocol's are < 16 KiB
INBOX_BOUND = 64  # frames received and not yet handled, before the socket stops being read
HANDSHAKE_TIMEOUT_SECONDS = 10.0
_TEXT = picows.WSMsgType.TEXT
_BINARY = picows.WSMsgType.BINARY
_CONTINUATION = picows.WSMsgType.CONTINUATION
_CLOSE = picows.WSMsgType.CLOSE

#: The largest frame sent whole (frames.FRAME_BYTES). picows copies a frame up to 8 KiB into bytes the transport
#: keeps; a larger one's header goes to the transport's ``writelines`` as a view of a buffer picows reuses for its
#: next frame, and uvloop's transport (the listener runs on the loop's own transports) keeps that view, not a copy,
#: while the socket is backed up: the next frame then overwrote the header still waiting to be sent, and a slow
#: client received a garbled stream.
FRAME_BYTES = frames.FRAME_BYTES


def send_message(transport: picows.WSTransport, payload: bytes) -> None:
    """One text message: a single frame up to :data:`FRAME_BYTES`, else fragments of at most that size (a
    WebSocket client reassembles them into the same message)."""
    size = len(payload)
    if size <= FRAME_BYTES:
        transport.send(_TEXT, payload)
        return
    view = memoryview(payload)
    transport.send(_TEXT, view[:FRAME_BYTES], fin=False)
    for start in range(FRAME_BYTES, size, FRAME_BYTES):
        transport.send(_CONTINUATION, view[start : start + FRAME_BYTES], fin=start + FRAME_BYTES >= size)


class ListenerClient(WebSocketClient):
    """A real-time client whose frames go out through picows' ``WSTransport.send``."""

    def __init__(self, connection: ListenerConnection, access: Access, expires_at: datetime | None) -> None:
        super().__init__(connection, access, expires_at)
        self.ws = connection
        self.writing = connection.paused  # (see ListenerConnection.pause_writing)
        # the hub writes an event's frame, built once, to the socket under picows' transport: the same bytes
        # picows would write (a server's frames are not masked), a write fewer per client and event
        self.write_frame = connection.transport.underlying_transport.write

    async def send_text(self, text: str, seq: int | None = None, kind: str | None = None) -> None:
        ws = self.ws
        while ws.paused and not ws.gone:  # the socket's buffer is full: wait for it (Client._send bounds the wait)
            await ws.resumed.wait()
        if ws.gone:
            raise ConnectionError("the client disconnected")
        send_message(ws.transport, text.encode())

    def send_now(self, message: dict) -> bool:
        """The hub's send of an event too large for one frame (the others it writes whole: ``write_frame``); its
        ``message`` is shared by every recipient, so its text is encoded to UTF-8 once (the last message's bytes
        are kept), then framed in fragments by picows for each client."""
        global _last_message, _last_payload
        if message is not _last_message:
            _last_payload = message["text"].encode()
            _last_message = message
        try:
            send_message(self.ws.transport, _last_payload)
        except Exception as exc:  # noqa: BLE001 - gone or closing: end this client, never the hub's delivery
            self.close(f"send failed: {type(exc).__name__}: {exc}"[:200], 1011)
            return False
        return True


_last_message: dict | None = None
_last_payload = b""


class ListenerConnection(picows.WSListener, Connection):
    """One connection of the listener: picows' callbacks on one side, :class:`Connection` on the other."""

    def __init__(self, listener: WebSocketListener) -> None:
        super().__init__()
        self.listener = listener
        self.transport: picows.WSTransport | None = None
        self.inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.reading_paused = False
        self.fragments: bytearray | None = None
        self.fragment_type = _TEXT
        self.paused = False
        self.resumed = asyncio.Event()
        self.gone = False
        self.real_client: ListenerClient | None = None
        self.task: asyncio.Task | None = None

    # --- picows' side (callbacks on the loop) ---

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self.transport = transport
        peer = transport.underlying_transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "unknown"
        self.listener.connections.add(self)
        self.task = asyncio.get_running_loop().create_task(self._serve(), name="ws-listener-connection")

    async def _serve(self) -> None:
        try:
            await serve(self, self.listener.settings)
        except Exception:
            logger.exception("WebSocket listener: a connection from %s failed", self.peer)
            await self.close(1011, "internal error")

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        kind = frame.msg_type
        if kind is _CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if kind is _CONTINUATION:
            if self.fragments is None:
                self._refuse(1002, "a continuation frame without a message to continue")
                return
            self.fragments += frame.get_payload_as_memoryview()
        elif kind is _TEXT or kind is _BINARY:
            if self.fragments is not None:
                self._refuse(1002, "a new message before the last one ended")
                return
            if frame.fin:
                self._put(frame.get_payload_as_bytes(), kind)
                return
            self.fragments, self.fragment_type = bytearray(frame.get_payload_as_memoryview()), kind
        else:  # PING (picows answers it) and PONG
            return
        if len(self.fragments) > MAX_MESSAGE_BYTES:
            self._refuse(1009, f"message too large (max {MAX_MESSAGE_BYTES} bytes)")
        elif frame.fin:
            data, self.fragments = bytes(self.fragments), None
            self._put(data, self.fragment_type)

    def _put(self, data: bytes, kind) -> None:
        if kind is _TEXT:
            try:
                message: str | bytes = data.decode()
            except UnicodeDecodeError:  # RFC 6455: a text message must be UTF-8
                self._refuse(1007, "a text frame that is not UTF-8")
                return
        else:
            message = data
        self.inbox.put_nowait(message)
        if self.inbox.qsize() >= INBOX_BOUND and not self.reading_paused:
            self.reading_paused = True
            self.transport.underlying_transport.pause_reading()

    def _refuse(self, code: int, reason: str) -> None:
        self.transport.send_close(code, reason.encode())
        self.transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self.gone = True
        if self.real_client is not None:
            self.real_client.direct = False  # the hub writes nothing more to this socket
        self.listener.connections.discard(self)
        self.inbox.put_nowait(None)
        self.resumed.set()  # a send waiting for the socket fails now

    def pause_writing(self) -> None:
        """The socket's buffer went over its high mark (a client that reads slowly): the hub queues this
        client's events for its pump from now on (``writing``), and the pump waits for :meth:`resume_writing`."""
        self.paused = True
        self.resumed.clear()
        if self.real_client is not None:
            self.real_client.writing = True

    def resume_writing(self) -> None:
        self.paused = False
        self.resumed.set()
        if self.real_client is not None:
            self.real_client.writing = False

    # --- the protocol's side (Connection) ---

    async def receive(self) -> str | bytes | None:
        if self.gone and self.inbox.empty():
            return None
        message = await self.inbox.get()
        if self.reading_paused and self.inbox.qsize() < INBOX_BOUND // 2 and not self.gone:
            self.reading_paused = False
            self.transport.underlying_transport.resume_reading()
        if message is None:
            self.inbox.put_nowait(None)  # every later receive sees the end too
        return message

    async def close(self, code: int, reason: str) -> None:
        if self.gone or self.transport is None:
            return
        self.transport.send_close(code, reason[:120].encode())
        self.transport.disconnect()

    def client(self, access: Access, expires_at: datetime | None) -> WebSocketClient:
        self.real_client = ListenerClient(self, access, expires_at)
        return self.real_client


class WebSocketListener:
    """The listener: started and stopped with the application (``main.create_app``'s lifespan)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: asyncio.Server | None = None
        self.connections: set[ListenerConnection] = set()

    def _route(self, request: picows.WSUpgradeRequest) -> ListenerConnection | None:
        if request.path.decode("latin-1").partition("?")[0] != PATH:
            return None  # 404
        return ListenerConnection(self)

    async def start(self, host: str, port: int) -> None:
        self.server = await picows.ws_create_server(
            self._route,
            host,
            port,
            websocket_handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS,
            max_frame_size=MAX_MESSAGE_BYTES,
            enable_auto_pong=True,
            use_aiofastnet=False,  # the loop's own transports (uvloop's under uvicorn), as uvicorn's connections
            logger_name="listener",
            backlog=4096,
        )
        logger.info("WebSocket listener on %s", ", ".join(_address(s) for s in self.server.sockets))

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1] if self.server and self.server.sockets else 0

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for connection in list(self.connections):
            await connection.close(1012, "server restarting")
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self.server = None


def _address(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
