"""WindFlow deployment overhead versus plain ``docker compose up -d``.

    .venv/bin/python bench/deploy_overhead.py [--runs N] [--db sqlite|postgresql] [--warmup K]

For one two-service stack (busybox httpd + a sleeping worker, both ``init: true``, no healthcheck) it
times, alternately in this one process (W, raw, W, raw, ...):

* **W**: ``POST /api/v1/deployments`` → the deployment's ``DEPLOYMENT_STATUS_CHANGED`` event to
  ``running``. WindFlow runs in-process (``create_app`` + its lifespan, asyncio executor, Celery
  disabled) on a throw-away SQLite file or PostgreSQL database, driven through
  ``httpx.ASGITransport``. The end is taken when the in-process bus delivers the event, i.e. in the
  ``after_commit`` hook of the transaction that wrote ``running``: no polling error.
* **raw**: ``docker compose -p P -f F up -d`` of the same rendered document, then polling the engine
  every 20 ms until both containers are ``running`` (they usually are when ``up -d`` exits).

Teardown between runs (``DELETE /deployments/{id}``, ``docker compose down``) is not timed.

To show where WindFlow's time goes, the script also records, without changing backend code:
the ``DEPLOYMENT_PROGRESS`` events (one per runner step, delivered after each step's commit) and the
duration of every compose subprocess, by wrapping ``backend.app.engines.compose.run_command`` and
``backend.app.services.stacks.templating.validate_with_compose`` in this process (a ``perf_counter`` around
the call; microseconds of cost).

Target (issue 23): WindFlow's median at most 5 % above raw compose's median, on SQLite and on PostgreSQL.

How the comparison is set up, so that it is a fair one:

* the health gate's settle window (``DEPLOYMENT_STABLE_SECONDS``) is 0: WindFlow's end is "every container
  running", as raw's is; the window is a deliberate wait that ``bench/rollout.py`` measures against an
  operator who waits too. Every other check is in force: the bounded rendering, the compose policy, the
  ``docker compose config`` verdict, the labels.
* raw runs ``docker compose`` (the docker CLI and its plugin), what an operator types; WindFlow runs the
  plugin binary directly (``--raw-plugin`` gives raw the same).
* ``--values new`` (default): each pair deploys on a port never used before in the run, so WindFlow renders and
  validates a document it has never seen; ``--values same``: every pair deploys the same document (one port),
  a redeploy of the same stack and values, whose rendering and compose verdict WindFlow remembers.
* CPU: the CPU time of this process (the backend, its HTTP client and the probes) and of the reaped
  subprocesses (compose) during each W and raw run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import _common as c

c.bootstrap()

import docker  # noqa: E402
import httpx  # noqa: E402

TARGET_RATIO = 1.05  # issue 23
RAW_POLL_SECONDS = 0.020

STACK = {
    "name": "bench-web",
    "description": "busybox httpd + a worker (deploy_overhead benchmark)",
    "template": (
        "services:\n"
        "  web:\n"
        f"    image: {c.TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "echo {{ greeting }} > /www/index.html && exec httpd -f -p 80 -h /www"]\n'
        '    ports: ["127.0.0.1:{{ port }}:80"]\n'
        "  worker:\n"
        f"    image: {c.TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "while true; do sleep 1; done"]\n'
    ),
    "variables": [
        {"name": "port", "type": "integer", "required": True, "min": 1, "max": 65535},
        {"name": "greeting", "type": "string", "default": "hello-windflow"},
    ],
}
SERVICES = 2


# --------------------------------------------------------------------------- timing hooks (measurement only)


@dataclass
class Call:
    kind: str  # "cli" (a compose subprocess) or "sdk" (a Docker SDK call in a thread)
    what: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Probe:
    calls: list[Call] = field(default_factory=list)

    def reset(self) -> None:
        self.calls = []


PROBE = Probe()


def _describe_compose(argv) -> str:
    argv = list(argv)
    if "--project-directory" in argv:
        rest = argv[argv.index("--project-directory") + 2 :]
    else:
        rest = argv[-3:]
    words = [w for w in rest if w not in ("--no-build", "--remove-orphans", "--pull", "never")]
    return "compose " + " ".join(words)


def _describe_sdk(fn) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return "SDK client (engine version handshake)" if name.endswith("_build_client") else f"SDK {name}"


def install_probes() -> None:
    from backend.app.engines import compose as compose_module
    from backend.app.engines.connection import EngineSession
    from backend.app.services.stacks import templating

    original_run = compose_module.run_command
    original_check = compose_module.check_document
    original_validate = templating.validate_with_compose
    original_call = EngineSession.call

    async def timed_call(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return await original_call(self, fn, *args, **kwargs)
        finally:
            PROBE.calls.append(Call("sdk", _describe_sdk(fn), start, time.perf_counter()))

    async def timed_run(argv, **kwargs):
        start = time.perf_counter()
        try:
            return await original_run(argv, **kwargs)
        finally:
            PROBE.calls.append(Call("cli", _describe_compose(argv), start, time.perf_counter()))

    async def timed_check(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await original_check(*args, **kwargs)
        finally:
            PROBE.calls.append(Call("cli", "compose config -q", start, time.perf_counter()))

    async def timed_validate(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await original_validate(*args, **kwargs)
        finally:
            PROBE.calls.append(Call("cli", "compose config -q (POST validation)", start, time.perf_counter()))

    compose_module.run_command = timed_run
    compose_module.check_document = timed_check
    templating.validate_with_compose = timed_validate
    EngineSession.call = timed_call


# --------------------------------------------------------------------------- one W run, one raw run


@dataclass
class WRun:
    total: float
    post_rtt: float
    phases: dict[str, float]  # sequential phases from POST start to the running event; they sum to total
    calls: list[tuple[str, str, str, float]]  # (phase, kind, what, seconds)
    deployment_id: str
    cpu: float = 0.0  # this process's CPU seconds during the run (backend, client, probes)
    children_cpu: float = 0.0  # CPU seconds of the subprocesses reaped during the run (compose)


@dataclass
class RawRun:
    total: float
    up: float
    wait: float
    children_cpu: float = 0.0


STEP_NAMES = [
    "Validate configuration",
    "Prepare project directory",
    "Check images",
    "Create networks and volumes",
    "Start services",
    "Wait until services are running and healthy",
]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_windflow(env: c.ApiEnv, recorder: c.EventRecorder, port: int, created: list[str]) -> WRun:
    PROBE.reset()
    cpu0, children0 = time.process_time(), _children_cpu()
    t0 = time.perf_counter()
    response = await env.client.post(
        "/api/v1/deployments",
        json={"stack_id": env.stack_id, "target_id": env.target_id, "variables": {"port": port}},
        headers=env.headers,
    )
    t_post = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"POST /deployments answered {response.status_code}: {response.text}")
    deployment_id = response.json()["id"]
    created.append(deployment_id)
    done = await recorder.wait(deployment_id, c.status_is("running", "failed", "cancelled"), timeout=120)
    if done is None or done.event.data["new_status"] != "running":
        detail = await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.headers)
        logs = await env.client.get(f"/api/v1/deployments/{deployment_id}/logs", headers=env.headers)
        lines = "\n".join(l["message"] for l in logs.json().get("items", []))
        raise RuntimeError(f"deployment {deployment_id} did not reach running: {detail.text}\n{lines}")
    total = done.perf - t0
    cpu, children_cpu = time.process_time() - cpu0, _children_cpu() - children0

    claim = recorder.find(deployment_id, c.status_is("deploying"))
    marks = [("create + dispatch + claim (POST start → claim committed)", claim.perf)]
    for number, name in enumerate(STEP_NAMES, start=1):
        seen = recorder.find(deployment_id, lambda e, n=number: str(e.type) == "DEPLOYMENT_PROGRESS" and e.data.get("current_step") == n)
        marks.append((f"step {number} {name}", seen.perf))
    marks.append(("settle running (commit)", done.perf))
    # sequential intervals: [POST start, claim], [claim, step 1], [step k, step k+1] ..., [step 6, running]
    intervals = [(marks[0][0], t0, marks[0][1]), ("claim committed → step 1 starts", marks[0][1], marks[1][1])]
    for i in range(1, len(marks) - 1):
        label = marks[i][0] if i < len(marks) - 2 else f"{marks[i][0]} + settle running"
        intervals.append((label, marks[i][1], marks[i + 1][1]))
    phases = {label: end - start for label, start, end in intervals}
    calls = []
    for call in PROBE.calls:
        phase = next((label for label, start, end in intervals if start <= call.start < end), "?")
        calls.append((phase, call.kind, call.what, call.seconds))
    return WRun(total, t_post - t0, phases, calls, deployment_id, cpu, children_cpu)


async def teardown_windflow(env: c.ApiEnv, deployment_id: str) -> None:
    response = await env.client.delete(f"/api/v1/deployments/{deployment_id}", headers=env.headers)
    if response.status_code != 202:
        raise RuntimeError(f"DELETE /deployments/{deployment_id} answered {response.status_code}: {response.text}")
    # the teardown runs in the background: wait for the row to go, so the next run starts on a clean engine
    for _ in range(600):
        if (await env.client.get(f"/api/v1/deployments/{deployment_id}", headers=env.headers)).status_code == 404:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"deployment {deployment_id} still there 120 s after its DELETE")


async def containers_running(client: docker.DockerClient, label: str) -> bool:
    found = await asyncio.to_thread(client.containers.list, all=True, filters={"label": label}, ignore_removed=True)
    return len(found) == SERVICES and all(x.status == "running" for x in found)


#: The raw baseline's command: what an operator types (`docker compose`), or with --raw-plugin the compose
#: plugin binary run directly, as WindFlow runs it (one process start fewer per command).
RAW_COMPOSE: tuple[str, ...] = ("docker", "compose")


async def run_raw(rendered: str, workdir: Path, project: str, client: docker.DockerClient) -> RawRun:
    workdir.mkdir(parents=True)
    file = workdir / "docker-compose.yml"
    file.write_text(rendered)
    children0 = _children_cpu()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *RAW_COMPOSE,
        "-p",
        project,
        "-f",
        str(file),
        "up",
        "-d",
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:  # interrupted: compose must not go on creating containers after the clean-up
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    t_up = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"docker compose up -d failed ({proc.returncode}): {err.decode(errors='replace')}")
    label = f"com.docker.compose.project={project}"
    deadline = t_up + 60
    while not await containers_running(client, label):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"raw compose project {project}: containers not running after 60 s")
        await asyncio.sleep(RAW_POLL_SECONDS)
    t_end = time.perf_counter()
    return RawRun(t_end - t0, t_up - t0, t_end - t_up, _children_cpu() - children0)


async def teardown_raw(workdir: Path, project: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "compose",
        "-p",
        project,
        "-f",
        str(workdir / "docker-compose.yml"),
        "down",
        "--volumes",
        "--remove-orphans",
        cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"docker compose down of {project} failed: {err.decode(errors='replace')}")
    shutil.rmtree(workdir, ignore_errors=True)


def render(port: int) -> str:
    from backend.app.services.stacks import templating

    specs = templating.parse_variables(STACK["variables"])
    values = templating.resolve_values(specs, {"port": port})
    return templating.render_stack(STACK["template"], specs, values)


# --------------------------------------------------------------------------- report


def report(w_runs: list[WRun], raw_runs: list[RawRun], args, cold: tuple[WRun, RawRun] | None) -> bool:
    wt = [r.total for r in w_runs]
    rt = [r.total for r in raw_runs]
    pair_ratio = [w / r for w, r in zip(wt, rt, strict=False)]
    ratio = c.median(wt) / c.median(rt)
    ok = ratio <= TARGET_RATIO

    print()
    print(
        f"deploy_overhead: {len(w_runs)} runs each, alternating W/raw, database {args.db}, values {args.values}, "
        f"raw command {' '.join(RAW_COMPOSE)}, DEPLOYMENT_STABLE_SECONDS=0, {c.machine_line()}"
    )
    print("times in ms\n")
    rows = [
        ["WindFlow  POST → running", c.ms(c.median(wt)), c.ms(c.percentile(wt, 90)), c.ms(min(wt)), c.ms(max(wt))],
        ["raw       compose up -d → both running", c.ms(c.median(rt)), c.ms(c.percentile(rt, 90)), c.ms(min(rt)), c.ms(max(rt))],
        [
            "  of which `docker compose up -d` exits",
            c.ms(c.median([r.up for r in raw_runs])),
            c.ms(c.percentile([r.up for r in raw_runs], 90)),
            c.ms(min(r.up for r in raw_runs)),
            c.ms(max(r.up for r in raw_runs)),
        ],
        [
            "  of which wait for running after exit",
            c.ms(c.median([r.wait for r in raw_runs])),
            c.ms(c.percentile([r.wait for r in raw_runs], 90)),
            c.ms(min(r.wait for r in raw_runs)),
            c.ms(max(r.wait for r in raw_runs)),
        ],
        [
            "WindFlow POST round trip (→ 201)",
            c.ms(c.median([r.post_rtt for r in w_runs])),
            c.ms(c.percentile([r.post_rtt for r in w_runs], 90)),
            c.ms(min(r.post_rtt for r in w_runs)),
            c.ms(max(r.post_rtt for r in w_runs)),
        ],
    ]
    print(c.table(["", "median", "p90", "min", "max"], rows))
    print(
        f"\nCPU per deploy (medians, ms): WindFlow process {c.ms(c.median([r.cpu for r in w_runs]))}, its compose "
        f"subprocesses {c.ms(c.median([r.children_cpu for r in w_runs]))}; raw compose subprocesses "
        f"{c.ms(c.median([r.children_cpu for r in raw_runs]))}"
    )
    print()
    print(
        f"ratio WindFlow/raw (medians): {ratio:.2f}   (median of per-pair ratios {c.median(pair_ratio):.2f}; "
        f"p90 ratio {c.percentile(wt, 90) / c.percentile(rt, 90):.2f})"
    )
    print(
        f"WindFlow adds {c.ms(c.median(wt) - c.median(rt), 0)} ms ({(ratio - 1) * 100:+.0f} %) to a plain compose deploy; "
        f"target ≤ {(TARGET_RATIO - 1) * 100:.0f} %: {'MET' if ok else 'MISSED'}"
    )
    if cold:
        print(f"(cold first pair, not counted: WindFlow {c.ms(cold[0].total, 0)} ms, raw {c.ms(cold[1].total, 0)} ms)")

    # where WindFlow's time goes
    print("\nWhere WindFlow's time goes (sequential phases from POST start; medians, ms):\n")
    labels = list(w_runs[0].phases)

    def per_run_sum(run: WRun, phase: str | None, kind: str) -> float:
        return sum(sec for ph, k, _w, sec in run.calls if k == kind and (phase is None or ph == phase))

    rows = []
    for label in labels:
        values = [r.phases[label] for r in w_runs]
        cli = [per_run_sum(r, label, "cli") for r in w_runs]
        sdk = [per_run_sum(r, label, "sdk") for r in w_runs]
        rest = [v - x - y for v, x, y in zip(values, cli, sdk, strict=False)]
        names = list(dict.fromkeys(w for ph, k, w, _s in w_runs[0].calls if ph == label and k == "cli"))
        rows.append(
            [
                label,
                c.ms(c.median(values)),
                c.ms(c.percentile(values, 90)),
                c.ms(c.median(cli)),
                c.ms(c.median(sdk)),
                c.ms(c.median(rest)),
                ", ".join(names),
            ]
        )
    total_cli = [per_run_sum(r, None, "cli") for r in w_runs]
    total_sdk = [per_run_sum(r, None, "sdk") for r in w_runs]
    total_rest = [w - x - y for w, x, y in zip(wt, total_cli, total_sdk, strict=False)]
    rows.append(
        [
            "total",
            c.ms(c.median(wt)),
            c.ms(c.percentile(wt, 90)),
            c.ms(c.median(total_cli)),
            c.ms(c.median(total_sdk)),
            c.ms(c.median(total_rest)),
            "",
        ]
    )
    print(
        c.table(["phase", "median", "p90", "compose CLI", "Docker SDK", "rest", "compose subprocesses in the phase"], rows, align="lrrrrrl")
    )
    print("(rest = WindFlow's own work: HTTP/auth, rendering, database writes and commits, events, Python)")

    print("\nEngine calls, WindFlow vs raw (medians, ms):\n")
    by_what: dict[str, list[float]] = defaultdict(list)
    for run in w_runs:
        for _phase, _kind, what, seconds in run.calls:
            by_what[what].append(seconds)
    rows = [[f"WindFlow: {what}", c.ms(c.median(v)), c.ms(c.percentile(v, 90)), f"{len(v) / len(w_runs):g}"] for what, v in by_what.items()]
    raw_up = [r.up for r in raw_runs]
    rows.append(["raw: docker compose up -d", c.ms(c.median(raw_up)), c.ms(c.percentile(raw_up, 90)), "1"])
    print(c.table(["call", "median", "p90", "per deploy"], rows))
    print("\nWindFlow's extra time over raw, attributed (medians, ms; approximate: medians do not add up exactly):\n")

    def named(run: WRun, *names: str) -> float:
        return sum(sec for _p, k, w, sec in run.calls if w in names)

    validation = [named(r, "compose config -q (POST validation)") for r in w_runs]
    revalidation = [named(r, "compose config -q") for r in w_runs]
    split = [named(r, "compose up --no-start", "compose up --detach") - raw.up for r, raw in zip(w_runs, raw_runs, strict=False)]
    waits = [r.phases[labels[-1]] - per_run_sum(r, labels[-1], "cli") for r in w_runs]
    own = total_rest
    extra = c.median(wt) - c.median(rt)
    rows = [
        ["`docker compose config -q` when the POST validates (DeploymentService.create)", c.ms(c.median(validation))],
        ["`docker compose config -q` again in runner step 1 (ComposeEngine.validate)", c.ms(c.median(revalidation))],
        ["`up --no-start` + `up --detach` minus raw's single `up -d` (same run pair)", c.ms(c.median(split))],
        ["Docker SDK calls (client handshakes, image check, container listing)", c.ms(c.median(total_sdk))],
        ["WindFlow's own work (HTTP, DB writes/commits, events, Python)", c.ms(c.median(own))],
        [
            "  of which POST start → claim committed, outside compose",
            c.ms(c.median([r.phases[labels[0]] - per_run_sum(r, labels[0], "cli") for r in w_runs])),
        ],
        [
            "  of which step 6 + settle outside SDK calls",
            c.ms(c.median([w - per_run_sum(r, labels[-1], "sdk") for w, r in zip(waits, w_runs, strict=False)])),
        ],
        ["WindFlow median − raw median", c.ms(extra)],
        [f"allowed by the {(TARGET_RATIO - 1) * 100:.0f} % target", c.ms(c.median(rt) * (TARGET_RATIO - 1))],
    ]
    print(c.table(["", "ms"], rows))
    cli_calls = sum(1 for r in w_runs for _p, k, _w, _s in r.calls if k == "cli") / len(w_runs)
    print(
        f"\nPer deployment WindFlow runs {cli_calls:g} compose subprocesses ({c.ms(c.median(total_cli), 0)} ms) where raw "
        f"runs 1 ({c.ms(c.median(raw_up), 0)} ms); Docker SDK calls take {c.ms(c.median(total_sdk), 0)} ms and "
        f"WindFlow's own work {c.ms(c.median(total_rest), 0)} ms."
    )
    return ok


# --------------------------------------------------------------------------- main


async def bench(args) -> bool:
    from backend.app.main import create_app
    from backend.app.runtime import background_tasks

    install_probes()
    cleanup = c.Cleanup()
    database = c.ThrowawayDatabase(args.db, "overhead")
    cleanup.push("drop database", database.drop)
    created: list[str] = []
    raw_projects: list[tuple[Path, str]] = []

    def sweep_docker() -> None:
        workdir = settings.DEPLOYMENTS_WORKDIR  # one directory per deployment, even one whose POST was interrupted
        known = set(created) | ({p.name for p in workdir.iterdir()} if workdir.is_dir() else set())
        for deployment_id in known:
            c.remove_labelled(f"windflow.deployment_id={deployment_id}")
        for _workdir, project in raw_projects:
            c.remove_labelled(f"com.docker.compose.project={project}")

    # The health gate's settle window (DEPLOYMENT_STABLE_SECONDS, 3 s by default) is a deliberate wait, not
    # overhead: without it, this measures what WindFlow adds to a plain `compose up -d` (bench/rollout.py
    # measures a gated rollout against an operator who waits for health).
    settings = c.make_settings(database.url, DEPLOYMENT_HEALTH_TIMEOUT_SECONDS=60, DEPLOYMENT_STABLE_SECONDS=0)
    cleanup.push("remove leftover containers", sweep_docker)
    docker_client = docker.from_env()
    cleanup.push("close docker client", docker_client.close)
    w_runs: list[WRun] = []
    raw_runs: list[RawRun] = []
    cold = None
    try:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            recorder = c.EventRecorder()
            recorder.start()
            try:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120) as client:
                    env = await c.api_setup(client, STACK)
                    mode = (await client.get("/api/v1/system/workers", headers=env.headers)).json().get("execution_mode")
                    if mode != "asyncio":
                        raise RuntimeError(f"expected the asyncio executor, the backend says {mode}")
                    total = args.warmup + args.runs
                    fixed_port = c.free_port()
                    for i in range(total):
                        c.check_stop()
                        port = fixed_port if args.values == "same" else c.free_port()
                        w = await run_windflow(env, recorder, port, created)
                        await teardown_windflow(env, w.deployment_id)
                        await asyncio.sleep(args.pause)
                        project = f"wfbench-raw-{os.getpid()}-{i}"
                        workdir = c.SCRATCH / "raw" / project
                        raw_projects.append((workdir, project))
                        c.check_stop()
                        r = await run_raw(render(port), workdir, project, docker_client)
                        await teardown_raw(workdir, project)
                        await asyncio.sleep(args.pause)
                        if i < args.warmup:
                            cold = cold or (w, r)
                            tag = "warm-up"
                        else:
                            w_runs.append(w)
                            raw_runs.append(r)
                            tag = f"run {i - args.warmup + 1}/{args.runs}"
                        print(
                            f"{tag:>12}: WindFlow {c.ms(w.total, 0):>6} ms   raw {c.ms(r.total, 0):>6} ms   ratio {w.total / r.total:.2f}",
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                recorder.stop()
                await background_tasks.shutdown()
    finally:
        problems = cleanup.run()
        for problem in problems:
            print(f"clean-up problem: {problem}", file=sys.stderr)
    return report(w_runs, raw_runs, args, cold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed W/raw pairs first (default 1)")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite", help="WindFlow's database (default sqlite)")
    parser.add_argument(
        "--values",
        choices=["new", "same"],
        default="new",
        help="new: each pair deploys on a port never used before (a document WindFlow has not validated); same: one port, "
        "the same document every time (a redeploy) (default new)",
    )
    parser.add_argument("--pause", type=float, default=0.5, help="seconds of rest after each teardown (default 0.5)")
    parser.add_argument(
        "--raw-plugin",
        action="store_true",
        help="run the raw baseline with the compose plugin binary directly, as WindFlow does, instead of `docker compose`",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.raw_plugin:
        global RAW_COMPOSE
        from backend.app.engines.compose_cli import find_compose_command

        RAW_COMPOSE = find_compose_command() or RAW_COMPOSE
        print(f"raw baseline runs {' '.join(RAW_COMPOSE)}", file=sys.stderr)
    c.require_docker()
    try:
        c.run_main(lambda: bench(args))
    except c.Interrupted:
        sys.exit("interrupted; everything this run created was removed")
    finally:
        c.remove_scratch()


if __name__ == "__main__":
    main()
