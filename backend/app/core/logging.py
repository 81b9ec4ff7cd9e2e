"""Server logging that never writes a password, token, ``Authorization`` header, JWT or known secret.

:class:`RedactingFilter` rewrites every record (message *and* arguments) before any handler formats it.
It masks well-known shapes (JWTs, WindFlow API tokens, ``Authorization``/``Cookie`` headers,
``password=``/``"token": "..."`` pairs, credentials inside URLs) and every value registered with
:func:`register_secret` (secret deployment variables, target credentials).

:class:`SecretMask` is the one way known secret values are masked in text, here and wherever a text is shown
(a deployment's :class:`Redactor`, a rendered document's preview and messages, the compose snapshot the API
shows, the compose policy's messages): every form a value takes in text (:func:`secret_forms`), longest
first, in one pass.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from backend.app.core.files import private_dir

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


def secret_forms(value: str) -> set[str]:
    """The forms a secret value takes in text: as given, stripped, escaped for compose interpolation (``$``
    doubled, as a rendered document holds it), and each long line of a multi-line value (a PEM key echoed
    line by line)."""
    forms = {value, value.strip(), value.replace("$", "$$")}
    forms.update(line.strip() for line in value.splitlines() if len(line.strip()) >= 16 and not line.startswith("-----"))
    return forms


class SecretMask:
    """Masks known secret values in a text: every form of each (:func:`secret_forms`) of at least
    ``min_length`` characters, longest first (a secret that contains another is masked whole), in one pass.

    ``min_length`` keeps very short values from masking ordinary text in logs; a text that only ever holds the
    values themselves (a rendered document) masks them whatever their length.
    """

    def __init__(self, values: Iterable[str | None] = (), *, min_length: int = 1) -> None:
        forms = {form for value in values if value for form in secret_forms(value) if len(form) >= max(1, min_length)}
        ordered = sorted(forms, key=lambda form: (-len(form), form))
        self._regex = re.compile("|".join(re.escape(form) for form in ordered)) if ordered else None

    def __bool__(self) -> bool:
        return self._regex is not None

    def __call__(self, text: str) -> str:
        return self._regex.sub(MASK, text) if self._regex is not None and text else text


_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_registered = SecretMask()


def register_secret(value: str | None) -> None:
    """Mask ``value`` (in every form, :func:`secret_forms`) wherever it appears in a server log line from
    now on (forms of 4+ characters)."""
    global _registered
    if not value or len(value) < 4:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _registered = SecretMask(_secrets, min_length=4)


#: One of these (lower case) is in any ASCII text a pattern above matches: each pattern needs one of
#: them literally (JWT "eyJ", "wf_", the header names, bearer/basic, the secret-looking key names, "://").
#: Text without any of them skips the six patterns, which cost ~18 us per log line (checking costs ~2 us).
#: Only for ASCII text: with IGNORECASE the patterns also match non-ASCII look-alikes (U+017F for "s",
#: U+0131 for "i", U+212A for "k") that ``lower()`` keeps apart.
_TRIGGERS = (
    "eyj",
    "wf_",
    "authorization",
    "cookie",
    "x-api-key",
    "bearer",
    "basic",
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "privatekey",
    "private_key",
    "private-key",
    "credential",
    "://",
)


def _mask_shapes(text: str) -> str:
    if text.isascii():
        lowered = text.lower()
        if not any(trigger in lowered for trigger in _TRIGGERS):
            return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(text: str) -> str:
    """Return ``text`` with every secret-looking value and registered secret masked (server log only).

    The registered values are every secret this process has seen, of every organisation: never use this
    for text a tenant reads (it would tell organisation A whether its output contains B's password). Use a
    :class:`Redactor` holding that deployment's own secrets instead.
    """
    if not text:
        return text
    return _mask_shapes(_registered(text))


# C0 controls (but tab), DEL and C1 controls; ANSI escape sequences (colours, cursor moves) whole.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` without terminal escapes or control characters (a NUL would also make PostgreSQL fail)."""
    return (_CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL).sub("", _ANSI.sub("", text))


def escape_controls(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\n``, ``\\x1b``): one record, one line."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


#: The temporary directories the engines validate documents in (``tempfile.mkdtemp(prefix="windflow-validate-")``).
_VALIDATE_DIR = re.compile(re.escape(tempfile.gettempdir()) + r"/windflow-validate-[^/\s]+")


class Redactor:
    """The redactor of one deployment: masks *its own* secret values (and their compose-escaped ``$$``
    form), the well-known secret shapes, and rewrites host paths to neutral names.

    Built per deployment (its secret variables, its target's credentials, the platform's ``SECRET_KEY``)
    so that no text shown to one organisation is masked with another's secrets.
    """

    def __init__(self, secrets: Iterable[str | None] = (), replacements: Mapping[str, str] | None = None) -> None:
        self._mask = SecretMask(secrets, min_length=4)
        self._replacements = sorted((replacements or {}).items(), key=lambda item: len(item[0]), reverse=True)

    def __call__(self, text: str | None) -> str | None:
        """``text`` masked, without terminal escapes or control characters (newlines kept)."""
        if not text:
            return text
        text = self._mask(strip_controls(text, keep_newlines=True))
        for path, name in self._replacements:
            if path:
                text = text.replace(path, name)
        text = _VALIDATE_DIR.sub(".", text)
        return _mask_shapes(text)


class RedactingFilter(logging.Filter):
    """Redacts the fully formatted message (and exception text) of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not crash logging
            message = str(record.msg)
        # One record is one line: container output quoted in a message cannot forge other records.
        record.msg = escape_controls(redact(message))
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
    private_dir(Path(path).parent)
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
        private_dir(Path(log_file).parent)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    # uvicorn's loggers propagate to root; give its access log the same filter (it has its own handlers).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logging.getLogger(name).addFilter(RedactingFilter())
    _configured = True
