"""Server logging that never writes a password, token, ``Authorization`` header, JWT or known secret.

:class:`RedactingFilter` rewrites every record (message *and* arguments) before any handler formats it.
It masks well-known shapes (JWTs, WindFlow API tokens, ``Authorization``/``Cookie`` headers,
``password=``/``"token": "..."`` pairs, credentials inside URLs) and every value registered with
:func:`register_secret` (secret deployment variables, target credentials).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from pathlib import Path

MASK = "***"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # JSON Web Tokens: three base64url segments, the first two starting with '{"' encoded (eyJ).
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MASK),
    # WindFlow personal API tokens.
    (re.compile(r"\bwf_[A-Za-z0-9_-]{20,}"), "wf_" + MASK),
    # Authorization / Cookie headers, in "Header: value" and dict/JSON forms.
    (
        re.compile(r"(?i)(['\"]?(?:authorization|proxy-authorization|cookie|set-cookie|x-api-key)['\"]?\s*[:=]\s*)"
                   r"(['\"]?)(?:(?:bearer|basic|token)\s+)?[^'\"\s,;}]+(\2)"),
        r"\1\2" + MASK + r"\3",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    # key=value / "key": "value" for secret-looking keys.
    (
        re.compile(
            r"(?i)(['\"]?[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|private[_-]?key|credential)s?[\w.-]*['\"]?"
            r"\s*[:=]\s*)(['\"]?)([^'\"\s,;&}]+)(\2)"
        ),
        r"\1\2" + MASK + r"\4",
    ),
    # user:password@ inside URLs.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]+):([^@\s/]+)@"), r"\1:" + MASK + "@"),
]

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_regex: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in a server log line from now on (values of 4+ characters)."""
    global _secret_regex
    if not value or len(value) < 4:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_regex = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """Return ``text`` with every secret-looking value and registered secret masked."""
    if not text:
        return text
    regex = _secret_regex
    if regex is not None:
        text = regex.sub(MASK, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts the fully formatted message (and exception text) of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not crash logging
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_configured = False


def setup_logging(level: str = "INFO", log_file: str | None = None) -> None:
    """Install one redacting handler on the root logger (idempotent)."""
    global _configured
    root = logging.getLogger()
    root.setLevel(level)
    if _configured:
        return
    formatter = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    # uvicorn's loggers propagate to root; give its access log the same filter (it has its own handlers).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logging.getLogger(name).addFilter(RedactingFilter())
    _configured = True
