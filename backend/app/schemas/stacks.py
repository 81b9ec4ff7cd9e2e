from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, PlainSerializer, StringConstraints, WrapValidator

from backend.app.schemas.common import PageFields, RequestModel, ResponseModel, not_null
from backend.app.schemas.stack_variables import StackVariable

StackName = Annotated[str, Field(min_length=1, max_length=100)]
StackVersion = Annotated[str, Field(min_length=1, max_length=50)]
#: Kept byte for byte (no whitespace stripping: indentation is YAML syntax). 256 KiB of compose text is
#: far beyond any real stack; the bound keeps rendering cheap.
StackTemplate = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=262_144)]
#: The variables as their author wrote them: kept byte for byte, like the template.
VariablesSource = Annotated[
    str | None,
    StringConstraints(strip_whitespace=False, max_length=262_144),
    Field(
        description="the variables as YAML (or JSON) text, kept as written; when given, `variables` is read from it (send one or the other)"
    ),
]


def _variable_list(value: Any, _handler: Any) -> list[dict[str, Any]]:
    """Only the outer shape here: the stack service checks the variables with the same models
    (``templating.parse_variables``, which also checks generator defaults in the sandbox) and names every problem with its path (``variables[1].options: ...``,
    code ``invalid_variable_schema``), which request validation could not say as clearly."""
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("must be a list of variable definitions (objects)")
    if len(value) > 200:
        raise ValueError("at most 200 variables in a stack")
    return value


#: Typed in the OpenAPI document (a client builds its form from it).
StackVariables = Annotated[
    list[StackVariable], WrapValidator(_variable_list), PlainSerializer(lambda value: value, return_type=list[dict[str, Any]])
]


class StackCreate(RequestModel):
    name: StackName
    description: Annotated[str | None, Field(max_length=5000)] = None
    version: StackVersion = "1.0.0"
    template: StackTemplate = Field(description="compose YAML with Jinja2 placeholders such as {{ port }}")
    variables: StackVariables = Field(default_factory=list, description="the typed variable schema")
    variables_source: VariablesSource = None
    organization_id: str | None = Field(default=None, description="defaults to your default organization")


class StackUpdate(RequestModel):
    name: StackName | None = not_null()
    description: Annotated[str | None, Field(max_length=5000)] = None
    version: StackVersion | None = not_null()
    template: StackTemplate | None = not_null()
    variables: StackVariables | None = not_null(description="new variables; their stored source text is dropped")
    variables_source: VariablesSource = None


class StackRead(ResponseModel):
    id: str
    organization_id: str
    name: str
    description: str | None
    version: str
    template: str
    variables: list[StackVariable]
    variables_source: str | None = Field(description="the variables as their author wrote them, when given as text")
    source: str
    created_at: datetime
    updated_at: datetime


class StackPage(PageFields):
    items: list[StackRead]


class StackRenderRequest(RequestModel):
    variables: dict[str, Any] = Field(default_factory=dict, description="values by name; groups take objects")


class StackRenderResult(ResponseModel):
    compose: str = Field(description="the rendered compose document; secret values shown as ***")
