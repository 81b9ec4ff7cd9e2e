"""The FastAPI application. ``python -m backend.app.main`` serves it on ``HOST``:``PORT``."""

from __future__ import annotations

import asyncio
import gc
import html
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.app import database
from backend.app.api import health, responses
from backend.app.api import metrics as metrics_route
from backend.app.api import realtime as realtime_routes
from backend.app.api.audit_trail import AuditMiddleware
from backend.app.api.realtime_listener import WebSocketListener
from backend.app.api.router import api_router
from backend.app.config import Settings, get_settings
from backend.app.core import security
from backend.app.core.body_limit import BodySizeLimitMiddleware
from backend.app.core.celery_manager import CeleryManager
from backend.app.core.events import bus
from backend.app.core.exceptions import DatabaseUnavailable, WindFlowError
from backend.app.core.logging import register_secret, setup_logging
from backend.app.core.ratelimit import RateLimiter
from backend.app.migrate import upgrade_database
from backend.app.runtime import background, background_tasks, event_transport, metrics, notifier
from backend.app.runtime.dispatch import Dispatcher
from backend.app.schemas.common import ValidationErrorBody
from backend.app.services.provisioning import sync_catalog_on_startup
from backend.app.services.stacks import bounded_render

logger = logging.getLogger("backend.app")

_HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


#: Parameters of a pydantic error a client may word its own message with (never the input itself).
_ERROR_PARAMS = frozenset(
    {"min_length", "max_length", "ge", "gt", "le", "lt", "pattern", "expected", "multiple_of", "max_digits", "decimal_places", "at"}
)


def _error_params(err: dict) -> dict:
    return {
        key: value for key, value in (err.get("ctx") or {}).items() if key in _ERROR_PARAMS and isinstance(value, (str, int, float, bool))
    }


def error_body(exc: WindFlowError) -> dict:
    """``{detail, code}``, and ``params`` when the error has any (what a client words its own text with)."""
    body: dict = {"detail": exc.detail, "code": exc.code}
    params = dict(exc.params)
    violations = getattr(exc, "violations", None)  # the compose policy's refusals: which options would allow them
    if violations:
        params.setdefault("rules", sorted({v.rule for v in violations}))
        params.setdefault("paths", list(dict.fromkeys(v.path for v in violations)))
    if params:
        body["params"] = params
    return body


def _describe_validation_errors(errors) -> tuple[str, list[dict]]:
    """Readable ``detail`` from pydantic errors. Never echoes the input (it may hold a password). Each item
    carries the error's ``type`` and its ``params`` (``{"max_length": 100}``) for a client's own wording."""
    items = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "request"
        if err.get("type") == "json_invalid":
            where = "body"
            message = "the body is not valid JSON: " + str(err.get("ctx", {}).get("error", "syntax error"))
        elif err.get("type") == "extra_forbidden":
            message = "unknown field; remove it (check the spelling against the API docs at /docs)"
        elif err.get("type") == "missing":
            message = "field required"
        elif err.get("type") == "value_error" and "error" in err.get("ctx", {}):
            message = str(err["ctx"]["error"])  # our validators' own words, without pydantic's "Value error, "
        else:
            message = err.get("msg", "invalid value")
        items.append({"field": where, "message": message, "type": err.get("type"), "params": _error_params(err)})
    detail = "; ".join(f"{i['field']}: {i['message']}" for i in items) or "invalid request"
    return detail, items


class DatabaseUnavailableMiddleware:
    """The one place where an unreachable database becomes ``503 database_unavailable`` with ``Retry-After``.

    A route, a dependency (the request's session) or a service may meet the database down anywhere, in any
    of the shapes :func:`backend.app.database.is_unavailable` recognises; they all end here instead of the
    catch-all ``500 internal_error``, with one warning line (no traceback) at most every
    :data:`OUTAGE_LOG_SECONDS`. The request's session has been closed by then (its connection discarded by
    the pool), and the next request reconnects: nothing to restart. Any other exception passes on untouched,
    as does a failure once the response has started (a stream): its client sees the stream end.

    A pure ASGI middleware rather than an exception handler: a handler for ``OSError`` would also catch the
    ``OSError`` of a started stream (which Starlette then turns into a ``RuntimeError``), and the catch-all
    handler re-raises, so that uvicorn logs a traceback and closes the client's connection.
    """

    OUTAGE_LOG_SECONDS = 10.0

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._logged_at = float("-inf")
        self._unlogged = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started or not database.is_unavailable(exc):
                raise
            self._log(scope, exc)
            error = DatabaseUnavailable()
            response = JSONResponse({"detail": error.detail, "code": error.code}, status_code=error.status_code, headers=error.headers)
            await response(scope, receive, send)

    def _log(self, scope: Scope, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._logged_at < self.OUTAGE_LOG_SECONDS:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more request(s) answered 503 since the last message)" if self._unlogged else ""
        self._logged_at, self._unlogged = now, 0
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        logger.warning(
            "database unavailable on %s %s: %s; answering 503 database_unavailable%s", scope.get("method"), scope.get("path"), reason, more
        )


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(DatabaseUnavailableMiddleware)  # innermost of ours: the 503 crosses the others

    @app.exception_handler(WindFlowError)
    async def _domain_error(_request: Request, exc: WindFlowError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, items = _describe_validation_errors(exc.errors())
        return JSONResponse({"detail": detail, "code": "validation_error", "errors": items}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        # The router's own 404/405 carry only the reason phrase; say what was asked and what exists.
        where = f"{request.method} {request.url.path[:200]}"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such route: {where} (the API is under /api/v1; see /docs)"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"method not allowed: {where}" + (f"; use {allowed}" if allowed else "")
        return JSONResponse({"detail": detail, "code": code}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": "internal server error; the server log has the details", "code": "internal_error"},
            status_code=500,
        )


#: First path segments that never fall back to the UI (an unknown API route must stay a JSON 404).
_NOT_UI = frozenset({"api", "ws", "health", "metrics", "docs", "redoc", "openapi.json"})
#: Vite fingerprints everything under assets/ (the name changes with the content): cache it for a year.
_IMMUTABLE = "public, max-age=31536000, immutable"


def install_openapi(app: FastAPI) -> None:
    """Document the 422 body as the handlers really send it (FastAPI's default schema is pydantic's list), and
    every error status each operation can answer with its codes (``api/responses.py``)."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        body = ValidationErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in body.pop("$defs", {}).items():
            components[name] = definition
        components["HTTPValidationError"] = body
        components.pop("ValidationError", None)
        responses.document_errors(schema, app.routes)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _mount_frontend(app: FastAPI, dist: Path, websocket_url: str = "") -> None:
    """Serve the built UI at ``/``: files from ``dist``, ``index.html`` for every other path (SPA routes).

    ``index.html`` is revalidated on each load so a new build is picked up at once. A path that resolves
    outside ``dist`` (``..``, symlinks) is never served. With ``websocket_url`` (``WS_PUBLIC_URL``) the page
    names it in ``<meta name="windflow-websocket-url">``, where the UI opens its WebSocket (frontend/src/api/config.ts).
    """
    root = dist.resolve()
    index = root / "index.html"
    if not index.is_file():
        return

    @app.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def spa(path: str) -> FileResponse:
        first = path.split("/", 1)[0]
        if first in _NOT_UI:
            raise StarletteHTTPException(404, "Not Found")
        if path:
            try:
                candidate = (root / path).resolve()
                found = candidate.is_file() and candidate.is_relative_to(root)
            except (OSError, ValueError):  # NUL bytes, names too long
                found = False
            if found:
                cache = _IMMUTABLE if candidate.is_relative_to(root / "assets") else "no-cache"
                return FileResponse(candidate, headers={"Cache-Control": cache})
            if first == "assets":  # a missing bundle is a 404, not the app's HTML
                raise StarletteHTTPException(404, "Not Found")
        if websocket_url:
            page = index.read_text(encoding="utf-8")
            meta = f'<meta name="windflow-websocket-url" content="{html.escape(websocket_url)}">'
            return HTMLResponse(page.replace("</head>", f"    {meta}\n  </head>", 1), headers={"Cache-Control": "no-cache"})
        return FileResponse(index, headers={"Cache-Control": "no-cache"})


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """What startup created (modules, the app, the ORM's registries: most of the heap) lives as long as the
    process: moved out of the garbage collector's reach, a full collection no longer walks it. With 1,000
    WebSocket clients, full collections paused the event loop, and every event's delivery, for 100-270 ms
    over ~290,000 objects; they now walk the ~115,000 created since. Once per process (a test process
    starts many apps; what they leave must stay collectable)."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


def rate_limit_redis_url(settings: Settings) -> str | None:
    """Where the replicas share their rate limits: ``RATE_LIMIT_REDIS_URL``, else the event bus's Redis when
    the bus is Redis; None: each process keeps its own (core/ratelimit.py)."""
    if settings.RATE_LIMIT_REDIS_URL:
        return settings.RATE_LIMIT_REDIS_URL
    try:
        if event_transport.resolve_event_bus_kind(settings) == "redis":
            return event_transport.event_bus_redis_url(settings)
    except ValueError:
        return None  # an impossible EVENT_BUS: the bus refuses to start and says why
    return None


def install_state(app: FastAPI, settings: Settings) -> None:
    """What an app holds between requests: its settings, rate limiters, Celery manager and dispatcher.

    Called once by :func:`create_app`; the test suite calls it again to give one app fresh state per test
    (FastAPI builds each route's handler the first time the route is matched in an app, which costs more
    than most API tests do)."""
    app.state.settings = settings
    limits_in = rate_limit_redis_url(settings)
    app.state.login_limiter = RateLimiter("login", settings.LOGIN_RATE_LIMIT_PER_MINUTE, redis_url=limits_in)
    app.state.account_login_limiter = RateLimiter(
        "login-account", settings.LOGIN_FAILURES_PER_ACCOUNT, settings.LOGIN_ACCOUNT_WINDOW_SECONDS, redis_url=limits_in
    )
    app.state.deployment_limiter = RateLimiter("deployments", settings.DEPLOYMENT_RATE_LIMIT_PER_MINUTE, redis_url=limits_in)
    app.state.hook_limiter = RateLimiter("hooks", settings.HOOK_RATE_LIMIT_PER_MINUTE, redis_url=limits_in)
    app.state.celery_manager = CeleryManager(settings)
    app.state.dispatcher = Dispatcher(settings, manager=app.state.celery_manager)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        setup_logging(settings.LOG_LEVEL, settings.LOG_FILE)
        if database.get_engine().url.render_as_string(hide_password=False) != settings.async_database_url:
            database.configure(settings)
        await database.wait_until_reachable(database.STARTUP_WAIT_SECONDS, logger)  # a restarting database
        if settings.RUN_MIGRATIONS_ON_STARTUP:
            await upgrade_database(database.get_engine(), settings)
        await sync_catalog_on_startup(settings)
        await event_transport.start_event_bus(settings)
        unsubscribe_metrics = bus.subscribe(metrics.observe_event, filter=metrics.observes)
        await app.state.celery_manager.start()
        logger.info(
            "WindFlow %s started (database: %s, execution mode: %s)",
            settings.VERSION,
            settings.database_kind,
            app.state.celery_manager.mode,
        )
        loops = []
        if settings.RECOVERY_ON_STARTUP:
            loops.append(asyncio.create_task(background.startup_recovery(settings, app.state.dispatcher)))
        loops.append(asyncio.create_task(background.periodic_recovery(settings, app.state.dispatcher)))
        loops.append(asyncio.create_task(background.reaper_loop(settings, app.state.dispatcher)))
        loops.append(asyncio.create_task(background.periodic_retention(settings)))
        loops.append(asyncio.create_task(notifier.notification_loop(settings)))
        loops.append(asyncio.create_task(background.watch_loop(settings)))
        listener = None
        if settings.WS_PORT:  # /api/v1/ws on a listener of its own, in this loop (api/realtime_listener.py)
            listener = WebSocketListener(settings)
            await listener.start(settings.WS_HOST or settings.HOST, settings.WS_PORT)
        security.dummy_password_hash()  # made before the first login, so that no login waits for it
        _freeze_startup_heap()
        yield
        logger.info("WindFlow stopping")
        if listener is not None:
            await listener.stop()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await app.state.celery_manager.stop()
        await app.state.dispatcher.aclose()
        await background_tasks.shutdown()
        unsubscribe_metrics()
        await event_transport.stop_event_bus()

    app = FastAPI(title="WindFlow", version=settings.VERSION, lifespan=lifespan)
    install_state(app, settings)
    install_error_handlers(app)
    install_openapi(app)
    register_secret(settings.SECRET_KEY)  # the server log never shows it
    if settings.SMTP_PASSWORD:
        register_secret(settings.SMTP_PASSWORD)
    bounded_render.configure(settings)
    app.add_middleware(AuditMiddleware)  # inside the body limit: it copies bounded bodies only
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.MAX_REQUEST_BODY_BYTES)
    app.include_router(health.router)
    app.include_router(api_router)
    realtime_routes.install_openapi(app)
    if settings.PROMETHEUS_ENABLED:
        app.include_router(metrics_route.router)
    _mount_frontend(app, settings.FRONTEND_DIST, settings.WS_PUBLIC_URL)
    return app


def run() -> None:
    import uvicorn

    settings = get_settings()
    setup_logging(settings.LOG_LEVEL, settings.LOG_FILE)
    _raise_open_files_limit()
    forwarded = settings.FORWARDED_ALLOW_IPS.strip()
    uvicorn.run(
        create_app(settings),
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,
        proxy_headers=bool(forwarded),
        forwarded_allow_ips=forwarded or None,
        ws_per_message_deflate=settings.WS_PER_MESSAGE_DEFLATE,
    )


def _raise_open_files_limit() -> None:
    """Every WebSocket client holds a socket: lift the soft limit on open files to the hard one (often
    1,024 soft for 5,000+ clients)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an infinite hard limit the kernel refuses as a soft one
            pass


if __name__ == "__main__":
    run()
