"""Domain errors. Services raise these; ``main.py`` maps each to one HTTP status, once.

Every error body is ``{"detail": "...", "code": "..."}`` where ``detail`` says what to fix, in English, and
``code`` is stable: a client shows its own text for it (the web UI in French or English), filled with
``params`` (in the body when the error has any: ``{"status": "stopped"}``, ``{"seconds": 12}``).
"""

from __future__ import annotations


class WindFlowError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers
        #: what a client needs to word the error itself (the values ``detail`` quotes)
        self.params = dict(params or {})


class ValidationFailed(WindFlowError):
    status_code = 422
    code = "validation_error"


class NotAuthenticated(WindFlowError):
    status_code = 401
    code = "not_authenticated"

    def __init__(self, detail: str = "authentication required: send 'Authorization: Bearer <token>'", **kw) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kw)


class PermissionDenied(WindFlowError):
    status_code = 403
    code = "forbidden"


class NotFound(WindFlowError):
    status_code = 404
    code = "not_found"


class Conflict(WindFlowError):
    status_code = 409
    code = "conflict"


class RateLimited(WindFlowError):
    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(WindFlowError):
    status_code = 503
    code = "unavailable"


#: Seconds a client is told to wait (``Retry-After``) before retrying a request the database could not serve.
DATABASE_RETRY_AFTER_SECONDS = 5


class DatabaseUnavailable(ServiceUnavailable):
    """The database could not be reached (down, restarting, connection lost): nothing was wrong with the
    request, and the same request will succeed once the database is back (the process reconnects by itself)."""

    code = "database_unavailable"

    def __init__(
        self,
        detail: str = "the database is unreachable (it may be restarting); retry in a few seconds",
        **kw,
    ) -> None:
        kw.setdefault("headers", {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)})
        super().__init__(detail, **kw)
