"""Real container registries for tests: Debian's ``docker-registry`` (distribution 2.8) on loopback ports, one
with htpasswd auth and one open, each started from a config file in a temporary directory. Docker trusts
127.0.0.0/8 as an insecure (plain HTTP) registry, so the local engine pushes to and pulls from them."""

from __future__ import annotations

import shutil
import socket
import subprocess
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
