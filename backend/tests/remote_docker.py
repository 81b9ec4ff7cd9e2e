"""A second, throw-away Docker engine reachable only over TCP + mutual TLS, for remote-target tests.

``remote_docker`` (session scope) starts Debian's ``dockerd`` 20.10 a second time, next to the engine of
``scripts/setup-docker.sh``, listening on ``tcp://127.0.0.1:<free port>`` with ``--tlsverify`` and on a private
unix socket (used only to wait for it). Everything it owns lives in one fresh ``/tmp/wfd-*`` directory:

* ``--data-root``, ``--exec-root``, ``--pidfile``: its own state, so it never touches ``/var/lib/docker``
  or ``/var/run/docker*``. Without ``--containerd`` it starts *its own* containerd, whose socket, state
  and pid file are under the exec-root (``<exec-root>/containerd/``) and whose root is under the data-root.
* ``--bridge=none --iptables=false --ip-masq=false``: no ``docker0`` bridge and no netfilter rules, so it
  cannot fight the main engine over networking (both would otherwise own ``docker0`` and the same
  iptables chains).
* ``--config-file`` pointing at an empty JSON document, so a host ``/etc/docker/daemon.json`` (``hosts``,
  ``data-root``...) can never conflict with the flags.

The directory is short (``/tmp/wfd-XXXXXXXX``) on purpose: containerd's socket path lands inside it and
unix socket paths are limited to 108 bytes. It is always a *fresh* directory because PID 1 on the
development machines does not reap orphans: a containerd from a previous run may linger as a zombie
whose pid still "exists", and a stale pid file would make a new daemon wait for it.

Certificates are generated with ``cryptography``: a CA, a server certificate for ``127.0.0.1`` /
``localhost`` (``serverAuth``), a client certificate (``clientAuth``) the engine accepts, and a client
certificate signed by *another* CA that it must refuse.

Teardown stops exactly the processes this fixture started, by pid: SIGTERM to dockerd (which stops its
containerd), then SIGKILL to either one still alive after a grace period.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from backend.tests.conftest import require_service

DOCKERD = os.environ.get("WINDFLOW_TEST_DOCKERD", "/usr/sbin/dockerd")
START_TIMEOUT = float(os.environ.get("WINDFLOW_TEST_DOCKERD_TIMEOUT", "60"))


@dataclass(frozen=True)
class Pem:
    cert: str
    key: str


@dataclass(frozen=True)
class RemoteDocker:
    endpoint: str  # tcp://127.0.0.1:PORT
    ca: str  # PEM of the CA that signed the server and the good client certificate
    client: Pem  # accepted client certificate + key
    rogue_ca: str  # PEM of an unrelated CA
    rogue_client: Pem  # client certificate signed by the unrelated CA: refused by the engine
    version: str  # the engine's version, as /version reports it
    api_version: str
    workdir: Path
    startup_seconds: float


# --- certificates ---------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "WindFlow tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], common_name: str, *, server: bool
) -> Pem:
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    return Pem(cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key))


def client_tls_material() -> tuple[str, Pem]:
    """A CA certificate (PEM) and a client certificate + key it signed: valid TLS fields for a target."""
    ca = make_ca("WindFlow test CA")
    return cert_pem(ca[0]), make_leaf(ca, "windflow-client", server=False)


# --- processes ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    """``pid`` runs and is not a zombie (PID 1 here does not reap orphans, so zombies linger)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X", "x"}


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ping_unix(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=2) as client:
            return client.get("http://docker/_ping").status_code == 200
    except httpx.HTTPError:
        return False


def _tls_version(port: int, ca: Path, cert: Path, key: Path) -> dict:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    with httpx.Client(verify=context, timeout=5) as client:
        response = client.get(f"https://127.0.0.1:{port}/version")
        response.raise_for_status()
        return response.json()


def _unmount_below(root: Path) -> None:
    """Unmount anything the daemons left mounted under ``root`` (deepest first) so it can be removed."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(root) + "/"
    targets = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def _stop(dockerd: subprocess.Popen, containerd_pidfile: Path) -> None:
    containerd_pid = _read_pid(containerd_pidfile)
    if dockerd.poll() is None:
        dockerd.send_signal(signal.SIGTERM)
        try:
            dockerd.wait(timeout=20)
        except subprocess.TimeoutExpired:
            dockerd.kill()
            dockerd.wait(timeout=10)
    if containerd_pid is not None:
        deadline = time.monotonic() + 10
        while _alive(containerd_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(containerd_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(containerd_pid, signal.SIGKILL)


@contextlib.contextmanager
def start_remote_docker() -> Iterator[RemoteDocker]:
    """Start the TLS-only second engine; yield how to reach it; stop it. Raises RuntimeError when it cannot start."""
    if not Path(DOCKERD).is_file():
        raise RuntimeError(f"{DOCKERD} not found (install docker.io: bash scripts/setup-docker.sh)")
    if os.geteuid() != 0:
        raise RuntimeError("a second dockerd needs root")
    workdir = Path(tempfile.mkdtemp(prefix="wfd-", dir="/tmp"))
    started = time.monotonic()
    dockerd: subprocess.Popen | None = None
    containerd_pidfile = workdir / "exec" / "containerd" / "containerd.pid"
    try:
        certs = workdir / "certs"
        certs.mkdir()
        ca = make_ca("WindFlow test CA")
        server = make_leaf(ca, "127.0.0.1", server=True)
        client = make_leaf(ca, "windflow-client", server=False)
        rogue = make_ca("Rogue CA")
        rogue_client = make_leaf(rogue, "rogue-client", server=False)
        files = {
            "ca.pem": cert_pem(ca[0]),
            "server-cert.pem": server.cert,
            "server-key.pem": server.key,
            "cert.pem": client.cert,
            "key.pem": client.key,
        }
        for name, text in files.items():
            (certs / name).write_text(text)
            (certs / name).chmod(0o600)
        config = workdir / "daemon.json"
        config.write_text(json.dumps({}))
        port = _free_port()
        unix_socket = workdir / "docker.sock"
        log_path = workdir / "dockerd.log"
        argv = [
            DOCKERD,
            f"--config-file={config}",
            f"--data-root={workdir / 'data'}",
            f"--exec-root={workdir / 'exec'}",
            f"--pidfile={workdir / 'docker.pid'}",
            f"--host=unix://{unix_socket}",
            f"--host=tcp://127.0.0.1:{port}",
            "--tlsverify",
            f"--tlscacert={certs / 'ca.pem'}",
            f"--tlscert={certs / 'server-cert.pem'}",
            f"--tlskey={certs / 'server-key.pem'}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--userland-proxy=false",
            "--log-level=info",
        ]
        with log_path.open("ab") as log:
            # Own session: a Ctrl-C in the terminal reaches pytest, which then stops the daemon itself.
            dockerd = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping_unix(unix_socket):
            if dockerd.poll() is not None:
                raise RuntimeError(f"dockerd exited with {dockerd.returncode} during start-up:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within {START_TIMEOUT:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.2)
        info = _tls_version(port, certs / "ca.pem", certs / "cert.pem", certs / "key.pem")
        yield RemoteDocker(
            endpoint=f"tcp://127.0.0.1:{port}",
            ca=files["ca.pem"],
            client=client,
            rogue_ca=cert_pem(rogue[0]),
            rogue_client=rogue_client,
            version=info["Version"],
            api_version=info["ApiVersion"],
            workdir=workdir,
            startup_seconds=time.monotonic() - started,
        )
    finally:
        if dockerd is not None:
            _stop(dockerd, containerd_pidfile)
        _unmount_below(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def remote_docker() -> Iterator[RemoteDocker]:
    """A second Docker engine on ``tcp://127.0.0.1:<port>`` that only accepts clients with our certificate."""
    try:
        manager = start_remote_docker()
        engine = manager.__enter__()
    except RuntimeError as exc:
        require_service("second Docker engine (TCP + TLS)", str(exc))
    try:
        yield engine
    finally:
        manager.__exit__(None, None, None)
