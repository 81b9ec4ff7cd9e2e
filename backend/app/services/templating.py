"""Stack templates: the typed variable schema, value resolution and sandboxed rendering.

Pure logic, no database. The flow a deployment follows:

1. ``parse_variables(stack.variables)`` turns the stored schema into :class:`VariableSpec` objects
   (a bad schema is a :class:`ValidationFailed` naming the path, e.g. ``variables[2].options: ...``);
2. ``resolve_values(specs, given)`` merges the caller's values with the defaults, evaluates generator
   defaults such as ``"{{ generate_password(24) }}"`` *once* (the deployment stores the result, so a
   redeploy reuses the same password and port), coerces and checks every value, and reports every
   problem at once;
3. ``render_stack(template, specs, values)`` renders the compose template in a sandbox and checks the
   result is a compose-shaped YAML mapping; ``validate_with_compose`` lets the real compose tool judge it.

Invariants:

* Error messages never contain a secret value (variables of type ``secret``/``password``).
* Templates render in an :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with
  :class:`~jinja2.StrictUndefined`, no loader (no ``include``/``import``/``extends``, no file access) and
  no generator functions: rendering is a pure function of the frozen values.
* The output of every ``{{ expression }}`` is escaped for compose interpolation (``$`` becomes ``$$``),
  so a value such as the password ``pa$word`` reaches the container verbatim instead of being mangled
  by compose's ``$VAR`` substitution. Literal template text is untouched: a ``${VAR}`` the template
  author wrote stays compose interpolation. ``None`` renders as an empty string and booleans as
  ``true``/``false`` (YAML/compose spelling).
* ``trim_blocks`` and ``lstrip_blocks`` are on: a ``{% if %}`` line leaves nothing behind. For a
  free-text value, ``{{ value | tojson }}`` gives a correctly quoted YAML scalar.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import socket
import string
import uuid as uuid_module
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backend.app.core.exceptions import ValidationFailed
from backend.app.engines import compose_yaml
from backend.app.engines.base import EngineError
from backend.app.engines.compose_cli import check_document, find_compose_command, remember_valid
from backend.app.schemas.stack_variables import (
    NUMERIC_TYPES,
    STRING_TYPES,
    VARIABLE_TYPES,
    GroupVariable,
    validate_variable_schema,
)
from backend.app.schemas.stack_variables import describe as _describe
from backend.app.schemas.stack_variables import scalar_text as _render_scalar
from backend.app.services import compose_policy
from backend.app.services.compose_policy import check_host_files

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATORS",
    "VARIABLE_TYPES",
    "EnumOption",
    "VariableErrors",
    "VariableSpec",
    "example_values",
    "masked_values",
    "missing_required",
    "parse_compose_yaml",
    "parse_variables",
    "render_preview",
    "render_stack",
    "render_template",
    "resolve_values",
    "secret_paths",
    "secret_values",
    "validate_with_compose",
]

#: Generator functions a default may call, e.g. ``"{{ generate_password(24) }}"``.
GENERATORS = ("generate_password", "random_port", "uuid", "random_hex")
MASK = "***"

MAX_VALUE_LENGTH = 65_536
MAX_OUTPUT_CHARS = 1_048_576
RANDOM_PORT_RANGE = (20000, 40000)
COMPOSE_TIMEOUT_SECONDS = 30

_INTEGER_RE = re.compile(r"^[+-]?[0-9]+$")
_NUMBER_RE = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")
# Letters and digits only: no character that YAML, shells, URLs (postgres://user:pw@host) or compose
# interpolation would treat specially. 24 of them carry ~142 bits.
_PASSWORD_ALPHABET = string.ascii_letters + string.digits


# --- the schema ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnumOption:
    value: Any
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "label": self.label}


@dataclass(frozen=True)
class VariableSpec:
    """One variable of a stack. ``default`` is already coerced, or a generator expression string."""

    name: str
    type: str
    label: str | None = None
    description: str | None = None
    placeholder: str | None = None
    required: bool = False
    default: Any = None
    pattern: str | None = None
    min: int | float | None = None
    max: int | float | None = None
    min_length: int | None = None
    max_length: int | None = None
    options: tuple[EnumOption, ...] = ()
    variables: tuple[VariableSpec, ...] = ()

    @property
    def is_secret(self) -> bool:
        return self.type == "secret"

    @property
    def has_generator(self) -> bool:
        return _is_expression(self.default)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (type aliases resolved, enum options as ``{value, label}``)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        for key in ("label", "description", "placeholder"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.type != "group":
            out["required"] = self.required
        for key in ("default", "pattern", "min", "max", "min_length", "max_length"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.options:
            out["options"] = [o.to_dict() for o in self.options]
        if self.variables:
            out["variables"] = [v.to_dict() for v in self.variables]
        return out


class VariableErrors(ValidationFailed):
    """Every problem with a set of values, as ``(dotted name, problem)`` pairs (never a secret value)."""

    code = "invalid_variables"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("invalid variables: " + "; ".join(f"{name}: {problem}" for name, problem in problems))


class _Problem(Exception):
    """A problem with one value or one schema field; the caller adds the path."""


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def parse_variables(raw: list[dict]) -> list[VariableSpec]:
    """Validate a stack's variable schema and return it as :class:`VariableSpec` objects.

    The shape is checked by the typed models of :mod:`backend.app.schemas.stack_variables`; a default is
    checked here with the same coercion and constraints as a deployment's values (a generator expression
    by the sandbox). Every problem is reported at once, each prefixed with its path
    (``variables[1].variables[0].name``).
    """
    models, problems = validate_variable_schema(raw)
    specs = [_to_spec(model, f"variables[{index}]", problems) for index, model in models]
    if problems:
        raise ValidationFailed("invalid variable schema: " + "; ".join(problems), code="invalid_variable_schema")
    return specs


def _to_spec(model: Any, where: str, problems: list[str]) -> VariableSpec:
    """The resolution-side form of a validated variable, its default coerced (or a problem recorded)."""
    texts = {"label": model.label, "description": model.description, "placeholder": model.placeholder}
    if isinstance(model, GroupVariable):
        children = tuple(
            _to_spec(child, f"{where}.variables[{index}]", problems) for index, child in enumerate(model.variables)
        )
        return VariableSpec(name=model.name, type="group", variables=children, **texts)
    spec = VariableSpec(
        name=model.name,
        type=model.type,
        required=model.required,
        pattern=getattr(model, "pattern", None),
        min=getattr(model, "min", None),
        max=getattr(model, "max", None),
        min_length=getattr(model, "min_length", None),
        max_length=getattr(model, "max_length", None),
        options=tuple(EnumOption(value=o.value, label=o.label) for o in getattr(model, "options", ())),
        **texts,
    )
    default = model.default
    if default is None:
        return spec
    if _is_expression(default):
        try:
            _check_generator_expression(default)
        except _Problem as exc:
            problems.append(f"{where}.default: {exc}")
            return spec
        return replace(spec, default=default)
    if spec.type == "secret":
        problems.append(
            f"{where}.default: a secret's default must be a generator such as '{{{{ generate_password(24) }}}}'; "
            "a literal default would be stored and shown in clear"
        )
        return spec
    try:
        value = _coerce(spec, default)
        _check_constraints(spec, value)
    except _Problem as exc:
        problems.append(f"{where}.default: {exc}")
        return spec
    return replace(spec, default=value)


def secret_paths(specs: Iterable[VariableSpec]) -> set[str]:
    """Dotted names of the secret variables, including those inside groups (``db.password``)."""
    found: set[str] = set()

    def walk(level: Iterable[VariableSpec], prefix: str) -> None:
        for spec in level:
            if spec.type == "group":
                walk(spec.variables, f"{prefix}{spec.name}.")
            elif spec.is_secret:
                found.add(prefix + spec.name)

    walk(specs, "")
    return found


def secret_values(specs: Iterable[VariableSpec], values: Mapping[str, Any]) -> list[str]:
    """The non-empty secret values present in ``values`` (to redact them from text), longest first."""
    found = []
    for path in secret_paths(specs):
        node: Any = values
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node not in (None, ""):
            found.append(_render_scalar(node))
    return sorted(set(found), key=len, reverse=True)


def masked_values(specs: Iterable[VariableSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` with every secret replaced by ``***`` (for logs, events and previews)."""
    specs = list(specs)

    def walk(level: Iterable[VariableSpec], vals: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(vals)
        for spec in level:
            if spec.name not in out:
                continue
            if spec.type == "group" and isinstance(out[spec.name], Mapping):
                out[spec.name] = walk(spec.variables, out[spec.name])
            elif spec.is_secret and out[spec.name] not in (None, ""):
                out[spec.name] = MASK
        return out

    return walk(specs, values)


def _redact(text: str, secrets_: Iterable[str]) -> str:
    """``text`` with every secret value masked, and any quoted fragment of one (parsers quote the token
    they stumbled on, e.g. YAML's ``found undefined alias 'abc'`` for the secret ``*abc``)."""
    secrets_ = [value for value in secrets_ if value]
    for value in secrets_:
        text = text.replace(value, MASK)
        escaped = value.replace("$", "$$")
        if escaped != value:
            text = text.replace(escaped, MASK)

    def fragment(match: re.Match[str]) -> str:
        inner = match.group(2)
        return f"{match.group(1)}{MASK}{match.group(1)}" if any(inner in value for value in secrets_) else match.group(0)

    return re.sub(r"(['\"])([^'\"\n]{3,})\1", fragment, text) if secrets_ else text


# --- generators ------------------------------------------------------------------------------------


class _Generators:
    """The functions a default may call. One instance per :func:`resolve_values` call, so two
    ``random_port()`` defaults of one deployment never get the same port."""

    def __init__(self) -> None:
        self.ports: set[int] = set()

    def generate_password(self, length: int = 24) -> str:
        if isinstance(length, bool) or not isinstance(length, int) or not 8 <= length <= 256:
            raise _Problem("generate_password(length): length must be an integer between 8 and 256")
        return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))

    def random_hex(self, length: int = 32) -> str:
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 256:
            raise _Problem("random_hex(length): length must be an integer between 1 and 256")
        return secrets.token_hex((length + 1) // 2)[:length]

    def uuid(self) -> str:
        return str(uuid_module.uuid4())

    def random_port(self, low: int = RANDOM_PORT_RANGE[0], high: int = RANDOM_PORT_RANGE[1]) -> int:
        """A TCP port free on this host right now, in ``[low, high]``.

        Best effort: the port is free where WindFlow runs (the local engine's host); nothing reserves it
        until the deployment binds it, and a remote target may differ.
        """
        for bound in (low, high):
            if isinstance(bound, bool) or not isinstance(bound, int) or not 1024 <= bound <= 65535:
                raise _Problem("random_port(low, high): bounds must be integers between 1024 and 65535")
        if low > high:
            raise _Problem("random_port(low, high): low is greater than high")
        rng = secrets.SystemRandom()
        candidates = list(range(low, high + 1))
        rng.shuffle(candidates)
        for port in candidates[:200]:
            if port in self.ports:
                continue
            if _port_is_free(port):
                self.ports.add(port)
                return port
        raise _Problem(f"random_port(): found no free TCP port between {low} and {high}")

    def namespace(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in GENERATORS}


def _port_is_free(port: int) -> bool:
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind((address, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 on this host
                continue
            return False
    return True


# --- the sandbox -----------------------------------------------------------------------------------


def _finalize(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return _render_scalar(value)
    if isinstance(value, str):
        return value.replace("$", "$$")
    return value


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox plus limits on the two operators that can allocate or compute without bound."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):  # noqa: ANN001, ANN201 - Jinja's signature
        if operator == "**":
            if isinstance(right, (int, float)) and not isinstance(right, bool) and abs(right) > 64:
                raise SecurityError("exponent too large (at most 64)")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_OUTPUT_CHARS:
                    raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


def _make_env() -> _Sandbox:
    env = _Sandbox(
        undefined=StrictUndefined,
        autoescape=False,
        loader=None,
        keep_trailing_newline=True,
        # A block tag on its own line leaves no blank line or stray indentation behind (the usual
        # setting for YAML templates, as in Ansible and Salt).
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    # Only harmless helpers stay reachable (range is the sandbox's bounded version).
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    return env


_ENV = _make_env()
_GENERATOR_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, loader=None)
_GENERATOR_ENV.globals.clear()
_FORBIDDEN_NODES = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception was raised on (Jinja rewrites tracebacks to template lines)."""
    line = getattr(exc, "lineno", None)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _template_error(message: str, line: int | None) -> ValidationFailed:
    where = f"template line {line}: " if line else "template: "
    return ValidationFailed(where + message, code="template_error")


def _compile(env: _Sandbox, source: str):
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise _template_error(f"syntax error: {exc.message}", exc.lineno) from None
    for node in tree.find_all(_FORBIDDEN_NODES):
        raise _template_error(
            "include, import and extends are not available: a stack template is one self-contained document",
            node.lineno,
        )
    return tree


def render_template(template: str, values: dict) -> str:
    """Render ``template`` with ``values`` in the sandbox; any failure is ``ValidationFailed(template_error)``.

    Undefined names fail (``'port' is undefined``), sandbox violations fail, syntax errors name the line.
    """
    if not isinstance(template, str):
        raise ValidationFailed("template: must be a string", code="template_error")
    tree = _compile(_ENV, template)
    try:
        compiled = _ENV.from_string(tree)
        chunks: list[str] = []
        size = 0
        for chunk in compiled.generate(dict(values)):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _template_error(
                    f"the rendered document exceeds {MAX_OUTPUT_CHARS} characters (limit TEMPLATE_MAX_OUTPUT_CHARS)", None
                )
            chunks.append(chunk)
    except (ValidationFailed, MemoryError):
        raise  # MemoryError: the bounded renderer reports the memory limit by name
    except SecurityError as exc:
        raise _template_error(f"refused by the sandbox: {exc}", _template_line(exc)) from None
    except UndefinedError as exc:
        raise _template_error(f"{exc.message}", _template_line(exc)) from None
    except TemplateError as exc:
        raise _template_error(str(exc.message or exc), _template_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a template can raise anything (ZeroDivisionError, TypeError, ...)
        raise _template_error(f"{type(exc).__name__}: {exc}", _template_line(exc)) from None
    return "".join(chunks)


def _check_generator_expression(expression: str) -> None:
    try:
        tree = _GENERATOR_ENV.parse(expression)
    except TemplateSyntaxError as exc:
        raise _Problem(f"invalid generator expression: {exc.message}") from None
    if any(True for _ in tree.find_all(_FORBIDDEN_NODES)):
        raise _Problem("a generator expression cannot include, import or extend")
    unknown = sorted(meta.find_undeclared_variables(tree) - set(GENERATORS))
    if unknown:
        raise _Problem(
            f"unknown name(s) {', '.join(unknown)} in generator expression; available: "
            + ", ".join(f"{g}()" for g in GENERATORS)
        )


def _evaluate_generator(expression: str, generators: _Generators) -> str:
    _check_generator_expression(expression)
    try:
        return _GENERATOR_ENV.from_string(expression).render(generators.namespace())
    except _Problem:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as a problem with this variable
        raise _Problem(f"default generator failed: {getattr(exc, 'message', None) or exc}") from None


# --- values ----------------------------------------------------------------------------------------


def _coerce(spec: VariableSpec, raw: Any) -> Any:
    """``raw`` as the variable's type, strictly (no silent truncation or guessing)."""
    shown = "" if spec.is_secret else f", got {_describe(raw)}"
    vtype = spec.type
    if vtype in STRING_TYPES:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise _Problem(f"must be a string{shown}")
        value = raw if isinstance(raw, str) else str(raw)
        if len(value) > MAX_VALUE_LENGTH:
            raise _Problem(f"longer than {MAX_VALUE_LENGTH} characters")
        if "\x00" in value:
            raise _Problem("must not contain NUL (\\x00) characters")
        if vtype != "textarea" and any(ch in value for ch in "\r\n"):
            raise _Problem("must be a single line (use a textarea variable for multi-line text)")
        return value
    if vtype == "integer":
        if isinstance(raw, bool):
            raise _Problem(f"must be an integer{shown}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str) and _INTEGER_RE.match(raw):
            return int(raw)
        raise _Problem(f"must be an integer{shown}")
    if vtype == "number":
        if isinstance(raw, bool):
            raise _Problem(f"must be a number{shown}")
        if isinstance(raw, (int, float)) and math.isfinite(raw):
            return raw
        if isinstance(raw, str) and _NUMBER_RE.match(raw):
            return int(raw) if _INTEGER_RE.match(raw) else float(raw)
        raise _Problem(f"must be a number{shown}")
    if vtype == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise _Problem(f"must be true or false{shown}")
    if vtype == "enum":
        for option in spec.options:
            if type(option.value) is type(raw) and option.value == raw:
                return option.value
        if isinstance(raw, (str, int, float, bool)):
            for option in spec.options:
                if _render_scalar(option.value) == _render_scalar(raw):
                    return option.value
        choices = ", ".join(_render_scalar(o.value) for o in spec.options)
        raise _Problem(f"must be one of {choices}{shown}")
    raise _Problem(f"unsupported type {vtype}")  # pragma: no cover - parse_variables refuses it


def _check_constraints(spec: VariableSpec, value: Any) -> None:
    if spec.type in NUMERIC_TYPES:
        if spec.min is not None and value < spec.min:
            raise _Problem(f"must be at least {spec.min}")
        if spec.max is not None and value > spec.max:
            raise _Problem(f"must be at most {spec.max}")
    elif spec.type in STRING_TYPES:
        if spec.min_length is not None and len(value) < spec.min_length:
            raise _Problem(f"must be at least {spec.min_length} characters long")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise _Problem(f"must be at most {spec.max_length} characters long")
        if spec.pattern is not None and re.fullmatch(spec.pattern, value) is None:
            raise _Problem(f"does not match the pattern {spec.pattern}")


def _placeholder(spec: VariableSpec) -> Any:
    """A value of the right type for a required variable without default (validation renders only)."""
    if spec.type == "enum":
        return spec.options[0].value
    if spec.type == "boolean":
        return False
    if spec.type in NUMERIC_TYPES:
        value = spec.min if spec.min is not None else 1
        if spec.max is not None and value > spec.max:
            value = spec.max
        return value
    text = "example-secret" if spec.is_secret else "example"
    wanted = max(len(text), spec.min_length or 0)
    text = (text * (wanted // len(text) + 1))[:wanted]
    if spec.max_length is not None:
        text = text[: spec.max_length]
    return text


@dataclass
class _Resolution:
    generators: _Generators = field(default_factory=_Generators)
    problems: list[tuple[str, str]] = field(default_factory=list)
    placeholders: bool = False
    used_placeholder: list[str] = field(default_factory=list)


def _resolve_level(specs: Iterable[VariableSpec], given: Mapping[str, Any], prefix: str, state: _Resolution) -> dict:
    specs = list(specs)
    known = {spec.name for spec in specs}
    for key in given:
        if key not in known:
            hint = f"; known here: {', '.join(sorted(known))}" if known else ""
            state.problems.append((f"{prefix}{key}", f"unknown variable{hint}"))
    values: dict[str, Any] = {}
    for spec in specs:
        path = prefix + spec.name
        raw = given.get(spec.name)
        if spec.type == "group":
            if raw is None:
                raw = {}
            if not isinstance(raw, Mapping):
                state.problems.append((path, "must be an object holding the group's variables"))
                raw = {}
            values[spec.name] = _resolve_level(spec.variables, raw, f"{path}.", state)
            continue
        if isinstance(raw, str) and raw == "" and (spec.type not in STRING_TYPES or spec.required):
            # An empty form field means "not given" (so the default applies), except for an optional
            # string, where "" is a legitimate value.
            raw = None
        if raw is None and spec.default is not None:
            if spec.has_generator:
                try:
                    raw = _evaluate_generator(spec.default, state.generators)
                except _Problem as exc:
                    state.problems.append((path, str(exc)))
                    values[spec.name] = None
                    continue
            else:
                raw = spec.default
        if raw is None or (spec.required and raw == ""):
            if spec.required and state.placeholders:
                values[spec.name] = _placeholder(spec)
                state.used_placeholder.append(path)
            elif spec.required:
                state.problems.append((path, "required: give a value (the variable has no default)"))
                values[spec.name] = None
            else:
                values[spec.name] = raw
            continue
        try:
            value = _coerce(spec, raw)
            _check_constraints(spec, value)
        except _Problem as exc:
            state.problems.append((path, str(exc)))
            values[spec.name] = None
            continue
        values[spec.name] = value
    return values


def resolve_values(specs: list[VariableSpec], given: dict) -> dict:
    """The complete, checked values of a deployment: ``given`` merged over the defaults.

    Generator defaults are evaluated here, once; store the result (it is what the deployment runs
    with, and a redeploy must reuse it). Groups take nested dicts. Every problem is collected into one
    :class:`VariableErrors` (a ``ValidationFailed``) whose detail lists ``name: problem`` pairs.
    """
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise VariableErrors([("variables", "must be an object mapping variable names to values")])
    state = _Resolution()
    values = _resolve_level(specs, given, "", state)
    if state.problems:
        raise VariableErrors(state.problems)
    return values


def example_values(specs: list[VariableSpec]) -> tuple[dict, list[str]]:
    """Values to test-render a stack: defaults (generators evaluated), and a type-correct placeholder
    for each required variable without a default. Returns the values and the dotted names that got a
    placeholder (an empty list means the defaults alone make a complete deployment)."""
    state = _Resolution(placeholders=True)
    values = _resolve_level(specs, {}, "", state)
    if state.problems:
        raise VariableErrors(state.problems)
    return values, state.used_placeholder


def missing_required(specs: list[VariableSpec]) -> list[str]:
    """Dotted names of the required variables that have no default (a deployment must give them)."""
    return example_values(specs)[1]


# --- compose documents -----------------------------------------------------------------------------


def parse_compose_yaml(text: str) -> dict:
    """Parse a rendered compose document as the deployer will (:mod:`backend.app.engines.compose_yaml`); a
    syntax error names the line and column.

    Anchors and aliases are bounded (``YAML_MAX_NODES``, ``YAML_MAX_EXPANDED_CHARS``): a "billion laughs"
    document is refused (``yaml_limit``) before anything expands it.
    """
    document = compose_yaml.load(text)
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise ValidationFailed(
            f"the compose document must be a mapping with a 'services' key; it is {kind}", code="invalid_compose"
        )
    services = document.get("services")
    if not isinstance(services, dict) or not services:
        raise ValidationFailed(
            "the compose document needs a non-empty 'services' mapping (service name -> definition)",
            code="invalid_compose",
        )
    for name, service in services.items():
        if not isinstance(service, dict):
            raise ValidationFailed(f"services.{name}: must be a mapping (image, ports, ...)", code="invalid_compose")
    return document


def render_stack(template: str, specs: list[VariableSpec], values: dict) -> str:
    """Render a stack with resolved ``values`` and check the result is a compose YAML mapping.

    Error messages are scrubbed of the secret values in ``values``.
    """
    try:
        rendered = render_template(template, values)
        # Before any compose tool reads it: refuse what would read files of the WindFlow host.
        check_host_files(parse_compose_yaml(rendered))
    except ValidationFailed as exc:
        scrubbed = _redact(exc.detail, secret_values(specs, values))
        if scrubbed == exc.detail:
            raise
        raise ValidationFailed(scrubbed, code=exc.code) from None
    return rendered


def render_preview(template: str, specs: list[VariableSpec], values: dict) -> str:
    """The rendered document to show a user: validated with the real values, secrets shown as ``***``.

    The preview renders the template with the masked values, so a secret never reaches the text even
    through a filter (``b64encode``); should a template's logic refuse the mask, the real rendering is
    shown with every secret value replaced instead.
    """
    rendered = render_stack(template, specs, values)
    try:
        preview = render_template(template, masked_values(specs, values))
    except ValidationFailed:
        preview = rendered
    return _redact(preview, secret_values(specs, values))


async def validate_with_compose(rendered: str, *, redact: Iterable[str] = (), timeout: float | None = None) -> None:
    """Let the installed compose tool judge ``rendered`` (``docker compose config``), then check its
    normalised output against the always-refused keys of the compose policy. ``rendered`` must come
    from :func:`render_stack`, which refused those keys before the tool could read anything.

    Raises ``ValidationFailed(invalid_compose)`` quoting the tool's error (with ``redact`` values
    replaced by ``***``). Returns without checking when no compose tool is installed; when the tool does not
    answer in time it is refused (``compose_timeout``: validation fails closed).

    The tool runs through the engines' one compose runner (:func:`~backend.app.engines.compose_cli.check_document`:
    an empty temporary directory, a minimal environment, the process group killed on timeout).
    """
    timeout = COMPOSE_TIMEOUT_SECONDS if timeout is None else timeout
    command = await asyncio.to_thread(find_compose_command)
    if command is None:
        logger.info("no compose tool installed; skipping compose validation")
        return
    try:
        # not -q: the normalised output is checked again below
        result = await check_document(rendered, command=command, timeout=timeout, normalised=True)
    except EngineError as exc:
        # Fail closed: a document the tool cannot judge (timeout, cannot run) is refused, never accepted.
        logger.warning("compose validation did not finish (%s); document refused", exc.message)
        if exc.transient:
            raise ValidationFailed(
                f"docker compose could not validate the document within {timeout:g} s "
                "(limit COMPOSE_VALIDATE_TIMEOUT_SECONDS); the document is refused",
                code="compose_timeout",
            ) from None
        raise ValidationFailed(
            "docker compose could not validate the document; the document is refused", code="compose_failed"
        ) from None
    if result.returncode < 0:
        raise ValidationFailed(
            f"docker compose was killed (signal {-result.returncode}) while validating the document; "
            "the document is refused",
            code="compose_failed",
        )
    if result.ok:
        # The document as compose normalised it (extends merged, interpolation done): nothing it
        # resolved may read the host either.
        check_host_files(compose_policy.load(result.stdout))
        remember_valid(rendered)
        return
    lines = [line for line in result.lines if "level=warning" not in line]
    message = _redact("\n".join(lines).strip() or f"exit status {result.returncode}", redact)
    if len(message) > 2000:
        message = message[:2000] + "..."
    raise ValidationFailed(f"docker compose rejected the document: {message}", code="invalid_compose")
