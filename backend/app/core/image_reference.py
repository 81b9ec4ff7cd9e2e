"""Registry addresses and image references: which registry an image is pulled from (pure functions)."""

from __future__ import annotations

import re

#: Docker Hub's names, all one registry for credentials
DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::[0-9]{1,5})?$")


def normalise_server(value: str) -> str:
    """``host[:port]`` in lower case, as an image reference names it; ``ValueError`` saying what to fix."""
    text = value.strip()
    lowered = text.lower()
    for scheme in ("https://", "http://"):
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    text = text.rstrip("/")
    if text.lower().endswith("/v2") or text.lower().endswith("/v1"):
        text = text[:-3]
    if "/" in text or not _HOST.match(text):
        raise ValueError(
            "the server must be a registry address such as registry.example.com, registry.example.com:5000 or ghcr.io (no path)"
        )
    port = text.rsplit(":", 1)[1] if ":" in text and not text.endswith("]") else None
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError("the server's port must be between 1 and 65535")
    text = text.lower()
    return DOCKER_HUB if text in _HUB_ALIASES else text


def registry_of(image: str) -> str:
    """The registry an image reference pulls from (Docker's rule: a first component with a dot, a colon or
    ``localhost`` is a registry; anything else is Docker Hub)."""
    name = image.split("@", 1)[0]
    first, sep, _rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        first = first.lower()
        return DOCKER_HUB if first in _HUB_ALIASES else first
    return DOCKER_HUB


def split_reference(image: str) -> tuple[str, str | None, str | None]:
    """``(repository, tag, digest)`` of an image reference; the tag defaults to ``latest`` when no digest."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    if tag is None and not digest:
        tag = "latest"
    return name, tag, digest or None
