"""Stack templates: a stack's variables, a deployment's values, and rendering them into a compose document.

Pure logic, no database. The flow a deployment follows:

1. ``parse_variables(stack.variables)`` returns the stack's variables as the typed models of
   :mod:`backend.app.schemas.stack_variables` (a bad schema is a ``ValidationFailed`` naming the path, e.g.
   ``variables[2].options: ...``);
2. ``resolve_values(variables, given)`` merges the caller's values with the defaults, evaluates generator
   defaults such as ``"{{ generate_password(24) }}"`` *once*, coerces and checks every value, and reports
   every problem at once;
3. ``render_stack(template, variables, values)`` renders the compose template in a sandbox and checks the
   result is a compose-shaped YAML mapping; ``validate_with_compose`` lets the real compose tool judge it.

One module per job: :mod:`.values` (the schema and the values), :mod:`.generators` (the functions a default
may call), :mod:`.sandbox` (the Jinja sandbox), :mod:`.documents` (rendering and the compose tool). Error
messages never contain a secret value.
"""

from __future__ import annotations

from backend.app.schemas.stack_variables import VARIABLE_TYPES
from backend.app.services.stacks.templating.documents import (
    COMPOSE_TIMEOUT_SECONDS,
    judged_valid,
    parse_compose_yaml,
    render_preview,
    render_stack,
    validate_with_compose,
)
from backend.app.services.stacks.templating.generators import GENERATORS
from backend.app.services.stacks.templating.sandbox import render_template
from backend.app.services.stacks.templating.values import (
    MASK,
    VariableErrors,
    example_values,
    masked_values,
    missing_required,
    not_a_mapping,
    parse_variables,
    resolve_values,
    secret_paths,
    secret_values,
)

__all__ = [
    "COMPOSE_TIMEOUT_SECONDS",
    "GENERATORS",
    "MASK",
    "VARIABLE_TYPES",
    "VariableErrors",
    "example_values",
    "judged_valid",
    "masked_values",
    "missing_required",
    "not_a_mapping",
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
