"""Base classes for request/response schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _omit_null(schema: dict[str, Any]) -> None:
    """The JSON schema of a PATCH field that may be left out but never sent as ``null`` (the API refuses a null
    with a 422 naming the field): no ``null`` among its types and no ``null`` default, so that the document says
    what the API does."""
    alternatives = schema.pop("anyOf", None)
    if alternatives is not None:
        kept = [alternative for alternative in alternatives if alternative.get("type") != "null"]
        if len(kept) == 1:
            for key, value in kept[0].items():
                schema.setdefault(key, value)
        else:
            schema["anyOf"] = kept
    if "default" in schema and schema["default"] is None:
        del schema["default"]


def not_null(**kwargs: Any) -> Any:
    """A PATCH field that may be left out (it keeps its value) but not sent as ``null``: ``Field(default=None)``
    whose schema is not nullable (the model's or the service's check refuses the null)."""
    return Field(default=None, json_schema_extra=_omit_null, **kwargs)


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_contains_nul(v) for v in value)
    return False


class RequestModel(BaseModel):
    """Request bodies: unknown fields are refused so a typo never silently does nothing.

    NUL characters are refused in every string, however deeply nested: PostgreSQL cannot store them
    (the insert would fail with a 500) and SQLite would store text that no other backend accepts.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _refuse_nul(cls, value: Any) -> Any:
        if _contains_nul(value):
            raise ValueError("must not contain NUL (\\x00) characters")
        return value


class ResponseModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


#: The values an error quotes, for a client that words it in its own language (a list of objects: one per
#: problem of an error that has several, e.g. ``invalid_variables``'s ``problems``).
ErrorParams = dict[str, str | int | float | bool | list[str] | list[dict[str, str | int | float | bool | None]] | None]


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong and how to fix it, in English")
    code: str = Field(description="stable, machine-readable: a client words the error itself from it")
    params: ErrorParams | None = Field(default=None, description="the values the message quotes (absent when none)")


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the offending field, e.g. ``variables.port``")
    message: str
    type: str | None = Field(default=None, description="pydantic's error type, e.g. ``missing``, ``string_too_long``")
    params: ErrorParams = Field(default_factory=dict, description='the type\'s limits, e.g. ``{"max_length": 100}``')


class ValidationErrorBody(BaseModel):
    """What every 422 answers: request validation (with ``errors``) and domain validation (template,
    YAML, compose, limits: ``code`` says which)."""

    detail: str = Field(description="what to fix, in words")
    code: str = Field(description="``validation_error``, ``template_error``, ``template_limit``, ``yaml_limit``, ...")
    params: ErrorParams | None = Field(default=None, description="the values the message quotes (absent when none)")
    errors: list[FieldError] | None = Field(default=None, description="one entry per invalid field (request validation)")


class PageFields(ResponseModel):
    """What every listing answers besides its ``items`` (see docs/api.md, "Listings")."""

    total: int = Field(description="matching rows, counted up to a cap (see total_is_exact)")
    total_is_exact: bool = Field(
        default=True, description="false when more rows match than the count cap: total is then the cap, a lower bound"
    )
    next_cursor: str | None = Field(default=None, description="pass as cursor to read the next page; null on the last page")

    @classmethod
    def of(cls, page, items: list):
        """The response for a :class:`backend.app.services.pagination.Page` and its converted items."""
        return cls(items=items, total=page.total, total_is_exact=page.total_is_exact, next_cursor=page.next_cursor)
