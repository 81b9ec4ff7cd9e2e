"""The compose and container drivers against the real Docker engine (no mocks).

Every test uses its own deployment id and removes what it created in a ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from backend.app.engines import ComposeEngine, SwarmEngine, engine_for
from backend.app.engines.base import DEPLOYMENT_LABEL, DeploySpec, Engine, EngineError, TargetConnection
from backend.app.engines.connection import EngineSession
from backend.app.engines.docker_base import compose_path
from backend.app.engines.process import run_command
from backend.app.models.enums import LogLevel, TargetType
from backend.tests.conftest import TEST_IMAGE
from backend.tests.engine_fixtures import (
    LogCapture,
    assert_all_labelled,
    docker_client,  # noqa: F401 - fixture
    force_cleanup,
    free_port,
    http_get,
    labelled_objects,
    local_connection,
    make_spec,
    objects_named_after,
    two_service_stack,
)
from backend.tests.registry_fixtures import open_registry  # noqa: F401

pytestmark = pytest.mark.docker

STEPS = ("validate", "prepare", "ensure_images", "create_resources", "start_services", "wait_healthy")
DRIVERS = ["compose-v2", "compose-v1"]


def build_engine(kind: str, endpoint: str) -> Engine:
    connection = local_connection(endpoint)
    if kind == "compose-v2":
        return ComposeEngine(connection, command=("docker", "compose"))
    assert kind == "compose-v1", kind
    return ComposeEngine(connection, command=("docker-compose",))


async def deploy(engine: Engine, spec: DeploySpec, log: LogCapture) -> None:
    for step in STEPS:
        await getattr(engine, step)(spec, log)


async def cleanup(engine: Engine, spec: DeploySpec, client: docker.DockerClient) -> None:
    try:
        await engine.remove(spec, LogCapture())
    finally:
        force_cleanup(client, spec)


def project_processes(project: str) -> dict[int, int]:
    """``{pid: pgid}`` of every live process whose command line names the compose project."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if project in cmdline:
                found[int(entry.name)] = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return found


# --------------------------------------------------------------------------- the full path


@pytest.mark.parametrize("kind", DRIVERS)
async def test_two_service_stack_lifecycle(kind, docker_engine, docker_client, tmp_path):
    engine = build_engine(kind, docker_engine)
    port = free_port()
    spec = make_spec(tmp_path, two_service_stack(port))
    log = LogCapture()
    try:
        await deploy(engine, spec, log)

        assert http_get(port).startswith("hello-")
        states = await engine.inspect(spec)
        assert sorted(s.service for s in states) == ["web", "worker"]
        assert {s.state for s in states} == {"running"}
        assert {s.service: s.health for s in states} == {"web": "healthy", "worker": None}

        # every object the deployment created carries both labels; the user's labels survived the merge
        objects = objects_named_after(docker_client, spec)
        assert len(objects["containers"]) == 2
        assert [n["_name"] for n in objects["networks"]] == [f"{spec.project}_default"]
        assert [v["_name"] for v in objects["volumes"]] == [f"{spec.project}_data"]
        assert_all_labelled(objects, spec)
        roles = {c["windflow.service"]: c.get("com.example.role") for c in objects["containers"]}
        assert roles == {"web": "frontend", "worker": "worker"}
        assert objects["volumes"][0]["com.example.keep"] == "yes"

        # the worker reaches the web service by name on the deployment's network
        worker = docker_client.containers.list(
            ignore_removed=True, filters={"label": [f"{DEPLOYMENT_LABEL}={spec.deployment_id}", "windflow.service=worker"]}
        )[0]
        deadline = time.monotonic() + 10
        while worker.exec_run(["cat", "/tmp/page"]).exit_code != 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert worker.exec_run(["cat", "/tmp/page"]).output.decode().startswith("hello-")

        if kind.startswith("compose"):
            # the compose tool's own output reached the log sink, line by line
            # (v2 reports "Container ... Started"; v1 creates and starts in one "Creating ... done")
            assert any("web" in line and any(w in line for w in ("Started", "Starting", "done")) for line in log.at(LogLevel.INFO)), (
                log.text()
            )
        assert "all services are running: web, worker" in log.text()

        if kind != "compose-v1":  # v1 runs the same driver code with the same verbs, at ~2 s a command
            await engine.stop(spec, log)
            assert {s.state for s in await engine.inspect(spec)} == {"exited"}
            with pytest.raises(OSError):
                http_get(port)

            await engine.start(spec, log)
            await engine.wait_healthy(spec, log)
            assert {s.state for s in await engine.inspect(spec)} == {"running"}
            assert http_get(port).startswith("hello-")

            await engine.remove(spec, log, keep_volumes=True)
            assert labelled_objects(docker_client, spec) == {"containers": [], "networks": [], "volumes": [f"{spec.project}_data"]}
        await engine.remove(spec, log)
        assert labelled_objects(docker_client, spec) == {"containers": [], "networks": [], "volumes": []}
        assert objects_named_after(docker_client, spec) == {"containers": [], "networks": [], "volumes": []}
    finally:
        await cleanup(engine, spec, docker_client)


def _drop_project_directory(spec) -> None:
    for path in spec.workdir.iterdir():
        path.unlink()
    spec.workdir.rmdir()


async def test_lifecycle_without_project_directory(docker_engine, docker_client, tmp_path):
    """A process that did not deploy has no project directory (no shared disk): stop, start and remove
    rebuild it from the snapshot, with the modes ``prepare`` gives it (0700, 0600), and act on the
    deployment's containers; the sweep by label still finds whatever compose created."""
    engine = build_engine("compose-v2", docker_engine)
    port = free_port()
    spec = make_spec(tmp_path, two_service_stack(port))
    log = LogCapture()
    try:
        for step in STEPS[:5]:
            await getattr(engine, step)(spec, log)
        assert len(labelled_objects(docker_client, spec)["containers"]) == 2
        written = compose_path(spec).read_text()

        _drop_project_directory(spec)
        await engine.stop(spec, log)
        assert {s.state for s in await engine.inspect(spec)} == {"exited"}
        assert compose_path(spec).read_text() == written  # the same document prepare wrote
        assert stat.S_IMODE(spec.workdir.stat().st_mode) == 0o700
        assert stat.S_IMODE(compose_path(spec).stat().st_mode) == 0o600

        _drop_project_directory(spec)
        await engine.start(spec, log)
        await engine.wait_healthy(spec, log)
        assert {s.state for s in await engine.inspect(spec)} == {"running"}

        _drop_project_directory(spec)
        await engine.remove(spec, log)
        assert labelled_objects(docker_client, spec) == {"containers": [], "networks": [], "volumes": []}
    finally:
        await cleanup(engine, spec, docker_client)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind", DRIVERS)
async def test_missing_image_is_permanent(kind, docker_engine, docker_client, tmp_path, open_registry):
    # an unknown repository of a registry that answers (a registry that does not answer is transient)
    image = f"{open_registry.server}/windflow-test/missing-{os.urandom(4).hex()}:latest"
    spec = make_spec(tmp_path, f"services:\n  app:\n    image: {image}\n")
    engine = build_engine(kind, docker_engine)
    log = LogCapture()
    try:
        await engine.validate(spec, log)
        await engine.prepare(spec, log)
        with pytest.raises(EngineError) as caught:
            await engine.ensure_images(spec, log)
        assert caught.value.transient is False
        assert f"image {image} is not available locally and could not be pulled: unknown image or tag" in caught.value.message
        assert image in "\n".join(log.at(LogLevel.ERROR))
    finally:
        await cleanup(engine, spec, docker_client)


@pytest.mark.parametrize("kind", DRIVERS)
async def test_taken_port_is_permanent(kind, docker_engine, docker_client, tmp_path):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    spec = make_spec(
        tmp_path,
        f"""
services:
  web:
    image: {TEST_IMAGE}
    init: true
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    ports: ["127.0.0.1:{port}:80"]
""",
    )
    engine = build_engine(kind, docker_engine)
    log = LogCapture()
    try:
        with pytest.raises(EngineError) as caught:
            await deploy(engine, spec, log)
        assert caught.value.transient is False
        assert str(port) in caught.value.message
        assert "address already in use" in caught.value.message or "port is already allocated" in caught.value.message
    finally:
        holder.close()
        await cleanup(engine, spec, docker_client)


@pytest.mark.parametrize(
    ("document", "quoted"),
    [
        (f"services:\n  web:\n    image: {TEST_IMAGE}\n    ports: 80\n", "ports"),
        (f"services:\n  web:\n    imagee: {TEST_IMAGE}\n", "imagee"),
        ("services:\n  web: [unclosed\n", "yaml"),
    ],
    ids=["ports-not-a-list", "unknown-key", "yaml-syntax"],
)
async def test_invalid_document_fails_validation(document, quoted, docker_engine, tmp_path):
    engine = build_engine("compose-v2", docker_engine)
    spec = make_spec(tmp_path, document)
    log = LogCapture()
    with pytest.raises(EngineError) as caught:
        await engine.validate(spec, log)
    assert caught.value.transient is False
    assert caught.value.message.startswith("invalid compose document")
    assert quoted in caught.value.message.lower()
    assert not spec.workdir.exists()  # validation works on a temporary copy


@pytest.mark.parametrize("kind", DRIVERS)
async def test_service_exiting_at_once_fails_wait_healthy(kind, docker_engine, docker_client, tmp_path):
    spec = make_spec(
        tmp_path,
        f"""
services:
  web:
    image: {TEST_IMAGE}
    init: true
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
  crasher:
    image: {TEST_IMAGE}
    command: ["sh", "-c", "echo 'config file /etc/app.conf missing'; exit 3"]
""",
        health_timeout=20,
        # the product's default window: with none, a gate that polls before the shell has exited (a loaded
        # machine) would see it running and pass, as it should for a service that does not promise to stay up
        stable_seconds=3.0,
    )
    engine = build_engine(kind, docker_engine)
    log = LogCapture()
    try:
        with pytest.raises(EngineError) as caught:
            await deploy(engine, spec, log)
        assert caught.value.transient is False
        assert "service crasher exited with code 3" in caught.value.message
        assert "config file /etc/app.conf missing" in caught.value.message
        assert any("crasher | config file" in line for line in log.at(LogLevel.ERROR))
    finally:
        await cleanup(engine, spec, docker_client)


async def test_wait_healthy_timeout_names_the_services(docker_engine, docker_client, tmp_path):
    spec = make_spec(
        tmp_path,
        f"""
services:
  slow:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 60s
  fine:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
""",
        health_timeout=1.5,
        stable_seconds=0.3,
    )  # "fine" has no health check: up 0.3 s makes it ready
    engine = build_engine("compose-v2", docker_engine)
    log = LogCapture()
    try:
        with pytest.raises(EngineError) as caught:
            await deploy(engine, spec, log)
        assert caught.value.transient is False
        assert caught.value.message.startswith("services not ready after 1.5s: slow (0/1 ready, running (starting))")
        assert "fine" not in caught.value.message
    finally:
        await cleanup(engine, spec, docker_client)


async def test_cancelling_start_services_kills_the_compose_process_group(docker_engine, docker_client, tmp_path):
    """``up`` blocks while a dependency's healthcheck is pending; cancelling the step must leave no
    compose process behind (the docker CLI and the compose plugin it spawned)."""
    spec = make_spec(
        tmp_path,
        f"""
services:
  db:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
    healthcheck:
      test: ["CMD", "true"]
      interval: 120s
  app:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
    depends_on:
      db:
        condition: service_healthy
""",
    )
    engine = build_engine("compose-v2", docker_engine)
    log = LogCapture()
    try:
        for step in STEPS[:4]:
            await getattr(engine, step)(spec, log)
        task = asyncio.create_task(engine.start_services(spec, log))
        deadline = time.monotonic() + 20
        while "Waiting" not in log.text() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "Waiting" in log.text(), log.text()
        processes = project_processes(spec.project)
        assert processes, "compose should be running"
        pgids = set(processes.values())
        assert os.getpgid(0) not in pgids  # its own process group

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert project_processes(spec.project) == {}
        for pgid in pgids:
            with pytest.raises(ProcessLookupError):
                os.killpg(pgid, 0)
    finally:
        await cleanup(engine, spec, docker_client)


@pytest.mark.parametrize("kind", DRIVERS)
async def test_backend_environment_does_not_reach_the_stack(kind, docker_engine, docker_client, tmp_path, monkeypatch):
    """``${VAR}`` in a template must not read the backend's own environment (SECRET_KEY, DATABASE_URL...)."""
    monkeypatch.setenv("WINDFLOW_TEST_LEAK", "s3cret-value")
    spec = make_spec(
        tmp_path,
        f"""
services:
  a:
    image: {TEST_IMAGE}
    init: true
    command: ["sleep", "300"]
    environment:
      LEAK: "${{WINDFLOW_TEST_LEAK:-not-visible}}"
      KEY: "${{SECRET_KEY:-not-visible}}"
      WINDFLOW_TEST_LEAK:
""",
    )
    engine = build_engine(kind, docker_engine)
    log = LogCapture()
    try:
        await deploy(engine, spec, log)
        container = docker_client.containers.list(ignore_removed=True, filters={"label": f"{DEPLOYMENT_LABEL}={spec.deployment_id}"})[0]
        env = container.attrs["Config"]["Env"]
        assert "LEAK=not-visible" in env and "KEY=not-visible" in env
        assert not any("s3cret-value" in item or os.environ["SECRET_KEY"] in item for item in env)
    finally:
        await cleanup(engine, spec, docker_client)


# --------------------------------------------------------------------------- connections


async def test_test_connection_reports_the_engine(docker_engine):
    info = await engine_for(local_connection(docker_engine)).test_connection()
    assert set(info) == {"version", "api_version", "swarm_manager", "os"}
    assert info["api_version"] == "1.41"
    assert isinstance(info["swarm_manager"], bool)


async def test_unreachable_engine_is_transient(docker_engine, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(EngineError) as caught:
        await engine_for(local_connection(endpoint)).test_connection()
    assert caught.value.transient is True
    assert "Connection refused" in caught.value.message

    # the compose CLI path classifies the same failure as transient too
    engine = build_engine("compose-v2", endpoint)
    spec = make_spec(tmp_path, f"services:\n  web:\n    image: {TEST_IMAGE}\n")
    await engine.prepare(spec, LogCapture())
    log = LogCapture()
    with pytest.raises(EngineError) as caught:
        await engine.create_resources(spec, log)
    assert caught.value.transient is True
    assert endpoint.removeprefix("tcp://") in caught.value.message


def test_engine_for_picks_the_driver():
    assert isinstance(engine_for(TargetConnection(TargetType.SWARM, "unix:///var/run/docker.sock")), SwarmEngine)
    docker_target = engine_for(TargetConnection(TargetType.DOCKER, "unix:///var/run/docker.sock"))
    assert isinstance(docker_target, ComposeEngine)
    assert docker_target.v2  # compose v2 is installed here, and preferred over v1


def test_without_a_compose_tool_a_docker_target_says_what_to_install(monkeypatch):
    """The compose CLI is a requirement (no SDK-only re-implementation of compose): its absence is a
    permanent error that names the fix, which the runner records as the deployment's error."""
    monkeypatch.setattr("backend.app.engines.compose.find_compose_command", lambda: None)
    with pytest.raises(EngineError) as caught:
        engine_for(TargetConnection(TargetType.DOCKER, "unix:///var/run/docker.sock"))
    assert caught.value.transient is False
    assert "no compose tool found" in caught.value.message and "scripts/setup-docker.sh" in caught.value.message


# --------------------------------------------------------------------------- TLS, end to end


def _tls_material(tmp: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM text."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def pem_key(k) -> str:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

    now = datetime.datetime.now(datetime.UTC)
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "windflow test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(name: str, usage, san=None):
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode(), pem_key(k)

    server_cert, server_key = issue(
        "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    )
    client_cert, client_key = issue("windflow", ExtendedKeyUsageOID.CLIENT_AUTH)
    (tmp / "server.pem").write_text(server_cert)
    (tmp / "server-key.pem").write_text(server_key)
    (tmp / "ca.pem").write_text(ca.public_bytes(serialization.Encoding.PEM).decode())
    return {"ca": ca.public_bytes(serialization.Encoding.PEM).decode(), "cert": client_cert, "key": client_key}


@contextlib.asynccontextmanager
async def _tls_proxy(tmp: Path, socket_path: str) -> AsyncIterator[int]:
    """A TCP+TLS listener on 127.0.0.1 that requires a client certificate signed by the test CA and relays
    to the local engine's unix socket: a remote engine with ``--tlsverify`` as far as clients can tell."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp / "ca.pem"))
    context.load_cert_chain(str(tmp / "server.pem"), str(tmp / "server-key.pem"))
    context.verify_mode = ssl.CERT_REQUIRED

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(socket_path)
        except OSError:
            writer.close()
            return
        await asyncio.gather(relay(reader, upstream_writer), relay(upstream_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def tls_engine(docker_engine, tmp_path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    material = _tls_material(tmp_path)
    async with _tls_proxy(tmp_path, docker_engine.removeprefix("unix://")) as port:
        yield f"tcp://127.0.0.1:{port}", material


async def test_tls_target_sdk_and_cli(tls_engine, tmp_path):
    endpoint, material = tls_engine
    connection = TargetConnection(
        TargetType.DOCKER, endpoint, tls_ca=material["ca"], tls_cert=material["cert"], tls_key=material["key"], tls_verify=True
    )
    info = await engine_for(connection).test_connection()
    assert info["api_version"] == "1.41"

    async with EngineSession(connection) as session:
        directory = session.material_dir
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in ("ca.pem", "cert.pem", "key.pem"):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
        env = session.env
        assert env["DOCKER_HOST"] == endpoint
        assert env["DOCKER_TLS_VERIFY"] == "1"
        assert env["DOCKER_CERT_PATH"] == str(directory)
        log = LogCapture()
        result = await run_command(["docker", "version", "--format", "{{.Server.APIVersion}}"], env=env, log=log)
        assert result.ok, log.text()
        assert "1.41" in log.text()
    assert not directory.exists()  # the key material does not outlive the session

    # the compose CLI deploys through the same TLS endpoint
    engine = ComposeEngine(connection, command=("docker", "compose"))
    spec = make_spec(tmp_path, f'services:\n  one:\n    image: {TEST_IMAGE}\n    init: true\n    command: ["sleep", "300"]\n')
    log = LogCapture()
    try:
        await deploy(engine, spec, log)
        assert [s.state for s in await engine.inspect(spec)] == ["running"]
    finally:
        await engine.remove(spec, log)
    assert await engine.inspect(spec) == []


async def test_tls_target_without_client_certificate_is_refused(tls_engine):
    endpoint, material = tls_engine
    connection = TargetConnection(TargetType.DOCKER, endpoint, tls_ca=material["ca"], tls_verify=True)
    with pytest.raises(EngineError) as caught:
        await engine_for(connection).test_connection()
    assert endpoint in caught.value.message


# --------------------------------------------------------------------------- SSH


async def test_ssh_target_through_dial_stdio(docker_engine, tmp_path, monkeypatch):
    """``ssh://`` targets: SDK and CLI both run ``ssh ... -- host docker system dial-stdio`` and speak HTTP
    over its stdio. No sshd runs on this machine, so the one stand-in is the ``ssh`` program: it records
    its arguments and runs ``docker system dial-stdio`` against the local engine, i.e. what sshd would run
    on the remote host. Everything on WindFlow's side (argv, key file, PATH wrapper, transport) is real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ssh-calls"
    (bin_dir / "ssh").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {record}\n'
        'for a in "$@"; do case "$a" in *id_key) stat -c %a "$a" >> ' + str(record) + ";; esac; done\n"
        f"exec docker -H {docker_engine} system dial-stdio\n"
    )
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    connection = TargetConnection(
        TargetType.DOCKER,
        "ssh://deploy@engine.example:2222",
        ssh_key="-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    info = await engine_for(connection).test_connection()
    assert info["api_version"] == "1.41"
    calls = record.read_text().splitlines()
    assert any(
        "-l deploy" in c
        and "-p 2222" in c
        and "engine.example docker system dial-stdio" in c
        and "IdentitiesOnly=yes" in c
        and "id_key" in c
        for c in calls
    ), calls
    assert "600" in calls  # the private key file, checked while ssh was using it

    record.write_text("")
    async with EngineSession(connection) as session:
        log = LogCapture()
        result = await run_command(["docker", "version", "--format", "{{.Server.APIVersion}}"], env=session.env, log=log)
        assert result.ok, log.text()
        assert "1.41" in log.text()
        key_dir = session.material_dir
    assert "engine.example" in record.read_text() and "id_key" in record.read_text()
    assert not key_dir.exists()
    # The SDK's connections ran `ssh` behind the session's unix socket; none outlives the session.
    lingering = subprocess.run(
        ["pgrep", "-f", f"docker -H {docker_engine} system dial-stdio"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert lingering == []
