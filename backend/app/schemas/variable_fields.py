"""The field types of the stack variable models (:mod:`backend.app.schemas.stack_variables`): each checks its
input strictly and says what is wrong in words a schema's author understands, plus the helpers the models'
messages share.
"""

from __future__ import annotations

import keyword
import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

MAX_PATTERN_LENGTH = 500
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NAME_RE = re.compile(NAME_PATTERN)
NAME_RULE = "required; letters, digits and underscores, not starting with a digit, at most 64 characters"
#: Names that cannot be template variables: Jinja keywords and special names, and dict methods (inside a
#: group ``{{ db.items }}`` would return the dict method instead of the variable).
RESERVED_NAMES = frozenset(
    {
        "true",
        "false",
        "none",
        "True",
        "False",
        "None",
        "and",
        "or",
        "not",
        "in",
        "is",
        "if",
        "else",
        "elif",
        "for",
        "recursive",
        "with",
        "without",
        "context",
        "ignore",
        "missing",
        "import",
        "as",
        "from",
        "pluck",
        "loop",
        "self",
        "super",
        "caller",
        "varargs",
        "kwargs",
        "block",
        "set",
        "macro",
        "call",
        "filter",
        "items",
        "keys",
        "values",
        "get",
        "copy",
        "pop",
        "popitem",
        "setdefault",
        "update",
        "clear",
        "fromkeys",
    }
    | set(keyword.kwlist)
)
#: The Pydantic error type of our own messages (``problem``).
PROBLEM = "windflow"


def problem(message: str, at: str | None = None, *, reason: str, params: dict[str, Any] | None = None) -> PydanticCustomError:
    """A problem with our own message; ``at`` is a path below the value being validated (``min``,
    ``options[1]``). The message goes through the context so that braces in it are never formatted.
    ``reason`` is a stable word for the problem and ``params`` the values its message quotes, as a
    :class:`ValueProblem`'s: a client words it in its language (``frontend/src/i18n/variableReasons.ts``;
    ``backend/tests/unit/test_ui_words.py`` fails when a reason is not a literal or lacks its words)."""
    return PydanticCustomError(PROBLEM, "{message}", {"message": message, "at": at, "reason": reason, "params": params or {}})


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


def is_expression(value: Any) -> bool:
    """Whether a default is a generator expression (``{{ ... }}`` or ``{% ... %}``) rather than a literal."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


class ValueProblem(ValueError):
    """A value (or a default) that does not fit its variable; the message never quotes a secret's value.

    ``reason`` is a stable word for the rule it breaks (``not_integer``, ``min_length``, ...) and ``params``
    the values the message quotes (``{"min_length": 8}``, ``{"got": "'abc'"}``): a client words the problem
    in its own language from them (the web UI: ``frontend/src/i18n/variableReasons.ts``)."""

    def __init__(self, text: str, reason: str, /, **params: Any) -> None:
        super().__init__(text)
        self.reason = reason
        self.params = params


# --- field types --------------------------------------------------------------------------------------


def _check_name(value: Any) -> Any:
    if not isinstance(value, str) or not _NAME_RE.match(value) or len(value) > 64:
        raise problem(NAME_RULE, reason="name_rule")
    if value in RESERVED_NAMES:
        raise problem(f"{value!r} is reserved in templates; pick another name", reason="reserved_name", params={"name": value})
    return value


def _check_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise problem("must be a string", reason="not_string")
    return value


def _check_bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise problem("must be true or false", reason="not_boolean")
    return value


def _check_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise problem("must be a number", reason="not_number")
    return value


def _check_whole(value: Any) -> Any:
    value = _check_number(value)
    if isinstance(value, float) and not value.is_integer():
        raise problem("must be a whole number for an integer variable", reason="not_whole")
    return int(value)


def _check_length(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise problem("must be a non-negative integer", reason="not_a_length")
    return value


def _check_pattern(value: Any) -> Any:
    if not isinstance(value, str) or len(value) > MAX_PATTERN_LENGTH:
        raise problem(
            f"must be a regular expression of at most {MAX_PATTERN_LENGTH} characters",
            reason="pattern_too_long",
            params={"max": MAX_PATTERN_LENGTH},
        )
    try:
        re.compile(value)
    except re.error as exc:
        raise problem(f"invalid regular expression: {exc}", reason="invalid_regex", params={"message": str(exc)}) from None
    return value


VariableName = Annotated[str, BeforeValidator(_check_name), Field(pattern=NAME_PATTERN, max_length=64)]
Text = Annotated[str, BeforeValidator(_check_text)]
Flag = Annotated[bool, BeforeValidator(_check_bool)]
Bound = Annotated[int | float, BeforeValidator(_check_number)]
WholeBound = Annotated[int, BeforeValidator(_check_whole)]
Length = Annotated[int, BeforeValidator(_check_length)]
Pattern = Annotated[str, BeforeValidator(_check_pattern), Field(max_length=MAX_PATTERN_LENGTH)]
#: Checked with the same rules as a deployment's values (``_ValueVariable._default_fits``).
_DEFAULT_DOC = "a literal value of the variable's type, or a generator expression such as {{ generate_password(24) }}"


def _default(json_type: dict[str, Any]) -> Any:
    return Annotated[Any, WithJsonSchema({**json_type, "description": _DEFAULT_DOC})]


TextDefault = _default({"type": "string"})
IntegerDefault = _default({"anyOf": [{"type": "integer"}, {"type": "string"}]})
NumberDefault = _default({"anyOf": [{"type": "number"}, {"type": "string"}]})
BooleanDefault = _default({"anyOf": [{"type": "boolean"}, {"type": "string"}]})
EnumDefault = _default({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]})
