"""Real container registries for tests: Debian's ``docker-registry`` (distribution 2.8) on loopback ports, one
with htpasswd auth and one open, each started from a config file in a temporary directory. Docker trusts
127.0.0.0/8 as an insecure (plain HTTP) registry, so the local engine pushes to and pulls from them."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REGISTRY_BIN = "/usr/bin/docker-registry"
USERNAME = "ci-puller"
PASSWORD = "s3cret-Registry-pw-7f3a"


@dataclass
class LocalRegistry:
    server: str  # 127.0.0.1:PORT
    username: str | None
    password: str | None
    process: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _htpasswd_line(username: str, password: str) -> str:
    if shutil.which("htpasswd"):
        return subprocess.run(["htpasswd", "-Bbn", username, password], check=True, capture_output=True, text=True).stdout.strip()
    import bcrypt  # pragma: no cover - apache2-utils missing

    return f"{username}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}"


def start_registry(directory: Path, *, auth: bool) -> LocalRegistry:
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed (scripts/ensure-services.sh installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    auth_block = ""
    if auth:
        (directory / "htpasswd").write_text(_htpasswd_line(USERNAME, PASSWORD) + "\n")
        auth_block = f"auth:\n  htpasswd:\n    realm: windflow-test\n    path: {directory / 'htpasswd'}\n"
    (directory / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth_block}"
    )
    with open(directory / "registry.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([REGISTRY_BIN, "serve", str(directory / "config.yml")], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401):
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"docker-registry did not start: {(directory / 'registry.log').read_text()[-2000:]}")
    return LocalRegistry(f"127.0.0.1:{port}", USERNAME if auth else None, PASSWORD if auth else None, process)


def stop_registry(registry: LocalRegistry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.process.kill()
        registry.process.wait()


@pytest.fixture(scope="session")
def private_registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    registry = start_registry(tmp_path_factory.mktemp("registry-private"), auth=True)
    yield registry
    stop_registry(registry)


@pytest.fixture(scope="session")
def open_registry(tmp_path_factory) -> Iterator[LocalRegistry]:
    registry = start_registry(tmp_path_factory.mktemp("registry-open"), auth=False)
    yield registry
    stop_registry(registry)


class SlowProxy:
    """A TCP proxy on a loopback port in front of a registry: what the registry sends goes on at ``rate`` bytes a
    second, and once ``stall_after`` bytes have gone in all, nothing more is sent while the connection stays open
    (a registry that hangs mid-blob) until :meth:`resume`, after which the rest goes at full speed.

    How a test sees from outside the engine whether the engine gave a pull up: resumed, a registry serves the rest
    of the blob to a pull still alive, which completes and tags the image; a pull the engine abandoned reads a
    few kilobytes more at most and tags nothing."""

    def __init__(self, upstream: str, *, rate: float, stall_after: int) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.rate = rate
        self.stall_after = stall_after
        self.sent = 0  # bytes of the registry's answers passed on
        self.stalled: set[int] = set()  # the connections (numbered from 1) held at the budget
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._resumed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self._server.settimeout(0.2)
        self.server = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._accepter = threading.Thread(target=self._accept, name="slow-proxy", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        number = 0
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            number += 1
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            gone = threading.Event()  # the client closed its side
            threading.Thread(target=self._up, args=(client, upstream, gone), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, gone, number), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, gone: threading.Event) -> None:
        try:
            while chunk := client.recv(65536):
                upstream.sendall(chunk)
        except OSError:
            pass
        gone.set()
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _down(self, upstream: socket.socket, client: socket.socket, gone: threading.Event, number: int) -> None:
        try:
            while not gone.is_set() and (chunk := upstream.recv(16384)):
                with self._lock:
                    limit = len(chunk) if self._resumed.is_set() else self.stall_after - self.sent
                    allowed = max(0, min(len(chunk), limit))
                    self.sent += allowed
                    if allowed < len(chunk):
                        self.stalled.add(number)
                if allowed:
                    client.sendall(chunk[:allowed])
                    if not self._resumed.is_set():
                        time.sleep(allowed / self.rate)
                if allowed < len(chunk):
                    while not (gone.wait(0.1) or self._closing.is_set() or self._resumed.is_set()):
                        pass  # hung: the connection stays open, nothing more comes
                    if not self._resumed.is_set():
                        return
                    client.sendall(chunk[allowed:])
                    with self._lock:
                        self.sent += len(chunk) - allowed
        except OSError:
            pass

    def resume(self) -> None:
        """The registry answers again: the rest goes on at once, unthrottled."""
        self._resumed.set()

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._accepter.join(timeout=5)
