"""The container driver: a compose document's services run with the Docker SDK only, for hosts without
a compose tool and for simple stacks.

Supported per service: image, command, entrypoint, environment, ports (short and long syntax, with a
host IP), volumes (named, bind, anonymous, tmpfs), labels, healthcheck, restart, init, networks,
network_mode, container_name, depends_on (with conditions), working_dir, user, hostname, stop_signal,
stop_grace_period, tty, stdin_open, extra_hosts, scale/deploy.replicas. Anything else is refused by
``validate`` rather than silently ignored.

Networking: one labelled bridge network per deployment (``<project>_default``), every service on it with
its name as DNS alias. Networks the document declares are folded into that one (with a warning), except
external ones, which containers join as they are.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import docker.types
from docker.models.containers import Container

from backend.app.engines.base import DEPLOYMENT_LABEL, DeploySpec, EngineError, LogSink
from backend.app.engines.connection import EngineSession, cli_base_environment
from backend.app.engines.docker_base import POLL_INTERVAL, DockerEngine, service_of
from backend.app.engines.document import (
    SERVICE_LABEL,
    active_services,
    depends_on,
    desired_replicas,
    interpolate,
    labels_as_dict,
    parse_ports,
    read_env_file,
    start_order,
)
from backend.app.models.enums import LogLevel

SUPPORTED_SERVICE_KEYS = frozenset({
    "image", "command", "entrypoint", "environment", "ports", "volumes", "labels", "healthcheck", "restart",
    "init", "networks", "network_mode", "container_name", "depends_on", "working_dir", "user", "hostname",
    "stop_signal", "stop_grace_period", "tty", "stdin_open", "extra_hosts", "profiles", "scale", "deploy",
})
SUPPORTED_DEPLOY_KEYS = frozenset({"replicas", "labels"})
SUPPORTED_TOP_KEYS = frozenset({"services", "networks", "volumes", "version", "name"})

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_NS = {"h": 3600e9, "m": 60e9, "s": 1e9, "ms": 1e6, "us": 1e3, "µs": 1e3, "ns": 1}


def parse_duration_ns(value: Any) -> int:
    """Go/compose durations (``1m30s``, ``500ms``); bare numbers are seconds."""
    if isinstance(value, int | float):
        return int(value * 1e9)
    text = str(value).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return int(float(text) * 1e9)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise EngineError(f"invalid duration {value!r}", transient=False)
    return int(sum(float(n) * _NS[u] for n, u in parts))


@dataclass
class ServicePlan:
    name: str
    replicas: int
    create: dict[str, Any]  # containers.create kwargs, without the name
    container_names: list[str]
    external_networks: list[str] = field(default_factory=list)
    dependencies: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    network: str | None  # the deployment's network, None when every service has a network_mode
    network_driver: str
    volumes: dict[str, dict[str, Any]]  # real name -> {"driver", "driver_opts", "labels", "external"}
    services: dict[str, ServicePlan]
    order: list[str]
    warnings: list[str]


class ContainerEngine(DockerEngine):
    """Docker SDK only: no CLI involved, so nothing to kill on cancellation beyond the current request."""

    # ------------------------------------------------------------------ planning

    def _environment(self, spec: DeploySpec) -> dict[str, str]:
        """What ``${VAR}`` may refer to: the project's ``.env`` and the few variables a compose CLI would
        inherit (never the backend's secrets), the latter winning as in compose."""
        env = read_env_file(Path(spec.workdir) / ".env")
        env.update(cli_base_environment())
        return env

    def resolved(self, spec: DeploySpec) -> dict[str, Any]:
        return interpolate(self.prepared_document(spec), self._environment(spec))

    async def resolved_document(self, spec: DeploySpec) -> dict[str, Any]:
        return self.resolved(spec)

    def plan(self, spec: DeploySpec, doc: dict[str, Any] | None = None) -> Plan:
        doc = doc if doc is not None else self.resolved(spec)
        warnings: list[str] = []
        unknown = sorted(k for k in doc if k not in SUPPORTED_TOP_KEYS and not str(k).startswith("x-"))
        if unknown:
            raise EngineError(f"the container driver does not support top-level {', '.join(unknown)} "
                              "(install a compose tool on the target)", transient=False)
        services = active_services(doc)
        workdir = Path(spec.workdir)
        environment = self._environment(spec)

        declared_networks = doc.get("networks") or {}
        external_networks: dict[str, str] = {}
        folded = []
        network_driver = "bridge"
        for key, definition in declared_networks.items():
            definition = definition or {}
            if definition.get("external"):
                external_networks[key] = definition.get("name") or key
            elif key == "default":
                network_driver = definition.get("driver") or "bridge"
            else:
                folded.append(key)
        if folded:
            warnings.append(f"networks {', '.join(folded)} are merged into the deployment's single network "
                            f"{spec.project}_default")

        volumes: dict[str, dict[str, Any]] = {}
        volume_names: dict[str, str] = {}
        for key, definition in (doc.get("volumes") or {}).items():
            definition = definition or {}
            external = bool(definition.get("external"))
            name = definition.get("name") or (key if external else f"{spec.project}_{key}")
            volume_names[key] = name
            volumes[name] = {
                "driver": definition.get("driver") or "local",
                "driver_opts": definition.get("driver_opts") or {},
                "labels": {**labels_as_dict(definition.get("labels")), **spec.labels},
                "external": external,
            }

        plans: dict[str, ServicePlan] = {}
        any_on_network = False
        for name, service in services.items():
            unsupported = sorted(k for k in service if k not in SUPPORTED_SERVICE_KEYS and not str(k).startswith("x-"))
            unsupported += sorted(f"deploy.{k}" for k in (service.get("deploy") or {})
                                  if k not in SUPPORTED_DEPLOY_KEYS)
            if unsupported:
                raise EngineError(f"service {name} uses {', '.join(unsupported)}, which the container driver "
                                  "does not support (install a compose tool on the target)", transient=False)
            image = service.get("image")
            if not image:
                raise EngineError(f"service {name} has no image", transient=False)
            replicas = desired_replicas(service)
            if service.get("container_name") and replicas > 1:
                raise EngineError(f"service {name} sets container_name and has {replicas} replicas",
                                  transient=False)
            labels = {**labels_as_dict(service.get("labels")), **spec.labels, SERVICE_LABEL: name}
            create: dict[str, Any] = {"image": str(image), "labels": {k: str(v) for k, v in labels.items()}}
            for key in ("command", "entrypoint"):
                if service.get(key) is not None:
                    create[key] = service[key]
            for key, arg in (("working_dir", "working_dir"), ("user", "user"), ("hostname", "hostname"),
                             ("stop_signal", "stop_signal")):
                if service.get(key) is not None:
                    create[arg] = str(service[key])
            for key in ("tty", "stdin_open", "init"):
                if service.get(key) is not None:
                    create[key] = bool(service[key])
            if service.get("stop_grace_period") is not None:
                create["stop_timeout"] = max(1, parse_duration_ns(service["stop_grace_period"]) // 10**9)
            if service.get("extra_hosts"):
                hosts = service["extra_hosts"]
                create["extra_hosts"] = dict(h.split(":", 1) for h in hosts) if isinstance(hosts, list) else hosts
            create["environment"] = self._service_environment(service.get("environment"), environment)
            ports = self._ports(service.get("ports"))
            if ports:
                create["ports"] = ports
            binds, mounts, tmpfs = self._volumes(name, service.get("volumes"), volume_names, workdir)
            if binds:
                create["volumes"] = binds
            if mounts:
                create["mounts"] = mounts
            if tmpfs:
                create["tmpfs"] = tmpfs
            if service.get("healthcheck"):
                create["healthcheck"] = self._healthcheck(service["healthcheck"])
            restart = str(service.get("restart") or "no")
            if restart != "no":
                policy, _, count = restart.partition(":")
                if policy not in ("always", "unless-stopped", "on-failure"):
                    raise EngineError(f"service {name}: invalid restart policy {restart!r}", transient=False)
                create["restart_policy"] = {"Name": policy, "MaximumRetryCount": int(count or 0)}
            joined_external: list[str] = []
            if service.get("network_mode"):
                create["network_mode"] = str(service["network_mode"])
            else:
                any_on_network = True
                for net in service.get("networks") or []:
                    if net in external_networks:
                        joined_external.append(external_networks[net])
                    elif net != "default" and net not in declared_networks:
                        raise EngineError(f"service {name} refers to undefined network {net}", transient=False)
            if replicas <= 0:
                names: list[str] = []
            elif service.get("container_name"):
                names = [str(service["container_name"])]
            else:
                names = [f"{spec.project}-{name}-{i}" for i in range(1, replicas + 1)]
            plans[name] = ServicePlan(name, replicas, create, names, joined_external, depends_on(service))
        order = start_order(services)
        return Plan(f"{spec.project}_default" if any_on_network else None, network_driver, volumes, plans,
                    order, warnings)

    @staticmethod
    def _service_environment(value: Any, env: dict[str, str]) -> list[str]:
        if not value:
            return []
        items = value.items() if isinstance(value, dict) else (
            (str(i).partition("=")[0], str(i).partition("=")[2] if "=" in str(i) else None) for i in value)
        result = []
        for key, val in items:
            if val is None:  # ``FOO`` alone: taken from the environment when set, as compose does
                if key in env:
                    result.append(f"{key}={env[key]}")
                continue
            if isinstance(val, bool):
                val = "true" if val else "false"
            result.append(f"{key}={val}")
        return result

    @staticmethod
    def _ports(value: Any) -> dict[str, list[Any]]:
        ports: dict[str, list[Any]] = {}
        for mapping in parse_ports(value):
            key = f"{mapping.target}/{mapping.protocol}"
            published = mapping.published if mapping.published is not None else ""
            binding: Any = (mapping.host_ip, published) if mapping.host_ip else (published or None)
            ports.setdefault(key, []).append(binding)
        return ports

    @staticmethod
    def _volumes(service: str, value: Any, volume_names: dict[str, str], workdir: Path
                 ) -> tuple[list[str], list[docker.types.Mount], dict[str, str]]:
        binds: list[str] = []
        mounts: list[docker.types.Mount] = []
        tmpfs: dict[str, str] = {}
        for entry in value or []:
            if isinstance(entry, dict):
                kind = entry.get("type") or "volume"
                source = entry.get("source")
                target = entry.get("target")
                read_only = bool(entry.get("read_only"))
                if not target:
                    raise EngineError(f"service {service}: volume {entry!r} has no target", transient=False)
            else:
                parts = str(entry).split(":")
                if len(parts) == 1:
                    kind, source, target, read_only = "volume", None, parts[0], False
                else:
                    source, target = parts[0], parts[1]
                    mode = parts[2] if len(parts) > 2 else "rw"
                    read_only = "ro" in mode.split(",")
                    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
            if kind == "tmpfs":
                tmpfs[str(target)] = ""
            elif kind == "bind":
                path = Path(os.path.expanduser(str(source)))
                if not path.is_absolute():
                    path = (workdir / path).resolve()
                binds.append(f"{path}:{target}:{'ro' if read_only else 'rw'}")
            elif kind == "volume":
                if source and source not in volume_names:
                    raise EngineError(f"service {service} refers to undefined volume {source}", transient=False)
                mounts.append(docker.types.Mount(str(target), volume_names[source] if source else None,
                                                 type="volume", read_only=read_only))
            else:
                raise EngineError(f"service {service}: unsupported volume type {kind}", transient=False)
        return binds, mounts, tmpfs

    @staticmethod
    def _healthcheck(value: dict[str, Any]) -> dict[str, Any]:
        if value.get("disable"):
            return {"test": ["NONE"]}
        test = value.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        check: dict[str, Any] = {"test": test}
        for key in ("interval", "timeout", "start_period"):
            if value.get(key) is not None:
                check[key] = parse_duration_ns(value[key])
        if value.get("retries") is not None:
            check["retries"] = int(value["retries"])
        return check

    # ------------------------------------------------------------------ steps

    async def validate(self, spec: DeploySpec, log: LogSink) -> None:
        plan = self.plan(spec, interpolate(self.labelled_document(spec), self._environment(spec)))
        for warning in plan.warnings:
            await log(LogLevel.WARNING, warning)
        await log(LogLevel.INFO, f"compose document is valid for the container driver "
                                 f"({len(plan.services)} services)")

    async def create_resources(self, spec: DeploySpec, log: LogSink) -> None:
        plan = self.plan(spec)
        for warning in plan.warnings:
            await log(LogLevel.WARNING, warning)
        async with self.session() as session:
            client = await session.client()
            if plan.network:
                await self._ensure_network(session, spec, plan, log)
            for name, volume in plan.volumes.items():
                await self._ensure_volume(session, spec, name, volume, log)
            existing = await self.containers(session, spec)
            for container in existing:  # replaced by fresh ones below: the document may have changed
                await log(LogLevel.INFO, f"removing previous container {container.name}")
                try:
                    await session.call(container.remove, force=True)
                except docker.errors.NotFound:
                    pass
            for service in plan.order:
                service_plan = plan.services[service]
                for container_name in service_plan.container_names:
                    kwargs = dict(service_plan.create, name=container_name)
                    if plan.network and "network_mode" not in kwargs:
                        kwargs["network"] = plan.network
                        kwargs["networking_config"] = {
                            plan.network: client.api.create_endpoint_config(aliases=[service]),
                        }
                    await log(LogLevel.INFO, f"creating container {container_name}")
                    container = await session.call(client.containers.create, **kwargs)
                    for external in service_plan.external_networks:
                        network = await session.call(client.networks.get, external)
                        await session.call(network.connect, container, aliases=[service])

    async def _ensure_network(self, session: EngineSession, spec: DeploySpec, plan: Plan, log: LogSink) -> None:
        client = await session.client()
        assert plan.network is not None
        try:
            network = await session.call(client.networks.get, plan.network)
        except docker.errors.NotFound:
            await log(LogLevel.INFO, f"creating network {plan.network}")
            await session.call(client.networks.create, plan.network, driver=plan.network_driver,
                               labels=dict(spec.labels), check_duplicate=True)
            return
        if (network.attrs.get("Labels") or {}).get(DEPLOYMENT_LABEL) != spec.deployment_id:
            raise EngineError(f"network {plan.network} exists and does not belong to this deployment",
                              transient=False)

    async def _ensure_volume(self, session: EngineSession, spec: DeploySpec, name: str, volume: dict[str, Any],
                             log: LogSink) -> None:
        client = await session.client()
        try:
            existing = await session.call(client.volumes.get, name)
        except docker.errors.NotFound:
            if volume["external"]:
                raise EngineError(f"external volume {name} does not exist", transient=False) from None
            await log(LogLevel.INFO, f"creating volume {name}")
            await session.call(client.volumes.create, name=name, driver=volume["driver"],
                               driver_opts=volume["driver_opts"], labels=volume["labels"])
            return
        if not volume["external"] and (existing.attrs.get("Labels") or {}).get(DEPLOYMENT_LABEL) != spec.deployment_id:
            await log(LogLevel.WARNING, f"volume {name} already exists without this deployment's labels; using it")

    async def start_services(self, spec: DeploySpec, log: LogSink) -> None:
        plan = self.plan(spec)
        async with self.session() as session:
            by_name = {c.name: c for c in await self.containers(session, spec)}
            if any(n not in by_name for p in plan.services.values() for n in p.container_names):
                await self.create_resources(spec, log)
                by_name = {c.name: c for c in await self.containers(session, spec)}
            for service in plan.order:
                service_plan = plan.services[service]
                for dependency, condition in service_plan.dependencies.items():
                    if condition in ("service_healthy", "service_completed_successfully"):
                        await self._wait_dependency(session, spec, plan.services[dependency], condition, log)
                for container_name in service_plan.container_names:
                    container = by_name[container_name]
                    if container.status == "running":
                        continue
                    await log(LogLevel.INFO, f"starting container {container_name}")
                    await session.call(container.start)

    async def _wait_dependency(self, session: EngineSession, spec: DeploySpec, dependency: ServicePlan,
                               condition: str, log: LogSink) -> None:
        await log(LogLevel.INFO, f"waiting for {dependency.name} ({condition})")
        deadline = time.monotonic() + spec.health_timeout
        client = await session.client()
        while True:
            done = True
            for container_name in dependency.container_names:
                container = await session.call(client.containers.get, container_name)
                state = container.attrs.get("State", {})
                health = (state.get("Health") or {}).get("Status")
                if condition == "service_completed_successfully":
                    if state.get("Status") == "exited" and state.get("ExitCode") != 0:
                        await self._fail(session, dependency.name, container,
                                         f"exited with code {state.get('ExitCode')}", log)
                    done = done and state.get("Status") == "exited"
                else:
                    if state.get("Status") in ("exited", "dead") or health == "unhealthy":
                        await self._fail(session, dependency.name, container,
                                         f"is {health or state.get('Status')}", log)
                    done = done and health == "healthy"
            if done:
                return
            if time.monotonic() >= deadline:
                raise EngineError(f"service {dependency.name} not {condition.removeprefix('service_')} after "
                                  f"{spec.health_timeout:g}s", transient=False)
            await asyncio.sleep(POLL_INTERVAL)

    async def stop(self, spec: DeploySpec, log: LogSink) -> None:
        async with self.session() as session:
            for container in await self.containers(session, spec):
                if container.status in ("running", "restarting", "paused"):
                    await log(LogLevel.INFO, f"stopping container {container.name}")
                    await session.call(container.stop)

    async def start(self, spec: DeploySpec, log: LogSink) -> None:
        order = {name: i for i, name in enumerate(start_order(active_services(self.prepared_document(spec))))}
        async with self.session() as session:
            containers: list[Container] = await self.containers(session, spec)
            for container in sorted(containers, key=lambda c: (order.get(service_of(c.labels), 99), c.name)):
                if container.status in ("created", "exited"):
                    await log(LogLevel.INFO, f"starting container {container.name}")
                    await session.call(container.start)

    async def remove(self, spec: DeploySpec, log: LogSink, *, keep_volumes: bool = False) -> None:
        async with self.session() as session:
            await self.sweep(session, spec, log, keep_volumes=keep_volumes)
