"""The wire format across processes: an event's envelope (its longest strings truncated to fit a payload)
or a log pointer, wrapped with the sender's ``origin`` and a number."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from backend.app.core.events import Event

logger = logging.getLogger("backend.app.runtime.event_transport")  # one logger name for the whole bus

TRUNCATION_MARKER = "...[truncated {} characters]"


def _dumps(value: Any) -> str:
    # ASCII only: the byte size of the payload is its length, whatever the server encoding.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True, default=str)


def wire_event(origin: str, number: int, envelope_json: str) -> str:
    # ``n`` keeps two identical events distinct: PostgreSQL folds identical notifications of one transaction.
    return f'{{"origin":{json.dumps(origin)},"n":{number},"event":{envelope_json}}}'


def wire_overhead(origin: str) -> int:
    return len(wire_event(origin, 10**19, ""))


def log_pointer(evt: Event) -> str:
    """A log update as it crosses processes: which deployment, which ``seq`` range (lines stay in the DB)."""
    seqs = [line["seq"] for line in evt.data.get("logs", ())]
    return _dumps(
        {
            "deployment_id": evt.deployment_id,
            "organization_id": evt.organization_id,
            "timestamp": evt.data.get("timestamp") or evt.to_dict()["timestamp"],
            "first_seq": min(seqs, default=0),
            "last_seq": max(seqs, default=0),
        }
    )


def wire_pointer(origin: str, number: int, pointer_json: str) -> str:
    return f'{{"origin":{json.dumps(origin)},"n":{number},"logs":{pointer_json}}}'


@dataclass(frozen=True)
class LogPointer:
    deployment_id: str
    organization_id: str
    timestamp: str
    first_seq: int
    last_seq: int


def decode(payload: str | bytes) -> tuple[str, Event | LogPointer]:
    raw = json.loads(payload)
    if "logs" in raw:
        return raw["origin"], LogPointer(**raw["logs"])
    return raw["origin"], Event.from_dict(raw["event"])


def _shrink(value: Any, max_bytes: int) -> Any | None:
    """A copy of JSON ``value`` whose longest strings are cut until it encodes in ``max_bytes``.

    Returns ``None`` when cutting strings is not enough (too many small values).
    """
    value = json.loads(_dumps(value))
    cut: set[tuple] = set()
    for _ in range(100):
        size = len(_dumps(value))
        if size <= max_bytes:
            return value
        path, longest = _longest_string(value, (), cut)
        if path is None:
            return None
        marker_room = len(TRUNCATION_MARKER.format(len(longest)))
        # Room left for this string once everything else is encoded; keep the longest prefix whose
        # encoding (escapes count: "é" is 6 bytes) fits in it.
        room = max(0, len(_dumps(longest)) - (size - max_bytes) - marker_room - 2)
        keep = _prefix_fitting(longest, room)
        shortened = longest[:keep] + TRUNCATION_MARKER.format(len(longest) - keep)
        value = _replace(value, path, shortened)
        cut.add(path)
    return None


def _prefix_fitting(text: str, room: int) -> int:
    """The length of the longest prefix of ``text`` whose JSON encoding (without quotes) fits ``room`` bytes."""
    low, high = 0, min(len(text), room)
    while low < high:
        middle = (low + high + 1) // 2
        if len(_dumps(text[:middle])) - 2 <= room:
            low = middle
        else:
            high = middle - 1
    return low


def _longest_string(value: Any, path: tuple, skip: set[tuple]) -> tuple[tuple | None, str]:
    best: tuple[tuple | None, str] = (None, "")
    if isinstance(value, str):
        return (path, value) if path not in skip else best
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        candidate = _longest_string(item, (*path, key), skip)
        if candidate[0] is not None and len(_dumps(candidate[1])) > len(_dumps(best[1])):
            best = candidate
    return best


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def encode_envelope(envelope: dict[str, Any], max_bytes: int) -> str:
    """Encode an event envelope in at most ``max_bytes``: as is when it fits, else with the longest strings
    of its ``data`` truncated (marked ``...[truncated N characters]``)."""
    encoded = _dumps(envelope)
    if len(encoded) <= max_bytes:
        return encoded
    return _truncate_data(envelope, max_bytes)


def _truncate_data(envelope: dict, max_bytes: int) -> str:
    # ``"data":{}`` grows by the encoding of data minus the two braces.
    base = len(_dumps(dict(envelope, data={}))) - 2
    data = _shrink(envelope.get("data") or {}, max_bytes - base)
    if data is None:
        logger.warning(
            "%s event of deployment %s is too large to send even truncated; sending it without data",
            envelope.get("type"),
            envelope.get("deployment_id"),
        )
        data = {"truncated": True}
    return _dumps(dict(envelope, data=data))
