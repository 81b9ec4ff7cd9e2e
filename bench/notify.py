"""Notifications under load: deployments ending at a steady rate, each notified to one webhook.

    .venv/bin/python bench/notify.py [--db sqlite|postgresql] [--rate 100] [--seconds 5] [--channels 1]
                                     [--senders N]

N deployments (placed ``pending`` beforehand) are failed through the state machine at ``--rate`` per second,
each change in its own transaction (the outbox adds the delivery in it); one sender loop
(``runtime/notifier.py``, as in every backend process) delivers to a local HTTP receiver (an asyncio server
answering 200). Prints the rate of ends achieved, deliveries per second, and the time from each change's
commit to its delivery's arrival (median, p99, max), with the machine's load and the process's CPU time.

``--senders N`` (PostgreSQL) runs the senders as in production instead: this process only produces (as the
workers do), N other processes (``bench/notify.py --serve``, standing for backend replicas) each run a
sender loop, woken by the producer's events over the PostgreSQL event bus; their CPU is reported apart. They
run on uvloop, as a backend does (``uvicorn.run`` picks it: ``uvicorn[standard]`` installs it); the producers
on asyncio's own loop, as a worker does (``runtime/worker_loop.py``).

The ends are an open-loop arrival: the n-th is due at ``n / rate`` seconds, and starts then even if earlier
ones have not committed, up to ``--concurrency`` at once per producer (the deployments a worker finishes at the
same time, its concurrency; 1: one after the other, as before). ``--producers N`` (with ``--senders``) ends them
from N processes (``bench/notify.py --produce``, standing for N workers), the n-th by producer ``n mod N``;
this process then only receives (its CPU, the receiver's, is reported apart).
Target (issue 24): p99 ≤ 1 s at 100 deployments/s ending.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

_common.bootstrap()


class Receiver:
    """A minimal HTTP/1.1 server: reads each request, notes when the delivery of each deployment arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                now = time.monotonic()  # CLOCK_MONOTONIC: the producers' processes read the same clock
                self.requests += 1
                deployment = (json.loads(body).get("deployment") or {}).get("id")
                if deployment:
                    self.arrived.setdefault(deployment, now)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def run(args) -> None:
    from backend.app import database
    from backend.app.core import security
    from backend.app.migrate import upgrade_database
    from backend.app.models import Deployment, DeploymentStatus, NotificationChannel, Organization, Stack, Target, TargetType
    from backend.app.runtime.notifier import NotificationLoop

    db = _common.ThrowawayDatabase(args.db, "notify")
    try:
        settings = _common.make_settings(db.url, NOTIFY_POLL_SECONDS=1.0, NOTIFY_TIMEOUT_SECONDS=5.0, NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8")
        engine = database.build_engine(settings)
        await upgrade_database(engine, settings)
        database.configure(settings, engine)
        receiver = Receiver()
        server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/in"
        total = int(args.rate * args.seconds)
        async with database.AsyncSessionLocal() as session:
            org = Organization(name="bench")
            session.add(org)
            await session.flush()
            target = Target(organization_id=org.id, name="t", type=TargetType.DOCKER, endpoint="unix:///var/run/docker.sock")
            stack = Stack(organization_id=org.id, name="s", template="services: {}\n", variables=[])
            session.add_all([target, stack])
            for n in range(args.channels):
                session.add(
                    NotificationChannel(
                        organization_id=org.id,
                        name=f"c{n}",
                        kind="webhook",
                        url_encrypted=security.encrypt_secret(settings, url),
                        secret_encrypted=security.encrypt_secret(settings, "bench-secret"),
                        events=["deployment.failed"],
                    )
                )
            await session.flush()
            ids = []
            for n in range(total):
                d = Deployment(
                    organization_id=org.id, stack_id=stack.id, target_id=target.id, name=f"d{n}", status=DeploymentStatus.PENDING
                )
                session.add(d)
                ids.append(d)
            await session.commit()
            ids = [d.id for d in ids]

        senders: list[subprocess.Popen] = []
        sender_cpu0: list[float] = []
        env = {**os.environ, "PYTHONPATH": str(_common.REPO_ROOT), "WINDFLOW_BENCH_SECRET_KEY": _common.SECRET_KEY}
        if args.senders:
            from backend.app.runtime.event_transport import event_bus_status, start_event_bus

            await start_event_bus(_common.make_settings(db.url, EVENT_BUS="postgres"), listen=False)
            while not event_bus_status()["connected"]:
                await asyncio.sleep(0.05)
            for _ in range(args.senders):
                senders.append(subprocess.Popen([sys.executable, __file__, "--serve", db.url], stdout=subprocess.PIPE, env=env, text=True))
            for proc in senders:  # each says "ready" once its bus listens
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            sender_cpu0 = [_cpu_of(proc.pid) for proc in senders]  # its start (imports, connecting) is not counted
            sender = asyncio.create_task(asyncio.sleep(0))
        else:
            loop = NotificationLoop(settings)
            sender = asyncio.create_task(loop.run())
        plan = list(enumerate(ids))  # (n, deployment): the n-th end is due at start + n / rate
        producers: list[subprocess.Popen] = []
        for _ in range(args.producers if args.producers > 1 else 0):
            producers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--produce", db.url, str(args.rate), str(args.concurrency)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=env,
                    text=True,
                )
            )
        for proc in producers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic() + 0.1
        if producers:
            for number, proc in enumerate(producers):
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"start": start, "plan": plan[number :: len(producers)]}) + "\n")
                proc.stdin.flush()
            reports = [json.loads(await asyncio.to_thread(proc.stdout.readline)) for proc in producers]  # type: ignore[union-attr]
            committed = {d: t for report in reports for d, t in report["committed"].items()}
            producer_cpu = [report["cpu"] for report in reports]
            last_commit = max(report["ended"] for report in reports)
            for proc in producers:
                proc.wait(10)
        else:
            committed = await produce(plan, rate=args.rate, start=start, concurrency=args.concurrency)
            last_commit = time.monotonic()
            producer_cpu = []
        ended = last_commit - start
        deadline = time.monotonic() + (60 if args.channels else 0)  # no channel: no delivery to wait for
        while len(receiver.arrived) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        last = max(receiver.arrived.values(), default=start) - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        sender_cpu = [_cpu_of(proc.pid) - before for proc, before in zip(senders, sender_cpu0, strict=True)]
        for proc in senders:
            proc.terminate()
            proc.wait(10)
        if senders:
            from backend.app.runtime.event_transport import stop_event_bus

            await stop_event_bus()
        server.close()
        latencies = [receiver.arrived[d] - committed[d] for d in ids if d in receiver.arrived]
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        where = f"{args.senders} sender process(es) apart" if senders else "the sender in the same process"
        where += f", {len(producers) or 1} producer process(es) ending up to {args.concurrency} at once each"
        print(f"{args.db}: {total} deployments ending, {args.channels} webhook channel(s), {where}; {_common.machine_line()}")
        print(
            f"  ends: {total / ended:.1f}/s asked {args.rate}/s; deliveries received: {len(latencies)}/{total} ({receiver.requests} requests)"
        )
        if latencies:
            print(f"  deliveries/s over the run: {len(latencies) / last:.1f}")
        if latencies:
            print(
                f"  commit -> delivery: median {_common.ms(_common.median(latencies))} ms, p99 {_common.ms(_common.percentile(latencies, 99))} ms, "
                f"max {_common.ms(max(latencies))} ms (target p99 <= 1000 ms)"
            )
        if producers:
            made = sum(producer_cpu)
            print(
                f"  producers' CPU: {made:.2f} s ({made / max(1, total) * 1000:.2f} ms per deployment end; "
                + ", ".join(f"{c:.2f}" for c in producer_cpu)
                + f" s); the receiver's process: {cpu:.2f} s"
            )
        elif senders:
            print(f"  producer CPU: {cpu:.2f} s ({cpu / max(1, total) * 1000:.2f} ms per deployment end)")
        if senders:
            spent = sum(sender_cpu)
            print(
                f"  senders' CPU: {spent:.2f} s ({spent / max(1, total) * 1000:.2f} ms per delivery; "
                + ", ".join(f"{c:.2f}" for c in sender_cpu)
                + " s)"
            )
        else:
            print(f"  process CPU: {cpu:.2f} s ({cpu / max(1, total) * 1000:.2f} ms per deployment end + delivery)")
        await engine.dispose()
    finally:
        db.drop()


async def produce(plan: list[list], *, rate: float, start: float, concurrency: int) -> dict[str, float]:
    """End each deployment of ``plan`` (``[n, id]``) through the state machine, in its own transaction, at
    ``start + n / rate`` (or as soon as one of the ``concurrency`` slots frees); returns when each committed."""
    from backend.app import database
    from backend.app.models import DeploymentStatus
    from backend.app.services.deployments.state_machine import set_deployment_status

    committed: dict[str, float] = {}
    slots = asyncio.Semaphore(concurrency)

    async def end(deployment_id: str) -> None:
        try:
            async with database.AsyncSessionLocal() as session:
                await set_deployment_status(
                    session,
                    deployment_id=deployment_id,
                    to_status=DeploymentStatus.FAILED,
                    reason="deployment failed",
                    error_message="bench",
                )
                await session.commit()
            committed[deployment_id] = time.monotonic()
        finally:
            slots.release()

    tasks = []
    for n, deployment_id in plan:
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        tasks.append(asyncio.create_task(end(deployment_id)))
    await asyncio.gather(*tasks)
    return committed


async def produce_apart(database_url: str, rate: float, concurrency: int) -> None:
    """A producer process (a worker): says "ready", reads ``{"start", "plan"}``, ends its deployments, and
    writes ``{"committed", "cpu", "ended"}`` (its CPU while producing)."""
    from backend.app import database
    from backend.app.runtime.event_transport import event_bus_status, start_event_bus, stop_event_bus

    settings = _common.make_settings(database_url, SECRET_KEY=os.environ["WINDFLOW_BENCH_SECRET_KEY"], EVENT_BUS="postgres")
    database.configure(settings, database.build_engine(settings))
    await start_event_bus(settings, listen=False)
    while not event_bus_status()["connected"]:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    order = json.loads(await asyncio.to_thread(sys.stdin.readline))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    committed = await produce(order["plan"], rate=rate, start=order["start"], concurrency=concurrency)
    ended = time.monotonic()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(json.dumps({"committed": committed, "cpu": cpu, "ended": ended}), flush=True)
    await stop_event_bus()
    await database.get_engine().dispose()


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a live child process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve(database_url: str) -> None:
    """A sender process (a backend replica's sender loop), woken by the events of the PostgreSQL bus."""
    from backend.app import database
    from backend.app.runtime.event_transport import event_bus_status, start_event_bus
    from backend.app.runtime.notifier import NotificationLoop

    settings = _common.make_settings(
        database_url,
        SECRET_KEY=os.environ["WINDFLOW_BENCH_SECRET_KEY"],  # the producer's: the channels' URLs are encrypted with it
        EVENT_BUS="postgres",
        NOTIFY_POLL_SECONDS=1.0,
        NOTIFY_TIMEOUT_SECONDS=5.0,
        NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8",
    )
    database.configure(settings, database.build_engine(settings))
    await start_event_bus(settings, listen=True)
    while not event_bus_status()["connected"]:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await NotificationLoop(settings).run()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        import uvloop

        os.environ.setdefault("LOG_LEVEL", "WARNING")
        uvloop.run(serve(sys.argv[2]))  # a backend's loop: uvicorn runs the app (and its sender loop) on uvloop
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--produce":
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        asyncio.run(produce_apart(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--senders", type=int, default=0, help="sender processes apart (PostgreSQL); 0: in this process")
    parser.add_argument("--producers", type=int, default=1, help="producer processes (workers); more than 1 needs --senders")
    parser.add_argument("--concurrency", type=int, default=1, help="ends under way at once per producer (a worker's concurrency)")
    args = parser.parse_args()
    if args.producers > 1 and not args.senders:
        parser.error("--producers N needs --senders M: the events reach the senders over the PostgreSQL bus")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    _common.run_main(lambda: run(args))


if __name__ == "__main__":
    main()
