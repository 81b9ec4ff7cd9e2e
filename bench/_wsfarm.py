"""A farm of cheap WebSocket clients, in a process of its own (not a benchmark itself).

The real-time benchmarks measure the *server*; their clients must cost it as little CPU as possible and
must not share its process. This script runs many clients on one event loop (uvloop when installed)
with a minimal client of the WebSocket protocol (RFC 6455: handshake, masked text frames out, unmasked
frames in, pong, close; no extension, so no per-message compression) built on ``asyncio.Protocol``:
no task per client; once subscribed, a socket read costs one ``perf_counter()`` and one list append, and
the bytes are parsed later (between measurements: a progress frame's ``current_step`` by a regular
expression, log frames as JSON), each frame stamped with the read that completed it.
``time.perf_counter()`` is ``CLOCK_MONOTONIC`` on Linux, so its readings compare with the parent's.

Driven by the parent (``_realtime.Farm``) with one JSON command per line on stdin, one JSON answer per line
on stdout:

* ``{"cmd": "connect", "url", "token", "count", "batch", "subscribe": {...}}`` -> ``{"connected", "retried", "errors"}``
* ``{"cmd": "progress", "steps": [...], "per_step": N, "timeout": s}`` -> ``{"arrivals": {step: [t, ...]}}``
  (waits until every step reached ``per_step`` clients, or the timeout)
* ``{"cmd": "logs", "kind": "persisted"|"services", "last": N, "timeout": s}`` -> first/last arrival and
  whether the values received are exactly 1..N in order (one client)
* ``{"cmd": "close"}`` -> closes every client and exits
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import re
import resource
import sys
import time
from collections import defaultdict
from urllib.parse import urlsplit

STEP = re.compile(rb'"current_step":(\d+)')

ARRIVALS: dict[int, list[float]] = defaultdict(list)  # progress step -> arrival times
LOGS = {"persisted": [], "services": []}  # values received, in order (one client)
LOG_TIMES = {"persisted": [None, None], "services": [None, None]}  # first, last arrival


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big") if n else b""
    return key + masked


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + _mask(payload)


class WSClient(asyncio.Protocol):
    def __init__(self, url: str, token: str, subscribe: dict, ready: asyncio.Future) -> None:
        self.url, self.token, self.subscribe, self.ready = url, token, subscribe, ready
        self.transport = None
        self.buf = bytearray()
        self.handshaken = False
        self.state = "handshake"
        self.partial: list[bytes] = []
        self.chunks: list[tuple[float, bytes]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        parts = urlsplit(self.url)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost during set-up: {exc}"))

    def send_text(self, obj: dict) -> None:
        self.transport.write(frame(0x1, json.dumps(obj).encode()))

    def data_received(self, data: bytes) -> None:
        # Once subscribed, only note when the bytes came: parsing waits for drain() (between measurements),
        # so that the time a client takes to read a frame is one socket read and one list append.
        if self.state == "ready":
            self.chunks.append((time.perf_counter(), data))
        else:
            self.feed(time.perf_counter(), data)

    def drain(self) -> None:
        chunks, self.chunks = self.chunks, []
        for now, data in chunks:
            self.feed(now, data)

    def feed(self, now: float, data: bytes) -> None:
        self.buf += data
        if not self.handshaken:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.ready.set_exception(ConnectionError(head[:200].decode(errors="replace")))
                self.transport.close()
                return
            self.handshaken = True
            self.state = "auth"
            self.send_text({"type": "auth", "token": self.token})
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if len(buf) - start < length:
                break
            payload = bytes(buf[start : start + length])
            pos = start + length
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.transport.write(frame(0xA, payload))
            elif opcode == 0x8:
                self.transport.write(frame(0x8, payload[:2]))
                self.transport.close()
            elif opcode in (0x0, 0x1):
                self.partial.append(payload)
                if b0 & 0x80:
                    message = b"".join(self.partial) if len(self.partial) > 1 else payload
                    self.partial = []
                    self.on_message(message, now)
        if pos:
            del buf[:pos]

    def on_message(self, message: bytes, now: float) -> None:
        head = message[:40]
        if self.state == "ready":
            if b'"DEPLOYMENT_PROGRESS"' in head:
                match = STEP.search(message)
                if match:
                    ARRIVALS[int(match.group(1))].append(now)
            elif b'"DEPLOYMENT_LOGS_UPDATE"' in head:
                LOGS["persisted"].extend(line["seq"] for line in json.loads(message)["data"]["logs"])
                self._stamp("persisted", now)
            elif b'"SERVICE_LOGS"' in head:
                LOGS["services"].extend(line["message"] for line in json.loads(message)["data"]["lines"])
                self._stamp("services", now)
            return
        frame_ = json.loads(message)
        if frame_["type"] == "error" or (self.state == "auth" and frame_["type"] != "authenticated"):
            self.ready.set_exception(RuntimeError(f"unexpected frame during set-up: {frame_}"))
            self.transport.close()
        elif self.state == "auth":
            self.state = "subscribe"
            self.send_text({"type": "subscribe", **self.subscribe})
        elif frame_["type"] == "subscribed":
            self.state = "ready"
            if not self.ready.done():
                self.ready.set_result(None)
        elif frame_["type"] == "DEPLOYMENT_LOGS_UPDATE":  # catch-up before "subscribed"
            LOGS["persisted"].extend(line["seq"] for line in frame_["data"]["logs"])
            self._stamp("persisted", now)

    @staticmethod
    def _stamp(kind: str, now: float) -> None:
        times = LOG_TIMES[kind]
        if times[0] is None:
            times[0] = now
        times[1] = now

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


CLIENTS: list[WSClient] = []


async def connect_one(url: str, token: str, subscribe: dict, timeout: float = 120.0) -> WSClient:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    ready = loop.create_future()
    _, client = await loop.create_connection(lambda: WSClient(url, token, subscribe, ready), parts.hostname, parts.port)
    try:
        await asyncio.wait_for(asyncio.shield(ready), timeout)
    except BaseException:
        client.close()
        raise
    return client


async def connect(cmd: dict) -> dict:
    retried, errors = 0, []
    count, batch = cmd["count"], cmd.get("batch", 100)
    connected = 0
    for start in range(0, count, batch):
        results = await asyncio.gather(
            *(connect_one(cmd["url"], cmd["token"], cmd["subscribe"]) for _ in range(min(batch, count - start))), return_exceptions=True
        )
        for result in results:
            for _ in range(2):
                if not isinstance(result, BaseException):
                    break
                retried += 1
                errors.append(f"{type(result).__name__}: {result}"[:300])
                await asyncio.sleep(0.5)
                try:
                    result = await connect_one(cmd["url"], cmd["token"], cmd["subscribe"])
                except Exception as exc:  # noqa: BLE001 - retried once more, then reported
                    result = exc
            if isinstance(result, BaseException):
                return {
                    "connected": connected,
                    "retried": retried,
                    "errors": errors[:5],
                    "failed": f"{type(result).__name__}: {result}"[:300],
                }
            CLIENTS.append(result)
            connected += 1
    return {"connected": connected, "retried": retried, "errors": errors[:5]}


def drain() -> None:
    for client in CLIENTS:
        if not client.transport.is_closing():  # closed by the "close" command: nothing to answer any more
            client.drain()


async def keep_alive() -> None:
    """Answer the server's pings (in the frames waiting to be parsed) while no command runs."""
    while True:
        await asyncio.sleep(2)
        drain()


async def progress(cmd: dict) -> dict:
    steps, per_step = cmd["steps"], cmd["per_step"]
    deadline = time.monotonic() + cmd.get("timeout", 60)
    while True:
        drain()
        if time.monotonic() > deadline or all(len(ARRIVALS.get(s, ())) >= per_step for s in steps):
            break
        await asyncio.sleep(0.02)
    return {"arrivals": {str(s): ARRIVALS.get(s, []) for s in steps}}


async def logs(cmd: dict) -> dict:
    kind, last = cmd["kind"], cmd["last"]
    values = LOGS[kind]
    convert = int if kind == "services" else (lambda v: v)
    deadline = time.monotonic() + cmd.get("timeout", 120)
    while True:
        drain()
        if time.monotonic() > deadline or (values and convert(values[-1]) >= last):
            break
        await asyncio.sleep(0.02)
    try:
        complete = [convert(v) for v in values] == list(range(1, last + 1))
    except ValueError:
        complete = False
    first, end = LOG_TIMES[kind]
    return {"first": first, "last": end, "count": len(values), "complete": complete}


async def main() -> None:
    gc.disable()  # collected between commands (below)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pinger = asyncio.create_task(keep_alive())  # noqa: F841 - runs until the process exits
    print(json.dumps({"started": True, "uvloop": "uvloop" in type(loop).__module__, "nofile": hard}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "close":
            for client in CLIENTS:
                client.close()
            await asyncio.sleep(0.2)
            print(json.dumps({"closed": len(CLIENTS)}), flush=True)
            break
        answer = await {"connect": connect, "progress": progress, "logs": logs}[cmd["cmd"]](cmd)
        print(json.dumps(answer), flush=True)
        # The farm's own garbage collector runs here, between commands, never while frames arrive: a full
        # collection over 1,000 clients and their stamps paused this loop for tens of ms (every client's
        # stamp of the event arriving then was late by as much), which is the farm's time, not the server's.
        gc.collect()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
