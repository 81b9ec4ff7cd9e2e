"""Reaching a Docker engine: environment for the docker/compose CLIs and a Docker SDK client.

One :class:`EngineSession` per driver operation. TLS material and SSH keys are written to a private
temporary directory (0700, files 0600) that lives exactly as long as the session.

SSH: the CLIs dial ``ssh://user@host`` themselves (``ssh ... docker system dial-stdio``). The SDK's
own ``ssh://`` support imports paramiko even with ``use_ssh_client=True``; WindFlow does not ship
paramiko, so :class:`_SSHStdioAdapter` does the same shell-out with the system ``ssh`` client. A
private key given with the target is passed through an ``ssh`` wrapper put first on the CLIs' PATH,
so the CLIs, compose v1 and v2, and the SDK all use it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.tls
import docker.transport.unixconn
import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool

from backend.app.engines.base import EngineError, TargetConnection

T = TypeVar("T")

#: Seconds an SDK request may take before it counts as a (transient) timeout.
SDK_TIMEOUT = 60

# What the engine or the CLIs say when the engine cannot be reached: always worth a retry.
_UNREACHABLE = (
    "cannot connect to the docker daemon",
    "error during connect",
    "connection refused",
    "connection reset",
    "connection aborted",
    "no route to host",
    "network is unreachable",
    "is the docker daemon running",
    "error while fetching server api version",
    "ssh: connect to host",
    "connection closed by remote host",
)
# Problems of the document, the images or the host that the same request will hit again.
_PERMANENT = (
    "port is already allocated",
    "address already in use",
    "no such image",
    "pull access denied",
    "manifest unknown",
    "repository does not exist",
    "invalid",
    "not valid",
    "additional property",
    "is not allowed",
    "yaml:",
    "is already in use",
    "not a swarm manager",
    "this node is not",
    "permission denied",
    "no such file or directory",
    "unknown flag",
    "is required",
)
# Slowness: worth a retry.
_TRANSIENT = (
    "timeout",
    "timed out",
    "temporarily unavailable",
    "too many requests",
    "tls handshake",
    "unexpected eof",
    "broken pipe",
    "service unavailable",
    "bad gateway",
    "no such host",
)


def is_transient(message: str) -> bool:
    """Whether a failure described by ``message`` may go away on retry. Unknown failures are permanent:
    retrying them would only delay a clear error."""
    text = message.lower()
    if any(p in text for p in _UNREACHABLE):
        return True
    if any(p in text for p in _PERMANENT):
        return False
    return any(p in text for p in _TRANSIENT)


def engine_error(message: str) -> EngineError:
    return EngineError(message, transient=is_transient(message))


#: What a CLI process inherits from the backend's environment. Compose interpolates ``${VAR}`` from its
#: environment, so passing everything would let a stack template read SECRET_KEY or DATABASE_URL into a
#: container; nor may the backend's own DOCKER_HOST/DOCKER_CONTEXT redirect a target's commands.
CLI_INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
                     "SSH_AUTH_SOCK", "DOCKER_CONFIG", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")


def cli_base_environment() -> dict[str, str]:
    return {k: os.environ[k] for k in CLI_INHERITED_ENV if k in os.environ}


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content if content.endswith("\n") else content + "\n")


def _normalise_endpoint(endpoint: str) -> str:
    endpoint = endpoint.strip()
    if endpoint.startswith(("http://", "https://")):
        return "tcp://" + endpoint.split("://", 1)[1]
    if endpoint.startswith("/"):
        return "unix://" + endpoint
    return endpoint


class EngineSession:
    """The CLI environment and the SDK client for one target, plus the files they need.

    Use as ``async with EngineSession(connection) as session``. The SDK client is built on first use
    (building it asks the engine for its API version, so an unreachable engine fails there).
    """

    def __init__(self, connection: TargetConnection) -> None:
        self.connection = connection
        self.endpoint = _normalise_endpoint(connection.endpoint)
        self._dir: Path | None = None
        self._client: docker.DockerClient | None = None
        self._env: dict[str, str] | None = None
        self._ssh_command: list[str] = ["ssh"]

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> EngineSession:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def open(self) -> None:
        if self._dir is not None:
            return
        self._dir = Path(tempfile.mkdtemp(prefix="windflow-engine-"))  # mode 0700
        try:
            self._env = self._build_env(self._dir)
        except BaseException:
            self._cleanup_dir()
            raise

    async def aclose(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                await asyncio.to_thread(client.close)
        finally:  # key material never outlives the session, even when closing is cancelled
            self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def material_dir(self) -> Path:
        assert self._dir is not None, "session not opened"
        return self._dir

    # ------------------------------------------------------------------ CLI

    @property
    def tls_enabled(self) -> bool:
        c = self.connection
        return self.endpoint.startswith("tcp://") and bool(c.tls_ca or c.tls_cert or c.tls_key)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a docker/compose CLI process talking to this target."""
        assert self._env is not None, "session not opened"
        return dict(self._env)

    def _build_env(self, directory: Path) -> dict[str, str]:
        env = cli_base_environment()
        env["DOCKER_HOST"] = self.endpoint
        env["DOCKER_CLI_HINTS"] = "false"
        c = self.connection
        if self.tls_enabled:
            if c.tls_ca:
                _write_private(directory / "ca.pem", c.tls_ca)
            if c.tls_cert:
                _write_private(directory / "cert.pem", c.tls_cert)
            if c.tls_key:
                _write_private(directory / "key.pem", c.tls_key)
            env["DOCKER_CERT_PATH"] = str(directory)
            if c.tls_verify:
                env["DOCKER_TLS_VERIFY"] = "1"
            else:
                env["DOCKER_TLS"] = "1"
        if self.endpoint.startswith("ssh://") and c.ssh_key:
            key = directory / "id_key"
            _write_private(key, c.ssh_key)
            real_ssh = shutil.which("ssh") or "ssh"
            wrapper = directory / "bin" / "ssh"
            wrapper.parent.mkdir(mode=0o700)
            wrapper.write_text(
                "#!/bin/sh\n"
                f"exec {shlex.quote(real_ssh)} -i {shlex.quote(str(key))} -o IdentitiesOnly=yes "
                '-o BatchMode=yes "$@"\n'
            )
            wrapper.chmod(0o700)
            env["PATH"] = f"{wrapper.parent}{os.pathsep}{env.get('PATH', os.defpath)}"
            self._ssh_command = [str(wrapper)]
        elif self.endpoint.startswith("ssh://"):
            self._ssh_command = [shutil.which("ssh") or "ssh", "-o", "BatchMode=yes"]
        return env

    # ------------------------------------------------------------------ SDK

    def _build_client(self) -> docker.DockerClient:
        c = self.connection
        if self.endpoint.startswith("ssh://"):
            return _ssh_client(self.endpoint, self._ssh_command, self.env)
        tls: docker.tls.TLSConfig | bool = False
        if self.tls_enabled:
            directory = self.material_dir
            cert = (str(directory / "cert.pem"), str(directory / "key.pem")) if c.tls_cert and c.tls_key else None
            ca = str(directory / "ca.pem") if c.tls_ca else None
            tls = docker.tls.TLSConfig(client_cert=cert, ca_cert=ca, verify=c.tls_verify)
        api = docker.APIClient(base_url=self.endpoint, tls=tls, version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                               timeout=SDK_TIMEOUT)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the target's CA (and HTTP(S)_PROXY
        # reroute the engine's API) when trust_env is on: the target's own settings must win.
        api.trust_env = False
        return _negotiated(api)

    async def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = await self.call(self._build_client)
        return self._client

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a thread. Unreachable engine → transient EngineError; an API
        error → EngineError classified by its message; ``NotFound`` passes through for the caller."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.NotFound:
            raise
        except docker.errors.TLSParameterError as exc:
            raise EngineError(f"invalid TLS settings for {self.connection.endpoint}: {exc}", transient=False) from exc
        except docker.errors.APIError as exc:
            raise engine_error(f"{self.connection.endpoint}: {_api_message(exc)}") from exc
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise EngineError(f"cannot reach Docker engine {self.connection.endpoint}: {exc}",
                              transient=True) from exc
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot reach Docker engine {self.connection.endpoint}: {exc}",
                              transient=True) from exc


def _api_message(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc)


# --------------------------------------------------------------------------- SSH without paramiko

class _SSHStdioSocket(socket.socket):
    """A socket-like pipe to ``ssh host docker system dial-stdio`` (what the docker CLI does)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self._argv = argv
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def connect(self, *args: Any, **kwargs: Any) -> None:  # noqa: ARG002
        self.proc = subprocess.Popen(  # noqa: S603
            self._argv, env=self._env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True,
        )

    def sendall(self, data: bytes, *args: Any) -> None:  # type: ignore[override]
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, data: bytes, *args: Any) -> int:  # type: ignore[override]
        self.sendall(data)
        return len(data)

    def recv(self, n: int, *args: Any) -> bytes:  # type: ignore[override]
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.read(n)

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.proc is None:
            self.connect()
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.stdout.channel = self  # type: ignore[attr-defined]  # what the SDK's attach looks for
        return self.proc.stdout

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        super().close()


class _SSHConnection(urllib3.connection.HTTPConnection):
    def __init__(self, argv: list[str], env: dict[str, str], timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._ssh_argv = argv
        self._ssh_env = env

    def connect(self) -> None:
        sock = _SSHStdioSocket(self._ssh_argv, self._ssh_env)
        sock.settimeout(self.timeout)
        sock.connect()
        self.sock = sock


class _SSHConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    scheme = "ssh"

    def __init__(self, argv: list[str], env: dict[str, str], timeout: float, maxsize: int) -> None:
        super().__init__("localhost", timeout=timeout, maxsize=maxsize)
        self._ssh_argv = argv
        self._ssh_env = env
        self._ssh_timeout = timeout

    def _new_conn(self) -> _SSHConnection:
        return _SSHConnection(self._ssh_argv, self._ssh_env, self._ssh_timeout)


class _SSHStdioAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, argv: list[str], env: dict[str, str], timeout: float) -> None:
        self._pool = _SSHConnectionPool(argv, env, timeout, maxsize=4)
        super().__init__()

    def get_connection(self, url: Any, proxies: Any = None) -> _SSHConnectionPool:  # noqa: ARG002
        return self._pool

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> _SSHConnectionPool:  # noqa: ARG002
        return self._pool

    def close(self) -> None:
        super().close()
        self._pool.close()


def _ssh_argv(endpoint: str, ssh_command: list[str]) -> list[str]:
    url = urllib.parse.urlparse(endpoint)
    if not url.hostname:
        raise EngineError(f"invalid ssh endpoint {endpoint!r}: expected ssh://user@host[:port]", transient=False)
    argv = [*ssh_command, "-o", "ConnectTimeout=15"]
    if url.username:
        argv += ["-l", url.username]
    if url.port:
        argv += ["-p", str(url.port)]
    return [*argv, "--", url.hostname, "docker system dial-stdio"]


def _ssh_client(endpoint: str, ssh_command: list[str], env: dict[str, str]) -> docker.DockerClient:
    # A placeholder http URL keeps APIClient from choosing an adapter; the real one is mounted below.
    api = docker.APIClient(base_url="tcp://ssh.invalid:22", version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                           timeout=SDK_TIMEOUT)
    adapter = _SSHStdioAdapter(_ssh_argv(endpoint, ssh_command), env, SDK_TIMEOUT)
    api.mount("http+docker://ssh", adapter)
    api._custom_adapter = adapter  # noqa: SLF001 - what APIClient.close() and the SDK's ssh path use
    api.base_url = "http+docker://ssh"
    return _negotiated(api)


def _unix_connect_closing_on_failure(self: Any) -> None:
    """docker-py's ``UnixHTTPConnection.connect`` leaves its socket open when the connect fails (no such
    socket, refused): each failed test or deployment on a unix target leaked a descriptor until garbage
    collection. Same code, closing the socket on failure."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(self.timeout)
        sock.connect(self.unix_socket)
    except BaseException:
        sock.close()
        raise
    self.sock = sock


docker.transport.unixconn.UnixHTTPConnection.connect = _unix_connect_closing_on_failure


def _negotiated(api: docker.APIClient) -> docker.DockerClient:
    """A DockerClient around ``api`` speaking the engine's API version (the SDK's ``version="auto"``,
    done after the caller's adjustments to ``api``)."""
    try:
        api._version = api._retrieve_server_version()  # noqa: SLF001
    except BaseException:
        api.close()
        raise
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client
