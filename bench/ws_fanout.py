"""Fan-out: 5,000 WebSocket clients on one backend process.

Connects ``--clients`` authenticated clients to one backend process, each subscribed to the same
organisation, and reports the backend's resident memory per connection (its RSS after the connections
minus before, divided by their number). Then this process commits ``--events`` progress events, one at a
time, and reports for each the time until *every* client had it (and the first and the median client),
from the moment this process's bus published it (after its commit) to the socket read of the client, and
the CPU time the backend's event-loop thread spent meanwhile (``/proc/PID/schedstat``: what the fan-out cost
the server, which a loaded machine changes much less than the times).

The clients run in a process of their own (``_wsfarm.py``: minimal clients on one uvloop loop, no
compression); with 2+ CPUs the backend is pinned to CPU 0, this process and the clients to the others
(``--no-pin``: no pinning). Then, as a reference, the same clients on a bare WebSocket server with no
application (``_rawfanout.py``, on the backend's CPU) get the same number of frames: the floor of one
``send`` per socket on this machine (``--no-raw``: skipped). The benchmark lifts its soft open-files limit to the hard one (the backend
inherits it, and lifts its own at start too) and prints the backend's limit.

    .venv/bin/python bench/ws_fanout.py [--clients 5000] [--events 10]
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


async def main(args) -> None:
    from backend.app.core.events import EventType, bus
    from backend.app.runtime.event_transport import stop_event_bus

    cleanup = c.Cleanup()
    farm = None
    try:
        backend = await rt.start_backend("fanout", cleanup, ws=args.ws)
        cpus, pinning = rt.pin(backend, args.pin)
        farm = await rt.Farm.start(cleanup, cpus)
        await rt.start_emitter(backend)
        deployment_id = await rt.insert_deployment(backend)
        limit = Path(f"/proc/{backend.pid}/limits").read_text().split("Max open files")[1].split()[0]
        print(f"# backend pid {backend.pid}, open files limit {limit}; clients on {args.ws}; {pinning}", file=sys.stderr)
        await asyncio.sleep(2)
        before = backend.rss_kib()
        started = time.monotonic()
        while farm.count < args.clients:
            await farm.connect(
                backend, min(args.step, args.clients - farm.count), batch=args.batch, organization_id=backend.organization_id
            )
            print(
                f"  {farm.count} clients connected, backend RSS {backend.rss_kib() / 1024:.1f} MiB "
                f"({(backend.rss_kib() - before) / farm.count:.1f} KiB per connection)",
                file=sys.stderr,
            )
        connect_time = time.monotonic() - started
        await asyncio.sleep(3)
        after = backend.rss_kib()
        published: dict[int, float] = {}
        unsubscribe = bus.subscribe(
            lambda e: published.__setitem__(e.data["current_step"], time.perf_counter()),
            filter=lambda e: e.type is EventType.DEPLOYMENT_PROGRESS,
        )
        rows = []
        for step in range(1, args.events + 1):
            c.check_stop()
            cpu = backend.cpu_seconds()
            await rt.emit_progress(deployment_id, step)
            arrivals = sorted((await farm.progress([step], farm.count))[step])
            cpu = backend.cpu_seconds() - cpu
            t0 = published[step]
            rows.append(
                [
                    str(step),
                    str(len(arrivals)),
                    c.ms(arrivals[0] - t0),
                    c.ms(c.median(arrivals) - t0),
                    c.ms(arrivals[-1] - t0),
                    f"{cpu * 1e3:.1f}",
                ]
            )
            await asyncio.sleep(0.5)
        unsubscribe()
        clients, retried = farm.count, farm.retried
        await farm.close()
        farm = None
        raw = None
        if args.raw:
            print(f"  raw fan-out: {clients} clients on a bare WebSocket server, {args.events} events ...", file=sys.stderr)
            raw = await rt.raw_fanout(cleanup, clients, args.events, 0.5, args.pin)
        print(f"# {clients} WebSocket clients on one backend process; {c.machine_line()}")
        print(
            f"connected in {connect_time:.1f} s; backend RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: "
            f"{(after - before) / clients:.1f} KiB per connection"
        )
        if retried:
            print(f"{len(retried)} connection attempt(s) failed and were retried, e.g. {retried[0]}")
        print(c.table(["event", "clients reached", "first ms", "median ms", "last (all) ms", "server CPU ms"], rows))
        lasts, cpus = [float(r[4]) for r in rows], [float(r[5]) for r in rows]
        print(
            f"\nevent to all {clients} clients: median {c.median(lasts):.1f} ms, worst {max(lasts):.1f} ms; "
            f"server CPU per event: median {c.median(cpus):.1f} ms ({c.median(cpus) / clients * 1e3:.1f} us per "
            f"client); clients in one process (uvloop when installed), {pinning}; {c.machine_line()}"
        )
        if raw is not None:
            latencies, raw_lasts, writes, raw_cpu = raw
            print(
                f"raw fan-out (the same clients and frame, a bare uvloop server, no application): median client "
                f"{c.ms(c.median(latencies))} ms, event to all: median {c.ms(c.median(raw_lasts))} ms, worst "
                f"{c.ms(max(raw_lasts))} ms; the server's {clients} writes took {c.ms(c.median(writes))} ms "
                f"({c.median(writes) / clients * 1e6:.1f} us per socket), CPU {c.ms(c.median(raw_cpu))} ms"
            )
    finally:
        if farm is not None:
            await farm.close()
        await stop_event_bus()
        for problem in cleanup.run():
            print(problem, file=sys.stderr)
        c.remove_scratch()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--step", type=int, default=500, help="clients connected between two RSS readings")
    parser.add_argument("--batch", type=int, default=100, help="connections opened concurrently")
    parser.add_argument(
        "--ws", choices=["listener", "asgi"], default="listener", help="the WebSocket listener (WS_PORT) or uvicorn's route"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPU placement to the scheduler")
    parser.add_argument("--no-raw", dest="raw", action="store_false", help="skip the raw fan-out reference")
    c.run_main(lambda: main(parser.parse_args()))
