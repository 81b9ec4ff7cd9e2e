"""An in-process judge for a narrow subset of compose documents: "certainly valid", or "ask the tool".

``docker compose config`` costs a process start (40-170 ms on a loaded machine) for every new document a
deployment's creation validates. Most documents WindFlow renders are simple: services with an image, a
command, an environment, short-syntax ports, named volumes, labels, a healthcheck, a restart policy,
dependencies and networks by name. :func:`certainly_valid` answers ``True`` only for a document made of
those shapes alone, each key known and of the right type, every reference resolved (``depends_on``,
``networks`` and ``volumes`` name what the document defines, no dependency cycle), every name within the
compose specification's patterns, and nothing the tool would read differently from us:

* no ``$`` anywhere (no interpolation, so the environment the tool would see cannot matter);
* the YAML itself is plain: one document, no anchors, aliases, merge keys or explicit tags, no duplicate
  keys (yaml.v3 refuses them, PyYAML keeps the last), string keys only, and no plain scalar that Go's
  number parsing could read otherwise than the YAML 1.2 core schema we load with (``0755``, ``1_000``,
  ``0x1F``, floats).

Anything else, or any doubt, is ``False``: the caller then runs the compose tool exactly as before, so a
refusal always carries the tool's own message. The judge never refuses by itself. It says nothing of the
compose policy (judged before it, in process, on every creation and run) and does not replace the tool at
run time: ``compose up`` reads the same document and stays the final judge. Its callers ask it only for
compose v2 (:func:`applies_to`); it was held against compose 2.26 and keeps to keys every v2 release reads.

``backend/tests/security/test_compose_judge.py`` checks it against the real tool: every document the judge
accepts, out of hand-written tricky cases and randomised mutations of valid ones, ``docker compose config
-q`` accepts too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from backend.app.core.exceptions import ValidationFailed
from backend.app.engines import compose_yaml

__all__ = ["applies_to", "certainly_valid"]

_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_RESOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # top-level networks and volumes
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9._/-]{0,127}")
# An image reference: registry host (optional port), lower-case path components, a tag and/or a digest.
_IMAGE = re.compile(
    r"(?:[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
_PORT = re.compile(r"(?:(?:127\.0\.0\.1|0\.0\.0\.0):)?(?:([0-9]{1,5}):)?([0-9]{1,5})(?:/(?:tcp|udp))?")
_CONTAINER_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_.-]+)+/?")
_DURATION = re.compile(r"(?:[1-9][0-9]{0,5}(?:ms|s|m|h))+|0s")
_RESTART = re.compile(r"no|always|unless-stopped|on-failure(?::[1-9][0-9]{0,3})?")
_MEMORY = re.compile(r"[1-9][0-9]{0,8}[bkmgBKMG]?")
_CPUS = re.compile(r"0\.[0-9]{0,2}[1-9]|[1-9][0-9]{0,2}(?:\.[0-9]{1,3})?")
_CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})
# Plain scalars both readers (the 1.2 core schema here, Go's yaml.v3) certainly read the same way.
_PLAIN_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_NUMERIC_LOOKING = re.compile(r"[-+.0-9]")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}")


class _Doubt(Exception):
    """Not certainly valid: ask the tool."""


def _require(condition: object) -> None:
    if not condition:
        raise _Doubt


def _match(pattern: re.Pattern[str], value: object) -> None:
    _require(isinstance(value, str) and pattern.fullmatch(value))


def _plain_yaml(text: str) -> None:
    """The event-level checks (see the module docstring)."""
    loader_class = getattr(compose_yaml, "_FastLoader", None) or compose_yaml._Loader
    # A stack of [is_mapping, expecting_key, keys seen] frames.
    stack: list[list[Any]] = []
    documents = 0
    for event in yaml.parse(text, Loader=loader_class):
        if isinstance(event, yaml.AliasEvent):
            raise _Doubt
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            _require(documents == 1)
            continue
        if not isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent, yaml.CollectionEndEvent)):
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            stack.pop()
            if stack and stack[-1][0]:
                stack[-1][1] = True
            continue
        _require(event.anchor is None)
        frame = stack[-1] if stack else None
        is_key = bool(frame and frame[0] and frame[1])
        if isinstance(event, yaml.ScalarEvent):
            _require(event.tag is None)
            value = event.value
            plain = bool(event.implicit[0])  # resolved by the schema (libyaml reports its style as '')
            # A plain scalar (its type comes from the resolvers) that looks numeric: a number only in plain
            # decimal form, a string only when Go's number parsing could not read it.
            if plain and _NUMERIC_LOOKING.match(value) and not _PLAIN_DECIMAL.fullmatch(value):
                _require(re.search(r"[^0-9a-fA-FxXoObBpP_+\-.eE]", value) and not _TIMESTAMP.match(value))
                _require(value.lower() not in (".inf", "-.inf", "+.inf", ".nan"))
            if is_key:
                _require(isinstance(value, str) and value != "<<" and value not in frame[2])
                _require(not plain or not (_NUMERIC_LOOKING.match(value) or value in ("", "~", "null", "Null", "NULL")))
                _require(value.lower() not in ("true", "false"))
                frame[2].add(value)
                frame[1] = False
            elif frame and frame[0]:
                frame[1] = True
            continue
        _require(not is_key and event.tag is None)  # a collection as a key, an explicit tag
        stack.append([isinstance(event, yaml.MappingStartEvent), True, set()])
    _require(documents == 1)


# --- the document's shapes -----------------------------------------------------------------------------


def _string_or_list(value: object) -> None:
    if isinstance(value, str):
        _require(value.strip())
        return
    _require(isinstance(value, list) and value and all(isinstance(item, str) for item in value))


def _scalar(value: object) -> None:
    _require(value is None or isinstance(value, (str, bool, int)) and not isinstance(value, float))


def _unique_strings(value: object) -> list[str]:
    _require(isinstance(value, list) and all(isinstance(item, str) for item in value) and len(set(value)) == len(value))
    return value  # type: ignore[return-value]


def _keyed(value: object, key_pattern: re.Pattern[str]) -> None:
    """``environment`` or ``labels``: a map of scalars, or a list of ``KEY=value`` strings with unique keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            _match(key_pattern, key)
            _scalar(item)
        return
    keys = [item.split("=", 1)[0] for item in _unique_strings(value)]
    for key in keys:
        _match(key_pattern, key)
    _require(len(set(keys)) == len(keys))


def _port_number(text: str) -> None:
    _require(not text.startswith("0") and 1 <= int(text) <= 65535)


def _ports(value: object) -> None:
    _require(isinstance(value, list) and value and len({repr(item) for item in value}) == len(value))
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            _require(1 <= item <= 65535)
            continue
        _require(isinstance(item, str))
        found = _PORT.fullmatch(item)
        _require(found)
        for number in found.groups():
            if number is not None:
                _port_number(number)


def _volumes(value: object, defined: Mapping[str, Any]) -> None:
    targets = []
    for item in _unique_strings(value):
        parts = item.split(":")
        if len(parts) == 1:  # anonymous
            target = parts[0]
        else:
            _require(len(parts) in (2, 3) and parts[0] in defined)
            target = parts[1]
            if len(parts) == 3:
                _require(parts[2] in ("ro", "rw"))
        _match(_CONTAINER_PATH, target)
        _require(target != "/")
        targets.append(target.rstrip("/"))
    _require(len(set(targets)) == len(targets))


def _healthcheck(value: object) -> bool:
    """Checks a healthcheck; True when it tests something (not disabled)."""
    _require(isinstance(value, dict))
    _require(set(value) <= {"test", "interval", "timeout", "start_period", "retries", "disable"})
    for key in ("interval", "timeout", "start_period"):
        if key in value:
            _match(_DURATION, value[key])
    if "retries" in value:
        _require(type(value["retries"]) is int and 0 <= value["retries"] <= 1000)
    if "disable" in value:
        _require(value["disable"] is False)
    test = value.get("test")
    _require(test is not None)
    if isinstance(test, str):
        _require(test.strip())
    else:
        _require(isinstance(test, list) and len(test) >= 2 and all(isinstance(item, str) and item for item in test))
        _require(test[0] in ("CMD", "CMD-SHELL"))
    return True


def _deploy(value: object) -> None:
    _require(isinstance(value, dict) and set(value) <= {"replicas", "resources"})
    if "replicas" in value:
        _require(type(value["replicas"]) is int and 0 <= value["replicas"] <= 100)
    if "resources" in value:
        resources = value["resources"]
        _require(isinstance(resources, dict) and set(resources) <= {"limits", "reservations"})
        for part in resources.values():
            _require(isinstance(part, dict) and part and set(part) <= {"cpus", "memory"})
            if "cpus" in part:
                _match(_CPUS, part["cpus"])
            if "memory" in part:
                _match(_MEMORY, part["memory"])


def _service_networks(value: object, defined: Mapping[str, Any]) -> None:
    names = list(value) if isinstance(value, dict) else _unique_strings(value)
    _require(names)
    for name in names:
        _require(name in defined or name == "default")
    if isinstance(value, dict):
        for options in value.values():
            if options is None:
                continue
            _require(isinstance(options, dict) and set(options) <= {"aliases"})
            aliases = _unique_strings(options.get("aliases"))
            for alias in aliases:
                _match(_SERVICE_NAME, alias)


_SERVICE_KEYS = frozenset(
    {
        "image",
        "command",
        "entrypoint",
        "environment",
        "ports",
        "volumes",
        "labels",
        "healthcheck",
        "restart",
        "depends_on",
        "networks",
        "init",
        "deploy",
        "working_dir",
        "stop_grace_period",
        "tty",
        "stdin_open",
        "read_only",
    }
)


def _service(service: object, networks: Mapping[str, Any], volumes: Mapping[str, Any]) -> dict[str, str]:
    """Checks one service; returns its dependencies (name -> condition)."""
    _require(isinstance(service, dict))
    keys = set(service)
    _require(keys <= _SERVICE_KEYS or all(key in _SERVICE_KEYS or key.startswith("x-") for key in keys))
    _match(_IMAGE, service.get("image"))
    for key in ("command", "entrypoint"):
        if key in service:
            _string_or_list(service[key])
    if "environment" in service:
        _keyed(service["environment"], _ENV_KEY)
    if "labels" in service:
        _keyed(service["labels"], _LABEL_KEY)
    if "ports" in service:
        _ports(service["ports"])
    if "volumes" in service:
        _volumes(service["volumes"], volumes)
    if "healthcheck" in service:
        _healthcheck(service["healthcheck"])
    if "restart" in service:
        _match(_RESTART, service["restart"])
    if "networks" in service:
        _service_networks(service["networks"], networks)
    for key in ("init", "tty", "stdin_open", "read_only"):
        if key in service:
            _require(isinstance(service[key], bool))
    if "working_dir" in service:
        _match(_CONTAINER_PATH, service["working_dir"])
    if "stop_grace_period" in service:
        _match(_DURATION, service["stop_grace_period"])
    if "deploy" in service:
        _deploy(service["deploy"])
    depends = service.get("depends_on")
    if depends is None:
        _require("depends_on" not in service)
        return {}
    if isinstance(depends, list):
        return dict.fromkeys(_unique_strings(depends), "service_started")
    _require(isinstance(depends, dict) and depends)
    found = {}
    for name, options in depends.items():
        # "restart" and "required" are left to the tool (newer compose v2 releases only)
        _require(isinstance(options, dict) and set(options) <= {"condition"})
        condition = options.get("condition", "service_started")
        _require(condition in _CONDITIONS)
        found[name] = condition
    return found


def _top_level(value: object, allowed: frozenset[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    _require(isinstance(value, dict))
    for name, options in value.items():
        _match(_RESOURCE_NAME, name)
        if options is None:
            continue
        _require(isinstance(options, dict) and set(options) <= allowed)
        if "driver" in options:
            _require(options["driver"] in ("local", "bridge"))
        for flag in ("external", "internal", "attachable"):
            if flag in options:
                _require(isinstance(options[flag], bool))
        if options.get("external"):
            _require(set(options) <= {"external", "name"})
        if "name" in options:
            _match(_RESOURCE_NAME, options["name"])
        if "labels" in options:
            _keyed(options["labels"], _LABEL_KEY)
    return value


def _acyclic(graph: Mapping[str, Mapping[str, str]]) -> None:
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        _require(state.get(name) != 1)
        if state.get(name) == 2:
            return
        state[name] = 1
        for dependency in graph[name]:
            visit(dependency)
        state[name] = 2

    for name in graph:
        visit(name)


def _judge(text: str) -> None:
    _require(isinstance(text, str) and "$" not in text and "\t" not in text and "\r" not in text)
    _plain_yaml(text)
    doc = compose_yaml.load(text)
    _require(isinstance(doc, dict))
    _require(all(key in ("services", "networks", "volumes") or key.startswith("x-") for key in doc))
    networks = _top_level(doc.get("networks"), frozenset({"driver", "external", "name", "labels", "internal", "attachable"}))
    volumes = _top_level(doc.get("volumes"), frozenset({"driver", "external", "name", "labels"}))
    services = doc.get("services")
    _require(isinstance(services, dict) and services)
    graph = {}
    healthy = set()
    for name, service in services.items():
        _match(_SERVICE_NAME, name)
        graph[name] = _service(service, networks, volumes)
        if isinstance(service.get("healthcheck"), dict):
            healthy.add(name)
    for name, dependencies in graph.items():
        for dependency, condition in dependencies.items():
            _require(dependency in graph and dependency != name)
            if condition == "service_healthy":
                _require(dependency in healthy)
    _acyclic(graph)


def applies_to(command: tuple[str, ...] | None) -> bool:
    """Whether the judge may answer for ``command``: compose v2 only (``docker compose``, or its CLI plugin
    run directly), the tool the soundness test holds it against; a ``docker-compose`` program (v1, or a v2
    of unknown release) is always asked."""
    if not command:
        return False
    return len(command) > 1 and command[1] == "compose" or Path(command[0]).parent.name == "cli-plugins"


def certainly_valid(text: str) -> bool:
    """True only when ``docker compose config -q`` certainly accepts ``text`` (see the module docstring);
    False means "ask the tool", never "invalid"."""
    try:
        _judge(text)
    except (_Doubt, ValidationFailed, yaml.YAMLError, RecursionError, ValueError, TypeError, KeyError):
        return False
    return True
