"""The error responses of the OpenAPI document: every status an operation can answer, with its codes.

Every error body is :class:`~backend.app.schemas.common.ErrorBody` (``{detail, code, params?}``; a 422 is
:class:`~backend.app.schemas.common.ValidationErrorBody`). What an operation can answer comes from two places:

* **its kind**, read from the route itself by :func:`document_errors` (nothing to copy per route): a bearer
  credential (``CurrentUser``) → 401, and 403 ``token_scope`` for a change (an API token's scopes); ``Superuser`` → 403; an organisation or an owned row in the path
  (``OrgAccess``, ``OwnedRow``) → 404 (and 403 when it needs more than a viewer); a database session → 503
  ``database_unavailable``; a request body → 400 (unparsable), 413 (too large), 422; any parameter → 422;
* **its domain errors**, declared beside the route with :func:`errors` (``responses=errors(conflict=[...])``):
  what its service raises (a duplicate name, a refused transition, an unknown member, a rate limit, ...).

Each documented status lists the ``code`` values it carries, in its description and in ``x-error-codes``
(``backend/tests/integration/test_openapi_errors.py`` checks the document against real answers).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import routing
from fastapi.routing import APIRoute

from backend.app.api import deps
from backend.app.models import Role
from backend.app.schemas.common import ErrorBody

#: What each error status means, for its description.
TITLES = {
    400: "The request could not be read (a body that is not parsable)",
    401: "Not authenticated: no credential, or a bad, expired or revoked one",
    403: "Forbidden: your role (or platform role) does not allow this",
    404: "Not found (or not visible to you)",
    409: "Conflict with the current state",
    413: "The request body is too large",
    422: "Invalid request: each field's problem in `errors`, or a domain rule named by `code`",
    429: "Too many requests: retry after `Retry-After` seconds",
    503: "Unavailable for now (the database or an engine does not answer): retry later",
}

#: Every code a bearer credential's refusal carries (``api/deps.py``, ``services/identity/auth_service.py``).
AUTH_CODES = ("not_authenticated", "invalid_token", "token_expired", "token_revoked", "inactive_user")
ERROR_CODES_KEY = "x-error-codes"


def errors(
    *bases: dict[int | str, dict[str, Any]],
    bad_request: Iterable[str] = (),
    unauthenticated: Iterable[str] = (),
    forbidden: Iterable[str] = (),
    not_found: Iterable[str] = (),
    conflict: Iterable[str] = (),
    invalid: Iterable[str] = (),
    too_large: Iterable[str] = (),
    rate_limited: Iterable[str] = (),
    unavailable: Iterable[str] = (),
) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: the domain errors it answers beyond those of its kind, by status and code, added
    to ``bases`` (the shared sets below)."""
    by_status = {
        400: bad_request,
        401: unauthenticated,
        403: forbidden,
        404: not_found,
        409: conflict,
        413: too_large,
        422: invalid,
        429: rate_limited,
        503: unavailable,
    }
    out: dict[int | str, dict[str, Any]] = {}
    for base in bases:
        for status, response in base.items():
            out.setdefault(status, {"description": TITLES[int(status)], ERROR_CODES_KEY: []})[ERROR_CODES_KEY].extend(
                response.get(ERROR_CODES_KEY, [])
            )
    for status, codes in by_status.items():
        codes = list(codes)
        if codes:
            out.setdefault(status, {"description": TITLES[status], ERROR_CODES_KEY: []})[ERROR_CODES_KEY].extend(codes)
    return out


# --- shared sets, per kind of route ----------------------------------------------------------------

#: A create payload with an optional ``organization_id`` (default: the caller's organisation).
IN_ORGANIZATION = errors(not_found=["organization_not_found"], forbidden=["role_required"], invalid=["no_organization"])
#: A listing filtered by ``?organization_id=`` (an organisation you do not belong to is a 404).
FILTERED_BY_ORGANIZATION = errors(not_found=["organization_not_found"])
#: A template rendered and checked (stacks, deployments, revisions): what the sandbox, the YAML reader, compose
#: and the target's policy refuse.
TEMPLATE_CHECKS = errors(
    invalid=[
        "template_error",
        "template_limit",
        "yaml_limit",
        "invalid_yaml",
        "invalid_compose",
        "compose_failed",
        "compose_timeout",
        "compose_too_large",
        "invalid_variable_schema",
        "invalid_variables",
        "compose_forbidden",
        "compose_policy_denied",
    ],
    unavailable=["renderer_unavailable"],
)
#: An action on a deployment's engine, here or on a worker of its placed target.
ENGINE_ACTION = errors(
    not_found=["target_not_found"],
    conflict=["engine_error"],
    unavailable=["engine_unavailable", "target_unserved", "target_worker_timeout", "target_worker_failed", "target_elsewhere"],
)
#: A stop or delete, done in the background: refused at once only when no worker can reach a placed target.
BACKGROUND_ACTION = errors(unavailable=["target_unserved"])
#: A refused lifecycle action (the state machine's table).
TRANSITION = errors(conflict=["invalid_transition"])
#: Deployment creation and changes: 100 a minute per user by default.
RATE_LIMITED = errors(rate_limited=["rate_limited"])


def _dependants(dependant) -> Iterator[Any]:
    """Every dependency of ``dependant``, however deep."""
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependants(dependency)


def inferred_errors(route: APIRoute) -> dict[int, set[str]]:
    """The statuses and codes ``route`` answers by its kind (see the module's docstring)."""
    found: dict[int, set[str]] = {}

    def add(status: int, *codes: str) -> None:
        found.setdefault(status, set()).update(codes)

    every = [route.dependant, *_dependants(route.dependant)]
    for call in (d.call for d in every[1:]):
        if call is deps.get_current_user:
            add(401, *AUTH_CODES)
            if set(route.methods or ()) - deps.READ_METHODS:
                add(403, "token_scope")  # an API token whose scopes do not cover this change
        elif call is deps.page_params:
            add(422, "invalid_cursor", "invalid_page", "offset_too_large")
        elif call is deps.get_superuser:
            add(403, "superuser_required", "token_scope")
        elif call is deps.get_session:
            add(503, "database_unavailable")
        elif isinstance(call, deps.OrgAccess):
            add(404, "organization_not_found")
            if call.minimum is not Role.VIEWER:
                add(403, "role_required")
        elif isinstance(call, deps.OwnedRow):
            add(404, f"{call.noun}_not_found")
            if call.minimum is not Role.VIEWER:
                add(403, "role_required")
    has_body = any(d.body_params for d in every)
    has_params = has_body or any(d.path_params or d.query_params or d.header_params or d.cookie_params for d in every)
    if has_body:
        add(400, "bad_request")
        add(413, "payload_too_large")
    if has_params:
        add(422, "validation_error")
    return found


def declared_errors(route: APIRoute) -> dict[int, set[str]]:
    """The codes ``route`` declared with :func:`errors`."""
    out: dict[int, set[str]] = {}
    for status, response in (route.responses or {}).items():
        codes = response.get(ERROR_CODES_KEY) if isinstance(response, dict) else None
        if codes:
            out.setdefault(int(status), set()).update(codes)
    return out


def route_errors(route: APIRoute) -> dict[int, set[str]]:
    merged = inferred_errors(route)
    for status, codes in declared_errors(route).items():
        merged.setdefault(status, set()).update(codes)
    return merged


def api_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """Every API operation of an app's ``routes`` (included routers flattened), as FastAPI's OpenAPI reads them:
    each has ``path_format``, ``methods``, ``dependant``, ``responses`` and ``include_in_schema``."""
    for context in routing.iter_route_contexts(list(routes)):
        if isinstance(context.original_route, APIRoute) and context.include_in_schema:
            yield context


def document_errors(schema: dict, routes: Iterable[Any]) -> None:
    """Write every error response of every operation into ``schema`` (the app's OpenAPI document)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    if "ErrorBody" not in components:
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in body.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components["ErrorBody"] = body
    paths = schema.get("paths", {})
    for route in api_routes(routes):
        for method in route.methods:
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status, codes in sorted(route_errors(route).items()):
                listed = sorted(codes)
                model = "HTTPValidationError" if status == 422 else "ErrorBody"
                responses[str(status)] = {
                    "description": f"{TITLES.get(status, 'Error')}. Codes: " + ", ".join(f"`{c}`" for c in listed),
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
                    ERROR_CODES_KEY: listed,
                }
