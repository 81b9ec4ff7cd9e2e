"""Listing pages that cost the same on page 1 and page 20,000: keyset cursors, bounded offsets, capped totals.

Every listing is ordered by a unique key (e.g. ``(created_at, id)`` newest first) backed by an index, so a
page is one index range read of ``limit + 1`` rows whatever the table size:

* ``next_cursor`` is an opaque token encoding the sort key of the last row of the page. The next page asks
  for rows strictly after it, so rows inserted meanwhile never shift what comes next (an ``OFFSET`` would
  skip or repeat rows) and a walk returns every row that existed when it started exactly once.
* ``offset`` still works up to :data:`MAX_OFFSET` (only the keys of the skipped rows are read, from the
  index); beyond, the request is refused with a 422 that points to the cursor.
* ``total`` counts at most :data:`COUNT_CAP` matching rows (``SELECT count(*) FROM (... LIMIT cap + 1)``,
  an index range as well); ``total_is_exact`` says whether it is the exact figure or the cap.

A filter on several values of an indexed column (several organisations, several statuses) cannot be read
in order from one index range, so such a listing is *fanned out*: one ordered, limited query per value
combination, merged in Python. Each stays an index range; a user belongs to a handful of organisations and
there are six statuses.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, bindparam, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import TypeDecorator

from backend.app.core.exceptions import ValidationFailed

T = TypeVar("T")

#: Largest ``offset`` a listing accepts; deeper pages are read with ``cursor``.
MAX_OFFSET = 10_000
#: Largest ``limit`` of the ordinary listings.
MAX_LIMIT = 200
#: ``total`` counts matching rows up to this many; beyond it ``total_is_exact`` is false.
COUNT_CAP = 10_000
_MAX_CURSOR_LENGTH = 1024


class InvalidCursor(ValidationFailed):
    def __init__(self, why: str) -> None:
        super().__init__(
            f"cursor is not valid for this listing ({why}): pass the next_cursor of a previous page unchanged, "
            "or leave cursor out to start from the first page",
            code="invalid_cursor",
        )


@dataclass(frozen=True)
class PageParams:
    """What a client asked for: ``limit`` rows after ``cursor`` (or after skipping ``offset`` rows)."""

    limit: int = 50
    offset: int = 0
    cursor: str | None = None

    def __post_init__(self) -> None:
        if self.cursor is not None and self.offset:
            raise ValidationFailed("pass either offset or cursor, not both", code="invalid_page")
        if self.offset > MAX_OFFSET:
            raise ValidationFailed(
                f"offset must be at most {MAX_OFFSET}; to read further, follow next_cursor from page to page",
                code="offset_too_large",
                params={"max": MAX_OFFSET},
            )


@dataclass
class Page(Generic[T]):
    items: list[T]
    total: int
    total_is_exact: bool
    next_cursor: str | None


@dataclass(frozen=True)
class Ordering:
    """A listing's unique sort key: its columns, all ascending or all descending, and a cursor tag.

    ``name`` is written into cursors so that a cursor of one listing is refused by another.
    """

    name: str
    columns: tuple[Any, ...]
    descending: bool = False

    def order_by(self, columns: Sequence[Any] | None = None) -> list[Any]:
        return [c.desc() if self.descending else c.asc() for c in (columns or self.columns)]

    def after(self, values: Sequence[Any]) -> Any:
        """Rows strictly after ``values`` in this order (a row-value comparison an index range serves)."""
        bound = tuple_(*(bindparam(None, v, type_=c.type) for c, v in zip(self.columns, values, strict=True)))
        key = tuple_(*self.columns)
        return key < bound if self.descending else key > bound

    # --- cursors -----------------------------------------------------------------------------------

    def encode(self, values: Sequence[Any]) -> str:
        raw = json.dumps({"o": self.name, "k": [_to_json(v) for v in values]}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def decode(self, cursor: str) -> list[Any]:
        if len(cursor) > _MAX_CURSOR_LENGTH:
            raise InvalidCursor("too long")
        try:
            data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise InvalidCursor("not a cursor") from None
        if not isinstance(data, dict) or data.get("o") != self.name:
            raise InvalidCursor("it belongs to another listing")
        values = data.get("k")
        if not isinstance(values, list) or len(values) != len(self.columns):
            raise InvalidCursor("wrong shape")
        return [_from_json(v, c) for v, c in zip(values, self.columns, strict=True)]


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    return value


def _from_json(value: Any, column: Any) -> Any:
    python_type = _python_type(column)
    if python_type is datetime:
        if not isinstance(value, str):
            raise InvalidCursor("wrong value type")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidCursor("bad timestamp") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if python_type is int:
        if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
            raise InvalidCursor("wrong value type")
        return value
    if not isinstance(value, str) or len(value) > 500 or "\x00" in value:
        raise InvalidCursor("wrong value type")
    return value


def _python_type(column: Any) -> type:
    column_type = column.type
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    try:
        return column_type.python_type
    except NotImplementedError:  # pragma: no cover - every sort column has a plain type
        return str


def _key(row: Any, ordering: Ordering, key_of: Callable[[Any], tuple] | None) -> tuple:
    if key_of is not None:
        return key_of(row)
    return tuple(getattr(row, c.key) for c in ordering.columns)


async def count_capped(session: AsyncSession, *, query: Select, ordering: Ordering, cap: int) -> int:
    """Matching rows of ``query``, counting at most ``cap + 1``.

    Ordered like the page, so that the count reads the same index range as the page does (an index-only
    scan of at most ``cap + 1`` entries), never the table.
    """
    limited = query.with_only_columns(literal(1), maintain_column_froms=True).order_by(*ordering.order_by()).limit(cap + 1).subquery()
    return (await session.execute(select(func.count()).select_from(limited))).scalar_one()


async def _key_of_last_skipped(session: AsyncSession, parts: list[Select], ordering: Ordering, offset: int) -> list | None:
    """The sort key of the ``offset``-th row (``None`` when there are fewer rows), read from keys alone.

    The page after an offset is then read like a cursor page: the skipped rows themselves are never loaded.
    With one part the database skips the keys itself (``OFFSET`` on an index-only read); with several, each
    part returns its first ``offset`` keys (at most :data:`MAX_OFFSET`) and they are merged.
    """
    chunks = []
    for part in parts:
        keys = part.with_only_columns(*ordering.columns, maintain_column_froms=True).order_by(*ordering.order_by())
        keys = keys.offset(offset - 1).limit(1) if len(parts) == 1 else keys.limit(offset)
        chunks.append((await session.execute(keys)).all())
    if len(parts) == 1:
        found = chunks[0]
    else:
        found = list(itertools.islice(heapq.merge(*chunks, key=tuple, reverse=ordering.descending), offset))[offset - 1 :]
    return list(found[0]) if found else None


async def paginate(
    session: AsyncSession,
    *,
    query: Select,
    ordering: Ordering,
    params: PageParams,
    partitions: Sequence[Sequence[Any]] | None = None,
    scalars: bool = True,
    key_of: Callable[[Any], tuple] | None = None,
    count_cap: int | None = None,
) -> Page:
    """One page of ``query`` in ``ordering`` (see the module docstring).

    ``partitions``: lists of extra conditions, one ordered query each, merged (a multi-value filter);
    ``None`` runs ``query`` as it is. ``key_of`` extracts the sort key of a row that is not an entity
    carrying the ordering's columns as attributes (e.g. a ``(membership, user)`` tuple).
    """
    count_cap = COUNT_CAP if count_cap is None else count_cap
    parts = [query.where(*p) for p in partitions] if partitions is not None else [query]
    if not parts:
        return Page([], 0, True, None)
    after = ordering.decode(params.cursor) if params.cursor is not None else None
    skipped_all = False
    if params.offset:
        start = await _key_of_last_skipped(session, parts, ordering, params.offset)
        skipped_all, after = start is None, start
    wanted = params.limit + 1

    async def run(part: Select) -> list:
        stmt = part.where(ordering.after(after)) if after is not None else part
        result = await session.execute(stmt.order_by(*ordering.order_by()).limit(wanted))
        return list(result.scalars() if scalars else result.all())

    chunks = [] if skipped_all else [await run(part) for part in parts]
    if len(chunks) <= 1:
        merged = chunks[0] if chunks else []
    else:
        merged = list(itertools.islice(heapq.merge(*chunks, key=lambda r: _key(r, ordering, key_of), reverse=ordering.descending), wanted))
    items, has_more = merged[: params.limit], len(merged) > params.limit
    next_cursor = ordering.encode(_key(items[-1], ordering, key_of)) if has_more and items else None

    total = 0
    for part in parts:
        total += await count_capped(session, query=part, ordering=ordering, cap=count_cap)
        if total > count_cap:
            break
    return Page(items, min(total, count_cap), total <= count_cap, next_cursor)


def contains(column: Any, text: str) -> Any:
    """``column`` contains ``text``, case-insensitively (``%`` and ``_`` in it match themselves): the text
    filter (``?q=``) of the small listings (stacks, targets, members, tokens), which scan an organisation's rows."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(f"%{escaped}%", escape="\\")


def any_of(column: Any, values: Sequence[Any] | None) -> list[list[Any]] | None:
    """Partitions for ``column IN values`` (one per value), or ``None`` when there is no such filter."""
    if not values:
        return None
    return [[column == v] for v in dict.fromkeys(values)]


def product(*partition_sets: list[list[Any]] | None) -> list[list[Any]] | None:
    """Every combination of several partition sets (``None`` sets are ignored)."""
    sets = [s for s in partition_sets if s is not None]
    if not sets:
        return None
    return [list(itertools.chain.from_iterable(combo)) for combo in itertools.product(*sets)]


__all__ = [
    "COUNT_CAP",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "InvalidCursor",
    "Ordering",
    "Page",
    "PageParams",
    "any_of",
    "count_capped",
    "paginate",
    "product",
]
