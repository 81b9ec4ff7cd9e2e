"""Real backend processes (``python -m backend.app.main`` on a free port) and real WebSocket/SSE clients."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from backend.app.config import Settings
from backend.tests.celery_fixtures import Proc, settings_env
from backend.tests.conftest import make_settings
from backend.tests.deploy_helpers import free_port

TIMEOUT = 30.0


class Server:
    """One backend process; ``stop()`` it (the fixtures do)."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "server") -> None:
        self.port = settings.PORT
        self.url = f"http://127.0.0.1:{self.port}"
        # /api/v1/ws: on the WebSocket listener when the server has one (WS_PORT), else the ASGI route
        self.ws_port = settings.WS_PORT or settings.PORT
        self.ws_url = f"ws://127.0.0.1:{self.ws_port}/api/v1/ws"
        self.log_path = log_dir / f"{name}.log"
        self.proc = Proc([sys.executable, "-m", "backend.app.main"], settings_env(settings), self.log_path)

    @classmethod
    async def start(cls, database_url: str, log_dir: Path, name: str = "server", **overrides) -> Server:
        settings = make_settings(
            database_url, **{"HOST": "127.0.0.1", "PORT": free_port(), "PROMETHEUS_ENABLED": True, "LOG_LEVEL": "INFO", **overrides}
        )
        server = cls(settings, log_dir, name)
        await server.wait_ready()
        return server

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if not self.proc.alive():
                    raise AssertionError(f"server exited:\n{self.output()[-3000:]}")
                try:
                    health = (await client.get(f"{self.url}/health", timeout=2)).json()
                    if health["event_bus"]["connected"]:
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"server did not start:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.stop(grace=15)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT)


def established(port: int) -> int:
    """TCP connections established to the local ``port`` (the kernel's table: no cooperation of the server)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


class WS:
    """A WebSocket client that records every frame it reads."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict] = []
        self.logs: dict[str, list[dict]] = {}  # every log line read, per deployment

    @classmethod
    async def open(cls, server: Server, token: str | None = None, **options) -> WS:
        conn = await connect(server.ws_url, open_timeout=TIMEOUT, **options)
        ws = cls(conn)
        if token is not None:
            await ws.send({"type": "auth", "token": token})
            frame = await ws.next(lambda f: True)
            assert frame["type"] == "authenticated", frame
        return ws

    async def send(self, frame: dict) -> None:
        await self.conn.send(json.dumps(frame))

    async def recv(self, timeout: float = TIMEOUT) -> dict:
        frame = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        self.frames.append(frame)
        if frame["type"] == "DEPLOYMENT_LOGS_UPDATE":
            self.logs.setdefault(frame["deployment_id"], []).extend(frame["data"]["logs"])
        return frame

    async def next(self, predicate: Callable[[dict], bool], timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if predicate(frame):
                return frame

    async def subscribe(self, **fields) -> dict:
        await self.send({"type": "subscribe", **fields})
        return await self.next(lambda f: f["type"] in ("subscribed", "error"))

    async def lines_until(self, deployment_id: str, last_seq: int, timeout: float = TIMEOUT) -> list[dict]:
        """Read frames until the log line ``last_seq`` of the deployment arrives; every line of it read
        since the last call, in order."""
        deadline = time.monotonic() + timeout
        lines = self.logs.setdefault(deployment_id, [])
        while not lines or lines[-1]["seq"] < last_seq:
            await self.recv(max(0.01, deadline - time.monotonic()))
        self.logs[deployment_id] = []
        return lines

    async def closed_with(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; its close code."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.recv(timeout)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    async def close(self) -> None:
        await self.conn.close()


async def sse_events(
    client: httpx.AsyncClient, url: str, headers: dict, stop: Callable[[list[dict]], bool], timeout: float = TIMEOUT
) -> list[dict]:
    """Read a Server-Sent Events stream until ``stop(events)``; each event as ``{id, event, data}``."""
    events: list[dict] = []
    async with asyncio.timeout(timeout), client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                    if stop(events):
                        return events
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                current[key] = value
    return events


class RawWS(WS):
    """A WebSocket client that really stops reading its socket when told nothing (``stalled`` between calls).

    The ``websockets`` client keeps reading its socket into memory whatever ``max_queue`` says, so a
    "stalled" client built on it never applies backpressure. This one drives the sans-I/O protocol over a
    socket with a small fixed receive buffer and reads only inside :meth:`recv`, like a browser tab that
    froze: the server's sends back up after a few hundred kilobytes.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.frames = []
        self.logs = {}
        self._pending: list[dict] = []
        self._fragments: list[bytes] = []

    @classmethod
    async def open(cls, server: Server, token: str | None = None, **_options) -> RawWS:
        ws = await cls.connect(server.ws_port, server.ws_url)
        if token is not None:
            await ws.send({"type": "auth", "token": token})
            frame = await ws.next(lambda f: True)
            assert frame["type"] == "authenticated", frame
        return ws

    @classmethod
    async def connect(cls, port: int, url: str) -> RawWS:
        """The WebSocket handshake with ``url`` on 127.0.0.1:``port``; frames the server sent right behind its
        answer are kept for :meth:`recv`."""
        from websockets.client import ClientProtocol
        from websockets.http11 import Response
        from websockets.uri import parse_uri

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock, limit=32768)
        protocol = ClientProtocol(parse_uri(url), max_size=None)
        protocol.send_request(protocol.connect())
        ws = cls(reader, writer, protocol)
        ws._flush()
        answered = False
        while not answered:
            events = await ws._read()
            answered = any(isinstance(e, Response) for e in events)
            ws._take(events)
        return ws

    def _take(self, events: list) -> None:
        """Queue the text messages among ``events``; a message may come in fragments (the listener sends one over
        8 KiB so): TEXT, then CONT."""
        from websockets.frames import Opcode

        for event in events:
            if getattr(event, "opcode", None) in (Opcode.TEXT, Opcode.CONT):
                self._fragments.append(event.data)
                if event.fin:
                    self._pending.append(json.loads(b"".join(self._fragments)))
                    self._fragments = []

    def _flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.writer.write(chunk)

    async def _read(self) -> list:
        data = await self.reader.read(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        events = self.protocol.events_received()
        self._flush()  # pongs, close frames
        if not data:
            from websockets.exceptions import ConnectionClosedError

            raise ConnectionClosedError(None, None)
        return events

    async def send(self, frame: dict) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        self._flush()
        await self.writer.drain()

    async def recv(self, timeout: float = TIMEOUT) -> dict:
        async with asyncio.timeout(timeout):
            while not self._pending:
                self._take(await self._read())
        frame = self._pending.pop(0)
        self.frames.append(frame)
        if frame.get("type") == "DEPLOYMENT_LOGS_UPDATE":
            self.logs.setdefault(frame["deployment_id"], []).extend(frame["data"]["logs"])
        return frame

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
