"""Compose documents from templates: rendering a stack, its preview, and the compose tool's verdict.

:func:`render_stack` renders the template in the sandbox with a deployment's resolved values and checks the
result is a compose-shaped YAML mapping (read by :mod:`backend.app.engines.compose_yaml`, as the deployer will
read it) that asks nothing of the WindFlow host's files; :func:`validate_with_compose` lets the real compose
tool judge it. Error messages are scrubbed of the deployment's secret values.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable

from backend.app.core.exceptions import ValidationFailed
from backend.app.core.logging import SecretMask
from backend.app.engines import compose_judge, compose_yaml
from backend.app.engines.base import EngineError
from backend.app.engines.compose_cli import NORMALISED_OK, check_document, find_compose_command, known_valid, remember_valid
from backend.app.schemas.stack_variables import StackVariable
from backend.app.services.stacks.templating.sandbox import render_template
from backend.app.services.stacks.templating.values import MASK, masked_values, secret_values
from backend.app.services.targets import compose_policy
from backend.app.services.targets.compose_policy import check_host_files

logger = logging.getLogger(__name__)

COMPOSE_TIMEOUT_SECONDS = 30


def _redact(text: str, secrets_: Iterable[str]) -> str:
    """``text`` with every secret value masked (:class:`~backend.app.core.logging.SecretMask`), and any quoted
    fragment of one (parsers quote the token they stumbled on, e.g. YAML's ``found undefined alias 'abc'``
    for the secret ``*abc``)."""
    secrets_ = [value for value in secrets_ if value]
    if not secrets_:
        return text
    text = SecretMask(secrets_)(text)

    def fragment(match: re.Match[str]) -> str:
        inner = match.group(2)
        return f"{match.group(1)}{MASK}{match.group(1)}" if any(inner in value for value in secrets_) else match.group(0)

    return re.sub(r"(['\"])([^'\"\n]{3,})\1", fragment, text)


def parse_compose_yaml(text: str) -> dict:
    """Parse a rendered compose document as the deployer will (:mod:`backend.app.engines.compose_yaml`); a
    syntax error names the line and column.

    Anchors and aliases are bounded (``YAML_MAX_NODES``, ``YAML_MAX_EXPANDED_CHARS``): a "billion laughs"
    document is refused (``yaml_limit``) before anything expands it.
    """
    document = compose_yaml.load(text)
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise ValidationFailed(
            f"the compose document must be a mapping with a 'services' key; it is {kind}",
            code="invalid_compose",
            params={"reason": "not_mapping"},
        )
    services = document.get("services")
    if not isinstance(services, dict) or not services:
        raise ValidationFailed(
            "the compose document needs a non-empty 'services' mapping (service name -> definition)",
            code="invalid_compose",
            params={"reason": "no_services"},
        )
    for name, service in services.items():
        if not isinstance(service, dict):
            raise ValidationFailed(
                f"services.{name}: must be a mapping (image, ports, ...)",
                code="invalid_compose",
                params={"reason": "service_not_mapping", "service": str(name)[:100]},
            )
    return document


def render_stack(template: str, variables: list[StackVariable], values: dict) -> str:
    """Render a stack with resolved ``values`` and check the result is a compose YAML mapping.

    Error messages are scrubbed of the secret values in ``values``.
    """
    try:
        rendered = render_template(template, values)
        # Before any compose tool reads it: refuse what would read files of the WindFlow host.
        check_host_files(parse_compose_yaml(rendered))
    except ValidationFailed as exc:
        secrets_ = secret_values(variables, values)
        scrubbed = _redact(exc.detail, secrets_)
        quoted = {key: _redact(value, secrets_) if isinstance(value, str) else value for key, value in exc.params.items()}
        if scrubbed == exc.detail and quoted == exc.params:
            raise
        raise ValidationFailed(scrubbed, code=exc.code, params=quoted) from None
    return rendered


def render_preview(template: str, variables: list[StackVariable], values: dict) -> str:
    """The rendered document to show a user: validated with the real values, secrets shown as ``***``.

    The preview renders the template with the masked values, so a secret never reaches the text even
    through a filter (``b64encode``); should a template's logic refuse the mask, the real rendering is
    shown with every secret value replaced instead.
    """
    rendered = render_stack(template, variables, values)
    try:
        preview = render_template(template, masked_values(variables, values))
    except ValidationFailed:
        preview = rendered
    return _redact(preview, secret_values(variables, values))


def _in_process(rendered: str, command: tuple[str, ...]) -> bool:
    """The in-process judge's certainty (compose v2 only; never a refusal)."""
    return compose_judge.applies_to(command) and compose_judge.certainly_valid(rendered)


def judged_valid(rendered: str) -> bool:
    """Whether :func:`validate_with_compose` would accept ``rendered`` at once, without running the tool: the
    installed tool (found before) already accepted it, the in-process judge is certain of it, or no tool is
    installed. False when the tool must run."""
    cached = getattr(find_compose_command, "cache_info", None)
    if not (cached and cached().currsize):
        return False  # the tool was never looked for: finding it runs it
    command = find_compose_command()
    return command is None or known_valid(rendered, command, verdict=NORMALISED_OK) or _in_process(rendered, command)


async def validate_with_compose(rendered: str, *, redact: Iterable[str] = (), timeout: float | None = None) -> None:
    """Let the installed compose tool judge ``rendered`` (``docker compose config``), then check its
    normalised output against the always-refused keys of the compose policy. ``rendered`` must come
    from :func:`render_stack`, which refused those keys before the tool could read anything.

    Raises ``ValidationFailed(invalid_compose)`` quoting the tool's error (with ``redact`` values
    replaced by ``***``). Returns without checking when no compose tool is installed; when the tool does not
    answer in time it is refused (``compose_timeout``: validation fails closed).

    The tool runs through the engines' one compose runner (:func:`~backend.app.engines.compose_cli.check_document`:
    an empty temporary directory, a minimal environment, the process group killed on timeout). A document
    this same tool (same program on disk) already accepted in this process, with this check, is not run
    through it again (:func:`~backend.app.engines.compose_cli.known_valid`: the verdict depends on nothing else),
    and neither is a document of the narrow subset the in-process judge is certain the tool accepts
    (:func:`~backend.app.engines.compose_judge.certainly_valid`: plain services, named volumes, no
    interpolation, every reference resolved; it never refuses, anything else goes to the tool). At run time
    the runner's ``compose up`` reads the same document and stays the final judge.
    """
    timeout = COMPOSE_TIMEOUT_SECONDS if timeout is None else timeout
    cached = getattr(find_compose_command, "cache_info", None)  # found once per process (its probe runs the tool)
    command = find_compose_command() if cached and cached().currsize else await asyncio.to_thread(find_compose_command)
    if command is None:
        logger.info("no compose tool installed; skipping compose validation")
        return
    if known_valid(rendered, command, verdict=NORMALISED_OK) or _in_process(rendered, command):
        return
    try:
        # not -q: the normalised output is checked again below
        result = await check_document(rendered, command=command, timeout=timeout, normalised=True)
    except EngineError as exc:
        # Fail closed: a document the tool cannot judge (timeout, cannot run) is refused, never accepted.
        logger.warning("compose validation did not finish (%s); document refused", exc.message)
        if exc.transient:
            raise ValidationFailed(
                f"docker compose could not validate the document within {timeout:g} s "
                "(limit COMPOSE_VALIDATE_TIMEOUT_SECONDS); the document is refused",
                code="compose_timeout",
                params={"seconds": timeout},
            ) from None
        raise ValidationFailed(
            "docker compose could not validate the document; the document is refused",
            code="compose_failed",
            params={"reason": "cannot_run"},
        ) from None
    if result.returncode < 0:
        raise ValidationFailed(
            f"docker compose was killed (signal {-result.returncode}) while validating the document; the document is refused",
            code="compose_failed",
            params={"reason": "killed", "signal": -result.returncode},
        )
    if result.ok:
        # The document as compose normalised it (extends merged, interpolation done): nothing it
        # resolved may read the host either.
        check_host_files(compose_policy.load(result.stdout))
        remember_valid(rendered, command, verdict=NORMALISED_OK)
        return
    lines = [line for line in result.lines if "level=warning" not in line]
    message = _redact("\n".join(lines).strip() or f"exit status {result.returncode}", redact)
    if len(message) > 2000:
        message = message[:2000] + "..."
    raise ValidationFailed(
        f"docker compose rejected the document: {message}", code="invalid_compose", params={"reason": "rejected", "message": message}
    )
