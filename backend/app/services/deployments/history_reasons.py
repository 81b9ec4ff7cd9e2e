"""The reasons a status change is recorded with, as stable codes and parameters.

Writers store a reason as English text (the history's ``reason`` column, the server log, ``[RECOVERY]``
lines); the API gives each history entry the code and parameters of its reason as well, so that a client
words it in its own language. :data:`REASONS` is the one list: a reason that matches none of them has no
code (the client shows the text).
"""

from __future__ import annotations

import re
from typing import Any

#: code -> the English text writers store; ``{name}`` is a parameter.
REASONS: dict[str, str] = {
    "created": "created",
    "claimed": "claimed by {executor}",
    "running": "all services running",
    "retry_scheduled": "transient failure, retry in {seconds}s",
    "failed": "deployment failed",
    "preparation_failed": "preparation failed",
    "stopped_by_user": "stopped by user",
    "stop_requested": "stop requested",
    "stopped": "stopped",
    "stop_failed": "stop failed",
    "delete_requested": "delete requested",
    "delete_failed": "delete failed",
    "cancelled_by_user": "cancelled by user",
    "start": "start",
    "redeploy": "redeploy",
    "retry": "retry",
    "recovery_timeout": "recovery timeout",
    "executor_lost_running": "executor lost; containers found running",
    "executor_lost_retrying": "executor lost (lease expired)",
    "executor_lost_failed": "executor lost, no attempts left",
    "revision_update": "revision {revision}: update",
    "revision_rollback": "revision {revision}: rollback to revision {of}",
    "automatic_rollback": "revision {failed} failed: automatic rollback to revision {of} as revision {revision}",
    "automatic_rollback_failed": "automatic rollback failed",
    "watch_down": "watcher: nothing of it runs any more",
    "watch_running": "watcher: every container up and healthy again",
}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(f"(?P<{part}>.+?)" if i % 2 else re.escape(part) for i, part in enumerate(parts))
    return re.compile(f"^{regex}$")


_PATTERNS = [(code, _pattern(template)) for code, template in REASONS.items()]


def text(code: str, **params: Any) -> str:
    """The English text of a reason (what is stored)."""
    return REASONS[code].format(**params)


def classify(reason: str | None) -> tuple[str | None, dict[str, str]]:
    """``(code, params)`` of a stored reason; ``(None, {})`` for one that is not in :data:`REASONS`."""
    if not reason:
        return None, {}
    for code, pattern in _PATTERNS:
        match = pattern.match(reason)
        if match:
            return code, match.groupdict()
    return None, {}
