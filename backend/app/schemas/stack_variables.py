"""The typed stack variable schema: one Pydantic model per variable type, a union discriminated by ``type``.

This is the contract a client builds a stack's form from (it is in the OpenAPI document as
``StackRead.variables`` and the create/update bodies), and the one model of a variable WindFlow has: each
type's model carries its fields and their rules, its value rules (:meth:`value_of` coerces a given value
strictly to the type, then checks ``min``/``max``, lengths, ``pattern``, options), a type-correct example
for test renders (:meth:`example`) and its canonical form (``model_dump()``: aliases resolved, enum
options as ``{value, label}``, the default coerced; what the database stores).

:func:`validate_variable_schema` checks a raw schema against it and reports *every* problem at once, each as
``path: message`` with the path a user can find in their JSON (``variables[1].variables[0].name: ...``),
never Pydantic's internal locations. A literal ``default`` is checked with the same rules as a deployment's
values, so the two can never disagree; a generator expression (``{{ generate_password(24) }}``) is checked
by the callable the caller puts in the validation context under :data:`GENERATOR_CHECK` (the templating
sandbox: :func:`backend.app.services.stacks.templating.parse_variables`).

(Some 570 lines: the eight models, their value rules, the union and the validation that names paths are one
contract, read together; the field types they are built from are in ``variable_fields.py``.)
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from backend.app.schemas.variable_fields import (
    MAX_PATTERN_LENGTH,
    NAME_RULE,
    PROBLEM,
    BooleanDefault,
    Bound,
    EnumDefault,
    Flag,
    IntegerDefault,
    Length,
    NumberDefault,
    Pattern,
    Text,
    TextDefault,
    ValueProblem,
    VariableName,
    WholeBound,
    describe,
    is_expression,
    problem,
    scalar_text,
)

__all__ = [
    "GENERATOR_CHECK",
    "MAX_GROUP_DEPTH",
    "MAX_PATTERN_LENGTH",
    "MAX_VALUE_LENGTH",
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
    "SchemaProblem",
    "StringVariable",
    "TextareaVariable",
    "ValueProblem",
    "is_expression",
    "validate_variable_schema",
]

VARIABLE_TYPES = ("string", "integer", "number", "boolean", "enum", "secret", "textarea", "group")
TYPE_ALIASES = {"password": "secret"}
STRING_TYPES = frozenset({"string", "textarea", "secret"})

MAX_VARIABLES = 200
MAX_GROUP_DEPTH = 4
MAX_VALUE_LENGTH = 65_536
#: The key of the validation context under which a caller passes the check of generator expressions: a
#: callable that raises :class:`ValueProblem` for an expression the sandbox would refuse.
GENERATOR_CHECK = "check_generator"
ALLOWED_KEYS = frozenset(
    {
        "name",
        "type",
        "label",
        "description",
        "placeholder",
        "required",
        "default",
        "pattern",
        "min",
        "max",
        "min_length",
        "max_length",
        "options",
        "variables",
    }
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
_INTEGER_RE = re.compile(r"^[+-]?[0-9]+$")
_NUMBER_RE = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")


# --- the models ---------------------------------------------------------------------------------------


class _Variable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: VariableName
    label: Text | None = None
    description: Text | None = None
    placeholder: Text | None = None

    #: a secret's value is stored encrypted, shown as ``***`` and never quoted in a message
    is_secret: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        # A field given as null is a field not given (the schema has always read it that way).
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None or key in ("name", "type")}
        return data

    @model_serializer(mode="wrap")
    def _canonical(self, handler):  # no return annotation: the JSON schema stays the model's
        data = handler(self)
        canonical = {"name": data.pop("name"), "type": data.pop("type")}
        canonical.update((key, value) for key, value in data.items() if value is not None)
        return canonical


class _ValueVariable(_Variable):
    """A variable that takes a value (every type but ``group``): its value rules, and its default checked
    against them (coerced, or a generator expression checked by the context's :data:`GENERATOR_CHECK`)."""

    required: Flag = False

    #: whether ``""`` is a value of this type; else an empty form field means "not given" (the default applies)
    empty_is_a_value: ClassVar[bool] = False

    @property
    def has_generator(self) -> bool:
        return is_expression(self.default)

    def value_of(self, raw: Any) -> Any:
        """``raw`` (not ``None``) as this variable's value: coerced strictly to its type (no truncation, no
        guessing), then checked against its rules. Raises :class:`ValueProblem`."""
        value = self._coerce(raw)
        self._check(value)
        return value

    def example(self) -> Any:
        """A value of the right type that passes the rules (to test-render a stack without its values)."""
        raise NotImplementedError

    def _coerce(self, raw: Any) -> Any:
        raise NotImplementedError

    def _check(self, value: Any) -> None:
        """The rules beyond the type (bounds, lengths, pattern); none by default."""

    def _check_rules(self) -> None:
        """The rules agree with each other (``min`` not above ``max``); raises :func:`problem`."""

    def _got(self, raw: Any) -> str:
        return "" if self.is_secret else f", got {describe(raw)}"

    def _quoted(self, raw: Any) -> dict[str, str]:
        """The ``got`` param of a :class:`ValueProblem` (none for a secret: its value is never quoted)."""
        return {} if self.is_secret else {"got": describe(raw)}

    @model_validator(mode="wrap")
    @classmethod
    def _default_fits(cls, data: Any, handler, info: ValidationInfo):
        # The coerced default makes a copy of the frozen model: validate with model_validate or a TypeAdapter
        # (Pydantic warns when the constructor's validator returns another instance).
        variable = handler(data)
        variable._check_rules()  # first: a default is judged by rules that make sense
        default = variable.default
        if default is None:
            return variable
        try:
            if is_expression(default):
                check = (info.context or {}).get(GENERATOR_CHECK)
                if check is not None:
                    check(default)
                return variable
            if variable.is_secret:
                raise ValueProblem(
                    "a secret's default must be a generator such as '{{ generate_password(24) }}'; a literal "
                    "default would be stored and shown in clear",
                    "secret_literal_default",
                )
            value = variable.value_of(default)
        except ValueProblem as exc:
            raise problem(str(exc), "default", reason=exc.reason, params=exc.params) from None
        if value == default and type(value) is type(default):
            return variable
        return variable.model_copy(update={"default": value})


class _TextVariable(_ValueVariable):
    default: TextDefault = None
    pattern: Pattern | None = None
    min_length: Length | None = None
    max_length: Length | None = None

    empty_is_a_value: ClassVar[bool] = True
    #: whether the value may span lines
    multiline: ClassVar[bool] = False

    def _check_rules(self) -> None:
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise problem(
                f"greater than max_length ({self.max_length})",
                "min_length",
                reason="min_above_max_length",
                params={"max_length": self.max_length},
            )

    def _coerce(self, raw: Any) -> str:
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise ValueProblem(f"must be a string{self._got(raw)}", "not_string", **self._quoted(raw))
        value = raw if isinstance(raw, str) else str(raw)
        if len(value) > MAX_VALUE_LENGTH:
            raise ValueProblem(f"longer than {MAX_VALUE_LENGTH} characters", "too_long", max=MAX_VALUE_LENGTH)
        if "\x00" in value:
            raise ValueProblem("must not contain NUL (\\x00) characters", "nul_character")
        if not self.multiline and any(ch in value for ch in "\r\n"):
            raise ValueProblem("must be a single line (use a textarea variable for multi-line text)", "multiline")
        return value

    def _check(self, value: str) -> None:
        if self.min_length is not None and len(value) < self.min_length:
            raise ValueProblem(f"must be at least {self.min_length} characters long", "min_length", min_length=self.min_length)
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueProblem(f"must be at most {self.max_length} characters long", "max_length", max_length=self.max_length)
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise ValueProblem(f"does not match the pattern {self.pattern}", "pattern", pattern=self.pattern)

    def example(self) -> str:
        text = "example-secret" if self.is_secret else "example"
        wanted = max(len(text), self.min_length or 0)
        text = (text * (wanted // len(text) + 1))[:wanted]
        return text if self.max_length is None else text[: self.max_length]


class StringVariable(_TextVariable):
    """One line of text."""

    type: Literal["string"] = "string"


class TextareaVariable(_TextVariable):
    """Text that may span lines."""

    type: Literal["textarea"]

    multiline: ClassVar[bool] = True


class SecretVariable(_TextVariable):
    """Text never shown back (masked as ``***``); its default can only be a generator expression."""

    type: Literal["secret", "password"] = Field(description="password is an alias of secret")

    is_secret: ClassVar[bool] = True

    @field_validator("type")
    @classmethod
    def _canonical_type(cls, value: str) -> str:
        return TYPE_ALIASES.get(value, value)


class _NumericVariable(_ValueVariable):
    def _check_rules(self) -> None:
        low, high = self.min, self.max
        if low is not None and high is not None and low > high:
            raise problem(f"greater than max ({high})", "min", reason="min_above_max", params={"max": high})

    def _check(self, value: int | float) -> None:
        low, high = self.min, self.max
        if low is not None and value < low:
            raise ValueProblem(f"must be at least {low}", "min", min=low)
        if high is not None and value > high:
            raise ValueProblem(f"must be at most {high}", "max", max=high)

    def example(self) -> int | float:
        low, high = self.min, self.max
        value = low if low is not None else 1
        return high if high is not None and value > high else value


class IntegerVariable(_NumericVariable):
    type: Literal["integer"]
    default: IntegerDefault = None
    min: WholeBound | None = None
    max: WholeBound | None = None

    def _coerce(self, raw: Any) -> int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str) and _INTEGER_RE.match(raw):
            return int(raw)
        raise ValueProblem(f"must be an integer{self._got(raw)}", "not_integer", **self._quoted(raw))


class NumberVariable(_NumericVariable):
    type: Literal["number"]
    default: NumberDefault = None
    min: Bound | None = None
    max: Bound | None = None

    def _coerce(self, raw: Any) -> int | float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
            return raw
        if isinstance(raw, str) and _NUMBER_RE.match(raw):
            return int(raw) if _INTEGER_RE.match(raw) else float(raw)
        raise ValueProblem(f"must be a number{self._got(raw)}", "not_number", **self._quoted(raw))


class BooleanVariable(_ValueVariable):
    type: Literal["boolean"]
    default: BooleanDefault = None

    def _coerce(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ValueProblem(f"must be true or false{self._got(raw)}", "not_boolean", **self._quoted(raw))

    def example(self) -> bool:
        return False


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
                names = ", ".join(sorted(map(str, extra)))
                raise problem(
                    f"unknown field(s) {names}; an option takes value and label", reason="option_unknown_fields", params={"names": names}
                )
            value, label = data.get("value"), data.get("label")
        else:
            value, label = data, None
        if value is None or not isinstance(value, (str, int, float, bool)):
            raise problem("an option value must be a string, number or boolean", reason="option_value_type")
        return {"value": value, "label": scalar_text(value) if label is None else label}


def _options_list(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise problem("enum needs a non-empty options list", reason="no_options")
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
                raise problem(
                    f"duplicate option {describe(option.value)}",
                    f"[{index}]",
                    reason="duplicate_option",
                    params={"value": describe(option.value)},
                )
            seen.add(key)
        return options

    def _coerce(self, raw: Any) -> OptionValue:
        """The option ``raw`` is, of the same type first, else the one that reads the same (``"2"`` for 2)."""
        for option in self.options:
            if type(option.value) is type(raw) and option.value == raw:
                return option.value
        if isinstance(raw, (str, int, float, bool)):
            for option in self.options:
                if scalar_text(option.value) == scalar_text(raw):
                    return option.value
        choices = ", ".join(scalar_text(option.value) for option in self.options)
        raise ValueProblem(f"must be one of {choices}{self._got(raw)}", "not_a_choice", choices=choices, **self._quoted(raw))

    def example(self) -> OptionValue:
        return self.options[0].value


def _group_list(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise problem("a group needs a non-empty list of variables", reason="empty_group")
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
                    raise problem("does not apply to a group (set it on the group's variables)", key, reason="not_for_group")
            data = {key: value for key, value in data.items() if key not in ("default", "required")}
        return data

    @field_validator("variables", mode="after")
    @classmethod
    def _distinct(cls, variables: list[StackVariable]) -> list[StackVariable]:
        _check_distinct(variables)
        return variables


_MODELS: dict[str, type[_Variable]] = {
    "string": StringVariable,
    "textarea": TextareaVariable,
    "secret": SecretVariable,
    "integer": IntegerVariable,
    "number": NumberVariable,
    "boolean": BooleanVariable,
    "enum": EnumVariable,
    "group": GroupVariable,
}


def _object_with_known_type(value: Any) -> Any:
    """An object, its ``type`` one we know (``string`` when absent), before the union picks its model."""
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise problem("must be an object with at least a 'name'", reason="not_an_object")
    vtype = value.get("type", "string")
    if not isinstance(vtype, str) or TYPE_ALIASES.get(vtype, vtype) not in _MODELS:
        types = ", ".join(VARIABLE_TYPES)
        raise problem(f"must be one of {types} (or password, an alias of secret)", "type", reason="unknown_type", params={"types": types})
    return {**value, "type": vtype}


StackVariable = Annotated[
    StringVariable | TextareaVariable | SecretVariable | IntegerVariable | NumberVariable | BooleanVariable | EnumVariable | GroupVariable,
    Field(discriminator="type"),
    BeforeValidator(_object_with_known_type),
]
"""One variable of a stack's schema, discriminated by ``type`` (``string`` when absent)."""

GroupVariable.model_rebuild()


def _check_distinct(variables: list[Any]) -> None:
    seen: set[str] = set()
    for index, variable in enumerate(variables):
        if variable.name in seen:
            raise problem(
                f"duplicate variable name {variable.name!r}", f"[{index}].name", reason="duplicate_name", params={"name": variable.name}
            )
        seen.add(variable.name)


_ONE = TypeAdapter(StackVariable)


# --- validation with readable paths -----------------------------------------------------------------


def _count(raw: Any) -> int:
    if not isinstance(raw, list):
        return 0
    return sum(1 + (_count(item.get("variables")) if isinstance(item, dict) else 0) for item in raw)


def _depth_problems(variables: list[tuple[int, Any]], path: str, depth: int) -> list[SchemaProblem]:
    problems: list[SchemaProblem] = []
    for index, variable in variables:
        if isinstance(variable, GroupVariable):
            where = f"{path}[{index}].variables"
            if depth + 1 >= MAX_GROUP_DEPTH:
                levels = MAX_GROUP_DEPTH - 1
                problems.append(SchemaProblem(where, f"groups nest at most {levels} levels deep", "group_depth", {"max": levels}))
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


class SchemaProblem(str):
    """A problem of a schema (``path: message``): its ``path``, English ``message``, and a stable ``reason``
    with the ``params`` the message quotes, for a client to word it in its language (a default that does not
    fit its variable keeps its :class:`ValueProblem`'s reason)."""

    path: str
    message: str
    reason: str
    params: dict[str, Any]

    def __new__(cls, path: str, message: str, reason: str, params: dict[str, Any]) -> SchemaProblem:
        self = super().__new__(cls, f"{path}: {message}")
        self.path, self.message, self.reason, self.params = path, message, reason, params
        return self


def _message(error: dict[str, Any], root: str) -> SchemaProblem:
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    if error["type"] == PROBLEM:
        path, _ = _path(loc, root)
        at = ctx.get("at")
        if at:
            path += at if at.startswith("[") else f".{at}"
        return SchemaProblem(path, ctx["message"], ctx["reason"], ctx.get("params") or {})
    path, vtype = _path(loc, root)
    key = loc[-1] if loc else None
    if error["type"] == "extra_forbidden":
        if key in ("min", "max") and vtype in STRING_TYPES:
            message = f"only applies to integer and number variables; use {key}_length for the length of a string"
            return SchemaProblem(path, message, "bound_of_text", {"key": key})
        if key in _FIELD_OWNERS:
            owners = _FIELD_OWNERS[key]
            return SchemaProblem(
                path, f"only applies to {owners} variables", "field_of_other_type", {"key": key, "types": owners.replace(" and ", ", ")}
            )
        if key in ("default", "required"):
            return SchemaProblem(path, "does not apply to a group (set it on the group's variables)", "not_for_group", {})
        allowed = ", ".join(sorted(ALLOWED_KEYS))
        return SchemaProblem(path, f"unknown field; a variable takes {allowed}", "unknown_field", {"key": str(key), "allowed": allowed})
    if error["type"] == "missing":
        if key == "name":
            return SchemaProblem(path, NAME_RULE, "name_rule", {})
        if key == "options":
            return SchemaProblem(path, "enum needs a non-empty options list", "no_options", {})
        if key == "variables":
            return SchemaProblem(path, "a group needs a non-empty list of variables", "empty_group", {})
    # any other of Pydantic's own checks: its type and limits (a client words it like a request field's)
    limits = {k: v for k, v in ctx.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    return SchemaProblem(path, error["msg"], "field_type", {**limits, "type": error["type"]})


def validate_variable_schema(
    raw: Any, root: str = "variables", *, context: dict[str, Any] | None = None
) -> tuple[list[tuple[int, Any]], list[SchemaProblem]]:
    """``raw`` checked against :data:`StackVariable`: ``(index in raw, model)`` of every variable without a
    problem, and the problems (``path: message``). ``context`` is Pydantic's validation context (a
    :data:`GENERATOR_CHECK`, for one)."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        return [], [SchemaProblem(root, "must be a list of variable definitions", "not_a_list", {})]
    total = _count(raw)
    if total > MAX_VARIABLES:
        message = f"at most {MAX_VARIABLES} variables in a stack (found {total})"
        return [], [SchemaProblem(root, message, "too_many_variables", {"max": MAX_VARIABLES, "found": total})]
    problems: list[SchemaProblem] = []
    valid: list[tuple[int, Any]] = []
    for index, item in enumerate(raw):
        try:
            valid.append((index, _ONE.validate_python(item, context=context)))
        except ValidationError as exc:
            problems += [_message(error, f"{root}[{index}]") for error in exc.errors(include_url=False)]
    variables: list[tuple[int, Any]] = []
    seen: set[str] = set()
    for index, variable in valid:
        if variable.name in seen:
            problems.append(
                SchemaProblem(
                    f"{root}[{index}].name", f"duplicate variable name {variable.name!r}", "duplicate_name", {"name": variable.name}
                )
            )
            continue
        seen.add(variable.name)
        variables.append((index, variable))
    problems += _depth_problems(variables, root, 0)
    return variables, list(dict.fromkeys(problems))
