"""How a deploy hook's caller proves it holds the secret (pure functions, no I/O).

Three forms, tried in this order:

* **timestamped** — ``X-WindFlow-Timestamp: <unix seconds>`` and ``X-WindFlow-Signature-256:
  sha256=<hex HMAC-SHA256 of "<timestamp>." + raw body>``: refused outside the replay window
  (``HOOK_REPLAY_WINDOW_SECONDS``) and, within it, the same signature twice (the signature is the nonce);
* **GitHub** — ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``; GitHub's
  ``X-GitHub-Delivery`` id, when sent, is the nonce (a delivery replayed is refused; GitHub's own redelivery
  sends a new id);
* **GitLab** — ``X-Gitlab-Token: <secret>`` (GitLab sends the secret itself, over TLS).

Signatures are compared in constant time against every secret that is valid now (the current one and, for
a grace period after a rotation, the previous one).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backend.app.core.exceptions import Conflict, NotAuthenticated

PREFIX = "sha256="
_MAX_HEADER = 200


@dataclass(frozen=True)
class Verified:
    form: str  # timestamped | github | gitlab
    nonce: str | None


def sign(secret: str, body: bytes) -> str:
    """GitHub's ``X-Hub-Signature-256`` value of ``body``."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_timestamped(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-WindFlow-Signature-256`` value of ``body`` sent with ``X-WindFlow-Timestamp: timestamp``."""
    return sign(secret, f"{timestamp}.".encode() + body)


def _refused(detail: str, code: str) -> NotAuthenticated:
    return NotAuthenticated(detail, code=code, headers=None)


def _matches(given: str, expected: Sequence[str]) -> bool:
    found = False
    for value in expected:  # every candidate compared, whatever matched first
        found |= hmac.compare_digest(given.encode(), value.encode())
    return found


def verify(headers: Mapping[str, str], body: bytes, *, secrets: Sequence[str], now: float, window: int) -> Verified:
    """The form a call is signed with, or the refusal: 401 (no or a wrong signature, a timestamp that is not
    a number) or 409 (a timestamp outside the replay window)."""
    stamped = headers.get("x-windflow-signature-256")
    if stamped is not None:
        raw = headers.get("x-windflow-timestamp", "")
        if not raw.isdigit() or len(raw) > 12:
            raise _refused("X-WindFlow-Timestamp must be the signing time in Unix seconds", "hook_timestamp_invalid")
        timestamp = int(raw)
        if not _matches(stamped[:_MAX_HEADER], [sign_timestamped(s, timestamp, body) for s in secrets]):
            raise _refused(
                "X-WindFlow-Signature-256 does not match: sign '<timestamp>.' + the raw body with the hook's secret (HMAC-SHA256)",
                "hook_signature_invalid",
            )
        if abs(now - timestamp) > window:
            raise Conflict(
                f"the signed timestamp is {int(now - timestamp)} s away from the server's clock; the window is {window} s "
                "(a replayed or delayed call): sign the call again",
                code="hook_replayed",
                params={"window": window},
            )
        return Verified("timestamped", "t:" + stamped[len(PREFIX) : len(PREFIX) + 64])
    github = headers.get("x-hub-signature-256")
    if github is not None:
        if not _matches(github[:_MAX_HEADER], [sign(s, body) for s in secrets]):
            raise _refused(
                "X-Hub-Signature-256 does not match: 'sha256=' + the hex HMAC-SHA256 of the raw body with the hook's secret",
                "hook_signature_invalid",
            )
        delivery = headers.get("x-github-delivery")
        return Verified("github", "g:" + delivery[:100] if delivery else None)
    gitlab = headers.get("x-gitlab-token")
    if gitlab is not None:
        if not _matches(gitlab[:_MAX_HEADER], list(secrets)):
            raise _refused("X-Gitlab-Token is not the hook's secret", "hook_signature_invalid")
        event = headers.get("x-gitlab-event-uuid")
        return Verified("gitlab", "l:" + event[:100] if event else None)
    raise _refused(
        "the call is not signed: send X-Hub-Signature-256 (or X-WindFlow-Timestamp and X-WindFlow-Signature-256)",
        "hook_signature_missing",
    )
