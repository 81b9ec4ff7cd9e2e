"""The one compose-YAML reader: YAML 1.2 as compose reads it, bounded, libyaml's speed with PyYAML's messages."""

from __future__ import annotations

import pytest

from backend.app.core.exceptions import ValidationFailed
from backend.app.engines import compose_yaml
from backend.tests.processes import REPO_ROOT

DOCUMENTS = [
    "services:\n  s:\n    image: x\n    ports: [22:22, 8080:80]\n    environment: {A: yes, B: on, C: 0o17, D: 010, E: true}\n",
    "x-base: &base {privileged: true, cap_add: [ALL]}\nservices:\n  a:\n    <<: *base\n    image: busybox\n",
    "services:\n  a:\n    image: x\n    command: ['sh', '-c', 'echo ${HOME} $$x']\n    labels: [a=b, 'c=d']\n",
    *(path.read_text() for path in sorted((REPO_ROOT / "stacks_definitions").glob("*.yaml"))),
]


@pytest.mark.skipif(compose_yaml._FastLoader is None, reason="PyYAML without libyaml: one parser only")
@pytest.mark.parametrize("text", DOCUMENTS)
def test_libyaml_and_the_pure_python_parser_read_the_same(text):
    assert compose_yaml._read(compose_yaml._FastLoader, text) == compose_yaml._read(compose_yaml._Loader, text)


def test_yaml_1_2_as_compose_reads_it():
    doc = compose_yaml.load(DOCUMENTS[0])["services"]["s"]
    assert doc["ports"] == ["22:22", "8080:80"]  # YAML 1.1 would read 22:22 as 1342
    assert doc["environment"] == {"A": "yes", "B": "on", "C": 15, "D": 10, "E": True}


@pytest.mark.parametrize(
    ("value", "read"),
    [
        (True, True),
        ("yes", True),
        ("On", True),
        ("Y", True),
        ("TRUE", True),
        (False, False),
        ("no", False),
        ("OFF", False),
        ("n", False),
        (1, None),
        ("", None),
        (None, None),
        ("maybe", None),
        ({"name": "x"}, None),
    ],
)
def test_booleans_are_cast_as_compose_casts_them(value, read):
    assert compose_yaml.compose_bool(value) is read


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services:\n  web:\n    image: nginx\n   ports: []\n", "line 4, column 4: expected <block end>"),
        ("services:\n  web: {image: x}\n  web2: {image: *nope}\n", "line 3, column 17: found undefined alias 'nope'"),
    ],
)
def test_a_syntax_error_names_the_token_and_the_place(text, message):
    with pytest.raises(ValidationFailed) as refused:
        compose_yaml.load(text)
    assert refused.value.code == "invalid_yaml" and message in refused.value.detail


@pytest.mark.parametrize("depth", [compose_yaml.MAX_DEPTH + 1, 3000])
def test_deep_nesting_is_refused_by_name(depth):
    with pytest.raises(ValidationFailed) as refused:
        compose_yaml.load("a: " + "[" * depth + "]" * depth)
    assert refused.value.code == "yaml_limit" and "nested too deeply" in refused.value.detail
    assert compose_yaml.load("a: " + "[" * 50 + "]" * 50)["a"]


def test_a_document_read_again_is_a_copy_and_tighter_bounds_read_it_again(monkeypatch):
    """A text read before comes back from the last reading, as a copy of its own (callers change what they
    read); under tighter bounds it is read, and judged, again."""
    text = "x-a: &a [1, 2, 3, 4, 5]\nservices:\n  s:\n    image: cache-test\n    command: [*a, *a, *a]\n"
    first = compose_yaml.load(text)
    first["services"]["s"]["image"] = "changed by a caller"
    second = compose_yaml.load(text)
    assert second["services"]["s"]["image"] == "cache-test" and second is not first
    assert second == compose_yaml._read(compose_yaml._Loader, text)
    monkeypatch.setattr(compose_yaml, "YAML_MAX_NODES", 10)
    with pytest.raises(ValidationFailed) as refused:
        compose_yaml.load(text)
    assert refused.value.code == "yaml_limit"
