"""A stack's variable schema and a deployment's values: parsing the schema, resolving the values.

1. :func:`parse_variables` checks a stored or submitted schema against the typed models of
   :mod:`backend.app.schemas.stack_variables` (a generator default checked by the sandbox) and returns them;
   a bad schema is one ``ValidationFailed(invalid_variable_schema)`` naming every problem with its path.
2. :func:`resolve_values` merges the caller's values with the defaults, evaluates generator defaults *once*
   (the deployment stores the result, so a redeploy reuses the same password and port), coerces and checks
   every value with its variable's own rules (``value_of``), and reports every problem at once.

Error messages never contain a secret value (variables of type ``secret``/``password``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.app.core.exceptions import ValidationFailed
from backend.app.schemas.stack_variables import (
    GENERATOR_CHECK,
    GroupVariable,
    SchemaProblem,
    StackVariable,
    ValueProblem,
    scalar_text,
    validate_variable_schema,
)
from backend.app.services.stacks.templating.generators import Generators
from backend.app.services.stacks.templating.sandbox import check_generator_expression, evaluate_generator

MASK = "***"


def not_a_mapping() -> ValueProblem:
    """The problem of values that are not an object."""
    return ValueProblem("must be an object mapping variable names to values", "values_not_an_object")


class VariableErrors(ValidationFailed):
    """Every problem with a set of values, as ``(dotted name, problem)`` pairs (never a secret value).

    ``params`` word them for a client: the first problem's ``variable``, ``reason`` and the values it quotes
    at the top, every one in ``problems`` (``[{"variable": "port", "message": "must be an integer, got
    'abc'", "reason": "not_integer", "got": "'abc'"}]``)."""

    code = "invalid_variables"

    def __init__(self, problems: list[tuple[str, str | ValueProblem]]) -> None:
        self.problems = [(name, str(problem)) for name, problem in problems]
        described = [_described("variable", name, problem) for name, problem in problems]
        super().__init__(
            "invalid variables: " + "; ".join(f"{name}: {problem}" for name, problem in self.problems),
            params={**described[0], "problems": described} if described else None,
        )


def _described(key: str, where: str, problem: str | ValueProblem) -> dict[str, Any]:
    """One problem as a client words it: where, the English message, and its reason with the values it quotes."""
    if isinstance(problem, ValueProblem):
        return {**problem.params, key: where, "message": str(problem), "reason": problem.reason}
    return {key: where, "message": str(problem)}


def parse_variables(raw: list[dict] | None) -> list[StackVariable]:
    """Validate a stack's variable schema and return its variables (their defaults coerced).

    Every problem is reported at once, each prefixed with its path (``variables[1].variables[0].name``).
    """
    variables, problems = validate_variable_schema(raw, context={GENERATOR_CHECK: check_generator_expression})
    if problems:
        described = [_schema_problem(p) for p in problems]
        raise ValidationFailed(
            "invalid variable schema: " + "; ".join(problems),
            code="invalid_variable_schema",
            params={**described[0], "problems": described},
        )
    return [variable for _, variable in variables]


def _schema_problem(p: SchemaProblem) -> dict[str, Any]:
    """One schema problem as a client words it (``field``: its path; ``reason`` and the values it quotes)."""
    return {**p.params, "field": p.path, "message": p.message, "reason": p.reason}


def secret_paths(variables: Iterable[StackVariable]) -> set[str]:
    """Dotted names of the secret variables, including those inside groups (``db.password``)."""
    found: set[str] = set()

    def walk(level: Iterable[StackVariable], prefix: str) -> None:
        for variable in level:
            if isinstance(variable, GroupVariable):
                walk(variable.variables, f"{prefix}{variable.name}.")
            elif variable.is_secret:
                found.add(prefix + variable.name)

    walk(variables, "")
    return found


def secret_values(variables: Iterable[StackVariable], values: Mapping[str, Any]) -> list[str]:
    """The non-empty secret values present in ``values`` (to redact them from text), longest first."""
    found = []
    for path in secret_paths(variables):
        node: Any = values
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node not in (None, ""):
            found.append(scalar_text(node))
    return sorted(set(found), key=len, reverse=True)


def masked_values(variables: Iterable[StackVariable], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` with every secret replaced by ``***`` (for logs, events and previews)."""

    def walk(level: Iterable[StackVariable], vals: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(vals)
        for variable in level:
            if variable.name not in out:
                continue
            if isinstance(variable, GroupVariable) and isinstance(out[variable.name], Mapping):
                out[variable.name] = walk(variable.variables, out[variable.name])
            elif variable.is_secret and out[variable.name] not in (None, ""):
                out[variable.name] = MASK
        return out

    return walk(variables, values)


@dataclass
class _Resolution:
    generators: Generators = field(default_factory=Generators)
    problems: list[tuple[str, ValueProblem]] = field(default_factory=list)
    examples: bool = False  # a required variable without value gets its type's example
    used_example: list[str] = field(default_factory=list)


def _resolve_level(variables: Iterable[StackVariable], given: Mapping[str, Any], prefix: str, state: _Resolution) -> dict:
    variables = list(variables)
    known = {variable.name for variable in variables}
    for key in given:
        if key not in known:
            hint = f"; known here: {', '.join(sorted(known))}" if known else ""
            state.problems.append(
                (f"{prefix}{key}", ValueProblem(f"unknown variable{hint}", "unknown_variable", known=", ".join(sorted(known))))
            )
    values: dict[str, Any] = {}
    for variable in variables:
        path = prefix + variable.name
        raw = given.get(variable.name)
        if isinstance(variable, GroupVariable):
            if raw is None:
                raw = {}
            if not isinstance(raw, Mapping):
                state.problems.append((path, ValueProblem("must be an object holding the group's variables", "not_a_group_object")))
                raw = {}
            values[variable.name] = _resolve_level(variable.variables, raw, f"{path}.", state)
            continue
        if isinstance(raw, str) and raw == "" and (not variable.empty_is_a_value or variable.required):
            # An empty form field means "not given" (so the default applies), except for an optional
            # string, where "" is a legitimate value.
            raw = None
        if raw is None and variable.default is not None:
            if variable.has_generator:
                try:
                    raw = evaluate_generator(variable.default, state.generators)
                except ValueProblem as exc:
                    state.problems.append((path, exc))
                    values[variable.name] = None
                    continue
            else:
                raw = variable.default
        if raw is None or (variable.required and raw == ""):
            if variable.required and state.examples:
                values[variable.name] = variable.example()
                state.used_example.append(path)
            elif variable.required:
                state.problems.append((path, ValueProblem("required: give a value (the variable has no default)", "required")))
                values[variable.name] = None
            else:
                values[variable.name] = raw
            continue
        try:
            values[variable.name] = variable.value_of(raw)
        except ValueProblem as exc:
            state.problems.append((path, exc))
            values[variable.name] = None
    return values


def resolve_values(variables: list[StackVariable], given: dict | None) -> dict:
    """The complete, checked values of a deployment: ``given`` merged over the defaults.

    Generator defaults are evaluated here, once; store the result (it is what the deployment runs
    with, and a redeploy must reuse it). Groups take nested dicts. Every problem is collected into one
    :class:`VariableErrors` (a ``ValidationFailed``) whose detail lists ``name: problem`` pairs.
    """
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise VariableErrors([("variables", not_a_mapping())])
    state = _Resolution()
    values = _resolve_level(variables, given, "", state)
    if state.problems:
        raise VariableErrors(state.problems)
    return values


def example_values(variables: list[StackVariable]) -> tuple[dict, list[str]]:
    """Values to test-render a stack: defaults (generators evaluated), and a type-correct example for each
    required variable without a default. Returns the values and the dotted names that got an example (an
    empty list means the defaults alone make a complete deployment)."""
    state = _Resolution(examples=True)
    values = _resolve_level(variables, {}, "", state)
    if state.problems:
        raise VariableErrors(state.problems)
    return values, state.used_example


def missing_required(variables: list[StackVariable]) -> list[str]:
    """Dotted names of the required variables that have no default (a deployment must give them)."""
    return example_values(variables)[1]
