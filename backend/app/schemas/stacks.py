from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from backend.app.schemas.common import PageFields, RequestModel, ResponseModel

StackName = Annotated[str, Field(min_length=1, max_length=100)]
StackVersion = Annotated[str, Field(min_length=1, max_length=50)]
#: Kept byte for byte (no whitespace stripping: indentation is YAML syntax). 256 KiB of compose text is
#: far beyond any real stack; the bound keeps rendering cheap.
StackTemplate = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=262_144)]
StackVariables = Annotated[list[dict[str, Any]], Field(max_length=200)]


class StackCreate(RequestModel):
    name: StackName
    description: Annotated[str | None, Field(max_length=5000)] = None
    version: StackVersion = "1.0.0"
    template: StackTemplate = Field(description="compose YAML with Jinja2 placeholders such as {{ port }}")
    variables: StackVariables = Field(default_factory=list, description="the typed variable schema")
    organization_id: str | None = Field(default=None, description="defaults to your default organization")


class StackUpdate(RequestModel):
    name: StackName | None = None
    description: Annotated[str | None, Field(max_length=5000)] = None
    version: StackVersion | None = None
    template: StackTemplate | None = None
    variables: StackVariables | None = None


class StackRead(ResponseModel):
    id: str
    organization_id: str
    name: str
    description: str | None
    version: str
    template: str
    variables: list[dict[str, Any]]
    source: str
    created_at: datetime
    updated_at: datetime


class StackPage(PageFields):
    items: list[StackRead]


class StackRenderRequest(RequestModel):
    variables: dict[str, Any] = Field(default_factory=dict, description="values by name; groups take objects")


class StackRenderResult(ResponseModel):
    compose: str = Field(description="the rendered compose document; secret values shown as ***")
