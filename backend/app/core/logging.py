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
from collections.abc import Callable
from pathlib import Path

MASK = "***"

# A value after "key: " / "key=": a quoted string (JSON, or a Python repr, possibly bytes) up to its
# closing quote, escapes included, or else one bare word. Quoted values are masked whole: a password
# such as "correct horse battery" must not leak after its first space. A quote that never closes (a
# truncated line) masks the rest of the text rather than leak it.
_VALUE = r"""(?P<q>[bru]?(?P<quote>["']))(?:(?!(?P=quote))[^\\]|\\.)*(?P=quote)?|(?P<bare>[^'"\s,;&}]+)"""


def _mask_value(match: re.Match[str]) -> str:
    if match.group("quote"):
        return match.group("key") + match.group("q") + MASK + match.group("quote")
    return match.group("key") + MASK


_PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # JSON Web Tokens: three base64url segments, the first two starting with '{"' encoded (eyJ).
    # Possessive, and the header segment bounded, so a long base64 run full of "eyJ" costs linear time
    # (unbounded, every "eyJ" in it rescanned the rest of the run).
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,1000}+\.eyJ[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]*+"), MASK),
    # WindFlow personal API tokens.
    (re.compile(r"\bwf_[A-Za-z0-9_-]{20,}"), "wf_" + MASK),
    # Authorization / Cookie headers, in "Header: value" and dict/JSON forms.
    (
        re.compile(
            r"(?i)(?P<key>['\"]?(?:authorization|proxy-authorization|cookie|set-cookie|x-api-key)['\"]?\s*[:=]\s*)"
            r"(?:(?:bearer|basic|token)\s+(?=[^'\"\s]))?(?:" + _VALUE + ")"
        ),
        _mask_value,
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    # key=value / "key": "value" for secret-looking keys.
    (
        re.compile(
            # A key is one whole word (starting at a word boundary, taken possessively) that contains a
            # secret-looking name. Written as "prefix* name suffix*" the regex retried every split of a
            # long word: quadratic, seconds for one 8 kB base64 blob in a log line.
            r"(?i)(?<![\w.-])(?P<key>['\"]?"
            r"(?=[\w.-]*?(?:password|passwd|pwd|secret|token|api[_-]?key|private[_-]?key|credential))"
            r"[\w.-]++['\"]?\s*[:=]\s*)(?:" + _VALUE + ")"
        ),
        _mask_value,
    ),
    # user:password@ inside URLs (the user may be empty: redis://:password@host).
    (re.compile(r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://[^:/@\s]*):([^@\s/]+)@"), r"\1:" + MASK + "@"),
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
_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


def add_file_handler(target: logging.Logger, log_file: str) -> None:
    """Also write ``target``'s records to ``log_file`` (redacted), once per file."""
    path = str(Path(log_file).resolve())
    if any(isinstance(h, logging.FileHandler) and h.baseFilename == path for h in target.handlers):
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(RedactingFilter())
    target.addHandler(handler)


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
