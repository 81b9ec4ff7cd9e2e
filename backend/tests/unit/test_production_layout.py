"""The production layout and its documentation.

* ``docker-compose.yml`` as Docker Compose v2 itself resolves it (``docker compose config --format json``):
  the product guide's services, commands and replica counts (docs/architecture.md#the-product-guide), the shared image, ``.env.prod`` reaching every
  WindFlow process, the Docker socket and no shared deployments directory, the proxy in front of the
  backend replicas, restarts (the supervisor), the base images named by variables.
* Doc drift: the variables of ``.env.example`` and ``.env.prod.example`` are ``Settings`` fields (or, for
  ``.env.prod.example``, the postgres container's own variables), and every ``Settings`` field is
  documented in ``.env.example`` and ``docs/configuration.md``.
* The image's health check script (``deploy/healthcheck.py``) and the supervisor's decisions
  (``deploy/supervise.py``: which deaths it undoes).

``backend/tests/docker/test_production_compose.py`` runs the stack for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from backend.app.config import Settings
from backend.app.engines.compose_cli import compose_is_v2, find_compose_command
from backend.tests.conftest import require_service

REPO = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO / "docker-compose.yml"
POSTGRES_FILE = REPO / "deploy" / "postgres.yml"

# The product guide's production layout (docs/architecture.md#the-product-guide, "Production layout").
GUIDE_WORKER = "celery -A backend.app.celery_app worker --concurrency=4"
GUIDE_BEAT = "celery -A backend.app.celery_app beat"
APP_SERVICES = ("backend", "worker", "beat")
#: the image built from the repository also runs the supervisor
IMAGE_SERVICES = (*APP_SERVICES, "supervisor")
SETTINGS_FIELDS = set(Settings.model_fields)

TEST_SECRET = "layout-test-secret-key-0123456789-abcdefghijklmnop"
TEST_DB_PASSWORD = "layout-test-db-password-42"

# `NAME=value`, or `# NAME=value` for a documented variable left at its default.
ASSIGNMENT = re.compile(r"^\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


# --------------------------------------------------------------------------- helpers


def compose_v2() -> tuple[str, ...]:
    command = find_compose_command()
    if command is None:
        require_service("docker compose", "neither the compose v2 plugin nor docker-compose is installed")
    if not compose_is_v2(command):
        require_service("docker compose v2", f"only compose v1 ({command[0]}) is installed; docker-compose.yml needs v2.20+")
    short = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30).stdout.strip()
    match = re.match(r"v?(\d+)\.(\d+)", short)
    if not match or (int(match[1]), int(match[2])) < (2, 20):
        require_service("docker compose v2.20+", f"found {short!r}; docker-compose.yml uses `include`")
    return command


def run_compose(
    project_dir: Path, *args: str, env_file: Path | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker compose`` on ``project_dir/docker-compose.yml`` in a clean environment.

    Compose interpolates from the process environment and from ``.env``; both are left out (``env -i`` and
    ``--env-file /dev/null``) so that neither this test process (conftest sets SECRET_KEY, DATABASE_URL)
    nor a developer's ``.env`` can change the answer.
    """
    env = {k: os.environ[k] for k in ("PATH", "HOME", "DOCKER_CONFIG") if k in os.environ}
    if env_file is not None:
        env["WINDFLOW_ENV_FILE"] = str(env_file)
    env.update(extra_env or {})
    argv = [
        *compose_v2(),
        "--project-directory",
        str(project_dir),
        "-f",
        str(project_dir / "docker-compose.yml"),
        "--env-file",
        os.devnull,
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


def example_variables(path: Path) -> dict[str, tuple[str, bool]]:
    """``{name: (value, commented_out)}`` of an example env file."""
    found = {}
    for line in path.read_text().splitlines():
        match = ASSIGNMENT.match(line)
        if match:
            found[match[2]] = (match[3], bool(match[1]))
    return found


def postgres_container_variables() -> set[str]:
    return set(yaml.safe_load(POSTGRES_FILE.read_text())["services"]["postgres"]["environment"])


@pytest.fixture(scope="module")
def prod_env_file(tmp_path_factory) -> Path:
    """``.env.prod.example`` with its two placeholders filled in, as an operator does after ``cp``."""
    text = (REPO / ".env.prod.example").read_text()
    text, n_secret = re.subn(r"(?m)^SECRET_KEY=.*$", f"SECRET_KEY={TEST_SECRET}", text)
    text, n_password = re.subn(r"(?m)^POSTGRES_PASSWORD=.*$", f"POSTGRES_PASSWORD={TEST_DB_PASSWORD}", text)
    assert (n_secret, n_password) == (1, 1), ".env.prod.example must set SECRET_KEY and POSTGRES_PASSWORD once"
    path = tmp_path_factory.mktemp("envprod") / "windflow.env"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def config(prod_env_file) -> dict:
    result = run_compose(REPO, "config", "--format", "json", env_file=prod_env_file)
    assert result.returncode == 0, f"docker compose config refused docker-compose.yml:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def services(config) -> dict:
    return config["services"]


def command_line(service: dict) -> str:
    command = service.get("command")
    return command if isinstance(command, str) else " ".join(command or [])


def mounts(service: dict) -> dict[str, dict]:
    return {volume["target"]: volume for volume in service.get("volumes", [])}


# --------------------------------------------------------------------------- docker-compose.yml


def test_the_services_of_the_guide(services):
    """The guide's five, the proxy in front of the backend replicas and the supervisor."""
    assert set(services) == {"backend", "worker", "beat", "postgres", "redis", "proxy", "supervisor"}


def test_workers_run_the_guides_command_three_times(services):
    worker = services["worker"]
    assert command_line(worker) == GUIDE_WORKER
    assert worker["deploy"]["replicas"] == 3


def test_exactly_one_beat_scheduler(services):
    beat = services["beat"]
    assert command_line(beat) == GUIDE_BEAT
    assert beat["deploy"]["replicas"] == 1


def test_backend_serves_port_8000_behind_the_proxy(services):
    """The backend publishes no port (so that it scales: --scale backend=2); the proxy publishes
    WINDFLOW_HTTP_PORT (8000) with deploy/nginx.conf, which sends every request to backend:8000."""
    backend = services["backend"]
    assert command_line(backend) == "python -m backend.app.main"
    assert "ports" not in backend
    assert "8000" in [str(port) for port in backend["expose"]]
    assert backend["environment"]["HOST"] == "0.0.0.0"
    assert backend["environment"]["PORT"] == "8000"
    assert backend["environment"]["FORWARDED_ALLOW_IPS"] == "*"  # X-Forwarded-For names the browser
    proxy = services["proxy"]
    assert proxy["image"] == "nginx:1.27"
    assert [(str(p.get("published")), p["target"]) for p in proxy["ports"]] == [("8000", 80)]
    conf = mounts(proxy)["/etc/nginx/conf.d/default.conf"]
    assert Path(conf["source"]) == REPO / "deploy" / "nginx.conf" and conf["read_only"]
    nginx = (REPO / "deploy" / "nginx.conf").read_text()
    assert "set $windflow_backend http://backend:8000;" in nginx
    # /api/v1/ws goes to the replicas' WebSocket listener (WS_PORT)
    assert backend["environment"]["WS_PORT"] == "8001" and "8001" in [str(port) for port in backend["expose"]]
    assert "set $windflow_websocket http://backend:8001;" in nginx and "location = /api/v1/ws {" in nginx
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx and "proxy_buffering off;" in nginx
    # the backend believes X-Forwarded-For: nginx replaces what a client sent (never appends to it)
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in nginx and "$proxy_add_x_forwarded_for" not in nginx


def test_the_http_port_and_the_base_images_are_variables(prod_env_file):
    """WINDFLOW_HTTP_PORT, and the images scripts/build-offline-images.sh builds where no registry is."""
    result = run_compose(
        REPO,
        "config",
        "--format",
        "json",
        env_file=prod_env_file,
        extra_env={
            "WINDFLOW_HTTP_PORT": "127.0.0.1:18080",
            "WINDFLOW_IMAGE": "windflow-backend:t",
            "WINDFLOW_PYTHON_IMAGE": "windflow-offline/python:3.13-trixie",
            "WINDFLOW_POSTGRES_IMAGE": "windflow-offline/postgres:15-bookworm",
            "WINDFLOW_REDIS_IMAGE": "windflow-offline/redis:7-bookworm",
            "WINDFLOW_PROXY_IMAGE": "windflow-offline/nginx:1.22-bookworm",
        },
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert [(p["host_ip"], str(p["published"])) for p in services["proxy"]["ports"]] == [("127.0.0.1", "18080")]
    for name in IMAGE_SERVICES:
        assert services[name]["image"] == "windflow-backend:t", name
    assert services["backend"]["build"]["args"]["PYTHON_IMAGE"] == "windflow-offline/python:3.13-trixie"
    assert services["postgres"]["image"] == "windflow-offline/postgres:15-bookworm"
    assert services["redis"]["image"] == "windflow-offline/redis:7-bookworm"
    assert services["proxy"]["image"] == "windflow-offline/nginx:1.22-bookworm"
    assert "ARG PYTHON_IMAGE=python:3.11-slim-trixie\nFROM ${PYTHON_IMAGE}" in (REPO / "Dockerfile").read_text()


def test_app_services_share_the_image_built_from_the_repository(services):
    """Built once, by the backend service: services that each built it would each get an image id of their
    own, and the next `up` would recreate the containers whose id is no longer the tag's."""
    for name in IMAGE_SERVICES:
        assert services[name]["image"] == "windflow-backend:latest", name
        assert ("build" in services[name]) == (name == "backend"), name
    build = services["backend"]["build"]
    assert Path(build["context"]) == REPO
    assert (REPO / build.get("dockerfile", "Dockerfile")).is_file()
    assert build["args"]["PYTHON_IMAGE"] == "python:3.11-slim-trixie"


def test_every_app_process_gets_the_env_file(services):
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["SECRET_KEY"] == TEST_SECRET, f"{name} does not receive .env.prod"
        # Compose interpolates the env file: DATABASE_URL reuses POSTGRES_PASSWORD.
        assert environment["DATABASE_URL"] == f"postgresql+asyncpg://windflow:{TEST_DB_PASSWORD}@postgres:5432/windflow"


def test_the_resolved_environment_is_a_valid_configuration(services):
    """What the containers receive passes Settings' validation and yields the PostgreSQL broker."""
    environment = services["worker"]["environment"]
    settings = Settings(_env_file=None, **{k: v for k, v in environment.items() if k in SETTINGS_FIELDS})
    assert settings.celery_unavailable_reason is None
    assert settings.celery_broker_url == f"sqla+postgresql+psycopg://windflow:{TEST_DB_PASSWORD}@postgres:5432/windflow"
    assert settings.celery_result_backend == f"db+postgresql+psycopg://windflow:{TEST_DB_PASSWORD}@postgres:5432/windflow"


def test_postgres_receives_its_password_and_nothing_else(services):
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert postgres["environment"] == {
        "POSTGRES_USER": "windflow",
        "POSTGRES_DB": "windflow",
        "POSTGRES_PASSWORD": TEST_DB_PASSWORD,
    }
    assert "/var/lib/postgresql/data" in mounts(postgres)
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_redis_answers_the_guides_ping(services):
    redis = services["redis"]
    assert redis["image"] == "redis:7"
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_app_services_wait_for_a_healthy_database(services):
    for name in APP_SERVICES:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_backend_and_workers_drive_the_engine_and_share_no_deployments_directory(services, config):
    """Each process keeps its own project directories: stop, start and delete work from the engine's labels
    where the directory is missing (the production compose test stops and deletes from the backend a
    deployment a worker ran)."""
    for name in ("backend", "worker", "supervisor"):
        socket = mounts(services[name]).get("/var/run/docker.sock")
        assert socket is not None and socket["type"] == "bind" and socket["source"] == "/var/run/docker.sock", name
    for name in ("backend", "worker"):
        workdir = services[name]["environment"]["DEPLOYMENTS_WORKDIR"]
        assert workdir not in mounts(services[name]), f"{name}: DEPLOYMENTS_WORKDIR {workdir} is a shared mount"
    assert "deployments" not in config.get("volumes", {})
    assert "/var/run/docker.sock" not in mounts(services["beat"])


def test_restarts(services):
    """A container whose process dies comes back (the policy); one `docker kill` stopped is started again by
    the supervisor (Docker's policies leave it down), which watches the labelled containers."""
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        if name != "supervisor":
            assert service["labels"]["windflow.restart-when-killed"] == "true", name
    supervisor = services["supervisor"]
    assert command_line(supervisor) == "windflow-supervise"
    assert "SECRET_KEY" not in supervisor.get("environment", {}), "the supervisor needs no configuration"
    assert supervisor["healthcheck"]["disable"] is True


def test_health_checks(services):
    assert services["backend"]["healthcheck"]["test"] == ["CMD", "windflow-healthcheck", "backend"]
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "windflow-healthcheck", "worker"]


def test_cp_env_prod_example_is_all_the_setup_compose_needs(tmp_path):
    """Without ``.env.prod`` compose refuses and names it; ``cp .env.prod.example .env.prod`` fixes that."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(POSTGRES_FILE, tmp_path / "deploy" / "postgres.yml")
    missing = run_compose(tmp_path, "config", "-q")
    assert missing.returncode != 0
    assert ".env.prod" in missing.stderr
    shutil.copy(REPO / ".env.prod.example", tmp_path / ".env.prod")
    result = run_compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_a_missing_windflow_env_file_is_an_error(tmp_path):
    result = run_compose(REPO, "config", "-q", env_file=tmp_path / "nowhere.env")
    assert result.returncode != 0
    assert "nowhere.env" in result.stderr


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_defaults():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"(?m)^EXPOSE 8000$", text)
    assert re.search(r'(?m)^CMD \["python", "-m", "backend.app.main"\]$', text)
    assert re.search(r"(?m)^RUN pip install \.", text)
    assert "HOST=0.0.0.0" in text


def test_dockerfile_copies_what_exists():
    """Every COPY source is in the repository (the optional frontend/dist is a glob)."""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, _dest = line.split()[1:]
        for source in sources:
            if "[" not in source:
                assert (REPO / source).exists(), f"{line}: {source} does not exist"
    for script in (
        "deploy/docker-entrypoint.sh",
        "deploy/healthcheck.py",
        "deploy/supervise.py",
        "deploy/offline-images/postgres-entrypoint.sh",
        "deploy/offline-images/redis-entrypoint.sh",
    ):
        assert os.access(REPO / script, os.X_OK), f"{script} must be executable"


# --------------------------------------------------------------------------- doc drift


@pytest.mark.parametrize("example", [".env.example", ".env.prod.example"])
def test_example_files_only_name_settings(example):
    names = set(example_variables(REPO / example))
    allowed = SETTINGS_FIELDS | (postgres_container_variables() if example == ".env.prod.example" else set())
    assert names - allowed == set(), f"{example} names variables that WindFlow does not read"


def test_env_prod_example_passes_postgres_its_password():
    names = set(example_variables(REPO / ".env.prod.example"))
    assert names - SETTINGS_FIELDS == {"POSTGRES_PASSWORD"}
    assert "POSTGRES_PASSWORD" in postgres_container_variables()


def test_every_setting_is_in_env_example():
    text = (REPO / ".env.example").read_text()
    missing = sorted(name for name in SETTINGS_FIELDS if not re.search(rf"\b{name}\b", text))
    assert missing == [], f".env.example does not mention {missing}"


def test_every_setting_is_in_configuration_md():
    text = (REPO / "docs" / "configuration.md").read_text()
    missing = sorted(name for name in SETTINGS_FIELDS if f"`{name}`" not in text)
    assert missing == [], f"docs/configuration.md does not document {missing}"


def test_configuration_md_documents_only_settings():
    """The variables in the first column of docs/configuration.md's tables all exist."""
    documented = set()
    for line in (REPO / "docs" / "configuration.md").read_text().splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    assert documented, "no variable table found in docs/configuration.md"
    assert documented - SETTINGS_FIELDS == set()


def test_env_example_values_are_valid_settings():
    values = {name: value for name, (value, commented) in example_variables(REPO / ".env.example").items() if not commented}
    values["SECRET_KEY"] = TEST_SECRET  # the example's placeholder is replaced by `make run`
    Settings(_env_file=None, **values)


# --------------------------------------------------------------------------- the image's health check


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("windflow_healthcheck", REPO / "deploy" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["tini", "--", "windflow-entrypoint", "python", "-m", "backend.app.main"], "backend"),
        (["tini", "--", "windflow-entrypoint", *GUIDE_WORKER.split()], "worker"),
        (["tini", "--", "windflow-entrypoint", "/usr/local/bin/celery", "-A", "backend.app.celery_app", "beat"], "beat"),
        (["tini", "--", "windflow-entrypoint", "windflow", "recover"], "backend"),
    ],
    ids=["backend", "worker", "beat", "other"],
)
def test_healthcheck_reads_the_role_from_the_command(argv, role):
    assert load_healthcheck().container_role(argv) == role


@pytest.fixture
def health_server(monkeypatch):
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status": "unavailable"}' if state["status"] != 200 else b'{"status": "ok"}'
            self.send_response(state["status"] if self.path == "/health" else 404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PORT", str(server.server_address[1]))
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_backend_healthcheck_follows_the_health_status(health_server):
    healthcheck = load_healthcheck()
    assert healthcheck.check_backend() is None
    health_server["status"] = 503
    problem = healthcheck.check_backend()
    assert problem is not None and "503" in problem and "unavailable" in problem


# --------------------------------------------------------------------------- the supervisor's decisions


def load_supervise():
    spec = importlib.util.spec_from_file_location("windflow_supervise", REPO / "deploy" / "supervise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeContainer:
    def __init__(self, status: str) -> None:
        self.status = status
        self.started = 0

    def start(self) -> None:
        self.started += 1
        self.status = "running"


class FakeClient:
    """The two calls the supervisor makes on a container (pure decision logic: no engine here)."""

    def __init__(self, container: FakeContainer) -> None:
        self.container = container
        self.containers = self

    def get(self, _container_id: str) -> FakeContainer:
        return self.container


def event(action: str, **attributes: str) -> dict:
    return {"id": "c0ffee", "Action": action, "Actor": {"ID": "c0ffee", "Attributes": {"name": "p-worker-1", **attributes}}}


@pytest.mark.parametrize(
    ("events", "started"),
    [
        ([event("kill", signal="9"), event("die", exitCode="137")], 1),  # docker kill
        ([event("kill", signal="15"), event("die", exitCode="0"), event("stop")], 0),  # docker stop
        ([event("kill", signal="15"), event("kill", signal="9"), event("die", exitCode="137"), event("stop")], 0),  # past the grace
        ([event("die", exitCode="1")], 0),  # a crash: the restart policy's
        (
            [
                event("kill", signal="9"),
                event("die", exitCode="137"),
                event("start"),
                event("kill", signal="15"),
                event("die", exitCode="0"),
                event("stop"),
            ],
            1,
        ),  # killed, started, then stopped
        (
            [
                event("kill", signal="15"),
                event("die", exitCode="0"),
                event("stop"),
                event("start"),
                event("kill", signal="9"),
                event("die", exitCode="137"),
            ],
            1,
        ),  # stopped, started, then killed
    ],
    ids=["docker-kill", "docker-stop", "stop-past-grace", "crash", "kill-then-stop", "stop-then-kill"],
)
def test_supervisor_starts_again_only_what_docker_kill_stopped(monkeypatch, events, started):
    supervise = load_supervise()
    monkeypatch.setattr(supervise.time, "sleep", lambda _s: None)
    container = FakeContainer("exited")
    supervisor = supervise.Supervisor(FakeClient(container), "p")
    for e in events:
        if e["Action"] == "die":
            container.status = "exited"
        supervisor.handle(e)
    assert container.started == started
