"""The stack variable models carry their own rules: coercion, constraints, example and canonical form (the
templating only walks them; ``test_templating.py`` tests the flow through ``resolve_values``)."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from backend.app.schemas.stack_variables import (
    GENERATOR_CHECK,
    IntegerVariable,
    StackVariable,
    ValueProblem,
    validate_variable_schema,
)

ONE = TypeAdapter(StackVariable)

SCHEMAS = [
    {"name": "v"},
    {"name": "v", "min_length": 12, "max_length": 20},
    {"name": "v", "max_length": 3},
    {"name": "v", "type": "secret", "min_length": 30},
    {"name": "v", "type": "textarea"},
    {"name": "v", "type": "integer", "min": 1024, "max": 2048},
    {"name": "v", "type": "integer", "max": -5},
    {"name": "v", "type": "number", "min": 0.5},
    {"name": "v", "type": "boolean"},
    {"name": "v", "type": "enum", "options": [{"value": 3, "label": "Three"}, 4]},
]


@pytest.mark.parametrize("raw", SCHEMAS, ids=[str(raw) for raw in SCHEMAS])
def test_a_variables_example_passes_its_own_rules(raw):
    variable = ONE.validate_python(raw)
    example = variable.example()
    assert variable.value_of(example) == example


def test_value_rules_live_on_the_model():
    port = ONE.validate_python({"name": "port", "type": "integer", "min": 1, "max": 65535})
    assert isinstance(port, IntegerVariable)
    assert port.value_of("8080") == 8080
    with pytest.raises(ValueProblem, match="must be at most 65535"):
        port.value_of(70000)
    with pytest.raises(ValueProblem, match="must be an integer, got 'x'"):
        port.value_of("x")
    secret = ONE.validate_python({"name": "pw", "type": "password", "pattern": "[a-z]+"})
    with pytest.raises(ValueProblem) as refused:
        secret.value_of(["hunter2"])
    assert "hunter2" not in str(refused.value)  # a secret's value is never quoted


def test_the_canonical_form_is_the_dump_and_parses_to_the_same_model():
    variable = ONE.validate_python({"type": "password", "name": "pw", "label": None, "default": "{{ uuid() }}"})
    assert variable.type == "secret" and variable.has_generator and variable.is_secret
    dumped = variable.model_dump()
    assert list(dumped) == ["name", "type", "required", "default"]
    assert ONE.validate_python(dumped) == variable
    # a literal default is stored coerced, as every value of the variable is
    port = ONE.validate_python({"name": "port", "type": "integer", "default": "8080"})
    assert port.default == 8080 and port.model_dump()["default"] == 8080


def test_generator_defaults_are_checked_by_the_callers_sandbox():
    def refuse(expression: str) -> None:
        raise ValueProblem(f"not here: {expression}", "generator_syntax", message="not here")

    raw = [{"name": "pw", "type": "secret", "default": "{{ generate_password(24) }}"}]
    assert validate_variable_schema(raw)[1] == []  # no check given: the expression is kept as written
    assert validate_variable_schema(raw, context={GENERATOR_CHECK: refuse})[1] == [
        "variables[0].default: not here: {{ generate_password(24) }}"
    ]
