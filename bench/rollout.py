"""A change rolled out behind the health gate, and an automatic rollback, versus the same by hand.

    .venv/bin/python bench/rollout.py [--runs N] [--rollbacks M] [--db sqlite|postgresql]

One two-service stack (busybox httpd serving a greeting, and a worker; both with a healthcheck probing every
second), deployed once by WindFlow and once by hand (``docker compose -p P up -d`` of the same rendered
document, on another port). Then, alternately (W, manual, W, manual, ...):

* **W**: ``POST /api/v1/deployments/{id}/revisions`` with a new greeting → the ``DEPLOYMENT_STATUS_CHANGED``
  event to ``running`` for the new revision (WindFlow in process: ``create_app`` + its lifespan, the asyncio
  executor, a throw-away SQLite file or PostgreSQL database; the end is taken when the bus delivers the
  event, in the ``after_commit`` hook of the transaction that wrote ``running``);
* **manual**: the same change by hand: render the document with the new greeting, write it,
  ``docker compose up -d``, then poll the engine every 20 ms until the recreated web container and the
  worker are ``healthy``, as an operator waiting for health would.

Only the web service changes: both paths recreate it alone. Then ``--rollbacks`` times: a revision whose
web container exits a second after it starts (``mode=crash``) is posted; WindFlow's gate fails and rolls
back. Measured from the failed gate (the ``DEPLOYMENT_ROLLED_BACK`` event, committed with the decision) to
the old greeting served again on the port (polled every 20 ms) and to the rollback revision ``running``;
compared with one W deploy (the median above).

Targets (the issue's): W median ≤ 1.10 × manual median; failed gate → serving again ≤ 2 × one W deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import _common as c

c.bootstrap()

import docker  # noqa: E402
import httpx  # noqa: E402

TARGET_RATIO = 1.10
TARGET_ROLLBACK = 2.0
POLL = 0.020

HEALTHCHECK = '    healthcheck:\n      test: ["CMD", "sh", "-c", "{check}"]\n      interval: 1s\n      timeout: 2s\n      retries: 3\n'
STACK = {
    "name": "bench-rollout",
    "description": "busybox httpd serving a greeting + a worker, both with healthchecks (rollout benchmark)",
    "template": (
        "services:\n"
        "  web:\n"
        f"    image: {c.TEST_IMAGE}\n"
        "    init: true\n"
        "    command: [\"sh\", \"-c\", \"{{ 'echo fatal; sleep 1; exit 3;' if mode == 'crash' else '' }} "
        'echo {{ greeting }} > /www/index.html && exec httpd -f -p 80 -h /www"]\n'
        '    ports: ["127.0.0.1:{{ port }}:80"]\n' + HEALTHCHECK.format(check="test -f /www/index.html") + "  worker:\n"
        f"    image: {c.TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "touch /tmp/ok; while true; do sleep 1; done"]\n' + HEALTHCHECK.format(check="test -f /tmp/ok")
    ),
    "variables": [
        {"name": "port", "type": "integer", "required": True, "min": 1, "max": 65535},
        {"name": "greeting", "type": "string", "default": "g0"},
        {"name": "mode", "type": "enum", "options": ["ok", "crash"], "default": "ok"},
    ],
}


def render(port: int, greeting: str) -> str:
    from backend.app.services.stacks import templating

    specs = templating.parse_variables(STACK["variables"])
    values = templating.resolve_values(specs, {"port": port, "greeting": greeting})
    return templating.render_stack(STACK["template"], specs, values)


def serves(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
            return response.read().decode().strip()
    except OSError:
        return None


@dataclass
class Rollback:
    to_serving: float  # failed gate -> old greeting served again
    to_running: float  # failed gate -> rollback revision running
    change_to_fail: float  # POST of the bad revision -> failed gate


STEP_NAMES = ["validate", "prepare", "images", "resources", "start", "gate"]
#: per W run, the sequential phases from the POST to running (they add up to the total)
PHASES: list[dict[str, float]] = []


def phases(recorder: c.EventRecorder, deployment_id: str, revision: int, t0: float, t_post: float, end: float) -> dict:
    with recorder._lock:
        seen = [s for s in recorder.by_deployment.get(deployment_id, []) if s.perf >= t0]
    claim = next(
        s.perf
        for s in seen
        if str(s.event.type) == "DEPLOYMENT_STATUS_CHANGED"
        and s.event.data.get("new_status") == "deploying"
        and s.event.data.get("revision") == revision
    )
    steps = {}
    for s in seen:
        if str(s.event.type) == "DEPLOYMENT_PROGRESS" and s.perf >= claim:
            steps.setdefault(s.event.data["current_step"], s.perf)
    marks = [("POST → 201 (validation, render, compose config)", t0, t_post), ("201 → claimed", t_post, claim)]
    previous, label = claim, "claimed → step 1"
    for number in sorted(steps):
        marks.append((label, previous, steps[number]))
        previous, label = steps[number], f"step {number} {STEP_NAMES[number - 1]}"
    marks.append((label + " + settle running", previous, end))
    return {name: b - a for name, a, b in marks}


async def windflow_change(env: c.ApiEnv, recorder: c.EventRecorder, deployment_id: str, variables: dict, revision: int) -> float:
    t0 = time.perf_counter()
    response = await env.client.post(f"/api/v1/deployments/{deployment_id}/revisions", json={"variables": variables}, headers=env.headers)
    t_post = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"POST revisions answered {response.status_code}: {response.text}")
    done = await recorder.wait(
        deployment_id,
        lambda e: (
            str(e.type) == "DEPLOYMENT_STATUS_CHANGED"
            and e.data.get("revision") == revision
            and e.data.get("new_status") in ("running", "failed")
        ),
        timeout=120,
    )
    if done is None or done.event.data["new_status"] != "running":
        raise RuntimeError(f"revision {revision} did not reach running: {done.event.data if done else 'timeout'}")
    PHASES.append(phases(recorder, deployment_id, revision, t0, t_post, done.perf))
    return done.perf - t0


async def healthy(client: docker.DockerClient, project: str) -> bool:
    found = await asyncio.to_thread(
        client.containers.list, all=True, filters={"label": f"com.docker.compose.project={project}"}, ignore_removed=True
    )
    return len(found) == 2 and all((x.attrs["State"].get("Health") or {}).get("Status") == "healthy" for x in found)


async def manual_change(workdir: Path, project: str, port: int, greeting: str, client: docker.DockerClient) -> float:
    file = workdir / "docker-compose.yml"
    t0 = time.perf_counter()
    file.write_text(render(port, greeting))
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "compose",
        "-p",
        project,
        "-f",
        str(file),
        "up",
        "-d",
        cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"docker compose up -d failed: {err.decode(errors='replace')}")
    deadline = time.perf_counter() + 60
    while not (await healthy(client, project) and serves(port) == greeting):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{project}: not healthy with {greeting!r} after 60 s")
        await asyncio.sleep(POLL)
    return time.perf_counter() - t0


async def windflow_rollback(env: c.ApiEnv, recorder: c.EventRecorder, deployment_id: str, port: int, good: str, revision: int) -> Rollback:
    t0 = time.perf_counter()
    response = await env.client.post(
        f"/api/v1/deployments/{deployment_id}/revisions", json={"variables": {"mode": "crash", "greeting": "bad"}}, headers=env.headers
    )
    if response.status_code != 201:
        raise RuntimeError(f"POST revisions answered {response.status_code}: {response.text}")
    failed = await recorder.wait(
        deployment_id, lambda e: str(e.type) == "DEPLOYMENT_ROLLED_BACK" and e.data.get("from_revision") == revision, timeout=120
    )
    if failed is None:
        raise RuntimeError(f"revision {revision} was not rolled back")
    while serves(port) != good:
        if time.perf_counter() - failed.perf > 120:
            raise RuntimeError("the old revision did not serve again within 120 s")
        await asyncio.sleep(POLL)
    serving = time.perf_counter()
    back = failed.event.data["revision"]
    running = await recorder.wait(
        deployment_id,
        lambda e: str(e.type) == "DEPLOYMENT_STATUS_CHANGED" and e.data.get("revision") == back and e.data.get("new_status") == "running",
        timeout=120,
    )
    if running is None:
        raise RuntimeError(f"rollback revision {back} did not reach running")
    return Rollback(serving - failed.perf, running.perf - failed.perf, failed.perf - t0)


async def bench(args) -> bool:
    from backend.app.main import create_app

    cleanup = c.Cleanup()
    database = c.ThrowawayDatabase(args.db, "rollout")
    cleanup.push("drop database", database.drop)
    settings = c.make_settings(database.url, DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=60)
    docker_client = docker.from_env()
    cleanup.push("close docker client", docker_client.close)
    project = f"wfbench-rollout-{uuid.uuid4().hex[:8]}"
    workdir = c.SCRATCH / project
    workdir.mkdir(parents=True)
    cleanup.push("remove the manual project", c.remove_labelled, f"com.docker.compose.project={project}")
    w_runs: list[float] = []
    m_runs: list[float] = []
    rollbacks: list[Rollback] = []
    recorder = c.EventRecorder()
    try:
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client,
        ):
            recorder.start()
            env = await c.api_setup(client, STACK)
            w_port, m_port = c.free_port(), c.free_port()
            created = await client.post(
                "/api/v1/deployments",
                headers=env.headers,
                json={"stack_id": env.stack_id, "target_id": env.target_id, "variables": {"port": w_port}},
            )
            if created.status_code != 201:
                raise RuntimeError(created.text)
            deployment_id = created.json()["id"]
            cleanup.push("remove the deployment", c.remove_labelled, f"windflow.deployment_id={deployment_id}")
            first = await recorder.wait(deployment_id, c.status_is("running", "failed"), timeout=120)
            if first is None or first.event.data["new_status"] != "running":
                raise RuntimeError("the first deploy did not reach running")
            await manual_change(workdir, project, m_port, "g0", docker_client)
            revision = 1
            for run in range(args.warmup + args.runs):
                c.check_stop()
                greeting = f"g{run + 1}"
                revision += 1
                w = await windflow_change(env, recorder, deployment_id, {"greeting": greeting}, revision)
                if serves(w_port) != greeting:
                    raise RuntimeError(f"revision {revision} does not serve {greeting}")
                m = await manual_change(workdir, project, m_port, greeting, docker_client)
                if run >= args.warmup:
                    w_runs.append(w)
                    m_runs.append(m)
                else:
                    PHASES.pop()
                print(
                    f"  change {run + 1}: WindFlow {c.ms(w, 0)} ms, manual {c.ms(m, 0)} ms" + (" (warm-up)" if run < args.warmup else ""),
                    flush=True,
                )
            good = f"g{args.warmup + args.runs}"
            for run in range(args.rollbacks):
                c.check_stop()
                revision += 1
                result = await windflow_rollback(env, recorder, deployment_id, w_port, good, revision)
                rollbacks.append(result)
                revision += 1  # the automatic rollback's revision
                print(
                    f"  rollback {run + 1}: bad change → failed gate {c.ms(result.change_to_fail, 0)} ms, "
                    f"→ serving again {c.ms(result.to_serving, 0)} ms, → running {c.ms(result.to_running, 0)} ms",
                    flush=True,
                )
            recorder.stop()
    finally:
        for problem in cleanup.run():
            print(f"clean-up: {problem}")
        c.remove_scratch()
    return report(w_runs, m_runs, rollbacks, args)


def report(w_runs: list[float], m_runs: list[float], rollbacks: list[Rollback], args) -> bool:
    ratio = c.median(w_runs) / c.median(m_runs)
    print()
    print(f"rollout: {len(w_runs)} changes each, alternating WindFlow/manual, database {args.db}, {c.machine_line()}")
    print("times in ms\n")
    rows = [
        [
            "WindFlow  POST revisions → running",
            c.ms(c.median(w_runs)),
            c.ms(c.percentile(w_runs, 90)),
            c.ms(min(w_runs)),
            c.ms(max(w_runs)),
        ],
        ["manual    compose up -d → healthy", c.ms(c.median(m_runs)), c.ms(c.percentile(m_runs, 90)), c.ms(min(m_runs)), c.ms(max(m_runs))],
    ]
    ok = ratio <= TARGET_RATIO
    if rollbacks:
        serving = [r.to_serving for r in rollbacks]
        running = [r.to_running for r in rollbacks]
        failing = [r.change_to_fail for r in rollbacks]
        rows += [
            ["bad change → failed gate", c.ms(c.median(failing)), c.ms(c.percentile(failing, 90)), c.ms(min(failing)), c.ms(max(failing))],
            [
                "failed gate → old revision serving",
                c.ms(c.median(serving)),
                c.ms(c.percentile(serving, 90)),
                c.ms(min(serving)),
                c.ms(max(serving)),
            ],
            [
                "failed gate → rollback revision running",
                c.ms(c.median(running)),
                c.ms(c.percentile(running, 90)),
                c.ms(min(running)),
                c.ms(max(running)),
            ],
        ]
    print(c.table(["", "median", "p90", "min", "max"], rows))
    if PHASES:
        print("\nWhere WindFlow's time goes (sequential phases, medians, ms):\n")
        names = list(dict.fromkeys(name for run in PHASES for name in run))
        print(
            c.table(
                ["phase", "median", "p90"],
                [
                    [
                        name,
                        c.ms(c.median([run.get(name, 0.0) for run in PHASES])),
                        c.ms(c.percentile([run.get(name, 0.0) for run in PHASES], 90)),
                    ]
                    for name in names
                ],
            )
        )
    print(f"\nratio WindFlow/manual (medians): {ratio:.2f}; target ≤ {TARGET_RATIO:.2f}: {'MET' if ok else 'MISSED'}")
    if rollbacks:
        back = c.median([r.to_serving for r in rollbacks]) / c.median(w_runs)
        met = back <= TARGET_ROLLBACK
        ok = ok and met
        print(
            f"failed gate → serving again / one WindFlow deploy (medians): {back:.2f}; target ≤ {TARGET_ROLLBACK:.2f}: "
            f"{'MET' if met else 'MISSED'}"
        )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rollbacks", type=int, default=5)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    c.require_docker()
    try:
        ok = c.run_main(lambda: bench(args))
    except c.Interrupted:
        raise SystemExit(130) from None
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
