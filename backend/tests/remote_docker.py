"""A second, throw-away Docker engine reachable only over TCP + mutual TLS, for remote-target tests.

``remote_docker`` (session scope) starts Debian's ``dockerd`` 20.10 a second time, next to the engine of
``scripts/setup-docker.sh``, as a real second host: in its **own network namespace** (``ip netns``), joined to
the host by a veth pair with its own /30 of addresses, listening on ``tcp://<namespace address>:<port>`` with
``--tlsverify`` and on a private unix socket (used only to wait for it). The network namespace is what keeps
the host's engine exactly as it was: dockerd manages the interfaces and netfilter rules *of its namespace*
(started with ``--bridge=none`` in the host's namespace, it would delete the host's ``docker0``, and
``docker run`` on the default bridge would fail until the host engine restarts).

Everything else it owns lives in one fresh ``/tmp/wfd-*`` directory:

* ``--data-root``, ``--exec-root``, ``--pidfile``: its own state, so it never touches ``/var/lib/docker``
  or ``/var/run/docker*``. Without ``--containerd`` it starts *its own* containerd, whose socket, state
  and pid file are under the exec-root (``<exec-root>/containerd/``) and whose root is under the data-root.
* ``--bridge=none --iptables=false --ip-masq=false``: no default bridge and no netfilter rules inside its
  namespace (the tests need neither: the stacks they deploy there publish no port).
* ``--config-file`` pointing at an empty JSON document, so a host ``/etc/docker/daemon.json`` (``hosts``,
  ``data-root``...) can never conflict with the flags.

The directory is short (``/tmp/wfd-XXXXXXXX``) on purpose: containerd's socket path lands inside it and
unix socket paths are limited to 108 bytes. It is always a *fresh* directory because PID 1 on the
development machines does not reap orphans: a containerd from a previous run may linger as a zombie
whose pid still "exists", and a stale pid file would make a new daemon wait for it.

Certificates are generated with ``cryptography``: a CA, a server certificate for the namespace's address
(``serverAuth``), a client certificate (``clientAuth``) the engine accepts, and a client
certificate signed by *another* CA that it must refuse.

Teardown stops exactly the processes this fixture started, by pid: SIGTERM to dockerd (which stops its
containerd), then SIGKILL to either one still alive after a grace period; then it deletes the namespace
(which deletes the veth pair). The namespace is named ``wfremote-<pytest pid>-<n>``: a run that crashed leaves
one whose owner pid is gone, and the next start removes it (killing what still runs in it) first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import signal
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

DOCKERD = os.environ.get("WINDFLOW_TEST_DOCKERD", "/usr/sbin/dockerd")
START_TIMEOUT = float(os.environ.get("WINDFLOW_TEST_DOCKERD_TIMEOUT", "60"))
TLS_PORT = 2376


@dataclass(frozen=True)
class Pem:
    cert: str
    key: str


@dataclass(frozen=True)
class RemoteDocker:
    endpoint: str  # tcp://<address of its network namespace>:PORT
    ca: str  # PEM of the CA that signed the server and the good client certificate
    client: Pem  # accepted client certificate + key
    rogue_ca: str  # PEM of an unrelated CA
    rogue_client: Pem  # client certificate signed by the unrelated CA: refused by the engine
    version: str  # the engine's version, as /version reports it
    api_version: str
    workdir: Path
    startup_seconds: float
    netns: str  # the name of its network namespace (``ip netns``)
    address: str  # its address, on the namespace's end of the veth pair


# --- certificates ---------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "WindFlow tests"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


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
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    *,
    server: bool,
    address: str = "127.0.0.1",
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
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address)), x509.DNSName("localhost")]),
            critical=False,
        )
    return Pem(cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key))


def client_tls_material() -> tuple[str, Pem]:
    """A CA certificate (PEM) and a client certificate + key it signed: valid TLS fields for a target."""
    ca = make_ca("WindFlow test CA")
    return cert_pem(ca[0]), make_leaf(ca, "windflow-client", server=False)


# --- processes ------------------------------------------------------------------------------------


NETNS_PREFIX = "wfremote-"
_netns_serial = itertools.count(1)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _remove_netns(name: str) -> None:
    """Kill what still runs in namespace ``name`` and delete it (its veth pair goes with it). Idempotent."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(int(pid)) for pid in pids if pid.isdigit()) and time.monotonic() < deadline:
        time.sleep(0.1)
    _ip("netns", "delete", name, check=False)


def remove_leftover_namespaces() -> list[str]:
    """Delete the namespaces of earlier runs whose pytest process is gone (a crash skipped their teardown)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(NETNS_PREFIX):
            continue
        owner = name.removeprefix(NETNS_PREFIX).split("-")[0]
        if owner.isdigit() and not _alive(int(owner)):
            _remove_netns(name)
            removed.append(name)
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.231.0.0/16 that no interface of the host uses (host end .1, namespace end .2)."""
    used = [
        ipaddress.ip_interface(word).network
        for line in _ip("-4", "-o", "addr", "show", check=False).stdout.splitlines()
        for word in line.split()
        if "/" in word and word[0].isdigit()
    ]
    candidates = list(ipaddress.ip_network("10.231.0.0/16").subnets(new_prefix=30))
    for _ in range(64):
        subnet = candidates[secrets.randbelow(len(candidates))]
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError("no free /30 in 10.231.0.0/16 for the remote engine's namespace")


@contextlib.contextmanager
def network_namespace() -> Iterator[tuple[str, str]]:
    """A fresh network namespace joined to the host by a veth pair; yields (name, its address). Deleted after."""
    remove_leftover_namespaces()
    name = f"{NETNS_PREFIX}{os.getpid()}-{next(_netns_serial)}"
    host_if, ns_if = f"wfr{secrets.token_hex(4)}", "eth0"
    subnet = _free_subnet()
    host_addr, ns_addr = (str(host) for host in list(subnet.hosts())[:2])
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", f"{host_if}p")
        _ip("link", "set", f"{host_if}p", "netns", name)
        _ip("netns", "exec", name, "ip", "link", "set", f"{host_if}p", "name", ns_if)
        _ip("addr", "add", f"{host_addr}/{subnet.prefixlen}", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{ns_addr}/{subnet.prefixlen}", "dev", ns_if)
        _ip("netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, ns_addr
    finally:
        _remove_netns(name)
        _ip("link", "delete", host_if, check=False)  # normally gone with the namespace already


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


def _tls_version(address: str, port: int, ca: Path, cert: Path, key: Path) -> dict:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    with httpx.Client(verify=context, timeout=5, trust_env=False) as client:
        response = client.get(f"https://{address}:{port}/version")
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
    """Start the TLS-only second engine in its own network namespace; yield how to reach it; stop it and
    delete the namespace. Raises RuntimeError when it cannot start."""
    if not Path(DOCKERD).is_file():
        raise RuntimeError(f"{DOCKERD} not found (install docker.io: bash scripts/setup-docker.sh)")
    if os.geteuid() != 0:
        raise RuntimeError("a second dockerd needs root")
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        raise RuntimeError("`ip` (iproute2) or `nsenter` (util-linux) not found: the second engine runs in its own network namespace")
    started = time.monotonic()
    with network_namespace() as (netns, address), _engine_in(netns, address) as engine:
        yield dataclasses.replace(engine, startup_seconds=time.monotonic() - started)


@contextlib.contextmanager
def _engine_in(netns: str, address: str) -> Iterator[RemoteDocker]:
    workdir = Path(tempfile.mkdtemp(prefix="wfd-", dir="/tmp"))
    dockerd: subprocess.Popen | None = None
    containerd_pidfile = workdir / "exec" / "containerd" / "containerd.pid"
    try:
        certs = workdir / "certs"
        certs.mkdir()
        ca = make_ca("WindFlow test CA")
        server = make_leaf(ca, address, server=True, address=address)
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
        port = TLS_PORT  # its own host: the conventional port is free there
        unix_socket = workdir / "docker.sock"
        log_path = workdir / "dockerd.log"
        argv = [
            # Only the network namespace: `ip netns exec` would also give it a mount namespace with a fresh
            # /sys, without the cgroup mounts dockerd needs. nsenter execs dockerd: the pid below is dockerd's.
            "nsenter",
            f"--net=/run/netns/{netns}",
            DOCKERD,
            f"--config-file={config}",
            f"--data-root={workdir / 'data'}",
            f"--exec-root={workdir / 'exec'}",
            f"--pidfile={workdir / 'docker.pid'}",
            f"--host=unix://{unix_socket}",
            f"--host=tcp://{address}:{port}",
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
        info = _tls_version(address, port, certs / "ca.pem", certs / "cert.pem", certs / "key.pem")
        yield RemoteDocker(
            endpoint=f"tcp://{address}:{port}",
            ca=files["ca.pem"],
            client=client,
            rogue_ca=cert_pem(rogue[0]),
            rogue_client=rogue_client,
            version=info["Version"],
            api_version=info["ApiVersion"],
            workdir=workdir,
            startup_seconds=0.0,
            netns=netns,
            address=address,
        )
    finally:
        if dockerd is not None:
            _stop(dockerd, containerd_pidfile)
        _unmount_below(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def remote_docker_or_skip() -> Iterator[RemoteDocker]:
    """:func:`start_remote_docker`, where an engine that cannot start is a missing service (skip, or fail
    on CI) rather than an error of the test."""
    from backend.tests.conftest import require_service  # here: a benchmark imports this module without the tests' set-up

    try:
        manager = start_remote_docker()
        engine = manager.__enter__()
    except RuntimeError as exc:
        require_service("second Docker engine (TCP + TLS)", str(exc))
    try:
        yield engine
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture(scope="session")
def remote_docker() -> Iterator[RemoteDocker]:
    """A second Docker engine, a host of its own (network namespace), that only accepts clients with our
    certificate."""
    with remote_docker_or_skip() as engine:
        yield engine
