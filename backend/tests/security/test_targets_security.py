"""Targets as a hostile organisation admin or operator would use them: registering the WindFlow host's own
engine, and the connection test as a port scanner or a file-existence oracle."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backend.app.schemas.targets import TEST_FAILURE_MESSAGES, TestFailure
from backend.tests.remote_docker import cert_pem, make_ca, make_leaf

API = "/api/v1/targets"
UNREACHABLE = {
    "ok": False,
    "version": None,
    "api_version": None,
    "swarm_manager": None,
    "os": None,
    "category": "unreachable",
    "error": TEST_FAILURE_MESSAGES[TestFailure.UNREACHABLE],
}
RAW = ("Error", "Max retries", "RemoteDisconnected", "FileNotFound", "No such file", "errno", "Connection aborted", "127.0.0.1", "/tmp")


# --- who may register what ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "unix:///var/run/docker.sock",
        "unix:///run/containerd/containerd.sock",
        "tcp://127.0.0.1:2375",
        "tcp://localhost:2375",
        "tcp://[::1]:2375",
        "tcp://0.0.0.0:2375",
        "ssh://root@127.0.0.2",
    ],
)
async def test_only_a_superuser_registers_an_engine_of_the_windflow_host(world, endpoint):
    refused = await world.client.post(API, json={"name": "mine", "endpoint": endpoint}, headers=world.org_admin.headers)
    assert refused.status_code == 403, refused.text
    assert refused.json() == {
        "detail": f"only a platform superuser may register a target that reaches the WindFlow host itself ({endpoint}): "
        "its engine is root on that host; register a remote engine (tcp:// or ssh://) instead",
        "code": "host_target_forbidden",
        "params": {"endpoint": endpoint},
    }
    accepted = await world.client.post(API, json={"name": "host", "endpoint": endpoint}, headers=world.superuser.headers)
    assert accepted.status_code == 201, accepted.text


async def test_an_org_admin_cannot_move_a_target_onto_the_host(world):
    remote = await world.client.post(API, json={"name": "remote", "endpoint": "tcp://192.0.2.10:2375"}, headers=world.org_admin.headers)
    assert remote.status_code == 201, remote.text
    url = f"{API}/{remote.json()['id']}"
    moved = await world.client.patch(url, json={"endpoint": "unix:///var/run/docker.sock"}, headers=world.org_admin.headers)
    assert moved.status_code == 403 and moved.json()["code"] == "host_target_forbidden", moved.text
    assert "only a platform superuser may point at the WindFlow host" in moved.json()["detail"]
    # The same admin may still rename the host target its organisation was given, but not re-point its policy.
    renamed = await world.client.patch(f"{API}/{world.local_id}", json={"description": "ours"}, headers=world.org_admin.headers)
    assert renamed.status_code == 200, renamed.text
    by_superuser = await world.client.patch(url, json={"endpoint": "unix:///var/run/docker.sock"}, headers=world.superuser.headers)
    assert by_superuser.status_code == 200, by_superuser.text


# --- the connection test is not an oracle ------------------------------------------------------------------


@contextlib.contextmanager
def _server(handle: Callable[[socket.socket], None], family: int = socket.AF_INET, address=("127.0.0.1", 0)) -> Iterator:
    """A listener answering each connection with ``handle`` on a thread, until the block ends."""
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError, ssl.SSLError):
                    handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _close(conn: socket.socket) -> None:
    conn.close()


def _banner(conn: socket.socket) -> None:
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


async def _test(world, endpoint: str, **extra) -> dict:
    made = await world.client.post(
        API, json={"name": f"t-{abs(hash(endpoint)) % 10**8}", "endpoint": endpoint, **extra}, headers=world.superuser.headers
    )
    assert made.status_code == 201, made.text
    tested = await world.client.post(f"{API}/{made.json()['id']}/test", headers=world.operator.headers)
    assert tested.status_code == 200, tested.text
    return tested.json()


async def test_tcp_port_states_all_read_unreachable(world):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound, never listening: connection refused
    bodies = {"closed": await _test(world, f"tcp://127.0.0.1:{closed_port}")}
    with _server(_close) as (_, port):
        bodies["accepts then closes"] = await _test(world, f"tcp://127.0.0.1:{port}")
    with _server(_banner) as (_, port):
        bodies["speaks another protocol"] = await _test(world, f"tcp://127.0.0.1:{port}")
    for case, body in bodies.items():
        assert body == UNREACHABLE, case
        assert not any(fragment in json.dumps(body) for fragment in RAW), case


async def test_unix_paths_never_tell_whether_a_host_file_exists(world, tmp_path):
    directory = Path(tempfile.mkdtemp(prefix="wfs-", dir="/tmp"))  # short: unix socket paths are limited
    try:
        regular = directory / "file"
        regular.write_text("x")
        bound = directory / "bound.sock"
        unlistened = socket.socket(socket.AF_UNIX)
        unlistened.bind(str(bound))  # exists, refuses connections
        bodies = {
            "missing": await _test(world, f"unix://{directory}/missing.sock"),
            "regular file": await _test(world, f"unix://{regular}"),
            "directory": await _test(world, f"unix://{directory}"),
            "socket refusing": await _test(world, f"unix://{bound}"),
            "/etc/shadow": await _test(world, "unix:///etc/shadow"),
        }
        with _server(_close, socket.AF_UNIX, str(directory / "closing.sock")):
            bodies["socket closing"] = await _test(world, f"unix://{directory}/closing.sock")
        with _server(_banner, socket.AF_UNIX, str(directory / "banner.sock")):
            bodies["socket speaking"] = await _test(world, f"unix://{directory}/banner.sock")
        unlistened.close()
    finally:
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
    for case, body in bodies.items():
        assert body == UNREACHABLE, case


class _NotDocker(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"message": "page not found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


async def test_not_docker_tls_and_ok_are_told_apart(world, docker_engine):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotDocker)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        web = await _test(world, f"tcp://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert web == {**UNREACHABLE, "category": "not_docker", "error": TEST_FAILURE_MESSAGES[TestFailure.NOT_DOCKER]}

    ca = make_ca("engine CA")
    leaf = make_leaf(ca, "engine", server=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cert.pem").write_text(leaf.cert)
        (Path(tmp) / "key.pem").write_text(leaf.key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")

    def handshake(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    other_ca = cert_pem(make_ca("someone else")[0])
    tls_failed = {**UNREACHABLE, "category": "tls", "error": TEST_FAILURE_MESSAGES[TestFailure.TLS]}
    with _server(handshake) as (_, port):
        assert await _test(world, f"tcp://127.0.0.1:{port}", tls_ca=other_ca) == tls_failed  # wrong CA

    # An engine run with --tlsverify refuses a client without a certificate (TLS 1.3: after the handshake).
    strict = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cert.pem").write_text(leaf.cert)
        (Path(tmp) / "key.pem").write_text(leaf.key)
        (Path(tmp) / "ca.pem").write_text(cert_pem(ca[0]))
        strict.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")
        strict.load_verify_locations(Path(tmp) / "ca.pem")
    strict.verify_mode = ssl.CERT_REQUIRED

    def require_client_certificate(conn: socket.socket) -> None:
        with strict.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    with _server(require_client_certificate) as (_, port):
        assert await _test(world, f"tcp://127.0.0.1:{port}", tls_ca=cert_pem(ca[0])) == tls_failed

    # Plain HTTP to a TLS engine: Go's HTTP server answers 400 "Client sent an HTTP request to an HTTPS server."
    def go_https_server(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")

    with _server(go_https_server) as (_, port):
        assert await _test(world, f"tcp://127.0.0.1:{port}") == tls_failed

    ok = await world.client.post(f"{API}/{world.local_id}/test", headers=world.operator.headers)
    assert ok.status_code == 200 and ok.json()["ok"] is True and ok.json()["category"] is None, ok.text
    assert ok.json()["error"] is None and ok.json()["version"]
