"""Stacks: CRUD with role checks, and the check that a template renders with its variable schema.

A stack is stored only if its schema parses and its template renders, with the defaults (generators
evaluated; a placeholder for each required variable without default), to a compose YAML mapping. When
the defaults alone make a complete deployment, the rendered document is also checked by the real
compose tool. The stored schema is the canonical form (``password`` becomes ``secret``, enum options
become ``{value, label}``).

The variables may be sent as text (``variables_source``, YAML or JSON): the text is kept as written, for the
editor to show again, and read here (as compose YAML is read, :mod:`backend.app.engines.compose_yaml`) into
``variables``. New ``variables`` sent without text drop the stored text, which no longer says the same.

``source`` is ``"catalog"`` for a stack loaded from ``stacks_definitions/`` and untouched since;
editing its name, template, variables or version makes it ``"user"``, so a later catalogue update
(strategy ``update``) keeps the local edit instead of overwriting it.

Services take the caller's session and never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.core.events import queue_event, resource_changed
from backend.app.core.exceptions import Conflict, ValidationFailed
from backend.app.database import end_transaction
from backend.app.engines import compose_yaml
from backend.app.models import Role, Stack, User
from backend.app.schemas.stacks import StackCreate, StackUpdate
from backend.app.services import pagination
from backend.app.services.identity import organization_service
from backend.app.services.stacks import bounded_render, templating

SOURCE_USER = "user"
SOURCE_CATALOG = "catalog"


async def validate_definition(template: str, variables: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Check a stack definition; return its variable schema in canonical form.

    Raises ``ValidationFailed`` (422) saying what is wrong: the schema (with its path), the rendering
    (with the template line) or the rendered YAML (with line and column).
    """
    parsed = templating.parse_variables(variables or [])
    values, examples = templating.example_values(parsed)
    try:
        rendered = await bounded_render.render_stack(template, parsed, values)
        if not examples:
            await bounded_render.validate_with_compose(rendered, redact=templating.secret_values(parsed, values))
    except ValidationFailed as exc:
        if exc.code == "compose_forbidden":  # already names the key and the rule
            raise
        raise ValidationFailed(
            f"rendering the template with the default values failed: {exc.detail}",
            code=exc.code,
            params={**exc.params, "defaults": True},
        ) from None
    return [variable.model_dump() for variable in parsed]


def read_variables_source(text: str) -> list[dict[str, Any]]:
    """The variable definitions a ``variables_source`` text holds (an empty text: none)."""
    try:
        value = compose_yaml.load(text)
    except ValidationFailed as exc:
        raise ValidationFailed(
            f"variables_source: {exc.detail}", code=exc.code, params={**exc.params, "field": "variables_source"}
        ) from None
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        problem = {"field": "variables_source", "message": "must be a list of variable definitions (objects)", "reason": "not_a_list"}
        raise ValidationFailed(
            "variables_source: must be a list of variable definitions (objects)",
            code="invalid_variable_schema",
            params={**problem, "problems": [problem]},
        )
    if len(value) > 200:
        problem = {
            "field": "variables_source",
            "message": "at most 200 variables in a stack",
            "reason": "too_many_variables",
            "max": 200,
            "found": len(value),
        }
        raise ValidationFailed(
            "variables_source: at most 200 variables in a stack",
            code="invalid_variable_schema",
            params={**problem, "problems": [problem]},
        )
    return value


def _variables_of(sent: dict[str, Any]) -> dict[str, Any]:
    """``variables`` (and ``variables_source``) as they are stored, from the fields of a request that were sent."""
    if sent.get("variables_source") is not None:
        if sent.get("variables") is not None:
            raise ValidationFailed("send variables or variables_source, not both", code="variables_twice")
        return {"variables": read_variables_source(sent["variables_source"]), "variables_source": sent["variables_source"]}
    if "variables" in sent:
        return {"variables": sent["variables"], "variables_source": None}
    return {"variables_source": None} if "variables_source" in sent else {}


STACKS_BY_NAME = pagination.Ordering("stacks", (Stack.name, Stack.id))


async def list_for_user(
    session: AsyncSession,
    *,
    user: User,
    page: pagination.PageParams,
    organization_id: str | None = None,
    q: str | None = None,
    source: str | None = None,
) -> pagination.Page:
    """Stacks of the organisations ``user`` belongs to (every one for a superuser), by name; ``q``: the name or
    description contains it; ``source``: ``catalog`` or ``user``.

    Filtering on an organisation the user does not belong to answers 404, like reading it would.
    """
    scope = await organization_service.readable_partitions(
        session, user=user, org_column=Stack.organization_id, organization_id=organization_id
    )
    query = select(Stack)
    if q:
        query = query.where(pagination.contains(Stack.name, q) | pagination.contains(Stack.description, q))
    if source is not None:
        query = query.where(Stack.source == source)
    return await pagination.paginate(session, query=query, ordering=STACKS_BY_NAME, params=page, partitions=scope)


async def find_by_name(session: AsyncSession, *, organization_id: str, name: str) -> Stack | None:
    return (await session.execute(select(Stack).where(Stack.organization_id == organization_id, Stack.name == name))).scalar_one_or_none()


def _duplicate(name: str) -> Conflict:
    return Conflict(
        f"a stack named {name!r} already exists in this organization; pick another name or update that stack",
        code="stack_exists",
        params={"name": name},
    )


async def _flush(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent request took the name between the check and the write
        raise _duplicate(name) from exc


async def create(session: AsyncSession, *, user: User, data: StackCreate) -> Stack:
    """Create a stack in ``data.organization_id`` or the caller's default organisation (operator or higher)."""
    organization_id = await organization_service.resolve_organization(
        session, user=user, organization_id=data.organization_id, minimum=Role.OPERATOR
    )
    given = _variables_of(data.model_dump(include=data.model_fields_set & {"variables", "variables_source"}))
    await end_transaction(session)  # rendering may take seconds: no transaction (on SQLite, no write lock) meanwhile
    variables = await validate_definition(data.template, given.get("variables", []))
    if await find_by_name(session, organization_id=organization_id, name=data.name) is not None:
        raise _duplicate(data.name)
    stack = Stack(
        organization_id=organization_id,
        name=data.name,
        description=data.description,
        version=data.version,
        template=data.template,
        variables=variables,
        variables_source=given.get("variables_source"),
        source=SOURCE_USER,
    )
    session.add(stack)
    await _flush(session, data.name)
    queue_event(session, resource_changed(organization_id, "stack", "created", stack.id, stack.name))
    return stack


_NOT_NULL = ("name", "version", "template", "variables")


async def update(session: AsyncSession, *, stack: Stack, data: StackUpdate) -> Stack:
    """Apply the fields sent; a new template or schema is validated together with the other one."""
    changes = data.model_dump(exclude_unset=True)
    for field in ("variables", "variables_source"):
        changes.pop(field, None)
    if "variables" in data.model_fields_set and data.variables is None:
        raise ValidationFailed(
            "variables cannot be null; leave it out to keep the current value", code="not_nullable", params={"field": "variables"}
        )
    changes.update(_variables_of(data.model_dump(include=data.model_fields_set & {"variables", "variables_source"})))
    for field in _NOT_NULL:
        if field in changes and changes[field] is None:
            raise ValidationFailed(
                f"{field} cannot be null; leave it out to keep the current value", code="not_nullable", params={"field": field}
            )
    if "template" in changes or "variables" in changes:
        await end_transaction(session)  # as in create
        changes["variables"] = await validate_definition(changes.get("template", stack.template), changes.get("variables", stack.variables))
    name = changes.get("name")
    if (
        name is not None
        and name != stack.name
        and await find_by_name(session, organization_id=stack.organization_id, name=name) is not None
    ):
        raise _duplicate(name)
    content_changed = any(
        field in changes and changes[field] != getattr(stack, field)
        for field in ("name", "version", "template", "variables", "variables_source")
    )
    for field, value in changes.items():
        setattr(stack, field, value)
    if content_changed and stack.source == SOURCE_CATALOG:
        stack.source = SOURCE_USER
    await _flush(session, stack.name)
    queue_event(session, resource_changed(stack.organization_id, "stack", "updated", stack.id, stack.name))
    return stack


async def delete(session: AsyncSession, *, stack: Stack) -> None:
    """Delete a stack. Its deployments stay (they keep their rendered document; ``stack_id`` becomes null)."""
    event = resource_changed(stack.organization_id, "stack", "deleted", stack.id, stack.name)
    await session.delete(stack)
    await session.flush()
    queue_event(session, event)


async def render(stack: Stack, variables: dict[str, Any]) -> str:
    """The stack rendered with ``variables`` (generators evaluated for the preview), secrets as ``***``.

    The real rendering is validated like a deployment's would be (YAML, then the compose tool).
    """
    parsed = templating.parse_variables(stack.variables or [])
    values = templating.resolve_values(parsed, variables)
    preview = await bounded_render.render_preview(stack.template, parsed, values)
    rendered = await bounded_render.render_stack(stack.template, parsed, values)
    await bounded_render.validate_with_compose(rendered, redact=templating.secret_values(parsed, values))
    return preview
