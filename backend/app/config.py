"""WindFlow configuration: one ``Settings`` object read from the environment and ``.env``.

Every variable of the product guide (docs/architecture.md#the-product-guide) lives here with its default. Derived values (the async
database URL, the Celery broker and result backend) are computed properties so that there is exactly
one place that knows how to turn ``DATABASE_URL`` into the URL each library expects.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend import __version__

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SECRET_KEY = "change-me-insecure-development-secret-key"
DEFAULT_DATABASE_URL = f"sqlite+aiosqlite:///{PROJECT_ROOT / 'data' / 'windflow.db'}"


class BrokerType(StrEnum):
    DATABASE = "database"
    REDIS = "redis"


class DatabaseKind(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


def _split_url(url: str) -> tuple[str, str]:
    """Return ``(scheme, rest)`` of a URL, ``rest`` starting after ``://``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r} is not a URL (expected scheme://...)")
    return scheme, rest


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False)

    # --- application ---------------------------------------------------------------------------
    DEBUG: bool = False
    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=1, le=65535)
    #: reverse proxies (addresses or networks, comma-separated, or *) whose X-Forwarded-For / -Proto are
    #: believed, so that the client's address (the login limit, the logs) is the browser's; empty: none
    FORWARDED_ALLOW_IPS: str = ""
    LOG_LEVEL: str = "INFO"
    LOG_FILE: str | None = None
    FRONTEND_DIST: Path = PROJECT_ROOT / "frontend" / "dist"

    # --- database ------------------------------------------------------------------------------
    DATABASE_URL: str = DEFAULT_DATABASE_URL
    DATABASE_ECHO: bool = False
    DATABASE_POOL_SIZE: int = Field(default=10, ge=1)
    RUN_MIGRATIONS_ON_STARTUP: bool = True

    # --- security ------------------------------------------------------------------------------
    SECRET_KEY: str = DEFAULT_SECRET_KEY
    JWT_ALGORITHM: Literal["HS256", "HS384", "HS512"] = "HS256"
    ACCESS_TOKEN_EXPIRE_MINUTES: int = Field(default=15, ge=1)
    REFRESH_TOKEN_EXPIRE_DAYS: int = Field(default=7, ge=1)
    #: seconds during which a refresh token that was just rotated may be presented again (a pair lost in
    #: transit: the tab reloaded or the network dropped the answer); later, a replay revokes its family
    REFRESH_TOKEN_REUSE_SECONDS: int = Field(default=30, ge=0, le=300)
    #: argon2id cost (the defaults are pwdlib's recommendation; hashes record their own parameters,
    #: so changing these never invalidates stored passwords)
    PASSWORD_HASH_TIME_COST: int = Field(default=3, ge=1, le=20)
    PASSWORD_HASH_MEMORY_KIB: int = Field(default=65536, ge=1024)
    LOGIN_RATE_LIMIT_PER_MINUTE: int = Field(default=10, ge=1)
    #: failed logins per account (whatever the client address) within LOGIN_ACCOUNT_WINDOW_SECONDS
    LOGIN_FAILURES_PER_ACCOUNT: int = Field(default=10, ge=1)
    LOGIN_ACCOUNT_WINDOW_SECONDS: int = Field(default=300, ge=1)
    DEPLOYMENT_RATE_LIMIT_PER_MINUTE: int = Field(default=100, ge=1)
    #: where every replica counts the hits of these limits (core/ratelimit.py): this Redis; unset: the event
    #: bus's Redis when EVENT_BUS is redis, else each process on its own (one replica, or limits per replica)
    RATE_LIMIT_REDIS_URL: str | None = Field(default=None, max_length=500)

    # --- Celery ---------------------------------------------------------------------------------
    CELERY_ENABLED: bool = True
    CELERY_BROKER_TYPE: BrokerType = BrokerType.DATABASE
    CELERY_BROKER_URL: str | None = None
    CELERY_RESULT_BACKEND: str | None = None
    CELERY_AUTO_START_WORKER: bool = True
    CELERY_WORKER_CONCURRENCY: int = Field(default=2, ge=1, le=64)
    CELERY_WORKER_POOL: Literal["solo", "prefork", "threads", "gevent", "eventlet"] = "solo"
    CELERY_WORKER_LOGLEVEL: Literal["debug", "info", "warning", "error", "critical"] = "info"
    CELERY_RESULT_EXPIRES_SECONDS: int = Field(default=3600, ge=60)
    CELERY_SQL_POLLING_INTERVAL: float = Field(default=0.1, gt=0, le=30)
    # a worker that is alive but does not execute (its pool short and not refilling, a received task not
    # started, the consumer not fetching) for this long is degraded (runtime/worker_watchdog.py) ...
    WORKER_STALL_SECONDS: float = Field(default=6.0, ge=1, le=600)
    # ... and leaves (exit 75, its messages back in the queue) once degraded for this long
    WORKER_LEAVE_AFTER_SECONDS: float = Field(default=2.0, ge=0, le=3600)
    # SIGTERM: running deployments get this long to finish; the worker exits at once when none runs or its
    # pool is broken (keep it below the supervisor's stop timeout: compose's stop_grace_period is 2 minutes)
    WORKER_SHUTDOWN_GRACE_SECONDS: float = Field(default=90.0, ge=1, le=3600)
    # --- placement: the targets a worker serves (services/targets/placement.py, docs/operations.md) ---------
    # comma-separated target ids or names, "local" (this host's own engine, a target bound to HOST_ID) and "*"
    # (also every target that is not placed); empty: every target that is not placed, as a worker always did
    WORKER_TARGETS: str = Field(default="", max_length=4000)
    # this host's name for the targets bound to a host (a host's local engine); empty: the machine's host name
    HOST_ID: str = Field(default="", max_length=255)
    # the engine a worker declaring "local" registers as its host's target
    LOCAL_DOCKER_ENDPOINT: str = Field(default="unix:///var/run/docker.sock", max_length=500)

    # --- events across processes (backend/app/runtime/event_transport/) ---------------------------
    # auto: redis when CELERY_BROKER_TYPE=redis, postgres with a PostgreSQL database, else memory.
    EVENT_BUS: Literal["auto", "postgres", "redis", "memory"] = "auto"
    # Redis pub/sub URL; defaults to the Celery broker URL when CELERY_BROKER_TYPE=redis.
    EVENT_BUS_REDIS_URL: str | None = None
    # permessage-deflate on WebSockets: off by default. Compression state is per connection (~40 KiB
    # each), and a compressed frame cannot be shared, so with it every event is compressed once per client
    # and sent through the ASGI stack; without it one encoded frame is written to every socket.
    WS_PER_MESSAGE_DEFLATE: bool = False
    # /api/v1/ws on a listener of its own (api/realtime_listener.py), beside the ASGI route on PORT: its frames
    # are built and written in C by picows, not by uvicorn's Python per connection (bench/README.md). 0: no
    # listener. The proxy routes /api/v1/ws to it (deploy/nginx.conf). WS_HOST: its address (empty: HOST).
    WS_PORT: int = Field(default=0, ge=0, le=65535)
    WS_HOST: str = Field(default="", max_length=255)
    # Where the web UI opens its WebSocket when the browser reaches the listener directly (`make run`:
    # ws://127.0.0.1:8001/api/v1/ws), announced in the UI's index.html; empty: the page's own origin's
    # /api/v1/ws (behind the proxy, which routes it to the listener).
    WS_PUBLIC_URL: str = Field(default="", max_length=500, pattern=r"^(wss?://[^\s\"'<>&]+)?$")
    # a WebSocket whose token expired gets this long to send a new auth frame before it is closed (4401)
    WS_REAUTH_GRACE_SECONDS: float = Field(default=10.0, gt=0, le=300)

    # --- deployments and recovery ---------------------------------------------------------------
    DEPLOYMENT_MAX_ATTEMPTS: int = Field(default=3, ge=1)
    # a killed executor's deployment is reclaimed within LEASE + REAPER_INTERVAL seconds (docs/operations.md)
    DEPLOYMENT_LEASE_SECONDS: int = Field(default=30, ge=3)
    DEPLOYMENT_HEARTBEAT_SECONDS: float = Field(default=5.0, gt=0)
    REAPER_INTERVAL_SECONDS: float = Field(default=5.0, ge=0.5, le=300)
    DISPATCH_TIMEOUT_SECONDS: float = Field(default=15.0, ge=1)
    DEPLOYMENT_RETRY_BACKOFF_SECONDS: float = Field(default=5.0, ge=0)
    DEPLOYMENT_HEALTH_TIMEOUT_SECONDS: float = Field(default=120.0, gt=0)
    # how long a deployment's image pulls may take together before the pull is abandoned and the deployment
    # fails, saying so (engines/pull.py); 0: no bound
    DEPLOYMENT_PULL_TIMEOUT_SECONDS: float = Field(default=1800.0, ge=0)
    # how long one `compose up` may run (it creates and starts the containers, waiting for the services others
    # depend on with `condition: service_healthy`); past it its process group is killed and the deployment fails
    DEPLOYMENT_UP_TIMEOUT_SECONDS: float = Field(default=600.0, gt=0)
    # the health gate's settle window: a container without a health check must stay up this long before the
    # rollout counts as running (one that exits within it fails the gate); one with a health check is judged
    # by it instead (docs/operations.md, "The health gate")
    DEPLOYMENT_STABLE_SECONDS: float = Field(default=3.0, ge=0, le=300)
    # how often the leader-elected watcher compares running (and failed) deployments with their containers
    # (services/deployments/watch.py): a service that exits, restarts or turns unhealthy after the gate is
    # marked within about two passes
    DEPLOYMENT_WATCH_INTERVAL_SECONDS: float = Field(default=5.0, ge=0.2, le=300)
    DEPLOYMENTS_WORKDIR: Path = PROJECT_ROOT / "data" / "deployments"
    RECOVERY_INTERVAL_MINUTES: int = Field(default=5, ge=1)
    RECOVERY_MAX_AGE_MINUTES: int = Field(default=2, ge=0)
    RECOVERY_TIMEOUT_MINUTES: int = Field(default=60, ge=1)
    RECOVERY_ON_STARTUP: bool = True

    # --- bounds on tenant input (templates, YAML, request bodies) ---------------------------------
    #: template rendering runs in a child process with these limits (seconds of CPU, MiB of memory)
    TEMPLATE_RENDER_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=300)
    TEMPLATE_RENDER_MEMORY_MB: int = Field(default=512, ge=128)
    TEMPLATE_MAX_OUTPUT_CHARS: int = Field(default=1_048_576, ge=1024)
    YAML_MAX_NODES: int = Field(default=100_000, ge=100)
    YAML_MAX_EXPANDED_CHARS: int = Field(default=4_194_304, ge=1024)
    COMPOSE_VALIDATE_TIMEOUT_SECONDS: float = Field(default=30.0, gt=0)
    MAX_REQUEST_BODY_BYTES: int = Field(default=2_097_152, ge=1024)

    # --- retention of logs and history (backend/app/services/deployments/retention.py) -----------------------
    RETENTION_DAYS: int = Field(default=30, ge=0)  # settled and idle this long: newest lines only; 0 = keep all
    RETENTION_MAX_LOG_LINES: int = Field(default=10000, ge=0)  # per settled deployment; 0 = no limit
    RETENTION_KEEP_LOG_LINES: int = Field(default=100, ge=1)  # newest lines of a deployment, always kept
    RETENTION_INTERVAL_MINUTES: int = Field(default=60, ge=1)
    RETENTION_BATCH_SIZE: int = Field(default=1000, ge=1, le=100000)  # rows per delete transaction
    AUDIT_RETENTION_DAYS: int = Field(default=365, ge=0)  # audit entries older than this are removed; 0 = keep all

    # --- deploy hooks (backend/app/services/hooks/) ----------------------------------------------------
    HOOK_REPLAY_WINDOW_SECONDS: int = Field(default=300, ge=10, le=86400)  # timestamped signatures: accepted age
    HOOK_SECRET_GRACE_SECONDS: int = Field(default=86400, ge=0)  # after a rotation, the old secret still works this long
    HOOK_RATE_LIMIT_PER_MINUTE: int = Field(default=30, ge=1)  # calls per hook per minute (replicas share it), then 429
    PUBLIC_URL: str = Field(default="", max_length=500)  # WindFlow's address as users reach it: hook URLs, notification links

    # --- notifications (backend/app/services/notifications/, runtime/notifier.py) ----------------------
    NOTIFY_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0, le=120)  # one delivery's HTTP or SMTP exchange
    NOTIFY_MAX_ATTEMPTS: int = Field(default=6, ge=1, le=50)  # then the delivery is marked failed
    NOTIFY_BACKOFF_SECONDS: float = Field(default=5.0, gt=0)  # the first retry's delay, doubled at each attempt
    NOTIFY_BACKOFF_MAX_SECONDS: float = Field(default=600.0, gt=0)
    NOTIFY_LEASE_SECONDS: float = Field(default=60.0, gt=0)  # a delivery claimed this long ago by a sender that died is sent again
    NOTIFY_POLL_SECONDS: float = Field(default=2.0, gt=0)  # the sender's pass when no event woke it
    # networks (CIDR, comma-separated) a channel may reach besides public addresses; empty: loopback, private,
    # link-local (cloud metadata), ULA... refused at creation and at each connection
    NOTIFY_ALLOWED_NETWORKS: str = Field(default="", max_length=2000)
    SMTP_HOST: str = Field(default="", max_length=255)  # email channels: the SMTP server (empty: email is not sent)
    SMTP_PORT: int = Field(default=25, ge=1, le=65535)
    SMTP_FROM: str = Field(default="windflow@localhost", max_length=320)
    SMTP_USERNAME: str = Field(default="", max_length=320)
    SMTP_PASSWORD: str = Field(default="", max_length=500)
    SMTP_STARTTLS: bool = False

    # --- stack catalogue ------------------------------------------------------------------------
    STACKS_DEFINITIONS_DIR: Path = PROJECT_ROOT / "stacks_definitions"
    STACKS_LOAD_STRATEGY: Literal["skip", "update", "force"] = "update"
    STACKS_CATALOG_ENABLED: bool = True

    # --- monitoring ----------------------------------------------------------------------------
    PROMETHEUS_ENABLED: bool = False

    @field_validator("LOG_LEVEL")
    @classmethod
    def _log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper

    @field_validator("NOTIFY_ALLOWED_NETWORKS")
    @classmethod
    def _notify_networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError as exc:
                    raise ValueError(f"NOTIFY_ALLOWED_NETWORKS: {part.strip()!r} is not a network (e.g. 10.0.0.0/8)") from exc
        return value

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme, _ = _split_url(value)
        base = scheme.split("+", 1)[0]
        if base not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(
                f"DATABASE_URL scheme {scheme!r} is not supported: use sqlite+aiosqlite:///path "
                "or postgresql+asyncpg://user:password@host:5432/db"
            )
        return value

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.SECRET_KEY == DEFAULT_SECRET_KEY and not self.DEBUG:
            raise ValueError(
                "SECRET_KEY is the built-in development default. Set SECRET_KEY in the environment or "
                ".env to a long random value, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`, or set DEBUG=true "
                "for a development instance."
            )
        if len(self.SECRET_KEY) < 32:
            raise ValueError("SECRET_KEY must be at least 32 characters long")
        return self

    def as_environment(self) -> dict[str, str]:
        """Every setting as an environment variable, so a child process (the embedded worker) runs with
        exactly these settings whatever its own environment says."""
        import json

        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                env[name] = "true" if value else "false"
            elif isinstance(value, StrEnum):
                env[name] = value.value
            elif isinstance(value, (list, dict)):
                env[name] = json.dumps(value)
            else:
                env[name] = str(value)
        return env

    # --- derived values ------------------------------------------------------------------------
    @property
    def VERSION(self) -> str:
        return __version__

    @property
    def host_id(self) -> str:
        """``HOST_ID``, or the machine's host name: which host-bound targets this process reaches."""
        import socket

        return self.HOST_ID.strip() or socket.gethostname()

    @property
    def database_kind(self) -> DatabaseKind:
        scheme, _ = _split_url(self.DATABASE_URL)
        return DatabaseKind.SQLITE if scheme.startswith("sqlite") else DatabaseKind.POSTGRESQL

    @property
    def async_database_url(self) -> str:
        """``DATABASE_URL`` with the async driver SQLAlchemy needs (aiosqlite / asyncpg)."""
        _, rest = _split_url(self.DATABASE_URL)
        if self.database_kind is DatabaseKind.SQLITE:
            return f"sqlite+aiosqlite://{rest}"
        return f"postgresql+asyncpg://{rest}"

    @property
    def sync_database_url(self) -> str:
        """``DATABASE_URL`` with a synchronous driver (sqlite3 / psycopg 3), for tools."""
        _, rest = _split_url(self.DATABASE_URL)
        if self.database_kind is DatabaseKind.SQLITE:
            return f"sqlite://{rest}"
        return f"postgresql+psycopg://{rest}"

    @property
    def sqlite_path(self) -> Path | None:
        if self.database_kind is not DatabaseKind.SQLITE:
            return None
        _, rest = _split_url(self.DATABASE_URL)
        path = rest[1:] if rest.startswith("/") else rest
        return None if path in {"", ":memory:"} else Path(path)

    @property
    def celery_broker_url(self) -> str | None:
        """The broker Celery uses, or ``None`` when Celery cannot run (disabled, or SQLite).

        With ``CELERY_BROKER_TYPE=database`` the broker is derived from ``DATABASE_URL``. kombu's SQL
        transport is selected by the ``sqla+`` prefix and needs a synchronous driver, hence
        ``sqla+postgresql+psycopg://``. (The product guide's ``db+postgresql+psycopg2://`` is a *result
        backend* URL; kombu rejects it as a broker.) SQLite is never a broker.
        """
        if not self.CELERY_ENABLED:
            return None
        if self.CELERY_BROKER_URL:
            return self.CELERY_BROKER_URL
        if self.CELERY_BROKER_TYPE is BrokerType.REDIS:
            return "redis://127.0.0.1:6379/1"
        if self.database_kind is DatabaseKind.SQLITE:
            return None
        _, rest = _split_url(self.DATABASE_URL)
        return f"sqla+postgresql+psycopg://{rest}"

    @property
    def celery_result_backend(self) -> str | None:
        if self.celery_broker_url is None:
            return None
        if self.CELERY_RESULT_BACKEND:
            return self.CELERY_RESULT_BACKEND
        if self.CELERY_BROKER_TYPE is BrokerType.REDIS:
            return "redis://127.0.0.1:6379/2"
        _, rest = _split_url(self.DATABASE_URL)
        return f"db+postgresql+psycopg://{rest}"

    @property
    def celery_unavailable_reason(self) -> str | None:
        """Why Celery cannot be used with this configuration, or ``None`` when it can."""
        if not self.CELERY_ENABLED:
            return "CELERY_ENABLED=false"
        if self.celery_broker_url is None:
            return (
                "DATABASE_URL is SQLite, which cannot be a Celery broker; deployments run in-process "
                "(use PostgreSQL or CELERY_BROKER_TYPE=redis for Celery)"
            )
        return None


@lru_cache
def get_settings() -> Settings:
    return Settings()


settings = get_settings()
