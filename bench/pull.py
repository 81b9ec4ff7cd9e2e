"""Pull time of a multi-layer private image through WindFlow against the engine's own pull, and the progress
events WindFlow sends meanwhile (issue 22: ≤ 1.05 × ``docker pull``, ≤ 5 progress events/s per deployment).

A real ``docker-registry`` (distribution 2.8, htpasswd auth) on a loopback port holds an image of ``--layers``
fresh random layers of ``--layer-mb`` MB each on the test image. Each round, in an order that rotates, the image
is removed from the engine and pulled again by:

* WindFlow: a deployment of a one-service stack naming the image, with the organisation's registry
  credentials (``POST /registries``); its images step (``[3/6] Check images`` → ``[4/6]`` in its log, stamped
  when written: the presence check, the streamed pull with its progress folding and events, the digest
  inspection) and its ``DEPLOYMENT_PULL_PROGRESS`` events (in-process bus, the WebSocket's own subscription);
* ``docker pull`` (the CLI, credentials in a private ``DOCKER_CONFIG`` of the run);
* docker-py's streamed pull (``APIClient.pull(stream=True, decode=True)``, the call WindFlow makes, read to the end).

Run: ``.venv/bin/python bench/pull.py [--rounds 7] [--layers 4] [--layer-mb 16] [--db sqlite|postgresql]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
from datetime import datetime

import _common as c

c.bootstrap()

import docker  # noqa: E402
import httpx  # noqa: E402

STACK_NAME = "pull-bench"


def build_and_push(client: docker.DockerClient, registry, layers: int, layer_mb: int) -> str:
    reference = f"{registry.server}/bench/layers:v{os.urandom(3).hex()}"
    lines = [f"FROM {c.TEST_IMAGE}"] + [f"RUN head -c {layer_mb * 1_000_000} /dev/urandom > /layer{i}" for i in range(layers)]
    client.images.build(fileobj=io.BytesIO("\n".join(lines).encode()), tag=reference, rm=True, forcerm=True, pull=False)
    repository, _, tag = reference.rpartition(":")
    auth = {"username": registry.username, "password": registry.password, "serveraddress": registry.server}
    for line in client.api.push(repository, tag, stream=True, decode=True, auth_config=auth):
        if "error" in line:
            raise RuntimeError(f"push failed: {line}")
    return reference


def remove_image(client: docker.DockerClient, reference: str) -> None:
    for _ in range(50):
        try:
            client.images.remove(reference, force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:  # a container of the last deployment still being removed
            if exc.status_code != 409:
                raise
            time.sleep(0.1)


def raw_cli(reference: str, config_dir: str) -> float:
    env = {**os.environ, "DOCKER_CONFIG": config_dir}
    started = time.perf_counter()
    subprocess.run(["docker", "pull", "-q", reference], env=env, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - started


def raw_sdk(client: docker.DockerClient, reference: str, auth: dict[str, str]) -> float:
    repository, _, tag = reference.rpartition(":")
    started = time.perf_counter()
    for line in client.api.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth):
        if "error" in line:
            raise RuntimeError(f"pull failed: {line}")
    return time.perf_counter() - started


def _stamp(line: dict) -> float:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


async def windflow(env: c.ApiEnv, recorder: c.EventRecorder, created: list[str]) -> tuple[float, int, float]:
    """(images step seconds, progress events, most events in any one second) of one deployment."""
    response = await env.client.post(
        "/api/v1/deployments", json={"stack_id": env.stack_id, "target_id": env.target_id, "variables": {}}, headers=env.headers
    )
    if response.status_code != 201:
        raise RuntimeError(f"POST /deployments answered {response.status_code}: {response.text}")
    deployment_id = response.json()["id"]
    created.append(deployment_id)
    done = await recorder.wait(deployment_id, c.status_is("running", "failed", "cancelled"), timeout=300)
    logs = (await env.client.get(f"/api/v1/deployments/{deployment_id}/logs", headers=env.headers)).json()["items"]
    if done is None or done.event.data["new_status"] != "running":
        raise RuntimeError(f"deployment did not run: {[line['message'] for line in logs]}")
    start = next(_stamp(line) for line in logs if line["message"].startswith("[3/6]"))
    end = next(_stamp(line) for line in logs if line["message"].startswith("[4/6]"))
    if not any(line["message"].startswith("pulled image") for line in logs):
        raise RuntimeError("the deployment did not pull (the image was present)")
    pulls = [s.wall for s in recorder.by_deployment[deployment_id] if str(s.event.type) == "DEPLOYMENT_PULL_PROGRESS"]
    busiest = max((sum(1 for t in pulls if first <= t < first + 1.0) for first in pulls), default=0)
    deleted = await env.client.delete(f"/api/v1/deployments/{deployment_id}", headers=env.headers)
    if deleted.status_code != 202:
        raise RuntimeError(f"DELETE answered {deleted.status_code}: {deleted.text}")
    for _ in range(600):  # the teardown runs in the background: the next run starts on a clean engine
        if (await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.headers)).status_code == 404:
            break
        await asyncio.sleep(0.2)
    return end - start, len(pulls), busiest


async def bench(args) -> bool:
    from backend.app.main import create_app
    from backend.app.runtime import background_tasks
    from backend.tests.registry_fixtures import start_registry, stop_registry

    cleanup = c.Cleanup()
    database = c.ThrowawayDatabase(args.db, "pull")
    cleanup.push("drop database", database.drop)
    client = docker.from_env()
    cleanup.push("close docker client", client.close)
    registry = start_registry(c.SCRATCH / "registry", auth=True)
    cleanup.push("stop registry", lambda: stop_registry(registry))
    auth = {"username": registry.username, "password": registry.password, "serveraddress": registry.server}
    config_dir = c.SCRATCH / "docker-config"
    config_dir.mkdir(mode=0o700)
    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {registry.server: {"auth": token}}}))
    (config_dir / "config.json").chmod(0o600)
    print(f"building and pushing {args.layers} layers of {args.layer_mb} MB ...", file=sys.stderr, flush=True)
    reference = build_and_push(client, registry, args.layers, args.layer_mb)
    cleanup.push("remove image", lambda: remove_image(client, reference))
    created: list[str] = []
    cleanup.push("remove containers", lambda: [c.remove_labelled(f"windflow.deployment_id={d}") for d in created])
    settings = c.make_settings(database.url, DEPLOYMENT_STABLE_SECONDS=0, DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=60)
    stack = {
        "name": STACK_NAME,
        "template": f'services:\n  app:\n    image: {reference}\n    init: true\n    command: ["sleep", "600"]\n',
        "variables": [],
    }
    times: dict[str, list[float]] = {"windflow": [], "docker pull": [], "docker-py pull": []}
    events: list[tuple[int, float, int]] = []  # (count, per second over the step, busiest second)
    cpu_before = time.process_time()
    try:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            recorder = c.EventRecorder()
            recorder.start()
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=300) as http:
                    env = await c.api_setup(http, stack)
                    answer = await http.post(
                        "/api/v1/registries",
                        json={"name": "bench", "server": registry.server, "username": registry.username, "password": registry.password},
                        headers=env.headers,
                    )
                    if answer.status_code != 201:
                        raise RuntimeError(f"POST /registries answered {answer.status_code}: {answer.text}")
                    modes = list(times)
                    for round_ in range(args.warmup + args.rounds):
                        c.check_stop()
                        order = modes[round_ % 3 :] + modes[: round_ % 3]
                        figures = {}
                        for mode in order:
                            await asyncio.to_thread(remove_image, client, reference)
                            await asyncio.sleep(args.pause)
                            if mode == "windflow":
                                seconds, count, busiest = await windflow(env, recorder, created)
                                if round_ >= args.warmup:
                                    events.append((count, count / seconds, busiest))
                            elif mode == "docker pull":
                                seconds = await asyncio.to_thread(raw_cli, reference, str(config_dir))
                            else:
                                seconds = await asyncio.to_thread(raw_sdk, client, reference, auth)
                            figures[mode] = seconds
                            if round_ >= args.warmup:
                                times[mode].append(seconds)
                        tag = "warm-up" if round_ < args.warmup else f"round {round_ - args.warmup + 1}/{args.rounds}"
                        print(
                            f"{tag:>12}: " + "   ".join(f"{m} {c.ms(figures[m], 0)} ms" for m in modes),
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                recorder.stop()
                await background_tasks.shutdown()
    finally:
        cleanup.run()

    size = args.layers * args.layer_mb
    print(f"\nbench/pull.py: {args.layers} fresh layers of {args.layer_mb} MB ({size} MB) from a local docker-registry 2.8 (htpasswd)")
    print(
        f"{args.rounds} rounds, order rotating, {args.db}; {c.machine_line()}; bench process CPU {time.process_time() - cpu_before:.1f} s"
    )
    base = c.median(times["docker pull"])
    rows = []
    for mode, values in times.items():
        median = c.median(values)
        rows.append([mode, c.ms(median, 0), c.ms(min(values), 0), c.ms(max(values), 0), f"{median / base:.2f}x"])
    print(c.table(["path", "median ms", "min ms", "max ms", "vs docker pull"], rows))
    paired = [w / d for w, d in zip(times["windflow"], times["docker pull"], strict=True)]
    print(f"WindFlow / docker pull in the same round: median {c.median(paired):.2f} (from {min(paired):.2f} to {max(paired):.2f})")
    counts = [e[0] for e in events]
    rates = [e[1] for e in events]
    busiest = max(e[2] for e in events)
    print(
        f"DEPLOYMENT_PULL_PROGRESS: median {c.median(counts):.0f} events per deployment, {c.median(rates):.1f}/s over the "
        f"images step (max {max(rates):.1f}/s), at most {busiest} in any one second"
    )
    ratio = c.median(times["windflow"]) / base
    met = ratio <= 1.05 and busiest <= 5
    print(f"target (issue 22): WindFlow ≤ 1.05 × docker pull and ≤ 5 events/s: {'met' if met else 'NOT met'} ({ratio:.2f}x)")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--layer-mb", type=int, default=16)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between two pulls")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    c.require_docker()
    try:
        met = c.run_main(lambda: bench(args))
    except c.Interrupted:
        sys.exit(130)
    finally:
        c.remove_scratch()
    sys.exit(0 if met else 1)


if __name__ == "__main__":
    main()
