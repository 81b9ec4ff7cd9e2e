#!/usr/bin/env python3
"""Start again the containers of this compose project that ``docker kill`` stopped (``windflow-supervise``).

Docker treats ``docker kill`` as a deliberate stop under every restart policy: a container with
``restart: always`` or ``unless-stopped`` that is killed stays down until someone starts it (or the daemon
restarts). A crash, the kernel's OOM killer or a worker leaving with exit 75 is restarted by the policy; a
``docker kill`` of a worker is not. This process, the ``supervisor`` service of docker-compose.yml, watches
the engine's events for the containers of its own compose project that carry the label
``windflow.restart-when-killed=true`` and starts again one that died from a SIGKILL sent through the
engine (``docker kill``, ``docker compose kill``) when no stop was asked for: ``docker stop``,
``docker compose stop``/``down``/``restart`` send SIGTERM first (the engine's ``kill`` event with signal
15, then SIGKILL only if the grace period runs out), and those containers stay down.

It needs the Docker socket (like the backend and the workers) and nothing else of WindFlow.
"""

from __future__ import annotations

import socket
import sys
import time

import docker
import docker.errors

LABEL = "windflow.restart-when-killed"
#: a stop asked this many seconds before the container died makes its death deliberate (the workers'
#: stop_grace_period is 2 minutes)
STOP_WINDOW = 300.0
SIGKILL = {"9", "KILL", "SIGKILL"}


def log(message: str) -> None:
    print(f"windflow-supervise: {message}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, client: docker.DockerClient, project: str) -> None:
        self.client = client
        self.project = project
        self.stop_asked: dict[str, float] = {}  # container id -> when a stop (SIGTERM first) was asked
        self.killed: dict[str, float] = {}  # container id -> when it was sent SIGKILL

    def handle(self, event: dict) -> None:
        """One container event of the project: remember kills and stops, start again a killed container."""
        container, action = event.get("id", ""), event.get("Action", "")
        attributes = event.get("Actor", {}).get("Attributes", {})
        now = time.monotonic()
        if action == "kill":
            if attributes.get("signal") in SIGKILL:
                self.killed.setdefault(container, now)
            else:
                self.stop_asked[container] = now
        elif action in ("stop", "destroy"):
            self.stop_asked[container] = now
            self.killed.pop(container, None)
        elif action == "start":  # a new life: what was asked of the previous one no longer counts
            self.killed.pop(container, None)
            self.stop_asked.pop(container, None)
        elif action == "die":
            killed = self.killed.pop(container, None)
            asked = self.stop_asked.get(container)
            if killed is not None and (asked is None or now - asked > STOP_WINDOW):
                self.start_again(container, attributes.get("name", container[:12]))
        for table in (self.stop_asked, self.killed):
            for key in [k for k, t in table.items() if now - t > STOP_WINDOW]:
                del table[key]

    def start_again(self, container_id: str, name: str) -> None:
        time.sleep(1)  # let the engine finish with the dead container
        try:
            container = self.client.containers.get(container_id)
            if container.status != "exited":
                return
            container.start()
        except docker.errors.NotFound:
            return  # removed meanwhile (`docker compose down`, `rm -f`)
        except docker.errors.APIError as exc:
            log(f"cannot start {name} again: {exc.explanation or exc}")
            return
        log(f"started {name} again: it was killed (docker kill) without a stop being asked")

    def watch(self) -> None:
        filters = {"type": "container", "label": [f"com.docker.compose.project={self.project}", f"{LABEL}=true"]}
        for event in self.client.events(decode=True, filters=filters):
            self.handle(event)


def own_project(client: docker.DockerClient) -> str:
    me = client.containers.get(socket.gethostname())
    project = me.labels.get("com.docker.compose.project")
    if not project:
        raise SystemExit("windflow-supervise: this container is not part of a compose project")
    return project


def main() -> int:
    delay = 1.0
    while True:
        try:
            client = docker.from_env()
            supervisor = Supervisor(client, own_project(client))
            log(f"watching the containers of compose project {supervisor.project} labelled {LABEL}=true")
            delay = 1.0
            supervisor.watch()
        except (docker.errors.DockerException, OSError) as exc:
            log(f"the Docker engine does not answer ({exc}); trying again in {delay:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


if __name__ == "__main__":
    sys.exit(main())
