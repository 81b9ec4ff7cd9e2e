"""The compose document as data: parsing, labelling, the services to wait for, ports (for swarm), and
compose's interpolation for the compose policy.

The drivers need only what surrounds the compose CLI and ``docker stack``: both tools read, validate and
interpolate the document themselves.

Documents are read and written by :mod:`backend.app.engines.compose_yaml` (YAML 1.2 as compose reads it,
alias expansion bounded), the one reader the templating and the compose policy use too.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backend.app.core.exceptions import ValidationFailed
from backend.app.engines import compose_yaml
from backend.app.engines.base import EngineError
from backend.app.engines.compose_yaml import compose_bool

SERVICE_LABEL = "windflow.service"


def load_document(text: str) -> dict[str, Any]:
    """Parse a compose document; permanent EngineError when it is not a mapping with services."""
    try:
        doc = compose_yaml.load(text)
    except ValidationFailed as exc:
        raise EngineError(f"invalid compose document: {exc.detail}", transient=False) from None
    if not isinstance(doc, dict):
        raise EngineError("invalid compose document: the top level must be a mapping", transient=False)
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        raise EngineError("invalid compose document: it must define at least one service under 'services'", transient=False)
    for name, service in services.items():
        if service is None:
            services[name] = {}
        elif not isinstance(service, dict):
            raise EngineError(f"invalid compose document: service {name!r} must be a mapping", transient=False)
    return doc


def dump_document(doc: Mapping[str, Any]) -> str:
    return compose_yaml.dump(doc)


# --------------------------------------------------------------------------- labels


def labels_as_dict(value: Any) -> dict[str, Any]:
    """Compose ``labels`` in list (``["a=b"]``) or mapping form, as a mapping."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        result: dict[str, Any] = {}
        for item in value:
            key, _, val = str(item).partition("=")
            result[key] = val
        return result
    raise EngineError(f"invalid compose document: labels must be a list or a mapping, got {value!r}", transient=False)


def merge_labels(existing: Any, labels: Mapping[str, str]) -> dict[str, Any]:
    """The user's labels plus ours; ours win, since they identify the deployment's objects."""
    merged = labels_as_dict(existing)
    merged.update(labels)
    return merged


def _is_external(definition: Any) -> bool:
    if not isinstance(definition, dict):
        return False
    external = definition.get("external")
    # as compose reads it: ``external: no`` is false; a legacy ``external: {name: x}`` is external
    return external is not None and compose_bool(external) is not False


def _uses_default_network(service: Mapping[str, Any]) -> bool:
    if "network_mode" in service:
        return False
    networks = service.get("networks")
    if not networks:
        return True
    return "default" in networks


def label_document(doc: Mapping[str, Any], labels: Mapping[str, str], *, swarm: bool = False) -> dict[str, Any]:
    """A copy of ``doc`` where every service, network and named volume (and, for swarm, every config and
    secret) carries ``labels``, merged with the user's own.

    The implicit ``default`` network is declared explicitly when a service uses it, because a network
    compose creates on its own carries no labels of ours. External objects are not ours: left alone.
    For swarm, services get the labels twice: ``deploy.labels`` (the service) and ``labels`` (the
    task containers).
    """
    doc = copy.deepcopy(dict(doc))
    services: dict[str, Any] = doc["services"]
    for name, service in services.items():
        own = {**labels, SERVICE_LABEL: str(name)}
        service["labels"] = merge_labels(service.get("labels"), own)
        if swarm:
            deploy = service.get("deploy") or {}
            deploy["labels"] = merge_labels(deploy.get("labels"), own)
            service["deploy"] = deploy

    uses_default = any(_uses_default_network(s) for s in services.values())
    for kind in ("networks", "volumes", "configs", "secrets") if swarm else ("networks", "volumes"):
        section = dict(doc.get(kind) or {})
        if kind == "networks" and uses_default and "default" not in section:
            section["default"] = {}
        for key, definition in section.items():
            if _is_external(definition):
                continue
            definition = dict(definition or {})
            definition["labels"] = merge_labels(definition.get("labels"), labels)
            section[key] = definition
        if section:
            doc[kind] = section
    return doc


# --------------------------------------------------------------------------- services


def active_services(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Services compose starts: those without ``profiles`` (WindFlow enables no profile)."""
    result = {}
    for name, service in (doc.get("services") or {}).items():
        if service.get("profiles"):
            continue
        result[str(name)] = service
    return result


def desired_replicas(service: Mapping[str, Any]) -> int:
    deploy = service.get("deploy") or {}
    if deploy.get("mode") in ("global", "replicated-job", "global-job"):
        return 1
    if deploy.get("replicas") is not None:
        return int(deploy["replicas"])
    if service.get("scale") is not None:
        return int(service["scale"])
    return 1


def completed_dependencies(services: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Services another one waits for with ``condition: service_completed_successfully``: one-shot jobs
    whose exit code 0 is success, not a crash."""
    result = set()
    for service in services.values():
        depends = service.get("depends_on")
        if isinstance(depends, dict):
            for name, cond in depends.items():
                if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully":
                    result.add(str(name))
    return result


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True)
class PortMapping:
    target: int
    published: int | None = None
    host_ip: str | None = None
    protocol: str = "tcp"


def _port_range(text: str) -> list[int]:
    start, _, end = text.partition("-")
    try:
        first = int(start)
        last = int(end) if end else first
    except ValueError as exc:
        raise EngineError(f"invalid port {text!r}", transient=False) from exc
    return list(range(first, last + 1))


def parse_ports(entries: Any) -> list[PortMapping]:
    """Compose ``ports`` in short (``"127.0.0.1:8080:80/tcp"``, ranges) or long syntax."""
    mappings: list[PortMapping] = []
    for entry in entries or []:
        if isinstance(entry, dict):
            target = entry.get("target")
            if target is None:
                raise EngineError(f"invalid port {entry!r}: 'target' is required", transient=False)
            published = entry.get("published")
            mappings.append(
                PortMapping(
                    target=int(target),
                    published=int(published) if published not in (None, "") else None,
                    host_ip=entry.get("host_ip") or None,
                    protocol=str(entry.get("protocol") or "tcp"),
                )
            )
            continue
        text = str(entry)
        text, _, protocol = text.partition("/")
        host_ip = None
        if text.startswith("["):  # [::1]:8080:80
            host_ip, _, text = text[1:].partition("]:")
        parts = text.split(":")
        if len(parts) == 3:
            host_ip, published_text, target_text = parts
        elif len(parts) == 2:
            published_text, target_text = parts
        elif len(parts) == 1:
            published_text, target_text = "", parts[0]
        else:
            raise EngineError(f"invalid port {entry!r}", transient=False)
        targets = _port_range(target_text)
        published = _port_range(published_text) if published_text else [None] * len(targets)
        if len(published) != len(targets):
            raise EngineError(f"invalid port {entry!r}: ranges of different sizes", transient=False)
        for pub, tgt in zip(published, targets, strict=True):
            mappings.append(PortMapping(target=tgt, published=pub, host_ip=host_ip or None, protocol=protocol or "tcp"))
    return mappings


# --------------------------------------------------------------------------- interpolation

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*))")
_BRACED = re.compile(r"^(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$`` substitution, recursively.

    The drivers never need it (the compose CLI and ``docker stack`` interpolate themselves). The compose
    policy does (``services/targets/compose_policy.py``): it judges the document as compose will read it *before*
    any compose tool runs, since the tool itself could be made to read files of the WindFlow host.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            return env.get(match.group("named"), "")
        braced = _BRACED.match(match.group("braced"))
        if braced is None:
            raise EngineError(f"invalid interpolation format in {value!r}", transient=False)
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":-", "-"):
            return arg if unset_or_empty else current or ""
        if op in (":?", "?"):
            if unset_or_empty:
                raise EngineError(f"required variable {name} is missing a value: {arg}", transient=False)
            return current or ""
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VARIABLE.sub(substitute, value)
