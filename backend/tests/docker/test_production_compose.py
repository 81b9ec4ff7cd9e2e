"""The production compose, run for real: ``docker compose up -d --build`` of docker-compose.yml.

Real images on the host's Docker engine: the stand-in base images of ``scripts/build-offline-images.sh``
(no registry is reachable here; the script skips what exists, so only a fresh machine pays for them, and
``scripts/ensure-services.sh`` builds them there), the WindFlow image built from the Dockerfile, PostgreSQL,
Redis, nginx. In one compose project of its own (a unique name, no host port but the proxy's, on
127.0.0.1), so the host's test services and the other tests' containers are left alone:

* every service comes up and its health check turns green (backend, 3 workers, PostgreSQL, Redis), the
  proxy answers ``/health`` with the three external workers;
* setup (the first user), whose client address the backend reads from the proxy's X-Forwarded-For (not the
  proxy's own address), a deployment to the ``local`` target through the API via the proxy, followed on
  a WebSocket through the proxy: a worker *container* claims it;
* that worker container is killed (``docker kill``) while the deployment waits for its service to be
  healthy: the ``supervisor`` service starts it again (Docker's restart policies leave a killed container
  down) and the deployment still ends ``running``, with one container, after the reaper took the dead
  executor's lease; a container that ``docker compose stop`` stops stays down;
* stop and delete from the API (run by the backend container, which never had the deployment's project
  directory: no shared volume) leave nothing of the deployment on the engine;
* ``docker compose up -d --scale backend=2`` adds a replica (and recreates nothing): the proxy sends requests
  to both, which both accept the login's token;
* ``docker compose down -v`` leaves no container, network or volume of the project.

The WindFlow image is tagged ``windflow-backend:compose-test`` and kept between runs, so that a later run
rebuilds only the layers that changed. The durations of each phase are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from backend.tests.conftest import TEST_IMAGE, require_service
from backend.tests.deploy_helpers import force_cleanup, free_port, labelled

pytestmark = [pytest.mark.docker]

REPO = Path(__file__).resolve().parents[3]
IMAGE = "windflow-backend:compose-test"
WORKERS = 3
#: an address a client claims for itself
SPOOFED = "203.0.113.9"
#: what the compose file runs with a health check
HEALTHCHECKED = {"backend", "worker", "postgres", "redis"}

#: the deployment: its one service turns healthy HEALTHY_AFTER seconds after it starts, which leaves the
#: test time to kill the worker that waits for it (the kill follows the container's start within a second or
#: two; the test checks the deployment is still deploying then). No network of its own (no bridge created on
#: the host).
HEALTHY_AFTER = 12
#: the backend's and the workers' health checks every 5 s instead of 15 s and 30 s: Docker runs the first check one
#: interval after a container starts (three waits of the test: up, the killed worker's restart, the second
#: replica). Both checks are cheap (an HTTP GET; a file the worker writes with each heartbeat).
HEALTHCHECK_INTERVALS = {"WINDFLOW_BACKEND_HEALTHCHECK_INTERVAL": "5s", "WINDFLOW_WORKER_HEALTHCHECK_INTERVAL": "5s"}
STACK = {
    "name": "slow-healthy",
    "template": (
        "services:\n"
        "  app:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        "    network_mode: none\n"
        f'    command: ["sh", "-c", "sleep {HEALTHY_AFTER} && touch /tmp/ready && exec sleep 86400"]\n'
        "    healthcheck:\n"
        '      test: ["CMD", "test", "-f", "/tmp/ready"]\n'
        "      interval: 1s\n"
        "      retries: 600\n"
    ),
    "variables": [],
}


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


class Stack:
    """One compose project of docker-compose.yml, driven with the docker CLI."""

    def __init__(self, workdir: Path, images: dict[str, str]) -> None:
        self.project = f"wfprod-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env_file = workdir / "windflow.env"
        example = (REPO / ".env.prod.example").read_text()
        example = re.sub(r"(?m)^POSTGRES_PASSWORD=.*$", f"POSTGRES_PASSWORD={secrets.token_urlsafe(24)}", example)
        example = re.sub(r"(?m)^SECRET_KEY=.*$", f"SECRET_KEY={secrets.token_urlsafe(48)}", example)
        env_file.write_text(example)
        env_file.chmod(0o600)
        # A clean environment: nothing of the test process (its SECRET_KEY, DATABASE_URL...) reaches Compose.
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            **{k: v for k, v in os.environ.items() if k.startswith("DOCKER_")},
            **images,
            "WINDFLOW_ENV_FILE": str(env_file),
            "WINDFLOW_HTTP_PORT": f"127.0.0.1:{self.port}",
            "WINDFLOW_IMAGE": IMAGE,
            **HEALTHCHECK_INTERVALS,
        }
        self.timings: dict[str, float] = {}

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return run(["docker", "compose", "-p", self.project, *args], env=self.env, timeout=timeout, check=check)

    def containers(self) -> list[dict]:
        """``docker inspect`` of every container of the project, stopped ones included."""
        ids = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"]).stdout.split()
        return json.loads(run(["docker", "inspect", *ids]).stdout) if ids else []

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        found = {
            "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
        }
        return {kind: ids for kind, ids in found.items() if ids}

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", timeout=60, check=False).stdout[-20000:]


def image_id(name: str) -> str | None:
    found = run(["docker", "image", "inspect", "--format", "{{.Id}}", name], check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def service(container: dict) -> str:
    return container["Config"]["Labels"]["com.docker.compose.service"]


def health(container: dict) -> str:
    state = container["State"]
    return state.get("Health", {}).get("Status", "running" if state["Running"] else state["Status"])


def stand_in_images(workdir: Path) -> dict[str, str]:
    """The stand-in base images (built when missing) and the variables that make Compose use them."""
    env_file = workdir / "images.env"
    result = run(["bash", "scripts/build-offline-images.sh", "--env-file", str(env_file)], timeout=1800, check=os.geteuid() == 0)
    if result.returncode != 0:  # not root: the images it would have to build cannot be built here
        require_service("stand-in base images", result.stderr.strip().splitlines()[-1])
    images = dict(line.split("=", 1) for line in result.stdout.split())
    assert all(key.startswith("WINDFLOW_") and key.endswith("_IMAGE") for key in images), result.stdout
    return images


async def wait_for(what: str, probe, timeout: float, stack: Stack, interval: float = 1.0, describe=None):
    """Call ``probe()`` until it returns something true; that value. ``describe()`` says what was seen last."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await probe() if asyncio.iscoroutinefunction(probe) else await asyncio.to_thread(probe)
        if last:
            return last
        await asyncio.sleep(interval)
    seen = describe() if describe else repr(last)
    raise AssertionError(
        f"{what}: not within {timeout:.0f} s (last: {seen}; load {os.getloadavg()})\n{await asyncio.to_thread(stack.logs)}"
    )


async def test_production_compose_up_deploy_heal_down(tmp_path):
    problem = run(["docker", "compose", "version", "--short"], check=False)
    if problem.returncode != 0 or not problem.stdout.strip().lstrip("v").startswith("2"):
        require_service("Docker Compose v2", problem.stderr.strip() or problem.stdout.strip())
    if run(["docker", "image", "inspect", TEST_IMAGE], check=False).returncode != 0:
        require_service("Docker test image", f"{TEST_IMAGE} is missing (run: bash scripts/setup-docker.sh)")

    started = time.monotonic()
    images = await asyncio.to_thread(stand_in_images, tmp_path)
    stack = Stack(tmp_path, images)
    stack.timings["stand-in images"] = time.monotonic() - started
    deployment_ids: list[str] = []
    previous_image = None
    try:
        # -- up, built from the Dockerfile ------------------------------------------------------------
        t = time.monotonic()
        previous_image = image_id(IMAGE)
        await asyncio.to_thread(stack.compose, "up", "-d", "--build", timeout=1800)
        stack.timings["up --build"] = time.monotonic() - t

        seen: dict = {}

        def all_healthy():
            containers = stack.containers()
            states = {c["Name"].lstrip("/"): health(c) for c in containers}
            seen.update(
                states=states,
                checks={
                    c["Name"]: c["State"].get("Health", {}).get("Log", [])[-1:]
                    for c in containers
                    if health(c) not in ("healthy", "running")
                },
            )
            counted = [service(c) for c in containers]
            if counted.count("worker") != WORKERS or not {"proxy", "beat", "supervisor", *HEALTHCHECKED} <= set(counted):
                return None
            unhealthy = [c for c in containers if service(c) in HEALTHCHECKED and health(c) != "healthy"]
            dead = [c for c in containers if not c["State"]["Running"]]
            assert not dead, f"containers exited: {states}\n{stack.logs()}"
            return None if unhealthy else states

        t = time.monotonic()
        # A worker's health check imports WindFlow and reads its heartbeat: seconds on a loaded 2-core machine.
        states = await wait_for("every health check green", all_healthy, 300, stack, interval=2, describe=lambda: seen)
        stack.timings["health checks green"] = time.monotonic() - t
        print("containers:", states)

        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
            body = (await client.get("/health")).json()
            assert body["status"] == "ok", body
            assert body["database"]["kind"] == "postgresql", body
            assert body["workers"]["external"] == WORKERS, body
            assert body["execution_mode"] == "external", body
            if (REPO / "frontend" / "dist" / "index.html").is_file():  # the image copies the built UI
                page = await client.get("/")
                assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:300]

            # -- setup and a deployment through the proxy ----------------------------------------------
            assert (await client.get("/api/v1/auth/setup")).json() == {"needed": True}
            setup = await client.post(
                "/api/v1/auth/setup",
                headers={"X-Forwarded-For": SPOOFED},
                json={"email": "ops@example.com", "password": "production-compose-1", "organization_name": "ops"},
            )
            assert setup.status_code == 201, setup.text
            token = setup.json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}

            # the backend sees the client's address (X-Forwarded-For, FORWARDED_ALLOW_IPS): not the proxy's,
            # nor the one the client wrote in its own X-Forwarded-For
            containers = stack.containers()
            proxy_ips = {n["IPAddress"] for c in containers if service(c) == "proxy" for n in c["NetworkSettings"]["Networks"].values()}
            backend = next(c for c in containers if service(c) == "backend")
            logged = run(["docker", "logs", backend["Id"]])
            clients = re.findall(r"uvicorn\.access: ([0-9a-f.:]+):\d+ - \"POST /api/v1/auth/setup", logged.stdout + logged.stderr)
            assert clients and not set(clients) & (proxy_ips | {SPOOFED}), (clients, proxy_ips)
            targets = (await client.get("/api/v1/targets", headers=headers)).json()["items"]
            local = next(t for t in targets if t["name"] == "local")
            assert local["endpoint"] == "unix:///var/run/docker.sock", local
            created = await client.post("/api/v1/stacks", json=STACK, headers=headers)
            assert created.status_code == 201, created.text

            async with connect(f"ws://127.0.0.1:{stack.port}/api/v1/ws", open_timeout=30) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "authenticated"

                t = time.monotonic()
                response = await client.post(
                    "/api/v1/deployments",
                    headers=headers,
                    json={"stack_id": created.json()["id"], "target_id": local["id"], "variables": {}},
                )
                assert response.status_code == 201, response.text
                deployment_id = response.json()["id"]
                deployment_ids.append(deployment_id)
                await ws.send(json.dumps({"type": "subscribe", "deployment_id": deployment_id, "since_seq": 0}))
                statuses: list[str] = []

                async def read_frames() -> None:
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") == "DEPLOYMENT_STATUS_CHANGED" and frame.get("deployment_id") == deployment_id:
                            statuses.append(frame["data"]["new_status"])

                reader = asyncio.create_task(read_frames())

                async def history() -> list[dict]:
                    answer = await client.get(f"/api/v1/deployments/{deployment_id}/history", headers=headers)
                    assert answer.status_code == 200, answer.text
                    return answer.json()

                # -- a worker container claims it -------------------------------------------------------
                async def claimed():
                    return next((h for h in await history() if h["to_status"] == "deploying"), None)

                claim = await wait_for("a worker claims the deployment", claimed, 60, stack, interval=0.5)
                kind, host = claim["actor"].split(":")[:2]
                assert kind == "celery", claim
                owners = [c for c in stack.containers() if c["Config"]["Hostname"] == host]
                assert [service(c) for c in owners] == ["worker"], (claim, [c["Name"] for c in owners])
                victim = owners[0]

                # -- killed while it waits for the service to be healthy --------------------------------
                def service_started():
                    return labelled("container", deployment_id)

                await wait_for("the deployment's container starts", service_started, 90, stack, interval=0.5)
                body = (await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).json()
                assert body["status"] == "deploying", body
                run(["docker", "kill", victim["Id"]])
                killed = time.monotonic()

                def restarted():
                    state = json.loads(run(["docker", "inspect", victim["Id"]]).stdout)[0]
                    started_again = state["State"]["StartedAt"] != victim["State"]["StartedAt"]
                    return state if started_again and state["State"]["Running"] else None

                again = await wait_for("the supervisor starts the killed worker again", restarted, 60, stack)
                stack.timings["killed worker restarted"] = time.monotonic() - killed

                async def settled():
                    answer = (await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).json()
                    return answer if answer["status"] in ("running", "failed") else None

                final = await wait_for("the deployment heals", settled, 180, stack)
                stack.timings["deployment healed after the kill"] = time.monotonic() - killed
                stack.timings["deployment created to running"] = time.monotonic() - t
                assert final["status"] == "running", f"{final}\n{await history()}\n{stack.logs()}"
                steps = await history()
                after_kill = steps[steps.index(claim) + 1 :]
                assert any(h["reason_code"] and h["reason_code"].startswith("executor_lost") for h in after_kill), steps
                assert len(labelled("container", deployment_id)) == 1  # the container created once
                await wait_for("the running status reaches the WebSocket client", lambda: "running" in statuses, 30, stack)
                reader.cancel()
                print("history:", [(h["from_status"], h["to_status"], h["reason_code"], h["actor"]) for h in steps])
                print("killed worker started again:", again["Name"], again["State"]["StartedAt"])

            # -- the killed worker is healthy again: its health check runs in the restarted container ----
            def worker_healthy_again():
                state = json.loads(run(["docker", "inspect", victim["Id"]]).stdout)[0]
                return health(state) == "healthy"

            await wait_for("the restarted worker is healthy", worker_healthy_again, 120, stack, interval=2)

            # -- stop and delete from the backend container, which has no project directory ----------
            stopped = await client.post(f"/api/v1/deployments/{deployment_id}/stop", headers=headers)
            assert stopped.status_code in (200, 202), stopped.text

            async def is_stopped():
                answer = (await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).json()
                return answer["status"] == "stopped"

            await wait_for("the deployment stops", is_stopped, 60, stack)
            states = json.loads(run(["docker", "inspect", *labelled("container", deployment_id)]).stdout)
            assert [s["State"]["Running"] for s in states] == [False], states
            deleted = await client.delete(f"/api/v1/deployments/{deployment_id}", headers=headers)
            assert deleted.status_code == 202, deleted.text

            async def is_deleted():
                return (await client.get(f"/api/v1/deployments/{deployment_id}", headers=headers)).status_code == 404

            await wait_for("the deployment is deleted", is_deleted, 60, stack)
            for kind in ("container", "network", "volume"):
                assert labelled(kind, deployment_id) == [], kind

            # -- two backend replicas behind the proxy ------------------------------------------------------
            t = time.monotonic()
            before = {c["Id"] for c in stack.containers()}
            await asyncio.to_thread(stack.compose, "up", "-d", "--scale", "backend=2", timeout=300)
            assert before <= {c["Id"] for c in stack.containers()}, "scaling the backend recreated containers"

            def two_healthy_backends():
                backends = [c for c in stack.containers() if service(c) == "backend"]
                return len(backends) == 2 and all(health(c) == "healthy" for c in backends)

            await wait_for("a second healthy backend", two_healthy_backends, 120, stack, interval=2)
            stack.timings["scale backend=2"] = time.monotonic() - t
            origins = set()
            for _ in range(10):  # each process has its own event bus origin: the proxy alternates
                origins.add((await client.get("/health")).json()["event_bus"]["origin"])
                me = await client.get("/api/v1/auth/me", headers=headers)
                assert me.status_code == 200, me.text
            assert len(origins) == 2, origins

        # -- the supervisor restarted the killed worker, and leaves alone what compose stops -----------
        supervisor = next(c for c in stack.containers() if service(c) == "supervisor")
        logged = run(["docker", "logs", supervisor["Id"]])
        supervisor_log = logged.stdout + logged.stderr
        assert f"started {victim['Name'].lstrip('/')} again" in supervisor_log, supervisor_log
        stack.compose("stop", "beat", timeout=60)
        await asyncio.sleep(5)
        beat = [c for c in stack.containers() if service(c) == "beat"]
        assert [c["State"]["Status"] for c in beat] == ["exited"], beat
    except BaseException:
        print(f"load {os.getloadavg()}; the services' last lines:\n{await asyncio.to_thread(stack.logs)}")
        raise
    finally:
        t = time.monotonic()
        down = await asyncio.to_thread(stack.compose, "down", "-v", "--remove-orphans", "--timeout", "20", timeout=300, check=False)
        stack.timings["down -v"] = time.monotonic() - t
        if previous_image and previous_image != image_id(IMAGE):
            run(["docker", "rmi", previous_image], check=False)  # the image of the previous run, now untagged
        for deployment_id in deployment_ids:
            force_cleanup(deployment_id)
        print("timings (s):", {k: round(v, 1) for k, v in stack.timings.items()})
    assert down.returncode == 0, down.stderr
    assert stack.leftovers() == {}, stack.leftovers()
