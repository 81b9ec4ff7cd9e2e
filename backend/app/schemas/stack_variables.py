"""The typed stack variable schema: one Pydantic model per variable type, a union discriminated by ``type``.

This is the contract a client builds a stack's form from (it is in the OpenAPI document as
``StackRead.variables`` and the create/update bodies). :func:`validate_variable_schema` checks a raw
schema against it and reports *every* problem at once, each as ``path: message`` with the path a user
can find in their JSON (``variables[1].variables[0].name: ...``), never Pydantic's internal locations.

What the models decide: the fields each type takes (``extra="forbid"``: a field of another type is named
as such, e.g. ``min`` on a string), names, texts, bounds, lengths, patterns, enum options, group nesting,
duplicates and the size limits. What they leave to :mod:`backend.app.services.templating`: a ``default``
is checked with the same coercion as a deployment's values (and generator expressions with the sandbox),
so the two can never disagree.
"""

from __future__ import annotations

import keyword
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "MAX_GROUP_DEPTH",
    "MAX_PATTERN_LENGTH",
    "MAX_VARIABLES",
    "TYPE_ALIASES",
    "VARIABLE_TYPES",
    "BooleanVariable",
    "EnumOption",
    "EnumVariable",
    "GroupVariable",
    "IntegerVariable",
    "NumberVariable",
    "SecretVariable",
    "StackVariable",
    "StringVariable",
    "TextareaVariable",
    "validate_variable_schema",
]

VARIABLE_TYPES = ("string", "integer", "number", "boolean", "enum", "secret", "textarea", "group")
TYPE_ALIASES = {"password": "secret"}
STRING_TYPES = frozenset({"string", "textarea", "secret"})
NUMERIC_TYPES = frozenset({"integer", "number"})

MAX_VARIABLES = 200
MAX_GROUP_DEPTH = 4
MAX_PATTERN_LENGTH = 500
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NAME_RE = re.compile(NAME_PATTERN)
#: Names that cannot be template variables: Jinja keywords and special names, and dict methods (inside a
#: group ``{{ db.items }}`` would return the dict method instead of the variable).
RESERVED_NAMES = frozenset(
    {"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else", "elif",
     "for", "recursive", "with", "without", "context", "ignore", "missing", "import", "as", "from", "pluck",
     "loop", "self", "super", "caller", "varargs", "kwargs", "block", "set", "macro", "call", "filter",
     "items", "keys", "values", "get", "copy", "pop", "popitem", "setdefault", "update", "clear", "fromkeys"}
    | set(keyword.kwlist)
)
ALLOWED_KEYS = frozenset(
    {"name", "type", "label", "description", "placeholder", "required", "default", "pattern", "min", "max",
     "min_length", "max_length", "options", "variables"}
)
#: Which variable types take a type-specific field (the message for a field given to another type).
_FIELD_OWNERS = {
    "pattern": "string, textarea and secret",
    "min_length": "string, textarea and secret",
    "max_length": "string, textarea and secret",
    "min": "integer and number",
    "max": "integer and number",
    "options": "enum",
    "variables": "group",
}
_NAME_RULE = "required; letters, digits and underscores, not starting with a digit, at most 64 characters"
_ERROR = "windflow"


def _problem(message: str, at: str | None = None) -> PydanticCustomError:
    """A problem with our own message; ``at`` is a path below the value being validated (``min``,
    ``options[1]``). The message goes through the context so that braces in it are never formatted."""
    return PydanticCustomError(_ERROR, "{message}", {"message": message, "at": at})


def scalar_text(value: Any) -> str:
    """How a scalar reads in a document and in messages (``true``/``false`` for booleans)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe(value: Any) -> str:
    """``repr(value)``, shortened to 60 characters (for messages)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- field types --------------------------------------------------------------------------------------


def _check_name(value: Any) -> Any:
    if not isinstance(value, str) or not _NAME_RE.match(value) or len(value) > 64:
        raise _problem(_NAME_RULE)
    if value in RESERVED_NAMES:
        raise _problem(f"{value!r} is reserved in templates; pick another name")
    return value


def _check_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise _problem("must be a string")
    return value


def _check_bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise _problem("must be true or false")
    return value


def _check_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _problem("must be a number")
    return value


def _check_whole(value: Any) -> Any:
    value = _check_number(value)
    if isinstance(value, float) and not value.is_integer():
        raise _problem("must be a whole number for an integer variable")
    return int(value)


def _check_length(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _problem("must be a non-negative integer")
    return value


def _check_pattern(value: Any) -> Any:
    if not isinstance(value, str) or len(value) > MAX_PATTERN_LENGTH:
        raise _problem(f"must be a regular expression of at most {MAX_PATTERN_LENGTH} characters")
    try:
        re.compile(value)
    except re.error as exc:
        raise _problem(f"invalid regular expression: {exc}") from None
    return value


VariableName = Annotated[str, BeforeValidator(_check_name), Field(pattern=NAME_PATTERN, max_length=64)]
Text = Annotated[str, BeforeValidator(_check_text)]
Flag = Annotated[bool, BeforeValidator(_check_bool)]
Bound = Annotated[int | float, BeforeValidator(_check_number)]
WholeBound = Annotated[int, BeforeValidator(_check_whole)]
Length = Annotated[int, BeforeValidator(_check_length)]
Pattern = Annotated[str, BeforeValidator(_check_pattern), Field(max_length=MAX_PATTERN_LENGTH)]
#: Checked by the templating service with the same coercion as a deployment's values.
_DEFAULT_DOC = "a literal value of the variable's type, or a generator expression such as {{ generate_password(24) }}"


def _default(json_type: dict[str, Any]) -> Any:
    return Annotated[Any, WithJsonSchema({**json_type, "description": _DEFAULT_DOC})]


TextDefault = _default({"type": "string"})
IntegerDefault = _default({"anyOf": [{"type": "integer"}, {"type": "string"}]})
NumberDefault = _default({"anyOf": [{"type": "number"}, {"type": "string"}]})
BooleanDefault = _default({"anyOf": [{"type": "boolean"}, {"type": "string"}]})
EnumDefault = _default({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]})


# --- the models ---------------------------------------------------------------------------------------


class _Variable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: VariableName
    label: Text | None = None
    description: Text | None = None
    placeholder: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        # A field given as null is a field not given (the schema has always read it that way).
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None or key in ("name", "type")}
        return data

    @model_serializer(mode="wrap")
    def _canonical(self, handler):  # no return annotation: the JSON schema stays the model's
        return {key: value for key, value in handler(self).items() if value is not None}


class _ValueVariable(_Variable):
    required: Flag = False


class _TextVariable(_ValueVariable):
    default: TextDefault = None
    pattern: Pattern | None = None
    min_length: Length | None = None
    max_length: Length | None = None

    @model_validator(mode="after")
    def _lengths_in_order(self) -> _TextVariable:
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise _problem(f"greater than max_length ({self.max_length})", "min_length")
        return self


class StringVariable(_TextVariable):
    """One line of text."""

    type: Literal["string"] = "string"


class TextareaVariable(_TextVariable):
    """Text that may span lines."""

    type: Literal["textarea"]


class SecretVariable(_TextVariable):
    """Text never shown back (masked as ``***``); its default can only be a generator expression."""

    type: Literal["secret", "password"] = Field(description="password is an alias of secret")

    @field_validator("type")
    @classmethod
    def _canonical_type(cls, value: str) -> str:
        return TYPE_ALIASES.get(value, value)


class _NumericVariable(_ValueVariable):
    @model_validator(mode="after")
    def _bounds_in_order(self):
        low, high = getattr(self, "min"), getattr(self, "max")
        if low is not None and high is not None and low > high:
            raise _problem(f"greater than max ({high})", "min")
        return self


class IntegerVariable(_NumericVariable):
    type: Literal["integer"]
    default: IntegerDefault = None
    min: WholeBound | None = None
    max: WholeBound | None = None


class NumberVariable(_NumericVariable):
    type: Literal["number"]
    default: NumberDefault = None
    min: Bound | None = None
    max: Bound | None = None


class BooleanVariable(_ValueVariable):
    type: Literal["boolean"]
    default: BooleanDefault = None


OptionValue = str | int | float | bool


class EnumOption(BaseModel):
    """One choice of an enum; given as ``{value, label}`` or as the bare value (the label is then the value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: OptionValue
    label: Text

    @model_validator(mode="before")
    @classmethod
    def _from_bare_value(cls, data: Any) -> Any:
        if isinstance(data, dict):
            extra = set(data) - {"value", "label"}
            if extra:
                raise _problem(f"unknown field(s) {', '.join(sorted(map(str, extra)))}; an option takes value and label")
            value, label = data.get("value"), data.get("label")
        else:
            value, label = data, None
        if value is None or not isinstance(value, (str, int, float, bool)):
            raise _problem("an option value must be a string, number or boolean")
        return {"value": value, "label": scalar_text(value) if label is None else label}


def _options_list(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise _problem("enum needs a non-empty options list")
    return value


class EnumVariable(_ValueVariable):
    type: Literal["enum"]
    options: Annotated[list[EnumOption], BeforeValidator(_options_list), Field(min_length=1)]
    default: EnumDefault = None

    @field_validator("options", mode="after")
    @classmethod
    def _distinct(cls, options: list[EnumOption]) -> list[EnumOption]:
        seen: set[tuple[type, Any]] = set()
        for index, option in enumerate(options):
            key = (type(option.value), option.value)
            if key in seen:
                raise _problem(f"duplicate option {describe(option.value)}", f"[{index}]")
            seen.add(key)
        return options


def _group_list(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise _problem("a group needs a non-empty list of variables")
    return value


class GroupVariable(_Variable):
    """Variables under one name: the template reads them as ``{{ group.variable }}``."""

    type: Literal["group"]
    variables: Annotated[list[StackVariable], BeforeValidator(_group_list), Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _no_value_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("default", "required"):
                if data.get(key) not in (None, False):
                    raise _problem("does not apply to a group (set it on the group's variables)", key)
            data = {key: value for key, value in data.items() if key not in ("default", "required")}
        return data

    @field_validator("variables", mode="after")
    @classmethod
    def _distinct(cls, variables: list[StackVariable]) -> list[StackVariable]:
        _check_distinct(variables)
        return variables


_MODELS: dict[str, type[_Variable]] = {
    "string": StringVariable, "textarea": TextareaVariable, "secret": SecretVariable, "integer": IntegerVariable,
    "number": NumberVariable, "boolean": BooleanVariable, "enum": EnumVariable, "group": GroupVariable,
}


def _object_with_known_type(value: Any) -> Any:
    """An object, its ``type`` one we know (``string`` when absent), before the union picks its model."""
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise _problem("must be an object with at least a 'name'")
    vtype = value.get("type", "string")
    if not isinstance(vtype, str) or TYPE_ALIASES.get(vtype, vtype) not in _MODELS:
        raise _problem(f"must be one of {', '.join(VARIABLE_TYPES)} (or password, an alias of secret)", "type")
    return {**value, "type": vtype}


StackVariable = Annotated[
    StringVariable | TextareaVariable | SecretVariable | IntegerVariable | NumberVariable | BooleanVariable
    | EnumVariable | GroupVariable,
    Field(discriminator="type"),
    BeforeValidator(_object_with_known_type),
]
"""One variable of a stack's schema, discriminated by ``type`` (``string`` when absent)."""

GroupVariable.model_rebuild()


def _check_distinct(variables: list[Any]) -> None:
    seen: set[str] = set()
    for index, variable in enumerate(variables):
        if variable.name in seen:
            raise _problem(f"duplicate variable name {variable.name!r}", f"[{index}].name")
        seen.add(variable.name)


_ONE = TypeAdapter(StackVariable)


# --- validation with readable paths -----------------------------------------------------------------


def _count(raw: Any) -> int:
    if not isinstance(raw, list):
        return 0
    return sum(1 + (_count(item.get("variables")) if isinstance(item, dict) else 0) for item in raw)


def _depth_problems(variables: list[tuple[int, Any]], path: str, depth: int) -> list[str]:
    problems = []
    for index, variable in variables:
        if isinstance(variable, GroupVariable):
            where = f"{path}[{index}].variables"
            if depth + 1 >= MAX_GROUP_DEPTH:
                problems.append(f"{where}: groups nest at most {MAX_GROUP_DEPTH - 1} levels deep")
            else:
                problems += _depth_problems(list(enumerate(variable.variables)), where, depth + 1)
    return problems


def _path(loc: tuple[Any, ...], root: str) -> tuple[str, str | None]:
    """``variables[0].variables[1].min`` from Pydantic's location, without the union's tags; and the type
    of the innermost variable (for the message about a field of another type)."""
    path, vtype, after_index = root, None, True  # the root is one variable: a tag may come first
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            after_index = True
            continue
        if after_index and (part in _MODELS or part in TYPE_ALIASES):
            vtype = part
        else:
            path += f".{part}"
        after_index = False
    return path, vtype


def _message(error: dict[str, Any], root: str) -> str:
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == _ERROR:
        path, _ = _path(loc, root)
        at = ctx.get("at")
        if at:
            path += at if at.startswith("[") else f".{at}"
        return f"{path}: {ctx['message']}"
    path, vtype = _path(loc, root)
    key = loc[-1] if loc else None
    if error["type"] == "extra_forbidden":
        if key in ("min", "max") and vtype in STRING_TYPES:
            return (f"{path}: only applies to integer and number variables; use {key}_length for the length "
                    "of a string")
        if key in _FIELD_OWNERS:
            return f"{path}: only applies to {_FIELD_OWNERS[key]} variables"
        if key in ("default", "required"):
            return f"{path}: does not apply to a group (set it on the group's variables)"
        return f"{path}: unknown field; a variable takes {', '.join(sorted(ALLOWED_KEYS))}"
    if error["type"] == "missing":
        if key == "name":
            return f"{path}: {_NAME_RULE}"
        if key == "options":
            return f"{path}: enum needs a non-empty options list"
        if key == "variables":
            return f"{path}: a group needs a non-empty list of variables"
    return f"{path}: {error['msg']}"


def validate_variable_schema(raw: Any, root: str = "variables") -> tuple[list[tuple[int, Any]], list[str]]:
    """``raw`` checked against :data:`StackVariable`: ``(index in raw, model)`` of every variable without a
    problem, and the problems (``path: message``). The caller may check the defaults of the good ones, so
    that one answer lists everything."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        return [], [f"{root}: must be a list of variable definitions"]
    total = _count(raw)
    if total > MAX_VARIABLES:
        return [], [f"{root}: at most {MAX_VARIABLES} variables in a stack (found {total})"]
    problems: list[str] = []
    valid: list[tuple[int, Any]] = []
    for index, item in enumerate(raw):
        try:
            valid.append((index, _ONE.validate_python(item)))
        except ValidationError as exc:
            problems += [_message(error, f"{root}[{index}]") for error in exc.errors(include_url=False)]
    variables: list[tuple[int, Any]] = []
    seen: set[str] = set()
    for index, variable in valid:
        if variable.name in seen:
            problems.append(f"{root}[{index}].name: duplicate variable name {variable.name!r}")
            continue
        seen.add(variable.name)
        variables.append((index, variable))
    problems += _depth_problems(variables, root, 0)
    return variables, list(dict.fromkeys(problems))
