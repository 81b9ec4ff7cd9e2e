"""Why a notification's delivery failed, as a stable code and parameters: the ``last_error`` a sender writes
(``services/notifications/delivery.py``, ``egress.py``), read from its English text the way
:mod:`backend.app.core.deployment_words` reads a deployment's error. The delivery log (``DeliveryRead``) gives
``last_error_code`` and ``last_error_params`` next to the unchanged text; the web UI words them
(``frontend/src/i18n/deliveryWords.ts``; ``backend/tests/unit/test_ui_words.py`` fails when a code lacks its
French words there). A text that matches none has no code (a client shows it as it is). Parameters in
:data:`QUOTED` are other programs' words (an exception's name, the mail server's answer), shown quoted."""

from __future__ import annotations

from backend.app.core.deployment_words import _classify, _compile

_SETTING_HINT = "; notifications go to public addresses only (an operator can allow an internal network with {setting})"

#: code -> the English sentence of a delivery's ``last_error``, most specific first.
DELIVERY_ERRORS: dict[str, str] = {
    "egress_embedded": "refused, nothing sent: the receiver {host} is not reachable from WindFlow: {ip} embeds the non-public address {inner}"
    + _SETTING_HINT,
    "egress_refused": "refused, nothing sent: the receiver {host} is not reachable from WindFlow: {ip} is a {kind} address" + _SETTING_HINT,
    "unix_socket": "refused, nothing sent: notifications never connect to a Unix socket",
    "refused": "refused, nothing sent: {detail}",
    "no_answer": "no answer within {seconds} s",
    "unreachable": "{error}: could not reach the receiver",
    "answered": "the receiver answered {status_code}",
    "smtp_not_set": "SMTP_HOST is not set: the server cannot send email",
    "smtp_failed": "SMTP: {detail}",
}

#: Parameters that quote other programs' words (an exception's class name, an SMTP server's answer).
QUOTED = frozenset({"detail", "error"})

_TABLE = _compile(DELIVERY_ERRORS)


def delivery_error_words(text: str | None) -> tuple[str | None, dict[str, str]]:
    """``(code, params)`` of a delivery's ``last_error``; ``(None, {})`` for a text not in :data:`DELIVERY_ERRORS`."""
    return _classify(text, _TABLE)
