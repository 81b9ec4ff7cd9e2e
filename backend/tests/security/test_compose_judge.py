"""The in-process compose judge against the real tool: whatever it accepts, ``docker compose config -q`` accepts.

:func:`~backend.app.engines.compose_judge.certainly_valid` lets deployment creation skip the compose tool's
process for documents of a narrow subset. It must never let through a document the tool would refuse: these
tests run the tool (``compose config`` needs no daemon) on every document the judge accepts, out of hand-written
tricky cases and a few hundred randomised mutations of valid documents, and check a document outside the
subset still reaches the tool and gets its 422.
"""

from __future__ import annotations

import asyncio
import copy
import random
import uuid

import pytest

from backend.app.core.exceptions import ValidationFailed
from backend.app.engines import compose_yaml
from backend.app.engines.compose_cli import check_document
from backend.app.engines.compose_judge import applies_to, certainly_valid
from backend.app.services.stacks import templating
from backend.app.services.targets import compose_policy
from backend.app.services.targets.compose_policy import check_host_files
from backend.tests.conftest import TEST_IMAGE


async def tool_verdicts(command: tuple[str, ...], texts: list[str]) -> list[tuple[bool, str]]:
    """``compose config`` on each text (four at a time): accepted, with its normalised document passing the
    host-file rules as creation checks it (``validate_with_compose``), and the tool's message."""
    gate = asyncio.Semaphore(4)

    async def judge(text: str) -> tuple[bool, str]:
        async with gate:
            result = await check_document(text, command=command, timeout=60, normalised=True)
        if not result.ok:
            return False, "\n".join(result.lines)
        try:
            check_host_files(compose_policy.load(result.stdout))
        except ValidationFailed as exc:
            return False, f"normalised document refused: {exc.detail}"
        return True, ""

    return await asyncio.gather(*(judge(text) for text in texts))


VALID = [
    "services:\n  web:\n    image: nginx:1.25-alpine\n    ports:\n      - 8080:80\n      - '127.0.0.1:8443:443/tcp'\n",
    (
        "x-windflow:\n  stack: demo\n  version: 3\n"
        "services:\n"
        "  app:\n"
        "    image: ghcr.io/acme/app:2.1\n"
        "    command: [serve, --port, '8000']\n"
        "    entrypoint: /bin/entry\n"
        "    environment:\n      DB_HOST: db\n      WORKERS: 4\n      DEBUG: false\n      EMPTY:\n"
        "    labels:\n      com.example.team: core\n"
        "    depends_on:\n      db:\n        condition: service_healthy\n"
        "    networks: [front, back]\n"
        "    restart: unless-stopped\n"
        "    init: true\n"
        "    deploy:\n      replicas: 2\n      resources:\n        limits:\n          cpus: '0.5'\n          memory: 256M\n"
        "  db:\n"
        "    image: postgres:16\n"
        "    environment: [POSTGRES_PASSWORD=secret, POSTGRES_DB=app]\n"
        "    volumes: ['pgdata:/var/lib/postgresql/data', /tmp/cache]\n"
        "    healthcheck:\n      test: [CMD-SHELL, pg_isready -U postgres]\n      interval: 5s\n      timeout: 3s\n      retries: 5\n"
        "      start_period: 1m30s\n"
        "    networks:\n      back:\n        aliases: [database]\n"
        "    restart: on-failure:3\n"
        "volumes:\n  pgdata:\n    labels: {owner: windflow}\n"
        "networks:\n  front:\n  back:\n    internal: true\n"
    ),
    (
        "services:\n  worker:\n    image: redis:7\n    command: redis-server --save ''\n    stop_grace_period: 30s\n"
        "    working_dir: /data\n    tty: false\n    read_only: true\n    depends_on: [cache]\n"
        "  cache:\n    image: memcached\n    healthcheck:\n      test: echo ok\n"
    ),
    f"services:\n  app:\n    image: {TEST_IMAGE}\n    command: ['true']\n    restart: 'no'\n    labels: {{x: a}}\n",
]

#: Documents the tool refuses (or reads otherwise), each a trap for a careless judge.
TRICKY = {
    "unknown-key": "services:\n  web:\n    image: nginx\n    imagee: nginx\n",
    "duplicate-key": "services:\n  web:\n    image: nginx\n    image: redis\n    ports: [80]\n    ports: [81]\n",
    "dangling-depends": "services:\n  web:\n    image: nginx\n    depends_on: [db]\n",
    "cycle": "services:\n  a:\n    image: nginx\n    depends_on: [b]\n  b:\n    image: nginx\n    depends_on: [a]\n",
    "self-depends": "services:\n  a:\n    image: nginx\n    depends_on: [a]\n",
    "dangling-network": "services:\n  web:\n    image: nginx\n    networks: [front]\n",
    "dangling-volume": "services:\n  web:\n    image: nginx\n    volumes: ['data:/data']\n",
    "ports-not-a-list": "services:\n  web:\n    image: nginx\n    ports: 80\n",
    "bad-port": "services:\n  web:\n    image: nginx\n    ports: ['80:80:80:80']\n",
    "bad-condition": "services:\n  a:\n    image: nginx\n    depends_on: {b: {condition: service_ready}}\n  b:\n    image: nginx\n",
    "bad-service-name": "services:\n  'web app':\n    image: nginx\n",
    "no-image": "services:\n  web:\n    command: 'true'\n",
    "init-a-string": "services:\n  web:\n    image: nginx\n    init: 'maybe'\n",
    "replicas-a-string": "services:\n  web:\n    image: nginx\n    deploy: {replicas: many}\n",
    "env-a-nested-map": "services:\n  web:\n    image: nginx\n    environment: {A: {b: c}}\n",
    "duplicate-env": "services:\n  web:\n    image: nginx\n    environment: [A=1, A=1]\n",
    "undefined-interpolation": "services:\n  web:\n    image: nginx:${TAG:?the tag is required}\n",
    "bad-duration": "services:\n  web:\n    image: nginx\n    healthcheck: {test: [CMD, 'true'], interval: soon}\n",
    "restart-unknown": "services:\n  web:\n    image: nginx\n    restart: sometimes\n",
    "timestamp-label": "services:\n  web:\n    image: nginx\n    labels: {when: 2024-01-01}\n",
    "alias-of-map": "x-base: &base {image: nginx, init: 'no way'}\nservices:\n  web: *base\n",
    "explicit-tag": "services:\n  web:\n    image: nginx\n    init: !!str true\n",
    "two-documents": "services:\n  web:\n    image: nginx\n---\nservices:\n  db:\n    image: redis\n",
    "depends-on-newer-keys": "services:\n  a:\n    image: nginx\n    depends_on: {b: {condition: service_started, required: false}}\n  b:\n    image: nginx\n",
    "healthy-without-healthcheck": (
        "services:\n  a:\n    image: nginx\n    depends_on: {b: {condition: service_healthy}}\n  b:\n    image: nginx\n"
        "    healthcheck: {disable: true}\n"
    ),
}


async def test_the_judge_accepts_the_subset_and_the_tool_agrees(compose):
    assert all(certainly_valid(text) for text in VALID)
    assert all(ok for ok, _ in await tool_verdicts(compose, VALID))


def test_the_judge_answers_for_compose_v2_only():
    assert applies_to(("docker", "compose")) and applies_to(("/usr/libexec/docker/cli-plugins/docker-compose",))
    assert not applies_to(("/usr/local/bin/docker-compose",)) and not applies_to(None)


async def test_tricky_documents_are_left_to_the_tool(compose):
    judged = {name: certainly_valid(text) for name, text in TRICKY.items()}
    assert not any(judged.values()), [name for name, accepted in judged.items() if accepted]
    verdicts = dict(zip(TRICKY, await tool_verdicts(compose, list(TRICKY.values())), strict=True))
    # The traps are real: the tool refuses most of them. (A few, such as the timestamp label or the
    # disabled healthcheck, it may accept: the judge is merely not certain of them.)
    refused = [name for name, (ok, _) in verdicts.items() if not ok]
    assert {"unknown-key", "duplicate-key", "dangling-depends", "cycle", "dangling-network", "dangling-volume"} <= set(refused)
    assert {"ports-not-a-list", "bad-condition", "no-image", "init-a-string", "replicas-a-string", "undefined-interpolation"} <= set(
        refused
    )


# --- randomised mutations ------------------------------------------------------------------------------

#: Values of every kind and of the kinds a careless judge would misread, put anywhere.
ODD_VALUES = [
    None,
    True,
    0,
    -1,
    70000,
    1.5,
    "",
    " ",
    "yes",
    "on",
    "0755",
    "1_000",
    "0x1F",
    "1e3",
    ".inf",
    "2024-01-01",
    "80:80:80",
    "0:80",
    "65536:80",
    "8080:80/sctp",
    "::80",
    "relative/path",
    "/",
    "/a/../b",
    "data:/data:rw,z",
    "missing:/data",
    "Web",
    "-web",
    "web app",
    "$HOME",
    "a=b",
    "service_healthy",
    "CMD",
    "5",
    "5s",
    "1h 30m",
    ["x"],
    [],
    ["a", "a"],
    [1, 2],
    {},
    {"x": 1},
    {"condition": "service_started"},
    {"aliases": ["a b"]},
]

#: Other valid values for a key: a mutation near the subset's edges that stays inside it.
GOOD_VALUES = {
    "image": ["busybox", "registry.example.com:5000/team/app:v1.2.3", "nginx@sha256:" + "a" * 64, "a/b/c:latest"],
    "ports": [[80], [65535], ["1:1"], ["0.0.0.0:80:80/udp", 443], ["127.0.0.1:8080:80"]],
    "restart": ["no", "always", "on-failure", "on-failure:1", "unless-stopped"],
    "interval": ["1s", "100ms", "1h2m3s", "0s"],
    "timeout": ["10s", "1m"],
    "retries": [0, 3, 1000],
    "command": ["echo hi", ["sh", "-c", "echo hi"], ["x"]],
    "entrypoint": ["/bin/sh", ["/bin/sh", "-c"]],
    "environment": [{"A": None}, {"A": True, "B_2": -3}, ["A", "B=", "C=d=e"], {"_X": "v"}],
    "labels": [{"a.b/c": "d"}, ["a=b", "c"], {"x": 1}],
    "init": [True, False],
    "replicas": [0, 1, 100],
    "memory": ["1g", "512m", "64M", "1024"],
    "cpus": ["1", "0.25", "2.5"],
    "aliases": [["db"], ["a", "b-c"]],
    "condition": ["service_started", "service_completed_successfully"],
    "stop_grace_period": ["1m", "10s"],
    "working_dir": ["/app", "/srv/www/"],
}

PLAIN_SCALARS = ["0755", "1_000", "0x1F", "0o17", "1e3", ".5", "+5", "2024-01-01", "yes", "~", "1:30", "0b101", "12:30:00", "-"]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _set(doc, path, value):
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _get(doc, path):
    node = doc
    for part in path:
        node = node[part]
    return node


def mutate(rng: random.Random, text: str) -> str:
    doc = compose_yaml.load(text)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        paths = [path for path in _paths(doc) if path]
        if not paths:
            break
        path = rng.choice(paths)
        kind = rng.randrange(10)
        parent = _get(doc, path[:-1])
        if kind >= 8 and path[-1] in GOOD_VALUES:  # another valid value
            _set(doc, path, copy.deepcopy(rng.choice(GOOD_VALUES[path[-1]])))
        elif kind <= 2:  # a value of another kind
            _set(doc, path, copy.deepcopy(rng.choice(ODD_VALUES)))
        elif kind == 3 and isinstance(parent, dict):  # an unknown or a known key in the wrong place
            parent[rng.choice(["imagee", "privileged", "build", "x-note", "links", "image", "depends_on", "networks", "healthcheck"])] = (
                copy.deepcopy(rng.choice(ODD_VALUES))
            )
        elif kind == 4 and isinstance(parent, dict):  # a key renamed (a reference left dangling, a bad name)
            key = path[-1]
            value = parent.pop(key)
            parent[rng.choice([f"{key}2", key.upper(), f"{key} x", "default", "x-" + str(key), "1"])] = value
        elif kind == 5:  # a dependency, maybe a cycle
            services = doc.get("services")
            if isinstance(services, dict) and services:
                a, b = rng.choice(list(services)), rng.choice(list(services))
                if isinstance(services[a], dict):
                    services[a]["depends_on"] = [b]
                if isinstance(services[b], dict) and rng.random() < 0.5:
                    services[b]["depends_on"] = [a]
        elif kind == 6 and isinstance(parent, list):  # a duplicate item
            parent.append(copy.deepcopy(_get(doc, path)))
        else:  # a key removed
            if isinstance(parent, dict):
                parent.pop(path[-1])
            elif isinstance(parent, list) and parent:
                parent.pop()
    text = compose_yaml.dump(doc) if isinstance(doc, dict) else "services: {}\n"
    if rng.random() < 0.25:  # a plain scalar Go's yaml.v3 and the 1.2 core schema may read differently
        lines = [i for i, line in enumerate(text.splitlines()) if ": " in line and not line.rstrip().endswith(":")]
        if lines:
            split = text.splitlines()
            i = rng.choice(lines)
            split[i] = split[i].split(": ", 1)[0] + ": " + rng.choice(PLAIN_SCALARS)
            text = "\n".join(split) + "\n"
    if rng.random() < 0.1:  # a duplicate key at the end of the first service
        text = text.replace("    image: ", "    image: redis\n    image: ", 1)
    return text


async def test_every_mutated_document_the_judge_accepts_the_tool_accepts(compose):
    rng = random.Random(23)
    texts = list(dict.fromkeys(mutate(rng, rng.choice(VALID)) for _ in range(1500)))
    accepted = [text for text in texts if certainly_valid(text)]
    # Not vacuous: the mutations leave many documents in the subset, and move many out of it.
    assert len(accepted) >= 150, len(accepted)
    assert len(texts) - len(accepted) >= 500, len(texts) - len(accepted)
    verdicts = await tool_verdicts(compose, accepted)
    wrong = [(text, message) for text, (ok, message) in zip(accepted, verdicts, strict=True) if not ok]
    assert not wrong, wrong[:3]


# --- where the judge sits --------------------------------------------------------------------------------


async def test_a_document_of_the_subset_is_accepted_without_the_tool(compose, tool_runs):
    document = f"services:\n  web:\n    image: judge-{uuid.uuid4().hex[:8]}\n    ports: ['8080:80']\n"
    await templating.validate_with_compose(document)
    assert tool_runs == []
    assert templating.judged_valid(document)


async def test_a_document_outside_the_subset_goes_to_the_tool_and_gets_its_refusal(compose, tool_runs):
    # stop_signal is valid compose but outside the subset: the tool judges it (and accepts it) ...
    outside = f"services:\n  web:\n    image: judge-{uuid.uuid4().hex[:8]}\n    stop_signal: SIGTERM\n"
    await templating.validate_with_compose(outside)
    assert tool_runs == [outside]
    # ... and a refusal is the tool's own, never the judge's
    refused_doc = f"services:\n  web:\n    image: judge-{uuid.uuid4().hex[:8]}\n    depends_on: [db]\n"
    with pytest.raises(ValidationFailed) as refused:
        await templating.validate_with_compose(refused_doc)
    assert tool_runs == [outside, refused_doc]
    assert refused.value.code == "invalid_compose"
    assert refused.value.detail.startswith("docker compose rejected the document: ")
    assert "db" in refused.value.detail
