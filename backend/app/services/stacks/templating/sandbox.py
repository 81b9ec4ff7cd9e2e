"""The sandbox stack templates and generator defaults render in.

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
* Repetition (``'a' * n``) and powers are bounded; the output is bounded by :data:`MAX_OUTPUT_CHARS`
  (``TEMPLATE_MAX_OUTPUT_CHARS``, set by :func:`configure` in the render child). Time and memory are bounded
  by the child process itself (``services/stacks/bounded_render.py``).
* Generator defaults (``{{ generate_password(24) }}``) evaluate in a second sandbox whose only names are
  the generator functions.
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backend.app.core.exceptions import ValidationFailed
from backend.app.schemas.stack_variables import ValueProblem
from backend.app.schemas.stack_variables import scalar_text as _render_scalar
from backend.app.services.stacks.templating.generators import GENERATORS, Generators

MAX_OUTPUT_CHARS = 1_048_576


def configure(*, max_output_chars: int) -> None:
    """The output bound of this process (``TEMPLATE_MAX_OUTPUT_CHARS``)."""
    global MAX_OUTPUT_CHARS
    MAX_OUTPUT_CHARS = max_output_chars


def _finalize(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return _render_scalar(value)
    if isinstance(value, str):
        return value.replace("$", "$$")
    return value


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox plus limits on the two operators that can allocate or compute without bound."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
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


def _template_error(text: str, line: int | None, *, reason: str, **quoted: str | int) -> ValidationFailed:
    """A ``template_error`` at ``line``, its ``reason`` a stable word a client words itself with the values
    it ``quoted`` (Jinja's own message, the undefined name, a limit), beside the English ``text``."""
    where = f"template line {line}: " if line else "template: "
    return ValidationFailed(where + text, code="template_error", params={"reason": reason, "line": line, **quoted})


def _undefined_name(message: str | None) -> str | None:
    """The name Jinja's ``'port' is undefined`` names."""
    match = re.fullmatch(r"'([^']{1,100})' is undefined", message or "")
    return match.group(1) if match else None


def _compile(env: _Sandbox, source: str):
    try:
        tree = env.parse(source)
    except TemplateSyntaxError as exc:
        raise _template_error(f"syntax error: {exc.message}", exc.lineno, reason="syntax", message=str(exc.message)) from None
    for node in tree.find_all(_FORBIDDEN_NODES):
        raise _template_error(
            "include, import and extends are not available: a stack template is one self-contained document",
            node.lineno,
            reason="forbidden_tag",
        )
    return tree


def render_template(template: str, values: dict) -> str:
    """Render ``template`` with ``values`` in the sandbox; any failure is ``ValidationFailed(template_error)``.

    Undefined names fail (``'port' is undefined``), sandbox violations fail, syntax errors name the line.
    """
    if not isinstance(template, str):
        raise ValidationFailed("template: must be a string", code="template_error", params={"reason": "not_string"})
    tree = _compile(_ENV, template)
    try:
        compiled = _ENV.from_string(tree)
        chunks: list[str] = []
        size = 0
        for chunk in compiled.generate(dict(values)):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _template_error(
                    f"the rendered document exceeds {MAX_OUTPUT_CHARS} characters (limit TEMPLATE_MAX_OUTPUT_CHARS)",
                    None,
                    reason="output_limit",
                    max=MAX_OUTPUT_CHARS,
                )
            chunks.append(chunk)
    except (ValidationFailed, MemoryError):
        raise  # MemoryError: the bounded renderer reports the memory limit by name
    except SecurityError as exc:
        raise _template_error(f"refused by the sandbox: {exc}", _template_line(exc), reason="sandbox", message=str(exc)) from None
    except UndefinedError as exc:
        name = _undefined_name(exc.message)
        quoted = {"reason": "undefined", "name": name} if name else {"reason": "error", "message": str(exc.message)}
        raise _template_error(f"{exc.message}", _template_line(exc), **quoted) from None
    except TemplateError as exc:
        message = str(exc.message or exc)
        raise _template_error(message, _template_line(exc), reason="error", message=message) from None
    except Exception as exc:  # noqa: BLE001 - a template can raise anything (ZeroDivisionError, TypeError, ...)
        message = f"{type(exc).__name__}: {exc}"
        raise _template_error(message, _template_line(exc), reason="error", message=message) from None
    return "".join(chunks)


#: Filters whose result is not a function of their input: Jinja's built-in ``random``.
_NONDETERMINISTIC_FILTERS = frozenset({"random"})


def is_deterministic(template: str) -> bool:
    """Whether rendering ``template`` gives the same text for the same values every time: it applies no
    filter that draws at random (``{{ hosts | random }}``, ``{% filter random %}``). A template that does not
    parse is not."""
    try:
        tree = _ENV.parse(template)
    except Exception:  # noqa: BLE001 - any failure: not known to be deterministic
        return False
    return not any(node.name in _NONDETERMINISTIC_FILTERS for node in tree.find_all(nodes.Filter))


def check_generator_expression(expression: str) -> None:
    """Raise :class:`ValueProblem` unless ``expression`` is one the generator sandbox can evaluate."""
    try:
        tree = _GENERATOR_ENV.parse(expression)
    except TemplateSyntaxError as exc:
        raise ValueProblem(f"invalid generator expression: {exc.message}", "generator_syntax", message=exc.message or "") from None
    if any(True for _ in tree.find_all(_FORBIDDEN_NODES)):
        raise ValueProblem("a generator expression cannot include, import or extend", "generator_forbidden_tag")
    unknown = sorted(meta.find_undeclared_variables(tree) - set(GENERATORS))
    if unknown:
        available = ", ".join(f"{g}()" for g in GENERATORS)
        raise ValueProblem(
            f"unknown name(s) {', '.join(unknown)} in generator expression; available: {available}",
            "generator_unknown_name",
            names=", ".join(unknown),
            available=available,
        )


def evaluate_generator(expression: str, generators: Generators) -> str:
    """``expression`` evaluated with ``generators``; any failure is a :class:`ValueProblem`."""
    check_generator_expression(expression)
    try:
        return _GENERATOR_ENV.from_string(expression).render(generators.namespace())
    except ValueProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - reported as a problem with this variable
        message = str(getattr(exc, "message", None) or exc)
        raise ValueProblem(f"default generator failed: {message}", "generator_failed", message=message) from None
