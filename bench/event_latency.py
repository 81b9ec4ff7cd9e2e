"""Event latency, emit -> WebSocket client receive, with 1, 100 and 1,000 subscribed clients.

This process commits ``DEPLOYMENT_PROGRESS`` events the way a worker does (its bus forwards them over
PostgreSQL NOTIFY or Redis pub/sub); one backend process (uvicorn) receives them and sends them to N
WebSocket clients subscribed to the deployment's organisation. The clients run in a process of their own
(``_wsfarm.py``: minimal clients on one uvloop loop; with 2+ CPUs the backend is pinned to CPU 0, this
process and the clients to the others; ``--no-pin`` leaves placement to the scheduler). The cases add
clients (1, then 99 more, ...). Latency = the moment a client's socket read returned the frame - the
moment this process's bus published the event (after its commit), both ``CLOCK_MONOTONIC``. Next to it,
in the same run: raw ``NOTIFY`` -> ``LISTEN`` and raw Redis ``PUBLISH`` -> subscriber, process to process
(here: connection to connection), the floor WindFlow's path is built on; and, for the largest client
count, the same clients on a bare WebSocket server with no application (``_rawfanout.py``, pinned like the
backend): the floor of writing one frame to each of N sockets on this machine (``--no-raw``: skipped).

Also printed: the server's CPU time per event (``server CPU ms/event``), from the emit until every client had
it, of the backend's event-loop thread (``/proc/PID/schedstat``: its Python and the kernel's work in its
sends), and for the bare server the CPU time of its writes. A loaded machine stretches the latencies far
more than this: it compares two revisions run on a busy machine.

Target: median <= 5 ms and p99 <= 50 ms at 1,000 clients.

``--replicas 2``: instead, for each client count, three paths one after the other, each with a client farm of
its own: the clients on one backend directly; on the same backend through nginx (the production proxy's
configuration, ``backend/tests/nginx_proxy.py``); spread by nginx over two backend replicas on the same
database, both receiving every event over the bus. Nothing is pinned; the server CPU is both replicas'.

    .venv/bin/python bench/event_latency.py [--events 200] [--clients 1,100,1000] [--bus postgres|redis] [--replicas 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

c.bootstrap()
import _realtime as rt  # noqa: E402


async def raw_notify(backend: rt.Backend, count: int, interval: float) -> list[float]:
    import asyncpg

    from backend.app.runtime.event_transport import postgres_dsn

    dsn = postgres_dsn(backend.settings)
    listener, sender = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    def on_notify(_conn, _pid, _channel, payload: str) -> None:
        latencies.append(time.perf_counter() - sent[payload])
        if len(latencies) == count:
            done.set()

    await listener.add_listener("windflow_bench_raw", on_notify)
    try:
        for i in range(count):
            sent[str(i)] = time.perf_counter()
            await sender.execute(f"NOTIFY windflow_bench_raw, '{i}'")
            await asyncio.sleep(interval)
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await listener.close()
        await sender.close()
    return latencies


async def raw_redis(count: int, interval: float) -> list[float]:
    from redis.asyncio import Redis

    subscriber, publisher = Redis(host=c.REDIS_HOST, port=c.REDIS_PORT), Redis(host=c.REDIS_HOST, port=c.REDIS_PORT)
    pubsub = subscriber.pubsub()
    channel = f"windflow:bench:{time.time_ns()}"
    await pubsub.subscribe(channel)
    while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
        pass
    sent: dict[bytes, float] = {}
    latencies: list[float] = []

    async def read() -> None:
        while len(latencies) < count:
            message = await pubsub.get_message(timeout=1.0)
            if message and message["type"] == "message":
                latencies.append(time.perf_counter() - sent[message["data"]])

    reader = asyncio.create_task(read())
    try:
        for i in range(count):
            sent[str(i).encode()] = time.perf_counter()
            await publisher.publish(channel, str(i))
            await asyncio.sleep(interval)
        await asyncio.wait_for(reader, 30)
    finally:
        reader.cancel()
        await pubsub.aclose()
        await subscriber.aclose()
        await publisher.aclose()
    return latencies


async def windflow(
    backend: rt.Backend, farm: rt.Farm, deployment_id: str, clients: int, count: int, interval: float, cpu_seconds=None
) -> tuple[list[float], int, list[float]]:
    from backend.app.core.events import EventType, bus

    published: dict[int, float] = {}
    cpu_seconds = cpu_seconds or backend.cpu_seconds

    def on_publish(evt) -> None:
        published[evt.data["current_step"]] = time.perf_counter()

    unsubscribe = bus.subscribe(on_publish, filter=lambda e: e.type is EventType.DEPLOYMENT_PROGRESS and e.deployment_id == deployment_id)
    await farm.connect(backend, clients - farm.count, organization_id=backend.organization_id)
    try:
        base = (clients + 1) * 100_000  # distinct steps per case
        latencies, missing, cpu = [], 0, []
        for step in range(base, base + count):
            # One event at a time, as the raw fan-out does: the farm parses what it read between two events,
            # never while one is arriving (parsing 1,000 frames takes the farm's loop away from its sockets).
            c.check_stop()
            before = cpu_seconds()
            await rt.emit_progress(deployment_id, step)
            times = (await farm.progress([step], clients, timeout=10))[step]
            cpu.append(cpu_seconds() - before)
            latencies += [at - published[step] for at in times]
            missing += clients - len(times)
            await asyncio.sleep(interval)
    finally:
        unsubscribe()
    return latencies, missing, cpu


def websocket_connections(backend: rt.Backend) -> int:
    import re
    import urllib.request

    with urllib.request.urlopen(f"{backend.url}/metrics", timeout=10) as response:
        match = re.search(r"^windflow_websocket_connections (\S+)$", response.read().decode(), re.M)
    return int(float(match.group(1))) if match else 0


async def replicas(args, backend: rt.Backend, cleanup: c.Cleanup) -> None:
    """One replica directly, the same through nginx, two replicas through nginx: the same events, the same
    number of clients, a fresh farm each."""
    import dataclasses

    from backend.tests.nginx_proxy import Proxy

    second = await rt.start_replica(backend, "latency-replica", cleanup)
    listeners = [b.settings.WS_PORT for b in (backend, second)] if backend.settings.WS_PORT else None  # --ws listener
    one = Proxy([backend.settings.PORT], c.SCRATCH / "nginx-one", ws_ports=listeners and listeners[:1])
    cleanup.push("stop nginx", one.stop)
    two = Proxy([backend.settings.PORT, second.settings.PORT], c.SCRATCH / "nginx-two", ws_ports=listeners)
    cleanup.push("stop nginx", two.stop)
    await asyncio.to_thread(one.wait_ready)
    await asyncio.to_thread(two.wait_ready)
    await rt.start_emitter(backend)
    deployment_id = await rt.insert_deployment(backend)
    print(f"# event latency over replicas ({args.bus} event bus); not pinned; {c.machine_line()}", file=sys.stderr)
    paths = [
        ("one replica, direct", backend.ws_url, [backend]),
        ("one replica behind nginx", one.ws_url, [backend]),
        ("two replicas behind nginx", two.ws_url, [backend, second]),
    ]
    rows = []
    for clients in sorted(args.clients):
        events = args.events if clients <= 100 else max(20, args.events // 4)
        interval = args.interval if clients <= 100 else max(args.interval, 0.1)
        for name, ws_url, servers in paths:
            print(f"  {name}: {clients} client(s), {events} events ...", file=sys.stderr)
            farm = await rt.Farm.start(cleanup, None)
            via = dataclasses.replace(backend, ws_url=ws_url)
            values, missing, cpu = await windflow(
                via,
                farm,
                deployment_id,
                clients,
                events,
                interval,
                cpu_seconds=lambda servers=servers: sum(s.cpu_seconds() for s in servers),
            )
            spread = "/".join(str(websocket_connections(s)) for s in servers)
            await farm.close()
            rows.append(
                [
                    name,
                    f"{clients} ({spread})",
                    str(len(values)),
                    c.ms(c.median(values), 2),
                    c.ms(c.percentile(values, 99), 2),
                    c.ms(max(values), 2),
                    str(missing),
                    f"{c.median(cpu) * 1e3:.2f} ({c.median(cpu) / clients * 1e6:.1f} us/client)",
                ]
            )
    print(c.table(["path", "clients (per replica)", "samples", "median ms", "p99 ms", "max ms", "lost", "server CPU ms/event"], rows))
    print(f"\nclients in one process per path, not pinned; {c.machine_line()}")


async def main(args) -> None:
    from backend.app.runtime.event_transport import stop_event_bus

    cleanup = c.Cleanup()
    try:
        if args.replicas == 2:
            backend = await rt.start_backend("latency", cleanup, event_bus=args.bus, ws=args.ws, PROMETHEUS_ENABLED=True)
            await replicas(args, backend, cleanup)
            return
        backend = await rt.start_backend("latency", cleanup, event_bus=args.bus, ws=args.ws)
        cpus, pinning = rt.pin(backend, args.pin)
        farm = await rt.Farm.start(cleanup, cpus)
        await rt.start_emitter(backend)
        deployment_id = await rt.insert_deployment(backend)
        print(
            f"# event latency, emit -> client receive ({args.bus} event bus, clients on {args.ws}); {pinning}; {c.machine_line()}",
            file=sys.stderr,
        )
        rows = []
        for name, coro in (
            ("raw NOTIFY -> LISTEN", raw_notify(backend, args.events, args.interval)),
            ("raw Redis PUBLISH -> subscriber", raw_redis(args.events, args.interval)),
        ):
            values = await coro
            rows.append(
                [name, "-", str(len(values)), c.ms(c.median(values), 2), c.ms(c.percentile(values, 99), 2), c.ms(max(values), 2), "0", "-"]
            )
        for clients in sorted(args.clients):
            events = args.events if clients <= 100 else max(20, args.events // 4)
            interval = args.interval if clients <= 100 else max(args.interval, 0.1)
            print(f"  {clients} client(s), {events} events ...", file=sys.stderr)
            values, missing, cpu = await windflow(backend, farm, deployment_id, clients, events, interval)
            rows.append(
                [
                    f"WindFlow WS ({args.bus})",
                    str(clients),
                    str(len(values)),
                    c.ms(c.median(values), 2),
                    c.ms(c.percentile(values, 99), 2),
                    c.ms(max(values), 2),
                    str(missing),
                    f"{c.median(cpu) * 1e3:.2f} ({c.median(cpu) / clients * 1e6:.1f} us/client)",
                ]
            )
        await farm.close()
        if args.raw:
            clients = max(args.clients)
            events = args.events if clients <= 100 else max(20, args.events // 4)
            print(f"  raw fan-out: {clients} clients on a bare WebSocket server, {events} events ...", file=sys.stderr)
            values, _, writes, raw_cpu = await rt.raw_fanout(cleanup, clients, events, max(args.interval, 0.1), args.pin)
            print(
                f"  raw fan-out: writing the frame to all {clients} sockets took {c.ms(c.median(writes), 2)} ms "
                f"(median), {c.median(writes) / clients * 1e6:.1f} µs per socket",
                file=sys.stderr,
            )
            rows.append(
                [
                    "raw WebSocket fan-out (no application)",
                    str(clients),
                    str(len(values)),
                    c.ms(c.median(values), 2),
                    c.ms(c.percentile(values, 99), 2),
                    c.ms(max(values), 2),
                    "0",
                    f"{c.median(raw_cpu) * 1e3:.2f} ({c.median(raw_cpu) / clients * 1e6:.1f} us/client)",
                ]
            )
        print(c.table(["path", "clients", "samples", "median ms", "p99 ms", "max ms", "lost", "server CPU ms/event"], rows))
        print(
            f"\nclients in one process ({'uvloop' if farm.info.get('uvloop') else 'asyncio'}), {pinning}; "
            f"{c.machine_line()}; target at 1,000 clients: median <= 5 ms, p99 <= 50 ms"
        )
    finally:
        await stop_event_bus()
        for problem in cleanup.run():
            print(problem, file=sys.stderr)
        c.remove_scratch()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200, help="events per case (1,000 clients: a quarter)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between events")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 1000])
    parser.add_argument("--bus", choices=["postgres", "redis"], default="postgres")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPU placement to the scheduler")
    parser.add_argument("--no-raw", dest="raw", action="store_false", help="skip the raw fan-out reference")
    parser.add_argument(
        "--ws", choices=["listener", "asgi"], default="listener", help="the WebSocket listener (WS_PORT) or uvicorn's route"
    )
    parser.add_argument("--replicas", type=int, choices=[1, 2], default=1, help="2: direct, through nginx, two replicas through nginx")
    c.run_main(lambda: main(parser.parse_args()))
