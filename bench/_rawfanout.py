"""The floor of a fan-out on this machine: a bare WebSocket server with no application (not a benchmark
itself).

It answers the handshake and the ``auth``/``subscribe`` frames of the benchmark's clients (``_wsfarm.py``)
and, on each ``{"step": N}`` line on stdin, writes one pre-built ``DEPLOYMENT_PROGRESS``-shaped text frame
to every connected socket with ``transport.write`` on uvloop, then prints ``{"sent_at": perf_counter before
the first write, "elapsed": seconds for all the writes, "cpu": the CPU time they took}``. Run
pinned to the backend's CPU, it tells how much of a fan-out's time is the kernel's (one ``send`` per
socket: on loopback the sender also pays the receiver's TCP processing and wake-up) rather than WindFlow's.
It first prints ``{"port": P}``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import resource
import socket
import sys
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SOCKETS: list[asyncio.Transport] = []
FRAME = (
    '{"type":"DEPLOYMENT_PROGRESS","deployment_id":"00000000-0000-0000-0000-000000000000",'
    '"organization_id":"00000000-0000-0000-0000-000000000000","timestamp":"2026-01-01T00:00:00.000000Z",'
    '"data":{"progress":0,"current_step":%d,"total_steps":1000000000,"step_name":"bench"}}'
)


def text_frame(text: str) -> bytes:
    payload = text.encode()
    n = len(payload)
    head = bytes((0x81, n)) if n < 126 else bytes((0x81, 126)) + n.to_bytes(2, "big")
    return head + payload


def unmask(data: bytes) -> tuple[int, bytes, int] | None:
    """(opcode, payload, bytes used) of the first complete client frame in ``data``."""
    if len(data) < 2:
        return None
    length, start = data[1] & 0x7F, 2
    if length == 126:
        length, start = int.from_bytes(data[2:4], "big"), 4
    elif length == 127:
        length, start = int.from_bytes(data[2:10], "big"), 10
    if len(data) < start + 4 + length:
        return None
    key = data[start : start + 4]
    body = bytes(b ^ key[i % 4] for i, b in enumerate(data[start + 4 : start + 4 + length]))
    return data[0] & 0x0F, body, start + 4 + length


class Server(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport, self.buf, self.open = transport, b"", False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            if b"\r\n\r\n" not in self.buf:
                return
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            key = next(l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.open = True
        while (frame := unmask(self.buf)) is not None:
            opcode, body, used = frame
            self.buf = self.buf[used:]
            if opcode == 0x1:
                kind = json.loads(body)["type"]
                answer = {"auth": {"type": "authenticated"}, "subscribe": {"type": "subscribed"}}.get(kind)
                if answer:
                    self.transport.write(text_frame(json.dumps(answer)))
                    if kind == "subscribe":
                        SOCKETS.append(self.transport)
            elif opcode == 0x8:
                self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.transport in SOCKETS:
            SOCKETS.remove(self.transport)


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", 0, backlog=4096, family=socket.AF_INET)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        frame = text_frame(FRAME % json.loads(line)["step"])
        started, cpu = time.perf_counter(), time.thread_time()
        for transport in SOCKETS:
            transport.write(frame)
        print(
            json.dumps(
                {"sent_at": started, "elapsed": time.perf_counter() - started, "cpu": time.thread_time() - cpu, "sockets": len(SOCKETS)}
            ),
            flush=True,
        )


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
