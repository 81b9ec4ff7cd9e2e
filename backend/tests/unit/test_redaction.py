"""Log redaction: ``redact()``, ``RedactingFilter``, ``setup_logging``, and the app's own log output."""

from __future__ import annotations

import io
import logging
import secrets
import time

import httpx
import jwt
import pytest

from backend.app.core import logging as wf_logging
from backend.app.core.logging import MASK, RedactingFilter, redact, register_secret
from backend.tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, setup_admin

JWT = jwt.encode({"sub": "user-1", "typ": "access"}, "k" * 40, algorithm="HS256")
API_TOKEN = "wf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        pytest.param(f"token is {JWT} ok", JWT, id="jwt"),
        pytest.param(f"url?jwt=%22{JWT}%22", JWT, id="jwt-url-encoded"),
        pytest.param(f"using {API_TOKEN} now", API_TOKEN, id="api-token"),
        pytest.param("Authorization: Bearer s3cr3t-opaque-value", "s3cr3t-opaque-value", id="auth-header"),
        pytest.param("authorization=Bearer short1", "short1", id="auth-header-short"),
        pytest.param("headers={'authorization': 'Bearer s3cr3t-opaque'}", "s3cr3t-opaque", id="auth-dict-repr"),
        pytest.param('{"Authorization": "Bearer s3cr3t-opaque"}', "s3cr3t-opaque", id="auth-json"),
        pytest.param("[(b'authorization', b'Bearer s3cr3t-opaque-xyz')]", "s3cr3t-opaque-xyz", id="asgi-headers"),
        pytest.param("{b'authorization': b'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz", id="basic-bytes-dict"),
        pytest.param("Cookie: session=abcdef123456", "abcdef123456", id="cookie"),
        pytest.param("x-api-key: k3y-value-1", "k3y-value-1", id="x-api-key"),
        pytest.param("login password=hunter2 user=bob", "hunter2", id="password-kv"),
        pytest.param("username=bob&password=hunter2&x=1", "hunter2", id="password-form"),
        pytest.param('{"password": "hunter2"}', "hunter2", id="password-json"),
        pytest.param('{"password": "correct horse battery"}', "horse battery", id="password-json-spaces"),
        pytest.param("SetupRequest(email='a@b.c', password='two words here')", "words here", id="password-repr"),
        pytest.param("{'password': b'bytes secret'}", "bytes secret", id="password-bytes"),
        pytest.param('{"password": "esc\\"aped quote"}', "aped quote", id="password-escaped-quote"),
        pytest.param('{"password": "truncated line with no end', "no end", id="password-unterminated"),
        pytest.param("DB_PASSWORD=pa55 started", "pa55", id="env-var"),
        pytest.param("client_secret: abc123xyz", "abc123xyz", id="client-secret"),
        pytest.param('{"refresh_token": "opaque-refresh"}', "opaque-refresh", id="refresh-token-json"),
        pytest.param("connect postgresql://windflow:pgpw0rd@db:5432/windflow", "pgpw0rd", id="url-credentials"),
        pytest.param("sqla+postgresql+psycopg://u:brokerpw@h/db", "brokerpw", id="broker-url"),
        pytest.param("redis://:redispw@cache:6379/0", "redispw", id="redis-url-no-user"),
    ],
)
def test_redact_masks(text, secret):
    out = redact(text)
    assert secret not in out, out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "deployment web-1 is running on target local",
        "GET /api/v1/deployments?limit=50 200",
        "user admin@example.com logged in",
        "https://example.com/path",
        "",
    ],
)
def test_redact_leaves_ordinary_text_alone(text):
    assert redact(text) == text


def test_redact_keeps_the_surrounding_text():
    assert redact("a password=hunter2 b") == f"a password={MASK} b"
    assert redact('{"password": "x y", "name": "web"}') == f'{{"password": "{MASK}", "name": "web"}}'
    assert redact("postgresql://u:pw@h/db") == f"postgresql://u:{MASK}@h/db"
    assert redact(f"Authorization: Bearer {JWT}") == f"Authorization: {MASK}"


def test_registered_secrets_are_masked_everywhere():
    value = "reg-" + secrets.token_hex(8)
    assert value in redact(f"value {value} shows before registration")
    register_secret(value)
    assert redact(f"prefix{value}suffix and {value}") == f"prefix{MASK}suffix and {MASK}"
    longer = value + "-longer"
    register_secret(longer)
    assert redact(longer) == MASK  # the longest registered value wins, no tail left over
    register_secret("abc")  # too short to register: would mask ordinary words
    register_secret(None)
    register_secret("")
    assert redact("abc") == "abc"


@pytest.mark.parametrize("unit", ["a", "password", 'password="', "eyJ", "eyJabcdef.", "a://b:", '"', "\\"])
def test_redact_is_linear_on_hostile_input(unit):
    text = unit * (60_000 // len(unit))
    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 2.0  # the quadratic version took tens of seconds


# --- RedactingFilter --------------------------------------------------------------------------------


@pytest.fixture
def captured():
    """A logger whose only handler writes through RedactingFilter into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"windflow.test.redaction.{secrets.token_hex(4)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def test_filter_redacts_message_and_arguments(captured):
    logger, stream = captured
    logger.info("login %s with password=%s", ADMIN_EMAIL, "hunter2")
    logger.info("headers: %s", {"authorization": f"Bearer {JWT}", "accept": "json"})
    logger.info("dsn %(dsn)s", {"dsn": "postgresql://u:pgpw0rd@h/db"})
    logger.warning(f"token {API_TOKEN}")
    out = stream.getvalue()
    for secret in ("hunter2", JWT, "pgpw0rd", API_TOKEN):
        assert secret not in out
    assert ADMIN_EMAIL in out and "'accept': 'json'" in out
    assert out.count(MASK) >= 4


def test_filter_redacts_exception_text_and_stack(captured):
    logger, stream = captured
    secret = "exc-" + secrets.token_hex(6)
    try:
        raise RuntimeError(f"cannot connect to postgresql://windflow:{secret}@db/windflow with Bearer {JWT}")
    except RuntimeError:
        logger.exception("database down")
    logger.info("here", stack_info=True, extra={})
    out = stream.getvalue()
    assert "Traceback" in out and "RuntimeError: cannot connect" in out
    assert secret not in out and JWT not in out


def test_filter_survives_a_bad_format_string(captured):
    logger, stream = captured
    logger.info("%s and %s password=hunter2", "only-one")
    out = stream.getvalue()
    assert "hunter2" not in out and "password=" in out


def test_setup_logging_installs_redaction_on_its_handlers(tmp_path, monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(wf_logging, "_configured", False)
    log_file = tmp_path / "logs" / "windflow.log"
    wf_logging.setup_logging("DEBUG", str(log_file))
    wf_logging.setup_logging("DEBUG", str(log_file))  # idempotent: no second set of handlers
    assert len(root.handlers) == 2
    assert all(any(isinstance(f, RedactingFilter) for f in h.filters) for h in root.handlers)
    logging.getLogger("backend.app.somewhere").info("password=hunter2 token %s", JWT)
    for handler in root.handlers:
        handler.flush()
    text = log_file.read_text()
    assert "backend.app.somewhere" in text and "password=***" in text
    assert "hunter2" not in text and JWT not in text
    for handler in root.handlers:
        handler.close()


# --- the app's log output ---------------------------------------------------------------------------


class _RequestLogger:
    """ASGI wrapper logging every request's headers and body and every response body, the way a
    debug access log or a careless ``logger.debug(request)`` would."""

    def __init__(self, app, logger: logging.Logger) -> None:
        self.app = app
        self.log = logger

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.log.info("%s %s headers=%s", scope["method"], scope["path"], scope["headers"])

        async def logged_receive():
            message = await receive()
            self.log.debug("request body %r", message.get("body", b""))
            return message

        async def logged_send(message):
            if message["type"] == "http.response.body":
                self.log.debug("response body %s", message.get("body", b"").decode("utf-8", "replace"))
            await send(message)

        await self.app(scope, logged_receive, logged_send)


async def test_app_logs_never_show_passwords_or_tokens(app):
    """Drive setup, login, authenticated calls and an unhandled error through the app while every
    request/response is logged; the redacted output holds none of the credentials, the raw one did."""

    @app.get("/boom")
    async def boom():
        raise RuntimeError(f"broker sqla+postgresql+psycopg://windflow:{ADMIN_PASSWORD}@db/windflow refused")

    app_logger = logging.getLogger("backend.app")
    raw, redacted = io.StringIO(), io.StringIO()
    raw_handler, redacting_handler = logging.StreamHandler(raw), logging.StreamHandler(redacted)
    redacting_handler.addFilter(RedactingFilter())
    # Handlers on "backend.app" run before the root's; the raw one first, since the filter rewrites records.
    app_logger.addHandler(raw_handler)
    app_logger.addHandler(redacting_handler)
    old_level = app_logger.level
    app_logger.setLevel(logging.DEBUG)
    transport = httpx.ASGITransport(app=_RequestLogger(app, logging.getLogger("backend.app.access")), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            admin = await setup_admin(client)
            login = await client.post("/api/v1/auth/login", data={"username": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
            assert login.status_code == 200
            tokens = login.json()
            created = await client.post("/api/v1/tokens", json={"name": "ci"}, headers=admin.headers)
            api_token = created.json()["token"]
            assert (await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {api_token}"})).status_code == 200
            refreshed = await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            assert refreshed.status_code == 200
            crashed = await client.get("/boom")
            assert crashed.status_code == 500
            assert crashed.json() == {"detail": "internal server error; the server log has the details", "code": "internal_error"}
    finally:
        app_logger.removeHandler(raw_handler)
        app_logger.removeHandler(redacting_handler)
        app_logger.setLevel(old_level)

    credentials = [
        ADMIN_PASSWORD,
        admin.access_token,
        admin.refresh_token,
        tokens["access_token"],
        tokens["refresh_token"],
        refreshed.json()["refresh_token"],
        api_token,
    ]
    raw_text, text = raw.getvalue(), redacted.getvalue()
    # the test is real: every credential did go through logging
    for credential in credentials:
        assert credential in raw_text, credential[:12]
    for credential in credentials:
        assert credential not in text, credential[:12]
    assert "unhandled error on GET /boom" in text and "RuntimeError: broker sqla+postgresql+psycopg://windflow:***@db" in text
    assert "POST /api/v1/auth/login" in text and ADMIN_EMAIL.replace("@", "%40") in text


def _mask_unfiltered(text: str) -> str:
    for pattern, replacement in wf_logging._PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def test_trigger_prefilter_never_changes_what_is_masked():
    """``_mask_shapes`` skips the patterns for ASCII text without any trigger word: on lines built from
    every pattern's pieces, in every case, it must mask exactly what the patterns alone mask."""
    import random

    rng = random.Random(1234)
    pieces = [
        "password",
        "PassWd",
        "pwd",
        "SECRET",
        "Token",
        "api_key",
        "API-KEY",
        "apikey",
        "private_key",
        "Private-Key",
        "privatekey",
        "credential",
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "set-cookie",
        "X-Api-Key",
        "Bearer",
        "BASIC",
        "wf_",
        "WF_",
        "eyJ",
        "EYJ",
        "://",
        "redis://",
        "https://u:",
        "@",
        ":",
        "=",
        " ",
        "'",
        '"',
        "\n",
        "abcdefghijklmnop",
        "0123456789ABCDEF",
        "-",
        "_",
        ".",
        "{",
        "}",
        JWT,
        API_TOKEN,
        "pa",
        "ss",
        "word",
        "to",
        "ken",
        "ſ",
        "K",
        "ı",
        "é",
    ]
    structured = [
        f"{before}{piece}{sep}{value}"
        for piece in pieces
        for before in ("", "x", " ")
        for sep in ("=", ": ", " ", "")
        for value in ("abcdefghijklmnop", "'q u o t e d'", "")
    ]
    randomised = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(20_000)]
    masked = 0
    for text in structured + randomised:
        expected = _mask_unfiltered(text)
        assert wf_logging._mask_shapes(text) == expected, text
        masked += expected != text
    assert masked > 1000  # the corpus does exercise the patterns
    # the fast path itself: nothing to mask, returned as is (the same object)
    line = "line 12 of the persisted log, as a runner writes it"
    assert wf_logging._mask_shapes(line) is line
