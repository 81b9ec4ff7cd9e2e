"""Pulling images through the engine's streamed pull: registry credentials through the API's auth parameter
only, the stream turned into typed progress, and a failure said as what it is.

Credentials reach the engine as the ``X-Registry-Auth`` header of the pull request (docker-py's
``auth_config``): never a command line, an environment, a file or a log line. The engine's error text never
contains them; the deployment's redactor masks them anyway (``services/deployments/context.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
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


class _PullConnection:
    """The HTTP response of one pull, caught as requests hands it to docker-py (a response hook of the client's
    session, for this thread's ``/images/create`` only), so that abandoning the pull shuts its socket.

    Why: the thread reading the stream blocks in a read until the engine sends its next line, which a stalled
    registry may never make it send. A shut socket wakes that read at once, and the engine, seeing its client
    gone, cancels the pull itself (its layer downloads stop; nothing is tagged)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.thread: int | None = None
        self.response: Any = None
        self.aborted = False
        self._lock = threading.Lock()

    def hook(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        request = getattr(response, "request", None)
        if threading.get_ident() == self.thread and "/images/create" in str(getattr(request, "path_url", "")):
            with self._lock:
                self.response = response
                aborted = self.aborted
            if aborted:  # abandoned while the engine had not answered yet
                _shut(response)
        return response

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            response = self.response
        if response is not None:
            _shut(response)

    def __enter__(self) -> _PullConnection:
        self.thread = threading.get_ident()
        self.api.hooks.setdefault("response", []).append(self.hook)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ValueError):
            self.api.hooks["response"].remove(self.hook)


def _shut(response: Any) -> None:
    """Shut the socket under ``response`` (a unix socket, TCP, TLS or the SSH relay's unix socket) both ways."""
    connection = getattr(getattr(response, "raw", None), "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class PullTimedOut(EngineError):
    """The images step ran past the deployment's pull timeout; the pull in flight was abandoned."""

    def __init__(self, image: str, timeout: float, state: PullProgress) -> None:
        done = f"{state.current_bytes / 1e6:.1f} of {state.total_bytes / 1e6:.1f} MB" if state.total_bytes else "nothing received"
        super().__init__(
            f"step Check images timed out: pulling image {image} did not finish within the pull timeout of {timeout:g} s "
            f"({done}, {state.layers_done}/{state.layers_total} layers); the pull was abandoned",
            transient=False,
        )
        self.image = image


#: Seconds an abandoned pull's thread is given to see its socket shut and return (it does at once).
ABANDON_WAIT = 5.0


async def pull(
    client: Any,
    image: str,
    *,
    auth: Mapping[str, str] | None,
    progress: ProgressSink | None,
    timeout: float | None = None,
    timeout_label: float | None = None,
) -> PullProgress:
    """Pull ``image`` with the engine's streamed pull, reporting progress at most every
    :data:`PROGRESS_INTERVAL` seconds (and once at the end). Raises :class:`PullFailed`, the session's
    ``EngineError`` for an engine that does not answer, or :class:`PullTimedOut` after ``timeout`` seconds
    (``timeout_label``: the timeout as the message names it, the whole step's when ``timeout`` is what is left
    of it).

    Cancelled (the deployment was cancelled) or timed out, the pull is abandoned at once: its socket is shut,
    so the engine stops pulling and the reading thread returns (:class:`_PullConnection`)."""
    state = PullProgress(image)
    repository, tag, digest = split_reference(image)
    connection = _PullConnection(client.api)

    def run() -> None:
        response_stream = None
        try:
            with connection:
                response_stream = client.api.pull(
                    repository, tag=digest or tag, stream=True, decode=True, auth_config=dict(auth) if auth else None
                )
            for line in response_stream:
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
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if connection.aborted:
                raise PullFailed(image, "error", "the pull was abandoned") from None
            if isinstance(exc, ValueError):  # a line that is not JSON: the stream was cut
                raise PullFailed(image, "error", f"the engine's pull stream was cut: {exc}") from None
            raise EngineUnreachable(f"the Docker engine stopped answering while pulling {image}: {type(exc).__name__}") from None
        finally:
            if connection.response is not None:
                with contextlib.suppress(Exception):
                    connection.response.close()

    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    task = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        while True:
            wait = PROGRESS_INTERVAL if deadline is None else max(0.0, min(PROGRESS_INTERVAL, deadline - loop.time()))
            done, _ = await asyncio.wait({task}, timeout=wait)
            if done:
                break
            if deadline is not None and loop.time() >= deadline:
                raise PullTimedOut(image, timeout_label if timeout_label is not None else timeout, state)
            if progress is not None:
                await progress(state)
        task.result()
    finally:
        if not task.done():
            # cancelled from outside, or timed out: the engine lets the pull go once its client is gone; the
            # thread wakes from its read at once and is waited for, so clean-up never races a live pull
            connection.abort()
            await asyncio.wait({task}, timeout=ABANDON_WAIT)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the abandoned pull's own error says nothing more
    state.status = "pulled"
    if progress is not None:
        await progress(state)
    return state
