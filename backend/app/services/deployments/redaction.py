"""The redactor of one deployment, and what non-superusers may see of an executor.

Every text that comes from an engine or a container (log lines, ``error_message``, events) passes through
:func:`deployment_redactor` (built by ``context.load_context``) before it is stored, published or logged. It holds *that deployment's* secret
variable values, its target's credentials and the platform's ``SECRET_KEY``, never another organisation's
secrets (a process-wide list would let organisation A confirm a guess of B's password by printing it and
watching it turn into ``***``). Host paths of the deployment's project directory become its project name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from backend.app.config import Settings
from backend.app.core.logging import Redactor
from backend.app.engines.base import project_name
from backend.app.models import Target

_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^:/@\s]*:([^@\s/]+)@", re.IGNORECASE)


def target_secrets(target: Target, credentials: Mapping[str, Any]) -> list[str]:
    """What of ``target`` a redactor masks, from its decrypted ``credentials`` (``target_service.credentials``)."""
    values = [credentials.get(field) for field in ("tls_ca", "tls_cert", "tls_key", "ssh_key")]
    # tls_ca and tls_cert are public material, but a tenant has no business reading them back either.
    match = _URL_PASSWORD.match(target.endpoint or "")
    if match:
        values.append(match.group(1))
    return [v for v in values if v]


def base_redactor(settings: Settings) -> Redactor:
    """Generic shapes plus ``SECRET_KEY`` and the deployments directory (no tenant's secrets)."""
    return Redactor([settings.SECRET_KEY], {str(settings.DEPLOYMENTS_WORKDIR): "<deployments>"})


def deployment_redactor(settings: Settings, deployment_id: str, *, secrets: Iterable[str]) -> Redactor:
    """The redactor for everything an engine or a container says about a deployment: ``secrets`` (its
    secret values and its target's :func:`target_secrets`), ``SECRET_KEY``, its project directory."""
    workdir = settings.DEPLOYMENTS_WORKDIR
    replacements = {
        str(workdir / deployment_id): project_name(deployment_id),
        str(workdir.resolve() / deployment_id): project_name(deployment_id),
        str(workdir): "<deployments>",
    }
    return Redactor([settings.SECRET_KEY, *secrets], replacements)


_EXECUTOR_ACTOR = re.compile(r"^(?P<kind>[a-z]+):[^:]*:\d+:(?P<tag>[0-9a-f]+)$")


def public_actor(actor: str | None, *, superuser: bool) -> str | None:
    """An executor actor (``asyncio:<host>:<pid>:<tag>``) without host and PID for non-superusers."""
    if actor is None or superuser:
        return actor
    match = _EXECUTOR_ACTOR.match(actor)
    return f"{match['kind']}:{match['tag']}" if match else actor
