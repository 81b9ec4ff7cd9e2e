"""Passwords, JWTs, API tokens and encryption at rest.

* Passwords: argon2 (pwdlib).
* Access tokens: short-lived HS256 JWTs (``typ=access``). Refresh tokens: JWTs (``typ=refresh``) whose
  ``jti`` is recorded in ``refresh_tokens`` so they can be rotated and revoked.
* API tokens: ``wf_`` + 40 random URL-safe characters; only their SHA-256 is stored.
* Secrets at rest (secret variables, target credentials): Fernet with a key derived from ``SECRET_KEY``;
  a deployment's variables with their secrets encrypted are one type, :class:`EncryptedValues`.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.fernet import Fernet, InvalidToken
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from backend.app.config import Settings
from backend.app.config import settings as _settings
from backend.app.core.logging import MASK, register_secret
from backend.app.database import utcnow

API_TOKEN_PREFIX = "wf_"
_password_hash = PasswordHash(
    (
        Argon2Hasher(
            time_cost=_settings.PASSWORD_HASH_TIME_COST,
            memory_cost=_settings.PASSWORD_HASH_MEMORY_KIB,
        ),
    )
)


def hash_password(password: str) -> str:
    return _password_hash.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    try:
        return _password_hash.verify(password, hashed)
    except Exception:  # noqa: BLE001 - a malformed stored hash is a failed login, not a crash
        return False


@functools.cache
def dummy_password_hash() -> str:
    """A real hash to verify against when the user does not exist, so timing does not reveal which emails
    exist. Made at the first such login, not at import: every process imports this module (a worker, the
    CLI), and a hash at the production cost takes 0.1-0.2 s of CPU."""
    return hash_password(secrets.token_urlsafe(16))


class TokenError(Exception):
    """A token is malformed, forged, expired or of the wrong kind."""

    code = "invalid_token"


class TokenExpired(TokenError):
    """A genuine token past its ``exp``: the client should refresh (access) or log in again (refresh)."""

    code = "token_expired"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: datetime


def _encode(settings: Settings, claims: dict) -> str:
    return jwt.encode(claims, settings.SECRET_KEY, algorithm=settings.JWT_ALGORITHM)


def create_access_token(settings: Settings, user_id: str, generation: int = 0) -> IssuedToken:
    now = utcnow()
    expires = now + timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES)
    jti = uuid.uuid4().hex
    token = _encode(settings, {"sub": user_id, "typ": "access", "gen": generation, "iat": now, "exp": expires, "jti": jti})
    return IssuedToken(token, jti, expires)


def create_refresh_token(settings: Settings, user_id: str, family_id: str) -> IssuedToken:
    now = utcnow()
    expires = now + timedelta(days=settings.REFRESH_TOKEN_EXPIRE_DAYS)
    jti = uuid.uuid4().hex
    token = _encode(settings, {"sub": user_id, "typ": "refresh", "fam": family_id, "iat": now, "exp": expires, "jti": jti})
    return IssuedToken(token, jti, expires)


def decode_token(settings: Settings, token: str, expected_type: str) -> dict:
    try:
        claims = jwt.decode(
            token,
            settings.SECRET_KEY,
            algorithms=[settings.JWT_ALGORITHM],
            options={"require": ["sub", "exp", "typ", "jti"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired("token has expired; log in again or use your refresh token") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError("token is invalid (malformed or not signed by this server)") from exc
    if claims.get("typ") != expected_type:
        raise TokenError(f"wrong kind of token: expected {expected_type!r}, got {claims.get('typ')!r}")
    return claims


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def generate_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(30)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fernet(settings: Settings) -> Fernet:
    key = hashlib.sha256(("windflow-encryption:" + settings.SECRET_KEY).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt_secret(settings: Settings, value: str) -> str:
    return _fernet(settings).encrypt(value.encode()).decode()


def decrypt_secret(settings: Settings, token: str) -> str:
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("cannot decrypt a stored secret: was SECRET_KEY changed?") from exc


#: How an encrypted value sits in a stored JSON document: ``{"__encrypted__": "<Fernet token>"}``.
ENCRYPTED = "__encrypted__"


class EncryptedValues:
    """A deployment's variable values as stored: clear values, and each secret as ``{"__encrypted__": token}``.

    The one reader and writer of that shape: :meth:`encrypt` builds it from the clear values and the dotted
    names of the secrets, :meth:`decrypt` gives the clear values back, :meth:`masked` the values as the API
    shows them (secrets as ``***``), :meth:`secret_values` the clear secrets (to build a redactor from),
    :meth:`decrypt_with_secrets` both at once. Every secret decrypted is also registered with the server
    log's redaction.
    """

    def __init__(self, stored: Mapping[str, Any] | None) -> None:
        self.stored: dict[str, Any] = dict(stored or {})

    @classmethod
    def encrypt(cls, settings: Settings, values: Mapping[str, Any], secret_paths: Iterable[str]) -> EncryptedValues:
        stored = copy.deepcopy(dict(values))
        for path in secret_paths:
            *parents, name = path.split(".")
            node: Any = stored
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get(name) is not None:
                node[name] = {ENCRYPTED: encrypt_secret(settings, str(node[name]))}
        return cls(stored)

    def decrypt(self, settings: Settings) -> dict[str, Any]:
        return self._walk(lambda token: _clear(settings, token))

    def masked(self) -> dict[str, Any]:
        return self._walk(lambda _token: MASK)

    def secret_values(self, settings: Settings) -> list[str]:
        return self.decrypt_with_secrets(settings)[1]

    def decrypt_with_secrets(self, settings: Settings) -> tuple[dict[str, Any], list[str]]:
        """The clear values and the clear secrets among them, each secret decrypted once."""
        found: list[str] = []

        def clear(token: str) -> str:
            found.append(_clear(settings, token))
            return found[-1]

        return self._walk(clear), found

    def _walk(self, secret: Callable[[str], Any]) -> dict[str, Any]:
        """A copy of the stored values with each encrypted one replaced by ``secret(token)``."""

        def walk(node: Any) -> Any:
            if isinstance(node, dict):
                if len(node) == 1 and ENCRYPTED in node:
                    return secret(node[ENCRYPTED])
                return {key: walk(value) for key, value in node.items()}
            if isinstance(node, list):
                return [walk(value) for value in node]
            return node

        return walk(self.stored)


def _clear(settings: Settings, token: str) -> str:
    value = decrypt_secret(settings, token)
    register_secret(value)
    return value
