"""Text from an engine or a container as a log line: redacted, colours kept.

The deployment's :class:`~backend.app.core.logging.Redactor` strips every terminal escape before it masks
secrets. Colours are worth keeping (the UI renders them as styled text, never as HTML), so a line with
SGR sequences (``ESC[32m``, ``ESC[1;31m``) is redacted part by part between them, and the parts keep their
colours only when, joined, they read exactly as the whole line redacted at once: a secret split by a
colour code (``pass ESC[0m word``) is then masked in the plain line, which is stored without colours.
Every other escape or control character is removed as before.

SGR parameters are kept only when short (at most 3 digits each, as every real colour code is): a number
spelled out in an escape sequence is not text the redactor sees.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from backend.app.core.logging import strip_controls

#: Select Graphic Rendition: colours and text attributes, nothing that moves the cursor or changes the terminal.
SGR = re.compile(r"\x1b\[(?:\d{1,3}(?:[;:]\d{1,3}){0,15})?m")
#: Control characters but ESC (a sequence's introducer): removed before splitting (one line stays one line).
_CONTROLS_BUT_ESC = re.compile(r"[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f-\x9f]")


def redact_keeping_colours(redact: Callable[[str], str | None], text: str) -> str:
    """``text`` as ``redact`` leaves it (masked, without escapes or control characters), with its SGR
    colour sequences kept where that cannot reveal what ``redact`` masks."""
    text = _CONTROLS_BUT_ESC.sub("", text)
    if "\x1b" not in text:
        return redact(text) or ""
    plain = redact(text) or ""
    codes = SGR.findall(text)
    if not codes:
        return plain
    parts = [redact(part) or "" for part in SGR.split(text)]
    if "".join(parts) != plain:  # a mask, a path or an escape spans a colour code: the plain line is the safe one
        return plain
    out = [parts[0]]
    for code, part in zip(codes, parts[1:], strict=True):
        out.append(code)
        out.append(part)
    return "".join(out)


def plain(text: str) -> str:
    """A stored line without its colour sequences (a download, a terminal that wants text)."""
    return strip_controls(text) if "\x1b" in text else text
