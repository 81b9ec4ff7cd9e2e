"""Log throughput to a subscribed WebSocket client, nothing lost, in two paths:

* **persisted log**: this process appends lines with the runner's own service (``append_logs``, batches
  of ``--batch`` lines, one commit each, as ``DeploymentLogWriter`` does); its bus sends a pointer per batch
  over PostgreSQL NOTIFY; the backend process reads the lines by ``seq`` and sends them to the client.
  Measured from the first commit to the last line received; every ``seq`` checked, in order.
* **service logs**: a container labelled with the deployment prints ``--lines`` lines as fast as it can
  (``seq``); the client follows it with ``{"stream": "services", "tail": 0}``. Measured from the first
  line received to the last; every number checked, in order.

Target: >= 20,000 lines/s each.

    .venv/bin/python bench/log_throughput.py [--lines 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

c.bootstrap()
import _realtime as rt  # noqa: E402


async def persisted(backend: rt.Backend, lines: int, batch: int) -> tuple[float, bool]:
    from backend.app import database
    from backend.app.database import utcnow
    from backend.app.models import LogLevel
    from backend.app.services.deployment_logs import append_logs

    deployment_id = await rt.insert_deployment(backend)
    client = await rt.Client.connect(backend, deployment_id=deployment_id, since_seq=0)
    try:
        started = time.perf_counter()
        for start in range(0, lines, batch):
            c.check_stop()
            async with database.AsyncSessionLocal() as session:
                await append_logs(session, deployment_id=deployment_id, lines=[
                    (LogLevel.INFO, f"line {start + i} of the persisted log, as a runner writes it", utcnow())
                    for i in range(min(batch, lines - start))])
                await session.commit()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            got = [l for _, f in client.seen if f["type"] == "DEPLOYMENT_LOGS_UPDATE" for l in f["data"]["logs"]]
            if got and got[-1]["seq"] >= lines:
                break
            await asyncio.sleep(0.05)
        elapsed = client.seen[-1][0] - started
        complete = [l["seq"] for l in got] == list(range(1, lines + 1))
        return lines / elapsed, complete
    finally:
        await client.close()


async def service_logs(backend: rt.Backend, lines: int) -> tuple[float, bool]:
    deployment_id = await rt.insert_deployment(backend, "running")
    name = f"wfbench-logs-{deployment_id[:8]}"
    subprocess.run(["docker", "run", "-d", "--name", name, "--label", "windflow.managed=true",
                    "--label", f"windflow.deployment_id={deployment_id}", "--label", "com.docker.compose.service=printer",
                    c.TEST_IMAGE, "sh", "-c", f"sleep 3; seq 1 {lines}; sleep 600"], check=True, capture_output=True, timeout=60)
    try:
        client = await rt.Client.connect(backend, deployment_id=deployment_id, stream="services", tail=0)
        try:
            deadline = time.monotonic() + 180
            numbers: list[int] = []
            first = None
            while time.monotonic() < deadline:
                numbers = [int(l["message"]) for _, f in client.seen if f["type"] == "SERVICE_LOGS" for l in f["data"]["lines"]]
                if numbers and first is None:
                    first = next(at for at, f in client.seen if f["type"] == "SERVICE_LOGS")
                if numbers and numbers[-1] >= lines:
                    break
                await asyncio.sleep(0.05)
            last = [at for at, f in client.seen if f["type"] == "SERVICE_LOGS"][-1]
            return lines / (last - first), numbers == list(range(1, lines + 1))
        finally:
            await client.close()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


async def main(args) -> None:
    from backend.app.runtime.event_transport import stop_event_bus

    c.require_docker()
    cleanup = c.Cleanup()
    try:
        backend = await rt.start_backend("throughput", cleanup)
        await rt.start_emitter(backend)
        print(f"# log throughput to one WebSocket client; {c.machine_line()}", file=sys.stderr)
        rows = []
        rate, ok = await persisted(backend, args.lines, args.batch)
        rows.append([f"persisted log (batches of {args.batch}, NOTIFY pointers)", str(args.lines), f"{rate:,.0f}", "yes" if ok else "NO"])
        rate, ok = await service_logs(backend, args.lines)
        rows.append(["service logs (container stdout, docker logs -f)", str(args.lines), f"{rate:,.0f}", "yes" if ok else "NO"])
        print(c.table(["path", "lines", "lines/s", "complete, in order"], rows))
        print(f"\n{c.machine_line()}; target >= 20,000 lines/s each")
    finally:
        await stop_event_bus()
        for problem in cleanup.run():
            print(problem, file=sys.stderr)
        c.remove_scratch()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="persisted lines per commit")
    c.run_main(lambda: main(parser.parse_args()))
