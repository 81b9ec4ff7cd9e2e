"""The server side of a fan-out, without WindFlow: what one event costs per client through each public way of
sending a WebSocket frame (issue 18: which server path the hub should use).

For each mode a bare server (this script run with ``--serve MODE``, pinned to the backend's CPU) accepts the
benchmark's farm clients (``_wsfarm.py``: handshake, ``auth``, ``subscribe``), then, for each event, sends one
``DEPLOYMENT_PROGRESS``-shaped text to every client and reports the CPU time of its loop's thread for all of
them (``time.thread_time``: its Python and the kernel's work in the sends). Modes:

* ``raw``: one pre-built frame per event, ``transport.write`` to every socket (``_rawfanout.py``): the floor.
* ``asgi:IMPL``: uvicorn with ``ws=IMPL`` (``websockets-sansio``, what ``auto`` picks with websockets
  installed; ``websockets``, the legacy one; ``wsproto``) and a plain ASGI app: one ``websocket.send``
  message per event, shared by the connections, each connection's ``send`` run at once as WindFlow's hub
  runs it (``runtime/realtime/eager.py``).
* ``broadcast``: websockets' own asyncio server and ``websockets.broadcast()`` (the text encoded once).
* ``picows``: picows's server, ``WSTransport.send`` of the text encoded once.

Modes run in turn, ``--rounds`` times, each with fresh clients; a mode whose package is not installed is
skipped (wsproto and picows are not WindFlow dependencies: ``pip install --target DIR wsproto picows`` and
``PYTHONPATH=DIR`` to include them). Printed per mode: the median over the rounds of the per-event median
CPU per client, the clients' median latency and the time until the last client had the event.

    .venv/bin/python bench/ws_send_floor.py [--modes raw,asgi:websockets-sansio,asgi:websockets,asgi:wsproto,broadcast,picows]
        [--clients 1000] [--events 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import resource
import socket
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = "raw,asgi:websockets-sansio,asgi:websockets,asgi:wsproto,broadcast,picows"
ANSWERS = {"auth": {"type": "authenticated"}, "subscribe": {"type": "subscribed"}}


# --- the servers (--serve MODE) ---------------------------------------------------------------------


def _finish_at_once(awaitable) -> None:
    """Run an ASGI send at once, as the hub does; the benchmark's clients always read, so it never waits."""
    if type(awaitable) is not types.CoroutineType:
        raise RuntimeError("an ASGI send that is not a coroutine")
    try:
        awaitable.send(None)
    except StopIteration:
        return
    raise RuntimeError("a send waited for its socket")


async def _asgi_server(impl: str, sock: socket.socket):
    import uvicorn

    sends: list = []

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        try:
            while (message := await receive())["type"] != "websocket.disconnect":
                kind = json.loads(message["text"])["type"]
                if kind in ANSWERS:
                    await send({"type": "websocket.send", "text": json.dumps(ANSWERS[kind])})
                    if kind == "subscribe":
                        sends.append(send)
        finally:
            if send in sends:
                sends.remove(send)

    config = uvicorn.Config(app, ws=impl, http="httptools", loop="none", log_level="warning", backlog=4096, ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)

    def fan_out(text: str) -> int:
        message = {"type": "websocket.send", "text": text}
        for send in sends:
            _finish_at_once(send(message))
        return len(sends)

    return fan_out


async def _broadcast_server(port: int):
    from websockets.asyncio.server import broadcast, serve

    connections: set = set()

    async def handler(websocket) -> None:
        try:
            async for message in websocket:
                kind = json.loads(message)["type"]
                if kind in ANSWERS:
                    await websocket.send(json.dumps(ANSWERS[kind]))
                    if kind == "subscribe":
                        connections.add(websocket)
        finally:
            connections.discard(websocket)

    await serve(handler, "127.0.0.1", port, compression=None, backlog=4096, max_queue=None)

    def fan_out(text: str) -> int:
        broadcast(connections, text)
        return len(connections)

    return fan_out


async def _picows_server(port: int):
    import picows

    transports: list = []

    class Listener(picows.WSListener):
        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == picows.WSMsgType.TEXT:
                kind = json.loads(frame.get_payload_as_bytes())["type"]
                if kind in ANSWERS:
                    transport.send(picows.WSMsgType.TEXT, json.dumps(ANSWERS[kind]).encode())
                    if kind == "subscribe":
                        transports.append(transport)
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                transport.send_close()
                transport.disconnect()

        def on_ws_disconnected(self, transport) -> None:
            if transport in transports:
                transports.remove(transport)

    await picows.ws_create_server(lambda _request: Listener(), "127.0.0.1", port, backlog=4096)

    def fan_out(text: str) -> int:
        data, kind = text.encode(), picows.WSMsgType.TEXT
        for transport in transports:
            transport.send(kind, data)
        return len(transports)

    return fan_out


async def serve(mode: str) -> None:
    import _rawfanout as raw

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sock = socket.socket(socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()
    if mode.startswith("asgi:"):
        fan_out = await _asgi_server(mode[5:], sock)
    else:
        sock.close()
        if mode == "raw":
            await loop.create_server(raw.Server, "127.0.0.1", port, backlog=4096)

            def fan_out(text: str) -> int:
                frame = raw.text_frame(text)
                for transport in raw.SOCKETS:
                    transport.write(frame)
                return len(raw.SOCKETS)

        elif mode == "broadcast":
            fan_out = await _broadcast_server(port)
        elif mode == "picows":
            fan_out = await _picows_server(port)
        else:
            raise SystemExit(f"unknown mode {mode}")
    print(json.dumps({"port": port}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        text = raw.FRAME % json.loads(line)["step"]
        started, cpu = time.perf_counter(), time.thread_time()
        count = fan_out(text)
        print(json.dumps({"sent_at": started, "cpu": time.thread_time() - cpu, "sockets": count}), flush=True)


# --- the benchmark ------------------------------------------------------------------------------------


def available(mode: str) -> bool:
    package = {"asgi:wsproto": "wsproto", "picows": "picows"}.get(mode)
    return package is None or importlib.util.find_spec(package) is not None


async def run_mode(cleanup, mode: str, clients: int, events: int, pinned: bool) -> tuple[float, float, float]:
    import _common as c
    import _realtime as rt

    server = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "ignore", __file__, "--serve", mode, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    cleanup.push("stop the floor server", lambda: server.returncode is None and server.kill())
    if pinned:
        os.sched_setaffinity(server.pid, {0})
    port = json.loads(await server.stdout.readline())["port"]
    farm = await rt.Farm.start(cleanup, set(range(1, os.cpu_count())) if pinned else None)
    try:
        await farm.connect(f"ws://127.0.0.1:{port}/", clients, organization_id="-")
        cpu, lasts, latencies = [], [], []
        for step in range(10**8, 10**8 + events):
            c.check_stop()
            server.stdin.write((json.dumps({"step": step}) + "\n").encode())
            await server.stdin.drain()
            sent = json.loads(await server.stdout.readline())
            arrivals = (await farm.progress([step], clients))[step]
            cpu.append(sent["cpu"] / sent["sockets"])
            lasts.append(max(arrivals) - sent["sent_at"])
            latencies += [at - sent["sent_at"] for at in arrivals]
            await asyncio.sleep(0.05)
        return statistics.median(cpu) * 1e6, statistics.median(latencies) * 1e3, statistics.median(lasts) * 1e3
    finally:
        await farm.close()
        if server.returncode is None:
            server.kill()
        await server.wait()


async def bench(args) -> bool:
    import _common as c

    modes = [m for m in args.modes.split(",") if m]
    for mode in [m for m in modes if not available(m)]:
        print(f"{mode}: skipped (its package is not installed)", file=sys.stderr)
    modes = [m for m in modes if available(m)]
    pinned = args.pin and (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, set(range(1, os.cpu_count())))
    results: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in modes}
    cleanup = c.Cleanup()
    try:
        for round_ in range(args.rounds):
            for mode in modes:
                load = os.getloadavg()[0]
                cpu, median, last = await run_mode(cleanup, mode, args.clients, args.events, pinned)
                results[mode].append((cpu, median, last, load))
                print(
                    f"  round {round_ + 1} {mode}: {cpu:.2f} us per client, median {median:.2f} ms, all {last:.2f} ms (load {load:.1f})",
                    file=sys.stderr,
                )
    finally:
        for problem in cleanup.run():
            print(problem, file=sys.stderr)
    print(
        f"# one event to {args.clients} clients, {args.events} events x {args.rounds} rounds; {'server pinned to CPU 0' if pinned else 'not pinned'}"
    )
    print(f"{'mode':26}  {'CPU us per client':>17}  {'median ms':>9}  {'all ms':>8}  runs (us per client)  load")
    raw = statistics.median(r[0] for r in results.get("raw", [])) if results.get("raw") else None
    for mode, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        ratio = f" ({cpu / raw:.2f}x raw)" if raw else ""
        print(
            f"{mode:26}  {cpu:17.2f}  {statistics.median(r[1] for r in runs):9.2f}  {statistics.median(r[2] for r in runs):8.2f}  "
            f"{', '.join(f'{r[0]:.2f}' for r in runs)}{ratio}  {min(r[3] for r in runs):.1f}-{max(r[3] for r in runs):.1f}"
        )
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--modes", default=MODES)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPU placement to the scheduler")
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve))
        return
    import _common as c

    c.bootstrap()
    sys.exit(0 if c.run_main(lambda: bench(args)) else 1)


if __name__ == "__main__":
    main()
