"""Targets: the Docker engines WindFlow deploys to.

Endpoints take one of three shapes: ``unix:///path/to/docker.sock``, ``tcp://host:port`` (optionally with
TLS material as PEM text) and ``ssh://user@host[:port]`` (optionally with a private key). Credentials are
write-only: :class:`TargetRead` says whether a target *has* TLS material or an SSH key, never what it is.

Validation messages never quote the submitted value (it may be a private key).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import AfterValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from backend.app.models import TargetType
from backend.app.schemas.common import PageFields, RequestModel, ResponseModel, not_null
from backend.app.schemas.compose_policy import ComposePolicy

#: Credential fields, stored together as encrypted JSON in ``targets.credentials_encrypted``.
TLS_FIELDS = ("tls_ca", "tls_cert", "tls_key")
CREDENTIAL_FIELDS = (*TLS_FIELDS, "tls_verify", "ssh_key")

ENDPOINT_HELP = "use unix:///path/to/docker.sock, tcp://host:port or ssh://user@host[:port]"


def endpoint_scheme(endpoint: str) -> str:
    """``unix``, ``tcp`` or ``ssh`` for a valid endpoint; ``ValueError`` saying what to fix otherwise."""
    if "://" not in endpoint:
        raise ValueError(f"the endpoint has no scheme; {ENDPOINT_HELP}")
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:  # bad port number or malformed IPv6 literal
        raise ValueError(f"the endpoint is malformed ({exc}); {ENDPOINT_HELP}") from None
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise ValueError("the endpoint must not have a query (?...) or fragment (#...)")
    if scheme == "unix":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError("a unix endpoint needs an absolute socket path, e.g. unix:///var/run/docker.sock")
        return "unix"
    if scheme == "tcp":
        if parts.username is not None:
            raise ValueError("a tcp endpoint takes no user; authenticate with tls_cert and tls_key")
        if not parts.hostname:
            raise ValueError("a tcp endpoint needs a host, e.g. tcp://192.0.2.10:2376")
        if port is None:
            raise ValueError("a tcp endpoint needs a port, e.g. tcp://host:2376 (TLS) or tcp://host:2375")
        if port == 0:
            raise ValueError("the endpoint's port must be between 1 and 65535")
        if parts.path not in ("", "/"):
            raise ValueError("a tcp endpoint must not have a path: use tcp://host:port")
        return "tcp"
    if scheme == "ssh":
        if port == 0:
            raise ValueError("the endpoint's port must be between 1 and 65535")
        if not parts.username:
            raise ValueError("an ssh endpoint needs a user, e.g. ssh://deploy@host or ssh://deploy@host:2222")
        if parts.password is not None:
            raise ValueError("an ssh endpoint must not carry a password; give the private key in ssh_key")
        if not parts.hostname:
            raise ValueError("an ssh endpoint needs a host, e.g. ssh://deploy@host")
        if parts.path not in ("", "/"):
            raise ValueError("an ssh endpoint must not have a path: use ssh://user@host[:port]")
        return "ssh"
    raise ValueError(f"unsupported endpoint scheme {parts.scheme!r}; {ENDPOINT_HELP}")


def _endpoint(value: str) -> str:
    try:
        endpoint_scheme(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_endpoint", str(exc)) from None
    return value


def _pem_text(value: str) -> str:
    # Request strings are stripped; PEM consumers (Go's crypto/tls, openssl) expect the final newline.
    return value.strip() + "\n"


def _certificates(field: str):
    def check(value: str) -> str:
        try:
            x509.load_pem_x509_certificates(value.encode())
        except ValueError:
            raise PydanticCustomError(
                "invalid_pem",
                f"{field} is not a PEM certificate; paste the whole file, from -----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----",
            ) from None
        return _pem_text(value)

    return check


def _tls_key(value: str) -> str:
    try:
        serialization.load_pem_private_key(value.encode(), password=None)
    except TypeError:
        raise PydanticCustomError(
            "encrypted_key", "tls_key is passphrase-protected; give the unencrypted key (WindFlow stores it encrypted)"
        ) from None
    except Exception:  # noqa: BLE001 - ValueError, UnsupportedAlgorithm...: all mean "not usable"
        raise PydanticCustomError(
            "invalid_pem",
            "tls_key is not a PEM private key; paste the whole file, from -----BEGIN ... PRIVATE KEY----- to -----END ... PRIVATE KEY-----",
        ) from None
    return _pem_text(value)


def _ssh_key(value: str) -> str:
    data = value.encode()
    encrypted = False
    for load in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        try:
            load(data, password=None)
            return _pem_text(value)
        except TypeError:
            encrypted = True
        except Exception:  # noqa: BLE001 - try the next format
            continue
    if encrypted:
        raise PydanticCustomError(
            "encrypted_key", "ssh_key is passphrase-protected; give the unencrypted key (WindFlow stores it encrypted)"
        )
    raise PydanticCustomError(
        "invalid_pem",
        "ssh_key is not a private key; paste the whole file, from -----BEGIN OPENSSH PRIVATE KEY----- "
        "(or -----BEGIN ... PRIVATE KEY-----) to the matching END line",
    )


Pem = Annotated[str, Field(min_length=1, max_length=65536)]
TargetName = Annotated[str, Field(min_length=1, max_length=100)]
Description = Annotated[str | None, Field(max_length=500)]
#: The shapes :func:`endpoint_scheme` accepts, stated in the OpenAPI document for clients (the validator
#: gives the message that says what to fix; this pattern never refuses what it accepts).
ENDPOINT_PATTERN = r"^(unix:///.+|tcp://[^/?#@]+:[0-9]+/?|ssh://[^/?#@:]+@[^/?#@]+/?)$"
Endpoint = Annotated[
    str,
    Field(
        min_length=1,
        max_length=500,
        description="the Docker engine: unix:///path/to/docker.sock, tcp://host:port (TLS with tls_*) or ssh://user@host[:port]",
        json_schema_extra={"pattern": ENDPOINT_PATTERN},
    ),
    AfterValidator(_endpoint),
]
TlsCa = Annotated[Pem, AfterValidator(_certificates("tls_ca"))]
TlsCert = Annotated[Pem, AfterValidator(_certificates("tls_cert"))]
TlsKey = Annotated[Pem, AfterValidator(_tls_key)]
SshKey = Annotated[Pem, AfterValidator(_ssh_key)]
MaxConcurrent = Annotated[int, Field(ge=1, le=100, description="deployments running at once on this target (1-100)")]
HostId = Annotated[
    str,
    Field(
        min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$", description="a host's HOST_ID (letters, digits, . _ @ : -)"
    ),
]
PLACED_DESCRIPTION = (
    "placed: its work (deploy, stop, delete) goes through a queue of its own, run only by the workers "
    "that declare it (WORKER_TARGETS); not placed: by any worker without a declaration, or the backend"
)
HOST_DESCRIPTION = (
    "the host whose local engine this is (its workers' HOST_ID): only that host's workers reach it; implies placed; superusers only"
)


def credential_problem(endpoint: str, credentials: dict[str, Any]) -> str | None:
    """Why ``credentials`` (see :data:`CREDENTIAL_FIELDS`) cannot go with ``endpoint``, or ``None``.

    Shared by :class:`TargetCreate` and the update path of the service, which checks the *merged* result
    (an update may change the endpoint and keep stored credentials, or the other way round).
    """
    scheme = endpoint_scheme(endpoint)
    has_tls = any(credentials.get(f) for f in TLS_FIELDS) or credentials.get("tls_verify") is False
    if has_tls and scheme != "tcp":
        return (
            f"tls_ca, tls_cert, tls_key and tls_verify only apply to tcp:// endpoints, not {scheme}://; "
            "remove them (null in an update) or use a tcp://host:port endpoint"
        )
    if credentials.get("ssh_key") and scheme != "ssh":
        return (
            f"ssh_key only applies to ssh:// endpoints, not {scheme}://; remove it (null in an update) or use an ssh://user@host endpoint"
        )
    cert, key = credentials.get("tls_cert"), credentials.get("tls_key")
    if bool(cert) != bool(key):
        return "tls_cert and tls_key go together: give both the client certificate and its private key, or neither"
    if cert and key and not _key_matches(cert, key):
        return "tls_key is not the private key of tls_cert; give the key that belongs to the client certificate"
    return None


def _key_matches(cert_pem: str, key_pem: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificates(cert_pem.encode())[0]
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except Exception:  # noqa: BLE001 - unparsable material is reported by the field validators
        return True
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _given(field: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"type": "string", "minLength": 1}}}


#: :func:`credential_problem`'s rules as JSON Schema, for clients: TLS settings only with ``tcp://``, an SSH key
#: only with ``ssh://``, a client certificate and its key together.
CREDENTIAL_RULES: dict[str, Any] = {
    "allOf": [
        {
            "if": {
                "anyOf": [*(_given(f) for f in TLS_FIELDS), {"required": ["tls_verify"], "properties": {"tls_verify": {"const": False}}}]
            },
            "then": {"properties": {"endpoint": {"pattern": "^tcp://"}}},
        },
        {"if": _given("ssh_key"), "then": {"properties": {"endpoint": {"pattern": "^ssh://"}}}},
        {"if": _given("tls_cert"), "then": _given("tls_key")},
        {"if": _given("tls_key"), "then": _given("tls_cert")},
    ]
}


class TargetCreate(RequestModel):
    model_config = ConfigDict(json_schema_extra=CREDENTIAL_RULES)

    name: TargetName
    description: Description = None
    type: TargetType = TargetType.DOCKER
    endpoint: Endpoint
    tls_ca: TlsCa | None = Field(default=None, description="PEM of the CA that signed the engine's certificate")
    tls_cert: TlsCert | None = Field(default=None, description="PEM client certificate (with tls_key)")
    tls_key: TlsKey | None = Field(default=None, description="PEM private key of tls_cert (stored encrypted)")
    tls_verify: bool = Field(default=True, description="verify the engine's certificate (tcp:// only)")
    ssh_key: SshKey | None = Field(default=None, description="private key for ssh:// endpoints (stored encrypted)")
    max_concurrent_deployments: MaxConcurrent = 2
    compose_policy: ComposePolicy | None = Field(
        default=None, description="what compose documents may do on this target; default: everything denied"
    )
    organization_id: str | None = Field(default=None, description="defaults to your default organisation")
    placed: bool = Field(default=False, description=PLACED_DESCRIPTION)
    host: HostId | None = Field(default=None, description=HOST_DESCRIPTION)

    @model_validator(mode="after")
    def _credentials_fit_endpoint(self) -> TargetCreate:
        problem = credential_problem(self.endpoint, self.credentials())
        if problem:
            raise PydanticCustomError("credentials_mismatch", problem)
        return self

    def credentials(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in CREDENTIAL_FIELDS}


class TargetUpdate(RequestModel):
    """Only the fields sent change. A credential field sent as ``null`` removes that credential."""

    name: TargetName | None = not_null()
    description: Description = None
    type: TargetType | None = not_null()
    endpoint: Endpoint | None = not_null()
    tls_ca: TlsCa | None = None
    tls_cert: TlsCert | None = None
    tls_key: TlsKey | None = None
    tls_verify: bool | None = Field(default=None, description="null resets to true")
    ssh_key: SshKey | None = None
    max_concurrent_deployments: MaxConcurrent | None = not_null()
    is_active: bool | None = not_null()
    compose_policy: ComposePolicy | None = Field(
        default=None, description="replaces the whole policy (fields left out are denied); null resets to all denied"
    )
    placed: bool | None = not_null(description=PLACED_DESCRIPTION)
    host: HostId | None = Field(default=None, description=HOST_DESCRIPTION + "; null: reachable from any host")

    @model_validator(mode="after")
    def _no_null_for_required(self) -> TargetUpdate:
        for field in ("name", "type", "endpoint", "max_concurrent_deployments", "is_active", "placed"):
            if field in self.model_fields_set and getattr(self, field) is None:
                raise PydanticCustomError("null_not_allowed", f"{field} cannot be null; omit it to keep the current value")
        return self


class TargetRead(ResponseModel):
    """A target as the API shows it: never its credentials, only whether it has them."""

    id: str
    organization_id: str
    name: str
    description: str | None
    type: TargetType
    endpoint: str
    max_concurrent_deployments: int
    is_active: bool
    has_tls: bool
    tls_verify: bool
    has_ssh_key: bool
    compose_policy: ComposePolicy
    placed: bool = Field(description=PLACED_DESCRIPTION)
    host: str | None = Field(description="the host whose local engine this is (only its workers reach it), or null")
    served: bool = Field(
        description="its work runs now: false for a placed target that no live worker serves (its "
        "deployments wait, and its stop and delete answer 503 target_unserved)"
    )
    workers: int = Field(
        description="live workers that run its work (for a target that is not placed: the workers of "
        "the shared queue; with none, the backend runs it)"
    )
    created_at: datetime
    updated_at: datetime


class TargetPage(PageFields):
    items: list[TargetRead]


class TestFailure(StrEnum):
    """Why a connection test failed, as coarse as an operator may know (see ``TEST_FAILURE_MESSAGES``)."""

    __test__ = False  # not a pytest class, whatever module imports it

    UNREACHABLE = "unreachable"
    TLS = "tls"
    AUTHENTICATION = "authentication"
    NOT_DOCKER = "not_docker"
    ERROR = "error"


#: The one message per category: fixed text, never the driver's exception (which would tell an operator
#: whether a port is open or a file exists on the WindFlow host).
TEST_FAILURE_MESSAGES: dict[TestFailure, str] = {
    TestFailure.UNREACHABLE: "no Docker engine could be reached at this endpoint (connection refused, closed, "
    "timed out or no such socket); check the address, the port or socket path, any firewall, and that the "
    "engine is running",
    TestFailure.TLS: "the TLS handshake failed; check tls_ca, tls_cert, tls_key and tls_verify against the engine's certificate",
    TestFailure.AUTHENTICATION: "the engine refused the credentials; check the client certificate or the SSH key",
    TestFailure.NOT_DOCKER: "something answered at this endpoint, but not a Docker engine API",
    TestFailure.ERROR: "the connection test failed; the server log of WindFlow has the details",
}


class TargetTestResult(ResponseModel):
    """What ``POST /targets/{id}/test`` found: the engine's identity, or a failure category and its fixed message."""

    ok: bool
    version: str | None = None
    api_version: str | None = None
    swarm_manager: bool | None = None
    os: str | None = None
    category: TestFailure | None = None
    error: str | None = None
