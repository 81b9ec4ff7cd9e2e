"""Fan-out: 5,000 WebSocket clients on one backend process.

Connects ``--clients`` authenticated clients (all in this process) to one backend process, each subscribed
to the same organisation, and reports the backend's resident memory per connection (its RSS after the
connections minus before, divided by their number). Then this process commits ``--events`` progress events,
one at a time, and reports for each the time until *every* client had it (and the median client), from the
moment this process's bus published it.

    .venv/bin/python bench/ws_fanout.py [--clients 5000] [--events 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.bootstrap()
import _realtime as rt  # noqa: E402


async def main(args) -> None:
    from backend.app.runtime.event_transport import stop_event_bus
    from backend.app.core.events import EventType, bus

    cleanup = c.Cleanup()
    clients: list[rt.Client] = []
    try:
        backend = await rt.start_backend("fanout", cleanup)
        await rt.start_emitter(backend)
        deployment_id = await rt.insert_deployment(backend)
        await asyncio.sleep(2)
        before = backend.rss_kib()
        started = time.monotonic()
        for start in range(0, args.clients, 250):
            clients += await rt.connect_many(backend, min(250, args.clients - start), batch=125,
                                             organization_id=backend.organization_id)
            print(f"  {len(clients)} clients connected, backend RSS {backend.rss_kib() / 1024:.1f} MiB "
                  f"({(backend.rss_kib() - before) / len(clients):.1f} KiB per connection)", file=sys.stderr)
        connect_time = time.monotonic() - started
        await asyncio.sleep(3)
        after = backend.rss_kib()
        published: dict[int, float] = {}
        unsubscribe = bus.subscribe(lambda e: published.__setitem__(e.data["current_step"], time.perf_counter()),
                                    filter=lambda e: e.type is EventType.DEPLOYMENT_PROGRESS)
        rows = []
        for step in range(1, args.events + 1):
            c.check_stop()
            await rt.emit_progress(deployment_id, step)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                arrivals = [at for cl in clients for at, f in cl.seen[-3:]
                            if f["type"] == "DEPLOYMENT_PROGRESS" and f["data"]["current_step"] == step]
                if len(arrivals) >= len(clients):
                    break
                await asyncio.sleep(0.05)
            arrivals = [at for cl in clients for at, f in cl.seen
                        if f["type"] == "DEPLOYMENT_PROGRESS" and f["data"]["current_step"] == step]
            t0 = published[step]
            rows.append([str(step), str(len(arrivals)), c.ms(min(arrivals) - t0), c.ms(c.median(arrivals) - t0),
                         c.ms(max(arrivals) - t0)])
            await asyncio.sleep(0.5)
        unsubscribe()
        print(f"# {len(clients)} WebSocket clients on one backend process; {c.machine_line()}")
        print(f"connected in {connect_time:.1f} s; backend RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: "
              f"{(after - before) / len(clients):.1f} KiB per connection")
        if rt.RETRIED:
            print(f"{len(rt.RETRIED)} connection attempt(s) failed and were retried, e.g. {rt.RETRIED[0]}")
        print(c.table(["event", "clients reached", "first ms", "median ms", "last (all) ms"], rows))
        lasts = [float(r[4]) for r in rows]
        print(f"\nevent to all {len(clients)} clients: median {c.median(lasts):.1f} ms, worst {max(lasts):.1f} ms "
              f"(includes this process reading {len(clients)} frames per event); {c.machine_line()}")
    finally:
        await rt.close_all(clients)
        await stop_event_bus()
        for problem in cleanup.run():
            print(problem, file=sys.stderr)
        c.remove_scratch()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--events", type=int, default=10)
    c.run_main(lambda: main(parser.parse_args()))
