"""Pulling images through the engine's streamed pull: registry credentials through the API's auth parameter
only, the stream turned into typed progress, and a failure said as what it is.

Credentials reach the engine as the ``X-Registry-Auth`` header of the pull request (docker-py's
``auth_config``): never a command line, an environment, a file or a log line. The engine's error text never
contains them; the deployment's redactor masks them anyway (``services/deployments/context.py``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker.errors
import requests.exceptions
import urllib3.exceptions

from backend.app.core.image_reference import registry_of, split_reference
from backend.app.engines.base import EngineError, EngineUnreachable

#: Seconds between two progress reports of one pull (≤ 5 per second, whatever the layer count)
PROGRESS_INTERVAL = 0.25

_AUTH_WORDS = (
    "unauthorized",
    "authentication required",
    "no basic auth credentials",
    "denied",
    "incorrect username or password",
    "401 unauthorized",
    "403 forbidden",
)
_UNKNOWN_WORDS = ("manifest unknown", "not found", "repository does not exist", "name unknown", "does not exist or may require")
_UNREACHABLE_WORDS = (
    "dial tcp",
    "connection refused",
    "no such host",
    "i/o timeout",
    "tls handshake timeout",
    "connection reset",
    "network is unreachable",
    "server misbehaving",
    "eof",
    "timeout exceeded",
    "context deadline exceeded",
    "server gave http response",
)


@dataclass
class PullProgress:
    """Where one image's pull stands: bytes and layers done of the total known so far."""

    image: str
    status: str = "pulling"
    current_bytes: int = 0
    total_bytes: int = 0
    layers_done: int = 0
    layers_total: int = 0
    digest: str | None = None
    _layers: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def feed(self, line: Mapping[str, Any]) -> None:
        """Fold one line of the engine's pull stream (``{"status", "id", "progressDetail"}``) in."""
        status = str(line.get("status") or "")
        layer = line.get("id")
        if status.startswith("Digest: "):
            self.digest = status.removeprefix("Digest: ").strip()
            return
        if status.startswith("Status: "):
            self.status = "pulled"
            return
        if not layer or status.startswith("Pulling from"):
            return
        entry = self._layers.setdefault(str(layer), {"current": 0, "total": 0, "done": False})
        detail = line.get("progressDetail") or {}
        if status == "Downloading":
            entry["total"] = int(detail.get("total") or entry["total"] or 0)
            entry["current"] = int(detail.get("current") or 0)
            self.status = "downloading"
        elif status in ("Download complete", "Verifying Checksum"):
            entry["current"] = entry["total"]
        elif status == "Extracting":
            entry["current"] = entry["total"]
            self.status = "extracting"
        elif status in ("Pull complete", "Already exists"):
            entry["current"] = entry["total"]
            entry["done"] = True
        self.layers_total = len(self._layers)
        self.layers_done = sum(1 for e in self._layers.values() if e["done"])
        self.total_bytes = sum(e["total"] for e in self._layers.values())
        self.current_bytes = sum(min(e["current"], e["total"]) for e in self._layers.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "status": self.status,
            "current_bytes": self.current_bytes,
            "total_bytes": self.total_bytes,
            "layers_done": self.layers_done,
            "layers_total": self.layers_total,
        }


ProgressSink = Callable[[PullProgress], Awaitable[None]]


class PullFailed(EngineError):
    """An image could not be pulled; ``reason`` is ``unknown_image``, ``authentication``, ``unreachable``,
    ``disk_full`` or ``error``. Only an unreachable registry is transient (retried with the deployment's
    attempts); an unknown image or tag, refused credentials and a full disk fail at once."""

    def __init__(self, image: str, reason: str, detail: str) -> None:
        what = {
            "unknown_image": "unknown image or tag in its registry",
            "authentication": f"registry {registry_of(image)} refused the credentials (add or fix the "
            "organisation's registry credentials for this server)",
            "unreachable": f"registry {registry_of(image)} is unreachable",
            "disk_full": "the engine's disk is full (free space on the target, then retry)",
            "error": "the pull failed",
        }[reason]
        super().__init__(
            f"image {image} is not available locally and could not be pulled: {what} ({detail})", transient=reason == "unreachable"
        )
        self.reason = reason
        self.image = image


class PullProblem(str):
    """The text of an image that could not be had, with whether trying again may help."""

    transient: bool = False

    @classmethod
    def of(cls, exc: EngineError) -> PullProblem:
        problem = cls(exc.message)
        problem.transient = exc.transient
        return problem


def classify(text: str, status_code: int | None = None) -> str:
    lowered = text.lower()
    if "no space left on device" in lowered:
        return "disk_full"
    if status_code == 404 or any(word in lowered for word in _UNKNOWN_WORDS):
        return "unknown_image"  # before the login: Docker Hub says "access denied, repository does not exist"
    if status_code in (401, 403) or any(word in lowered for word in _AUTH_WORDS):
        return "authentication"
    if any(word in lowered for word in _UNREACHABLE_WORDS):
        return "unreachable"
    return "error"


def auth_for(image: str, registry_auth: Mapping[str, Mapping[str, str]]) -> dict[str, str] | None:
    """The credentials whose server is the image's registry, or None."""
    found = registry_auth.get(registry_of(image))
    return dict(found) if found else None


async def pull(
    client: Any, image: str, *, auth: Mapping[str, str] | None, progress: ProgressSink | None, cancelled: threading.Event | None = None
) -> PullProgress:
    """Pull ``image`` with the engine's streamed pull, reporting progress at most every
    :data:`PROGRESS_INTERVAL` seconds (and once at the end). Raises :class:`PullFailed`, or the session's
    ``EngineError`` for an engine that does not answer."""
    state = PullProgress(image)
    repository, tag, digest = split_reference(image)
    stop = cancelled or threading.Event()

    def run() -> None:
        try:
            stream = client.api.pull(repository, tag=digest or tag, stream=True, decode=True, auth_config=dict(auth) if auth else None)
            for line in stream:
                if stop.is_set():
                    stream.close() if hasattr(stream, "close") else None
                    raise PullFailed(image, "error", "the pull was abandoned")
                if line.get("error") or line.get("errorDetail"):
                    message = str(line.get("error") or (line.get("errorDetail") or {}).get("message") or "")
                    raise PullFailed(image, classify(message), message)
                state.feed(line)
        except docker.errors.APIError as exc:
            explanation = exc.explanation
            if isinstance(explanation, bytes):
                explanation = explanation.decode(errors="replace")
            message = str(explanation or exc)
            raise PullFailed(image, classify(message, exc.status_code), message) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise EngineUnreachable(f"the Docker engine stopped answering while pulling {image}: {type(exc).__name__}") from None

    task = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=PROGRESS_INTERVAL)
            if done:
                break
            if progress is not None:
                await progress(state)
        task.result()
    finally:
        if not task.done():  # cancelled from outside: let the thread stop at its next line
            stop.set()
    state.status = "pulled"
    if progress is not None:
        await progress(state)
    return state
