"""The stack catalogue: ``stacks_definitions/*.yaml`` loaded as stacks of an organisation.

A catalogue file is a YAML mapping with ``name``, ``description``, ``version`` (a quoted semantic
version such as ``"1.2.0"``), ``template`` (compose YAML with Jinja2 placeholders) and ``variables``
(the typed schema). Each file is validated like a stack created through the API; an invalid file is
logged with its name and the reason and counted in ``errors``, and the other files still load.

How a file meets an existing stack of the same name in the organisation (``strategy``):

* ``skip``: the existing stack is kept;
* ``update``: a stack still as the catalogue made it (``source == "catalog"``) is replaced when the
  file's version is newer (``1.10.0`` > ``1.9.2``); a stack created or edited through the API is kept;
* ``force``: the stack is replaced by the file whatever its version or origin (an identical stack is
  left alone and counted as skipped).

Like every service this never commits: the caller owns the transaction. Each write runs in a savepoint,
so a name taken concurrently (another replica loading the catalogue) only skips that file.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.exceptions import ValidationFailed
from backend.app.engines import compose_yaml
from backend.app.models import Organization, Stack
from backend.app.services.stacks import stack_service

logger = logging.getLogger(__name__)

Strategy = Literal["skip", "update", "force"]
STRATEGIES: tuple[str, ...] = ("skip", "update", "force")
FILE_KEYS = frozenset({"name", "description", "version", "template", "variables"})
MAX_FILE_BYTES = 1_048_576

_VERSION_RE = re.compile(r"^v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def version_key(version: str) -> tuple:
    """A sort key for semantic versions: ``1.10.0 > 1.9.2``, ``1.0 == 1.0.0``, ``1.0.0-rc.1 < 1.0.0``.

    Raises ``ValueError`` for anything else.
    """
    match = _VERSION_RE.match(version.strip()) if isinstance(version, str) else None
    if match is None:
        raise ValueError(f"{version!r} is not a version like 1.2.0")
    release = [int(part) for part in match.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    pre = match.group(2)
    if pre is None:
        return (tuple(release), (1,))
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (tuple(release), (0, ids))


def is_newer(candidate: str, current: str) -> bool:
    """Whether ``candidate`` is a newer version than ``current`` (an unparsable ``current`` is older)."""
    try:
        current_key = version_key(current)
    except ValueError:
        return True
    return version_key(candidate) > current_key


class CatalogFileError(Exception):
    """A catalogue file that cannot be loaded; the message says why."""


@dataclass(frozen=True)
class CatalogEntry:
    file: str
    name: str
    description: str | None
    version: str
    template: str
    variables: list[dict[str, Any]]


def _new_stats() -> dict[str, Any]:
    return {"created": 0, "updated": 0, "skipped": 0, "errors": 0, "failures": []}


def _fail(stats: dict[str, Any], file: str, reason: str) -> None:
    logger.warning("stack catalogue: %s not loaded: %s", file, reason)
    stats["errors"] += 1
    stats["failures"].append({"file": file, "reason": reason})


def _read_yaml(path: Path) -> Any:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise CatalogFileError(f"larger than {MAX_FILE_BYTES} bytes")
    text = path.read_text(encoding="utf-8")
    try:
        return compose_yaml.load(text)  # as its template's documents are read: YAML 1.2, aliases bounded
    except ValidationFailed as exc:
        raise CatalogFileError(exc.detail) from None


async def read_definition(path: Path) -> CatalogEntry:
    """Parse and validate one catalogue file (the template must render with its defaults)."""
    try:
        data = _read_yaml(path)
    except UnicodeDecodeError:
        raise CatalogFileError("not UTF-8 text") from None
    except OSError as exc:
        raise CatalogFileError(f"cannot read: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise CatalogFileError("must be a YAML mapping with name, description, version, template and variables")
    unknown = sorted(str(k) for k in data if k not in FILE_KEYS)
    if unknown:
        raise CatalogFileError(f"unknown key(s) {', '.join(unknown)}; a stack file takes {', '.join(sorted(FILE_KEYS))}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise CatalogFileError("name: required, a string of at most 100 characters")
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise CatalogFileError("description: must be a string")
    version = data.get("version")
    if not isinstance(version, str):
        raise CatalogFileError('version: required, a quoted string such as "1.0.0" (an unquoted 1.10 is the number 1.1)')
    try:
        version_key(version)
    except ValueError as exc:
        raise CatalogFileError(f"version: {exc}") from None
    template = data.get("template")
    if not isinstance(template, str) or not template.strip():
        raise CatalogFileError("template: required, the compose YAML text (use a block scalar: template: |)")
    variables = data.get("variables") or []
    try:
        canonical = await stack_service.validate_definition(template, variables)
    except ValidationFailed as exc:
        raise CatalogFileError(exc.detail) from None
    return CatalogEntry(path.name, name.strip(), description, version.strip(), template, canonical)


async def read_catalog(directory: Path | str) -> tuple[list[CatalogEntry], list[dict[str, str]]]:
    """Every valid definition in ``directory`` (``*.yaml``, ``*.yml``, by file name) and the failures."""
    directory = Path(directory)
    entries: list[CatalogEntry] = []
    failures: list[dict[str, str]] = []
    if not directory.is_dir():
        logger.warning("stack catalogue: %s is not a directory; no catalogue stacks loaded", directory)
        return entries, failures
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    # Files are validated concurrently (each may run the compose tool), then judged in name order.
    limit = asyncio.Semaphore(4)

    async def read(path: Path) -> CatalogEntry | CatalogFileError:
        async with limit:
            try:
                return await read_definition(path)
            except CatalogFileError as exc:
                return exc

    results = await asyncio.gather(*(read(path) for path in files))
    by_name: dict[str, str] = {}
    for path, result in zip(files, results, strict=True):
        if isinstance(result, CatalogEntry) and result.name in by_name:
            result = CatalogFileError(f"stack name {result.name!r} is already defined by {by_name[result.name]}")
        if isinstance(result, CatalogFileError):
            failures.append({"file": path.name, "reason": str(result)})
            continue
        by_name[result.name] = path.name
        entries.append(result)
    return entries, failures


def _same(stack: Stack, entry: CatalogEntry) -> bool:
    return (
        stack.source == stack_service.SOURCE_CATALOG
        and stack.version == entry.version
        and stack.template == entry.template
        and stack.variables == entry.variables
        and stack.description == entry.description
    )


def _decide(stack: Stack | None, entry: CatalogEntry, strategy: Strategy) -> tuple[str, str]:
    """``(action, reason)`` with action ``create``, ``update`` or ``skip``."""
    if stack is None:
        return "create", "new"
    if strategy == "skip":
        return "skip", "exists (strategy skip)"
    if strategy == "force":
        return ("skip", "identical") if _same(stack, entry) else ("update", "strategy force")
    if stack.source != stack_service.SOURCE_CATALOG:
        return "skip", "created or edited through the API; kept (use strategy force to replace it)"
    if is_newer(entry.version, stack.version):
        return "update", f"{stack.version} -> {entry.version}"
    return "skip", f"version {stack.version} is current"


async def apply_catalog(session: AsyncSession, *, organization_id: str, entries: list[CatalogEntry], strategy: Strategy) -> dict[str, Any]:
    """Create or update the organisation's catalogue stacks from already validated ``entries``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    stats = _new_stats()
    for entry in entries:
        stack = await stack_service.find_by_name(session, organization_id=organization_id, name=entry.name)
        action, reason = _decide(stack, entry, strategy)
        if action == "skip":
            logger.debug("stack catalogue: %s (%s) skipped: %s", entry.file, entry.name, reason)
            stats["skipped"] += 1
            continue
        try:
            async with session.begin_nested():
                if stack is None:
                    stack = Stack(organization_id=organization_id, name=entry.name)
                    session.add(stack)
                stack.description = entry.description
                stack.version = entry.version
                stack.template = entry.template
                stack.variables = entry.variables
                stack.source = stack_service.SOURCE_CATALOG
                await session.flush()
        except IntegrityError:
            _fail(stats, entry.file, f"stack {entry.name!r} was created concurrently; left as it is")
            continue
        stats["created" if action == "create" else "updated"] += 1
        logger.info("stack catalogue: %s %s stack %s (%s)", entry.file, action + "d", entry.name, reason)
    return stats


async def load_catalog(session: AsyncSession, *, organization_id: str, directory: Path | str, strategy: Strategy) -> dict[str, Any]:
    """Load ``directory``'s catalogue into one organisation; never raises for a bad file.

    Returns ``{"created", "updated", "skipped", "errors"}`` counts plus ``"failures"``:
    ``[{"file", "reason"}]`` for each file that could not be loaded (also logged as warnings).
    The caller commits.
    """
    entries, failures = await read_catalog(directory)
    stats = await apply_catalog(session, organization_id=organization_id, entries=entries, strategy=strategy)
    for failure in failures:
        _fail(stats, failure["file"], failure["reason"])
    return stats


async def sync_catalog(session: AsyncSession, *, settings: Settings) -> dict[str, dict[str, Any]]:
    """Load ``STACKS_DEFINITIONS_DIR`` into every organisation with ``STACKS_LOAD_STRATEGY``.

    The files are read and validated once. Returns the stats per organisation id. The caller commits::

        async with AsyncSessionLocal() as session:
            await catalog.sync_catalog(session, settings=settings)
            await session.commit()
    """
    entries, failures = await read_catalog(settings.STACKS_DEFINITIONS_DIR)
    for failure in failures:
        logger.warning("stack catalogue: %s not loaded: %s", failure["file"], failure["reason"])
    organization_ids = (await session.execute(select(Organization.id).order_by(Organization.created_at))).scalars().all()
    results: dict[str, dict[str, Any]] = {}
    for organization_id in organization_ids:
        stats = await apply_catalog(session, organization_id=organization_id, entries=entries, strategy=settings.STACKS_LOAD_STRATEGY)
        stats["errors"] += len(failures)
        stats["failures"].extend(failures)
        results[organization_id] = stats
    logger.info(
        "stack catalogue: %d definition(s) from %s into %d organization(s), %d invalid file(s)",
        len(entries),
        settings.STACKS_DEFINITIONS_DIR,
        len(organization_ids),
        len(failures),
    )
    return results
