"""What an audit entry says a request changed, without ever holding a secret.

A request's fields are summarised one by one: a field whose name is in :data:`SHOWN` keeps its value when
it is a short scalar (or a short list of them); anything else, and every field whose name looks secret
(password, secret, token, key, credential, certificate), is only ``"changed"``. ``variables`` keep their
names, each ``"changed"``: a stack variable may be a secret and this module does not know the schema.
"""

from __future__ import annotations

import re
from typing import Any

CHANGED = "changed"
#: Field names whose values are shown (scalars only, shortened): none of them can hold a secret.
SHOWN = frozenset(
    {
        "name",
        "description",
        "role",
        "type",
        "kind",
        "email",
        "full_name",
        "user_id",
        "is_active",
        "is_superuser",
        "organization_id",
        "organization_name",
        "stack_id",
        "target_id",
        "stack_version",
        "revision",
        "auto_rollback",
        "keep_volumes",
        "max_concurrent_deployments",
        "events",
        "allowed_variables",
        "branch",
        "scopes",
        "stack_ids",
        "enabled",
        "expires_in_days",
        "server",
        "username",
        "host_id",
        "placed",
    }
)
_SECRETISH = re.compile(r"pass|secret|token|key|credential|cert|private|auth", re.IGNORECASE)
_MAX_TEXT = 200
_MAX_ITEMS = 50


def clean(text: str) -> str:
    """A string as an entry may hold it: without NUL characters (PostgreSQL refuses them in text and JSON)."""
    return text.replace("\x00", "")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= _MAX_TEXT)


def _shown(value: Any) -> Any:
    if isinstance(value, str) and _scalar(value):
        return clean(value)
    if _scalar(value):
        return value
    if isinstance(value, list) and len(value) <= _MAX_ITEMS and all(_scalar(v) for v in value):
        return [clean(v) if isinstance(v, str) else v for v in value]
    return CHANGED


def field(name: str, value: Any) -> Any:
    """The summary of one field of a request."""
    if _SECRETISH.search(name):
        return CHANGED
    if name == "variables" and isinstance(value, dict):
        return {clean(str(k))[:100]: CHANGED for k in list(value)[:_MAX_ITEMS]}
    if isinstance(value, dict):  # a policy, settings: which keys changed, booleans and numbers shown
        return {
            str(k)[:100]: (v if isinstance(v, bool | int) and not _SECRETISH.search(str(k)) else CHANGED)
            for k, v in list(value.items())[:_MAX_ITEMS]
        }
    if name in SHOWN:
        return _shown(value)
    return CHANGED


def of_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The summary of a request's fields (a JSON body, a form, query parameters)."""
    return {clean(str(name))[:100]: field(str(name), value) for name, value in list(fields.items())[:_MAX_ITEMS]}
