"""The reasons a status change is recorded with, as stable codes and parameters: what writers call.

Writers store a reason as English text (the history's ``reason`` column, the server log, ``[RECOVERY]``
lines); the API gives each history entry the code and parameters of its reason as well, so that a client
words it in its own language. The one list is :data:`backend.app.core.deployment_words.HISTORY_REASONS`
(``REASONS`` here), in the core layer so that a ``[RECOVERY]`` log line's reason gets its code as well: a
reason that matches none of them has no code (the client shows the text).
"""

from __future__ import annotations

from typing import Any

from backend.app.core.deployment_words import HISTORY_REASONS as REASONS
from backend.app.core.deployment_words import history_reason_words

__all__ = ["REASONS", "classify", "text"]


def text(code: str, **params: Any) -> str:
    """The English text of a reason (what is stored)."""
    return REASONS[code].format(**params)


def classify(reason: str | None) -> tuple[str | None, dict[str, str]]:
    """``(code, params)`` of a stored reason; ``(None, {})`` for one that is not in :data:`REASONS`."""
    return history_reason_words(reason)
