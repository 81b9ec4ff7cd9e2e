"""Pure logic of the Docker drivers: document parsing and labelling, ports, error classes, and compose's
interpolation (for the compose policy; the drivers leave it to the compose CLI and ``docker stack``).
(The drivers themselves are tested against the real engine in integration/test_engines.py.)"""

from __future__ import annotations

import pytest

from backend.app.engines.base import EngineError
from backend.app.engines.connection import is_transient
from backend.app.engines.document import (
    PortMapping,
    dump_document,
    interpolate,
    label_document,
    load_document,
    parse_ports,
)
from backend.app.engines.swarm import host_mode_ports

OURS = {"windflow.managed": "true", "windflow.deployment_id": "d-1"}


def test_yaml_follows_the_1_2_core_schema_like_compose():
    doc = load_document(
        "services:\n  s:\n    image: x\n    ports: [22:22, 8080:80]\n    environment: {A: yes, B: on, C: 0o17, D: 010, E: true}\n"
    )
    service = doc["services"]["s"]
    assert service["ports"] == ["22:22", "8080:80"]  # YAML 1.1 would read 22:22 as 1342
    assert service["environment"] == {"A": "yes", "B": "on", "C": 15, "D": 10, "E": True}


def test_dump_quotes_what_either_yaml_version_could_misread():
    text = dump_document({"services": {"s": {"image": "x", "ports": ["22:22"], "environment": {"A": "yes", "B": "0o17"}}}})
    assert "'22:22'" in text and "'yes'" in text and "'0o17'" in text
    assert load_document(text)["services"]["s"]["environment"] == {"A": "yes", "B": "0o17"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- just a list\n", "top level must be a mapping"),
        ("services: {}\n", "at least one service"),
        ("services:\n  a: [\n", "invalid compose document"),
        ("services:\n  a: 3\n", "must be a mapping"),
    ],
)
def test_load_document_refuses_what_is_not_a_compose_document(text, fragment):
    with pytest.raises(EngineError) as caught:
        load_document(text)
    assert caught.value.transient is False
    assert fragment in caught.value.message


def test_every_service_network_and_volume_is_labelled_and_user_labels_kept():
    doc = load_document("""
services:
  web: {image: x, labels: ["role=web", "windflow.managed=false"]}
  db: {image: y, labels: {tier: data}, networks: [back]}
  host: {image: z, network_mode: host}
networks:
  back: {driver: bridge}
  shared: {external: true}
volumes:
  data:
  old: {external: true}
""")
    labelled = label_document(doc, OURS)
    web, db, host = (labelled["services"][n] for n in ("web", "db", "host"))
    assert web["labels"] == {"role": "web", **OURS, "windflow.service": "web"}  # ours win over the user's
    assert db["labels"] == {"tier": "data", **OURS, "windflow.service": "db"}
    assert host["labels"]["windflow.deployment_id"] == "d-1"
    # web uses the implicit default network: declared so that it gets our labels
    assert labelled["networks"]["default"] == {"labels": OURS}
    assert labelled["networks"]["back"] == {"driver": "bridge", "labels": OURS}
    assert labelled["networks"]["shared"] == {"external": True}
    assert labelled["volumes"]["data"] == {"labels": OURS}
    assert labelled["volumes"]["old"] == {"external": True}
    assert "deploy" not in web
    assert doc["services"]["web"]["labels"] == ["role=web", "windflow.managed=false"]  # input untouched


def test_explicit_default_network_is_labelled_and_no_default_when_unused():
    explicit = label_document(
        load_document("services:\n  a: {image: x}\nnetworks:\n  default:\n    labels: [keep=1]\n    driver: bridge\n"), OURS
    )
    assert explicit["networks"]["default"] == {"labels": {"keep": "1", **OURS}, "driver": "bridge"}
    only_custom = label_document(load_document("services:\n  a: {image: x, networks: [n]}\nnetworks:\n  n: {}\n"), OURS)
    assert set(only_custom["networks"]) == {"n"}


def test_swarm_labels_the_service_its_containers_configs_and_secrets():
    labelled = label_document(
        load_document("""
services:
  a: {image: x, deploy: {replicas: 2, labels: {lb: "1"}}}
configs:
  conf: {file: ./c}
secrets:
  pw: {external: true}
"""),
        OURS,
        swarm=True,
    )
    service = labelled["services"]["a"]
    assert service["deploy"] == {"replicas": 2, "labels": {"lb": "1", **OURS, "windflow.service": "a"}}
    assert service["labels"] == {**OURS, "windflow.service": "a"}
    assert labelled["configs"]["conf"] == {"file": "./c", "labels": OURS}
    assert labelled["secrets"]["pw"] == {"external": True}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("80", [PortMapping(80)]),
        ("8080:80", [PortMapping(80, 8080)]),
        ("127.0.0.1:8080:80", [PortMapping(80, 8080, "127.0.0.1")]),
        ("127.0.0.1::80/udp", [PortMapping(80, None, "127.0.0.1", "udp")]),
        ("[::1]:8080:80", [PortMapping(80, 8080, "::1")]),
        ("9000-9001:90-91", [PortMapping(90, 9000), PortMapping(91, 9001)]),
        ({"target": 80, "published": "8080", "host_ip": "127.0.0.1"}, [PortMapping(80, 8080, "127.0.0.1")]),
    ],
)
def test_ports(entry, expected):
    assert parse_ports([entry]) == expected


def test_swarm_ports_become_host_mode_and_host_ip_is_reported():
    service = {"ports": ["127.0.0.1:8080:80", "9090:90/udp", {"target": 70}]}
    warnings = host_mode_ports(service)
    assert service["ports"] == [
        {"target": 80, "protocol": "tcp", "mode": "host", "published": 8080},
        {"target": 90, "protocol": "udp", "mode": "host", "published": 9090},
        {"target": 70, "protocol": "tcp", "mode": "host"},
    ]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0]


def test_interpolation_like_compose():
    """What the compose policy uses to read a document as compose will (the drivers leave it to compose)."""
    env = {"TAG": "1.2", "EMPTY": ""}
    value = {
        "image": "app:${TAG}",
        "a": "${MISSING:-dflt}",
        "b": "${EMPTY:-dflt}",
        "c": "${EMPTY-dflt}",
        "d": "cost $$5",
        "e": ["$TAG", "${TAG:+set}"],
    }
    assert interpolate(value, env) == {"image": "app:1.2", "a": "dflt", "b": "dflt", "c": "", "d": "cost $5", "e": ["1.2", "set"]}
    with pytest.raises(EngineError) as caught:
        interpolate("${PASSWORD:?set a password}", env)
    assert "set a password" in caught.value.message


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("Cannot connect to the Docker daemon at tcp://10.0.0.1:2376. Is the docker daemon running?", True),
        ('error during connect: Get "https://h:2376/v1.41/info": dial tcp: connection refused', True),
        ("context deadline exceeded (Client.Timeout exceeded while awaiting headers) timeout", True),
        ("Bind for 127.0.0.1:8080 failed: port is already allocated", False),
        ("listen tcp4 127.0.0.1:8080: bind: address already in use", False),
        ("No such image: app:1", False),
        ("services.web Additional property imagee is not allowed", False),
        ("something nobody anticipated", False),
    ],
)
def test_failure_classification(message, transient):
    assert is_transient(message) is transient
