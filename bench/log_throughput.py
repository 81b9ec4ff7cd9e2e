"""Log throughput to a subscribed WebSocket client, nothing lost, in two paths:

* **persisted log**: this process appends lines with the runner's own service (``append_logs``, batches
  of ``--batch`` lines, one commit each, as ``DeploymentLogWriter`` does); its bus sends a pointer per batch
  over PostgreSQL NOTIFY; the backend process reads the lines by ``seq`` and sends them to the client.
  Measured from the first commit to the last line received; every ``seq`` checked, in order. The rate at
  which this process wrote them (``written lines/s``) is printed next to it: the client cannot get them
  faster than the writer commits them.
* **service logs**: a container labelled with the deployment prints ``--lines`` lines as fast as it can
  (``seq``); the client follows it with ``{"stream": "services", "tail": 0}``. Measured from the first
  line received to the last; every number checked, in order.

The client runs in a process of its own (``_wsfarm.py``); with 2+ CPUs the backend is pinned to CPU 0,
this process and the client to the others (``--no-pin``: no pinning).

Target: >= 20,000 lines/s each.

    .venv/bin/python bench/log_throughput.py [--lines 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

c.bootstrap()
import _realtime as rt  # noqa: E402


async def persisted(backend: rt.Backend, farm: rt.Farm, lines: int, batch: int) -> tuple[float, bool, float]:
    from backend.app import database
    from backend.app.database import utcnow
    from backend.app.models import LogLevel
    from backend.app.services.deployments.logs import append_logs

    deployment_id = await rt.insert_deployment(backend)
    await farm.connect(backend, 1, deployment_id=deployment_id, since_seq=0)
    started = time.perf_counter()
    for start in range(0, lines, batch):
        c.check_stop()
        async with database.AsyncSessionLocal() as session:
            await append_logs(
                session,
                deployment_id=deployment_id,
                lines=[
                    (LogLevel.INFO, f"line {start + i} of the persisted log, as a runner writes it", utcnow())
                    for i in range(min(batch, lines - start))
                ],
            )
            await session.commit()
    written = time.perf_counter() - started
    result = await farm.logs("persisted", lines)
    return lines / (result["last"] - started), result["complete"], lines / written


async def service_logs(backend: rt.Backend, farm: rt.Farm, lines: int) -> tuple[float, bool]:
    deployment_id = await rt.insert_deployment(backend, "running")
    name = f"wfbench-logs-{deployment_id[:8]}"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--label",
            "windflow.managed=true",
            "--label",
            f"windflow.deployment_id={deployment_id}",
            "--label",
            "com.docker.compose.service=printer",
            c.TEST_IMAGE,
            "sh",
            "-c",
            f"sleep 3; seq 1 {lines}; sleep 600",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        await farm.connect(backend, 1, deployment_id=deployment_id, stream="services", tail=0)
        result = await farm.logs("services", lines)
        return lines / (result["last"] - result["first"]), result["complete"]
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


async def main(args) -> None:
    from backend.app.runtime.event_transport import stop_event_bus

    c.require_docker()
    cleanup = c.Cleanup()
    try:
        backend = await rt.start_backend("throughput", cleanup)
        cpus, pinning = rt.pin(backend, args.pin)
        await rt.start_emitter(backend)
        print(f"# log throughput to one WebSocket client; {pinning}; {c.machine_line()}", file=sys.stderr)
        rows = []
        if "persisted" in args.paths:
            farm = await rt.Farm.start(cleanup, cpus)
            rate, ok, written = await persisted(backend, farm, args.lines, args.batch)
            await farm.close()
            rows.append(
                [
                    f"persisted log (batches of {args.batch}, NOTIFY pointers)",
                    str(args.lines),
                    f"{rate:,.0f}",
                    "yes" if ok else "NO",
                    f"{written:,.0f}",
                ]
            )
        if "services" in args.paths:
            farm = await rt.Farm.start(cleanup, cpus)
            rate, ok = await service_logs(backend, farm, args.lines)
            await farm.close()
            rows.append(["service logs (container stdout, docker logs -f)", str(args.lines), f"{rate:,.0f}", "yes" if ok else "NO", "-"])
        print(c.table(["path", "lines", "lines/s", "complete, in order", "written lines/s"], rows))
        print(f"\n{pinning}; {c.machine_line()}; target >= 20,000 lines/s each")
    finally:
        await stop_event_bus()
        for problem in cleanup.run():
            print(problem, file=sys.stderr)
        c.remove_scratch()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="persisted lines per commit")
    parser.add_argument(
        "--paths", type=lambda v: v.split(","), default=["persisted", "services"], help="comma-separated subset of persisted,services"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="leave CPU placement to the scheduler")
    c.run_main(lambda: main(parser.parse_args()))
