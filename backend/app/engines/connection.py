"""Reaching a Docker engine: environment for the docker/compose CLIs and a Docker SDK client.

One :class:`EngineSession` per driver operation. TLS material and SSH keys are written to a private
temporary directory (0700, files 0600) that lives exactly as long as the session; a session that has none
makes no directory. The SDK client of a target without key material (a local socket, plain TCP) is built once
per process and shared by its sessions (:class:`SharedClients`); a TLS or SSH target's lives with its session,
as its keys do.

SSH: the CLIs dial ``ssh://user@host`` themselves (``DOCKER_HOST=ssh://...``: ``ssh ... docker system
dial-stdio``). The SDK talks to a unix socket in the session's directory whose every connection runs
that same command (:class:`_DialStdioSocket`), through its ordinary ``unix://`` transport. A private key
given with the target is passed through an ``ssh`` wrapper put first on the CLIs' PATH and used by the
socket, so the CLIs, compose v1 and v2, and the SDK all use it, each session its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.tls
import docker.transport.unixconn
import requests
import urllib3

from backend.app.engines.base import EngineError, EngineRejected, EngineTimeout, EngineUnreachable, TargetConnection

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


def is_unreachable(message: str) -> bool:
    """Whether a CLI's output says it could not talk to the engine at all (the CLI has no status code)."""
    text = message.lower()
    return any(p in text for p in _UNREACHABLE)


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
CLI_INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "SSH_AUTH_SOCK",
    "DOCKER_CONFIG",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
)


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


#: a session's private directory: ``windflow-engine-<pid>-<random>`` in the temporary directory
MATERIAL_PREFIX = "windflow-engine-"
_swept_in: int | None = None


def sweep_orphaned_material(directory: str | None = None) -> list[Path]:
    """Remove the session directories (TLS keys, SSH keys) of WindFlow processes that are gone.

    A session removes its directory when it closes; a process killed with ``SIGKILL`` (a worker's pool child,
    a backend) cannot, and its targets' keys would stay on disk. Each process sweeps once, at its first
    session: the directories named after a process id that no longer exists, and owned by this user. A
    directory of a live process (a replica, a worker on the same host) is left alone. Returns what it removed.
    """
    global _swept_in
    if directory is None:
        if _swept_in == os.getpid():
            return []
        _swept_in = os.getpid()
    removed = []
    root = Path(directory or tempfile.gettempdir())
    for path in root.glob(f"{MATERIAL_PREFIX}*-*"):
        pid = path.name[len(MATERIAL_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or signal_reaches(os.kill, int(pid)):
            continue
        try:
            if path.is_symlink() or not path.is_dir() or path.lstat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def signal_reaches(send: Callable[[int, int], None], target: int) -> bool:
    """Whether ``send(target, 0)`` (``os.kill`` a process, ``os.killpg`` a group) finds it: it exists, another
    user's included."""
    try:
        send(target, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self._ssh_socket: _DialStdioSocket | None = None
        self._opened = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> EngineSession:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def open(self) -> None:
        if self._opened:
            return
        sweep_orphaned_material()
        self._opened = True
        try:
            self._env = self._build_env()
        except BaseException:
            self._opened = False
            self._cleanup_dir()
            raise

    async def aclose(self) -> None:
        client, self._client = self._client, None
        ssh_socket, self._ssh_socket = self._ssh_socket, None
        try:
            if client is not None and not _shared.release(client):
                await asyncio.to_thread(client.close)
            if ssh_socket is not None:
                await asyncio.to_thread(ssh_socket.close)
        finally:  # key material never outlives the session, even when closing is cancelled
            self._cleanup_dir()
            self._opened = False

    def _cleanup_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def material_dir(self) -> Path:
        """The session's private directory (mode 0700), made on first use: only a target with key material
        (TLS, SSH) or files to hand the CLI (a swarm's registry credentials) needs one."""
        assert self._opened, "session not opened"
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"{MATERIAL_PREFIX}{os.getpid()}-"))  # mode 0700
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

    def _build_env(self) -> dict[str, str]:
        env = cli_base_environment()
        env["DOCKER_HOST"] = self.endpoint
        env["DOCKER_CLI_HINTS"] = "false"
        c = self.connection
        if self.tls_enabled:
            directory = self.material_dir
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
            directory = self.material_dir
            key = directory / "id_key"
            _write_private(key, c.ssh_key)
            real_ssh = shutil.which("ssh") or "ssh"
            wrapper = directory / "bin" / "ssh"
            wrapper.parent.mkdir(mode=0o700)
            wrapper.write_text(
                f'#!/bin/sh\nexec {shlex.quote(real_ssh)} -i {shlex.quote(str(key))} -o IdentitiesOnly=yes -o BatchMode=yes "$@"\n'
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
            if self._ssh_socket is None:
                self._ssh_socket = _DialStdioSocket(
                    self.material_dir / "docker.sock", _ssh_argv(self.endpoint, self._ssh_command), self.env
                )
            api = docker.APIClient(
                base_url=f"unix://{self._ssh_socket.path}", version=docker.constants.MINIMUM_DOCKER_API_VERSION, timeout=SDK_TIMEOUT
            )
            return _negotiated(api, _engine_key(self))
        tls: docker.tls.TLSConfig | bool = False
        if self.tls_enabled:
            directory = self.material_dir
            cert = (str(directory / "cert.pem"), str(directory / "key.pem")) if c.tls_cert and c.tls_key else None
            ca = str(directory / "ca.pem") if c.tls_ca else None
            tls = docker.tls.TLSConfig(client_cert=cert, ca_cert=ca, verify=c.tls_verify)
        api = docker.APIClient(
            base_url=self.endpoint,
            tls=tls,
            version=docker.constants.MINIMUM_DOCKER_API_VERSION,
            timeout=SDK_TIMEOUT,
            # a shared client's connections serve every session of the process: the engine's event streams and
            # followed logs hold theirs for long, and a pool too small would open and drop one per call beyond it
            max_pool_size=SHARED_POOL_SIZE if self.shareable else docker.constants.DEFAULT_MAX_POOL_SIZE,
        )
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the target's CA (and HTTP(S)_PROXY
        # reroute the engine's API) when trust_env is on: the target's own settings must win.
        api.trust_env = False
        return _negotiated(api, _engine_key(self))

    @property
    def shareable(self) -> bool:
        """Whether this target's SDK client can serve every session of this process: a local socket or a plain
        TCP endpoint, no key material on disk that the client would need past this session."""
        return not self.tls_enabled and not self.endpoint.startswith("ssh://")

    async def client(self) -> docker.DockerClient:
        if self._client is None:
            key = _engine_key(self)
            client = _shared.take(key) if self.shareable else None
            if client is None:
                if _known_api_version(key):  # nothing to ask the engine: built here, no thread
                    with contextlib.suppress(docker.errors.DockerException, OSError):
                        client = self._build_client()
                client = client or await self.call(self._build_client)  # errors classified by call()
                if self.shareable:
                    client = _shared.put(key, client)
            self._client = client
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
            message = f"{self.connection.endpoint}: {_api_message(exc)}"
            if "client version" in message.lower():  # the remembered API version no longer suits the engine
                _remember_api_version(_engine_key(self), None)
                _shared.forget(_engine_key(self))
            raise EngineRejected(message, exc.status_code, transient_500=is_transient(message)) from exc
        except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            raise EngineTimeout(f"Docker engine {self.connection.endpoint} did not answer in time: {exc}") from exc
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise EngineUnreachable(f"cannot reach Docker engine {self.connection.endpoint}: {exc}") from exc
        except docker.errors.DockerException as exc:
            raise EngineUnreachable(f"cannot reach Docker engine {self.connection.endpoint}: {exc}") from exc


def _api_message(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc)


# --------------------------------------------------------------------------- SSH: dial-stdio behind a unix socket


class _DialStdioSocket:
    """A unix socket in the session's private directory whose every connection is a fresh
    ``ssh ... -- host docker system dial-stdio`` (the command the docker CLI runs for ``ssh://`` hosts),
    its stdio piped to the connection. The SDK reaches it through its ordinary ``unix://`` transport.

    Why not the SDK's own ``ssh://`` (``use_ssh_client=True``): it runs ``ssh`` with the process-wide
    environment and a fixed argv, so a target's own private key cannot be given to it without changing
    global state (PATH, ``SSH_AUTH_SOCK``, ``~/.ssh/config``) that concurrent sessions share; and it
    needs paramiko installed even when it shells out. Here the ``ssh`` is the session's (its key wrapper).
    """

    def __init__(self, path: Path, argv: list[str], env: dict[str, str]) -> None:
        self.path = path
        self._argv = argv
        self._env = env
        if len(str(path)) >= 100:  # sun_path holds 108 bytes
            raise EngineError(
                f"the temporary directory path is too long for a unix socket ({path}); set TMPDIR to a shorter directory", transient=False
            )
        self._closed = threading.Event()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(8)
        self._server.settimeout(0.2)  # so that the accept loop notices close()
        threading.Thread(target=self._accept, name="windflow-ssh-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._serve, args=(conn,), name="windflow-ssh-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            proc = subprocess.Popen(self._argv, env=self._env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        except OSError:
            conn.close()
            return
        with self._lock:
            self._procs.add(proc)
        assert proc.stdin is not None and proc.stdout is not None

        def upstream() -> None:  # the SDK's request bytes → ssh
            try:
                while chunk := conn.recv(65536):
                    proc.stdin.write(chunk)
                    proc.stdin.flush()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    proc.stdin.close()

        writer = threading.Thread(target=upstream, name="windflow-ssh-up", daemon=True)
        writer.start()
        try:
            while chunk := proc.stdout.read1(65536):
                conn.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            _end(proc)
            writer.join(timeout=5)
            with self._lock:
                self._procs.discard(proc)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _end(proc)


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Stop one ``ssh`` (and what it started) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(OSError):
        proc.stdout.close()  # type: ignore[union-attr]


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


def _unix_connect_closing_on_failure(self: Any) -> None:
    """docker-py's ``UnixHTTPConnection.connect`` leaves its socket open when the connect fails (no such
    socket, refused): each failed test or deployment on a unix target leaked a descriptor until garbage
    collection. Same code, closing the socket on failure.

    Pinned by ``tests/unit/test_dependency_pins.py::test_docker_unix_connect_patch_is_the_original_plus_close_on_failure``
    (and ``test_docker_unix_connection_keeps_the_attributes_the_patch_reads``): docker-py's ``connect``
    changing, or fixing the leak, fails there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(self.timeout)
        sock.connect(self.unix_socket)
    except BaseException:
        sock.close()
        raise
    self.sock = sock


docker.transport.unixconn.UnixHTTPConnection.connect = _unix_connect_closing_on_failure


# --- the engines' API versions, asked once per engine per process ---------------------------------------
# Building an SDK client asks the engine for its API version (GET /version: one more round trip, and a TLS or
# SSH handshake on a remote engine) before the first real request. Each driver operation opens its own
# session, so a deployment paid it twice. The answer is remembered per engine (its endpoint and the
# credentials that reach it, by hash) for API_VERSION_TTL seconds; an engine that refuses the version
# ("client version ... is too new": it was downgraded) makes the next session ask again.

API_VERSION_TTL = 600.0
_api_versions: dict[str, tuple[str, float]] = {}
_api_versions_lock = threading.Lock()


class SharedClients:
    """The SDK clients of the targets without key material, one per engine per process, shared by its sessions.

    Building a client costs a ``requests`` session and its adapters (2-3 ms), and closing one a thread hop:
    a deployment opened three sessions, one after the other, each paying both. A client is thread-safe
    enough for this (``requests`` over urllib3's pool: one connection per concurrent call). An entry lives
    :data:`API_VERSION_TTL` seconds (the API version it speaks was asked then) and goes when the engine refuses
    that version; at most :data:`SHARED_CLIENTS` are kept. A client that leaves the table is closed once the
    last session using it ends. Entries belong to the process that made them: a forked child (a worker's pool
    process) builds its own and never closes its parent's.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._entries: dict[str, tuple[docker.DockerClient, float]] = {}  # key -> (client, expiry), oldest first
        self._users: dict[int, int] = {}  # id(client) -> sessions using it
        self._retired: dict[int, docker.DockerClient] = {}  # out of the table, still in use

    def _own(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's clients (and their sockets) are not this process's
            self._pid, self._entries, self._users, self._retired = os.getpid(), {}, {}, {}

    def take(self, key: str) -> docker.DockerClient | None:
        with self._lock:
            self._own()
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[1] <= time.monotonic():
                self._retire(key)
                return None
            self._users[id(entry[0])] = self._users.get(id(entry[0]), 0) + 1
            return entry[0]

    def put(self, key: str, client: docker.DockerClient) -> docker.DockerClient:
        """Share ``client`` (just built by a session, which uses it). Returns the client the session uses: the
        one already shared if another session put one meanwhile (``client`` is then closed)."""
        with self._lock:
            self._own()
            entry = self._entries.get(key)
            if entry is not None and entry[1] > time.monotonic():
                self._users[id(entry[0])] = self._users.get(id(entry[0]), 0) + 1
                shared, spare = entry[0], client
            else:
                if entry is not None:
                    self._retire(key)
                self._entries[key] = (client, time.monotonic() + API_VERSION_TTL)
                self._users[id(client)] = 1
                while len(self._entries) > self.size:
                    self._retire(next(iter(self._entries)))
                shared, spare = client, None
            closing = self._closable()
        if spare is not None:
            spare.close()
        for old in closing:
            old.close()
        return shared

    def release(self, client: docker.DockerClient) -> bool:
        """A session using ``client`` ends. False when ``client`` is not a shared one (the session closes it)."""
        with self._lock:
            if self._pid != os.getpid() or id(client) not in self._users:
                return False
            self._users[id(client)] -= 1
            closing = self._closable()
        for old in closing:
            old.close()
        return True

    def forget(self, key: str) -> None:
        with self._lock:
            self._own()
            if key in self._entries:
                self._retire(key)
            closing = self._closable()
        for old in closing:
            old.close()

    def _retire(self, key: str) -> None:
        client, _expiry = self._entries.pop(key)
        self._retired[id(client)] = client

    def _closable(self) -> list[docker.DockerClient]:
        """The retired clients no session uses any more, out of the books (closed by the caller, unlocked)."""
        done = [client for ident, client in self._retired.items() if self._users.get(ident, 0) <= 0]
        for client in done:
            del self._retired[id(client)]
            self._users.pop(id(client), None)
        return done


#: how many targets' clients a process keeps (each holds at most a few idle connections to its engine)
SHARED_CLIENTS = 32
#: the connections a shared client keeps to its engine (idle ones only; more are opened while busy, then dropped)
SHARED_POOL_SIZE = 64
_shared = SharedClients(SHARED_CLIENTS)


def _engine_key(session: EngineSession) -> str:
    c = session.connection
    material = "\0".join(str(x) for x in (session.endpoint, c.tls_ca, c.tls_cert, c.tls_key, c.tls_verify, c.ssh_key))
    return hashlib.sha256(material.encode()).hexdigest()


def _known_api_version(key: str) -> str | None:
    with _api_versions_lock:
        known = _api_versions.get(key)
    return known[0] if known and known[1] > time.monotonic() else None


def _remember_api_version(key: str, version: str | None) -> None:
    with _api_versions_lock:
        if version is None:
            _api_versions.pop(key, None)
        else:
            _api_versions[key] = (version, time.monotonic() + API_VERSION_TTL)


def _negotiated(api: docker.APIClient, key: str | None = None) -> docker.DockerClient:
    """A DockerClient around ``api`` speaking the engine's API version (the SDK's ``version="auto"``,
    done after the caller's adjustments to ``api``); the version this process already had from the engine
    of ``key``, else asked now and remembered."""
    known = _known_api_version(key) if key else None
    try:
        api._version = known or api._retrieve_server_version()
    except BaseException:
        api.close()
        raise
    if key and not known:
        _remember_api_version(key, api._version)
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return client
