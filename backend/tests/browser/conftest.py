"""Browser tests: Debian's Chromium driven by Playwright (sync API) against a real WindFlow server.

The server is ``python -m backend.app.main`` in a subprocess on a free port, with its own SQLite
database, the built UI (``frontend/dist``, built by ``make frontend``) and the local Docker engine.
Run these in their own pytest process (``make test-browser``): Playwright's sync API refuses to run
inside pytest-asyncio's event loop.

Screenshots go to ``test-output/screenshots/`` (override with ``WINDFLOW_TEST_OUTPUT``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.tests.conftest import TEST_IMAGE, require_service

ROOT = Path(__file__).resolve().parents[3]
DIST = ROOT / "frontend" / "dist"
OUTPUT = Path(os.environ.get("WINDFLOW_TEST_OUTPUT", ROOT / "test-output")) / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct-horse-battery"


class BrowserNetwork:
    """Chromium in a network namespace of its own, joined to the host by one veth pair.

    Chromium watches the interfaces of its network namespace and fails every request in flight with
    ``net::ERR_NETWORK_CHANGED`` when one appears or goes, loopback requests included. The other test streams
    create and remove Docker networks and namespaces all the time (a bridge and a veth per project), so in the
    host's namespace pages failed to load their scripts at random. In a namespace of its own Chromium sees no
    interface but its own: it reaches the servers at the host end of the pair (``HOST``), where they listen.
    Without root or ``ip`` (a developer's machine), Chromium stays in the host's namespace on 127.0.0.1."""

    #: ports taken in advance for the servers of a session: their origins are named to Chromium as secure
    #: (``--unsafely-treat-insecure-origin-as-secure``), as 127.0.0.1's are (the clipboard, ``crypto``...)
    PORTS = 12

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.executable = CHROMIUM
        self.name: str | None = None
        self.ports: list[int] = []  # not given to a server yet
        self.reserved: list[int] = []

    def port(self) -> int:
        """A port for a server: one of those taken in advance in a namespace, else any free one."""
        return self.ports.pop(0) if self.ports else free_port()

    def chromium_args(self) -> list[str]:
        if self.name is None:
            return CHROMIUM_ARGS
        origins = ",".join(f"http://{self.host}:{port}" for port in self.reserved)
        return [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={origins}"]

    def create(self, workdir: Path) -> None:
        if os.geteuid() != 0 or not shutil.which("ip"):
            return
        tag = f"wfb{os.getpid()}"
        third, fourth = (os.getpid() // 64) % 250 + 1, (os.getpid() % 64) * 4
        host, inside = f"169.254.{third}.{fourth + 1}", f"169.254.{third}.{fourth + 2}"
        steps = [
            ["ip", "netns", "add", tag],
            ["ip", "link", "add", f"{tag}h", "type", "veth", "peer", "name", f"{tag}n"],
            ["ip", "link", "set", f"{tag}n", "netns", tag],
            ["ip", "addr", "add", f"{host}/30", "dev", f"{tag}h"],
            ["ip", "link", "set", f"{tag}h", "up"],
            ["ip", "netns", "exec", tag, "ip", "addr", "add", f"{inside}/30", "dev", f"{tag}n"],
            ["ip", "netns", "exec", tag, "ip", "link", "set", f"{tag}n", "up"],
            ["ip", "netns", "exec", tag, "ip", "link", "set", "lo", "up"],
        ]
        self.name = tag
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                self.remove()
                raise RuntimeError(f"{' '.join(step)}: {done.stderr.strip()}")
        wrapper = workdir / "chromium-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {tag} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        self.host, self.executable = host, str(wrapper)
        self.reserved = [free_port() for _ in range(self.PORTS)]
        self.ports = list(self.reserved)

    def remove(self) -> None:
        if self.name is not None:
            subprocess.run(["ip", "link", "del", f"{self.name}h"], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            self.name = None


#: where the browser tests' servers listen and the browser reaches them (made by the ``_browser_network`` fixture)
NETWORK = BrowserNetwork()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A WindFlow server process that can be stopped and started again on the same port and database."""

    def __init__(self, workdir: Path) -> None:
        self.port = NETWORK.port()
        self.url = f"http://{NETWORK.host}:{self.port}"
        # the UI's WebSocket goes to the server's WebSocket listener, which the page names (WS_PUBLIC_URL)
        self.ws_port = NETWORK.port()
        self.ws_url = f"ws://{NETWORK.host}:{self.ws_port}/api/v1/ws"
        self.workdir = workdir
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        _SERVERS.append(self)
        self.env = {
            **os.environ,
            "HOST": NETWORK.host,
            "PORT": str(self.port),
            "WS_PORT": str(self.ws_port),
            "WS_PUBLIC_URL": self.ws_url,
            "SECRET_KEY": "browser-test-secret-key-0123456789-abcdefghijkl",
            "DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'windflow.db'}",
            "CELERY_ENABLED": "false",
            "FRONTEND_DIST": str(DIST),
            "LOG_FILE": str(workdir / "backend.log"),
            "DEPLOYMENT_LEASE_SECONDS": "5",
            # the health gate's settle window for a container without a healthcheck, as in the other tests
            # (conftest.make_settings): the default 3 s held each such deployment of these tests 2 s longer. The
            # failing stacks here exit at once; the slow ones are slow by their healthcheck (DEMO_STACK's delay)
            "DEPLOYMENT_STABLE_SECONDS": "1",
            "DEPLOYMENTS_WORKDIR": str(workdir / "deployments"),
            "STACKS_CATALOG_ENABLED": "true",
            "PASSWORD_HASH_TIME_COST": "1",
            "PASSWORD_HASH_MEMORY_KIB": "1024",
            "LOGIN_RATE_LIMIT_PER_MINUTE": "1000",
            # the session's API token (``admin_token``) outlives the default 15 minutes on a loaded machine
            "ACCESS_TOKEN_EXPIRE_MINUTES": "240",
            # the notification receivers of these tests listen on the loopback, which channels may not reach
            # unless the operator allows it
            "NOTIFY_ALLOWED_NETWORKS": "127.0.0.0/8",
        }

    def start(self, timeout: float = 60) -> None:
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.app.main"],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.log}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer /health within {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # --- API helpers (the tests set up data through the API and check what the browser shows) ----
    def api(self, method: str, path: str, body: dict | None = None, token: str | None = None, form: dict | None = None):
        headers = {}
        data = None
        if form is not None:
            data = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in form.items()).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read().decode()[:500]}") from None

    def login(self, email: str, password: str) -> str:
        return self.api("POST", "/auth/login", form={"username": email, "password": password})["access_token"]


def _docker_ready() -> None:
    probe = subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True, timeout=30)
    if probe.returncode != 0:
        require_service("Docker test image", f"{TEST_IMAGE} is missing (run: bash scripts/setup-docker.sh)")


@pytest.fixture(scope="session")
def chromium_browser():
    if not Path(CHROMIUM).exists():
        require_service("Chromium", f"{CHROMIUM} is missing (apt-get install -y chromium)")
    if not (DIST / "index.html").is_file():
        pytest.fail("frontend/dist is not built: run `make frontend`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=NETWORK.executable, args=NETWORK.chromium_args())
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session", autouse=True)
def _browser_network(tmp_path_factory) -> Iterator[BrowserNetwork]:
    """The browser's network namespace (:class:`BrowserNetwork`), made before any server or browser starts."""
    NETWORK.create(tmp_path_factory.mktemp("chromium"))
    try:
        yield NETWORK
    finally:
        NETWORK.remove()


def start_server(tmp_path_factory, name: str) -> Server:
    server = Server(tmp_path_factory.mktemp(name))
    server.start()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Server]:
    """One server for the session, already set up with the administrator."""
    _docker_ready()
    srv = start_server(tmp_path_factory, "browser-server")
    try:
        srv.api("POST", "/auth/setup", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "organization_name": "Acme"})
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def admin_token(server: Server) -> str:
    return server.login(ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture(scope="session")
def org_id(server: Server, admin_token: str) -> str:
    return server.api("GET", "/auth/me", token=admin_token)["default_organization_id"]


@pytest.fixture(scope="session")
def local_target(server: Server, admin_token: str, org_id: str) -> dict:
    targets = server.api("GET", f"/targets?organization_id={org_id}", token=admin_token)["items"]
    local = [t for t in targets if t["endpoint"].startswith("unix://")]
    if not local:
        local = [
            server.api(
                "POST",
                "/targets",
                {"name": "local", "endpoint": "unix:///var/run/docker.sock", "organization_id": org_id},
                token=admin_token,
            )
        ]
    return local[0]


#: A stack with every kind of field the generated form knows, and a service that becomes healthy
#: after ``delay`` seconds (so a deployment stays "deploying" long enough to watch).
DEMO_STACK = {
    "name": "demo",
    "description": "busybox worker for the browser tests",
    "template": (
        "services:\n"
        "  app:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "echo {{ greeting }}; sleep {{ delay }}; touch /tmp/ready; '
        'while true; do echo tick; sleep 1; done"]\n'
        "    environment:\n"
        '      MODE: "{{ mode }}"\n'
        '      VERBOSE: "{{ verbose }}"\n'
        '      PASSWORD: "{{ password }}"\n'
        '      DB_USER: "{{ db.user }}"\n'
        "    healthcheck:\n"
        '      test: ["CMD", "test", "-f", "/tmp/ready"]\n'
        "      interval: 1s\n"
        "      timeout: 1s\n"
        "      retries: 120\n"
    ),
    "variables": [
        {"name": "delay", "type": "integer", "label": "Delay (s)", "default": 4, "min": 0, "max": 60, "required": True},
        {"name": "greeting", "type": "string", "label": "Greeting", "default": "hello-windflow", "pattern": "[a-z-]+"},
        {
            "name": "mode",
            "type": "enum",
            "label": "Mode",
            "options": [{"value": "fast", "label": "Fast mode"}, {"value": "safe", "label": "Safe mode"}],
            "default": "safe",
        },
        {"name": "verbose", "type": "boolean", "label": "Verbose", "default": False},
        {"name": "password", "type": "secret", "label": "Password", "default": "{{ generate_password(16) }}"},
        {
            "name": "db",
            "type": "group",
            "label": "Database",
            "variables": [
                {"name": "user", "type": "string", "label": "User", "default": "app", "required": True},
            ],
        },
    ],
}


@pytest.fixture(scope="session")
def demo_stack(server: Server, admin_token: str, org_id: str) -> dict:
    return server.api("POST", "/stacks", {**DEMO_STACK, "organization_id": org_id}, token=admin_token)


def websocket_endpoint_exists(server: Server) -> bool:
    """Whether ``WS /api/v1/ws`` accepts a WebSocket handshake on the server's listener, where the UI connects."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(server.ws_url, open_timeout=10):
            return True
    except InvalidStatus:
        return False


@pytest.fixture(scope="session")
def realtime(server: Server) -> None:
    """The tests that need the WebSocket: skipped when the server has none, a failure on CI (``CI=true``)."""
    if not websocket_endpoint_exists(server):
        require_service(
            "WS /api/v1/ws",
            "the server refused the WebSocket handshake (docs/api.md, 'Real time'): "
            "live status, log streaming and reconnection cannot be checked without it",
        )


#: Every deployment a browser test created, for the session's final check that nothing is left running.
DEPLOYED: list[str] = []
LABEL = "windflow.deployment_id"


def docker_leftovers(deployment_id: str) -> list[str]:
    """Containers, networks and volumes still labelled with ``deployment_id``."""
    found = []
    for kind, cmd in (
        ("container", ["docker", "ps", "-aq"]),
        ("network", ["docker", "network", "ls", "-q"]),
        ("volume", ["docker", "volume", "ls", "-q"]),
    ):
        out = subprocess.run(
            [*cmd, "--filter", f"label={LABEL}={deployment_id}"], capture_output=True, text=True, timeout=60
        ).stdout.split()
        found += [f"{kind} {ref}" for ref in out]
    return found


def force_remove(deployment_id: str) -> None:
    """Removes by label what the API could not (the server is gone, or the delete was refused)."""
    flt = f"label={LABEL}={deployment_id}"
    for script in (
        f"docker rm -f $(docker ps -aq --filter {flt})",
        f"docker network rm $(docker network ls -q --filter {flt})",
        f"docker volume rm -f $(docker volume ls -q --filter {flt})",
    ):
        subprocess.run(["sh", "-c", f"{script} >/dev/null 2>&1"], timeout=60, check=False)


def tear_down(server: Server, token: str, deployment_id: str) -> None:
    """Deletes a deployment through the API (cancelling it first if it still runs), else by label. The API's
    delete answers at once (202) and tears down in the background: wait for the row to go."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            server.api("DELETE", f"/deployments/{deployment_id}", token=token)
            while time.monotonic() < deadline:
                server.api("GET", f"/deployments/{deployment_id}", token=token)  # AssertionError "-> 404" once gone
                time.sleep(0.3)
            break
        except AssertionError as exc:
            if "-> 404" in str(exc):
                return
            if "-> 409" in str(exc):  # still deploying: cancel it, then delete it when it has settled
                try:
                    server.api("POST", f"/deployments/{deployment_id}/cancel", token=token)
                except AssertionError:
                    pass
                time.sleep(1)
                continue
            break
        except OSError:  # the server is down
            break
    force_remove(deployment_id)


@pytest.fixture
def cleanup_deployments(server: Server, admin_token: str):
    """Deletes what a test deployed (containers, networks, volumes) when it ends, failed or not, and
    checks that nothing labelled with those deployments is left on the engine."""

    class Registry(list):
        def append(self, deployment_id: str) -> None:  # type: ignore[override]
            super().append(deployment_id)
            DEPLOYED.append(deployment_id)

    registry = Registry()
    yield registry
    created = list(registry)
    for deployment_id in created:
        if server.proc is None:
            force_remove(deployment_id)
        else:
            tear_down(server, admin_token, deployment_id)
    left = {d: docker_leftovers(d) for d in created}
    left = {d: objs for d, objs in left.items() if objs}
    for deployment_id in left:
        force_remove(deployment_id)
    assert not left, f"the test left these on the Docker engine: {left}"


@pytest.fixture(scope="session", autouse=True)
def nothing_left_on_the_engine():
    """The session's last check: no container, network or volume of a browser test's deployments remains."""
    yield
    left = {d: docker_leftovers(d) for d in DEPLOYED}
    left = {d: objs for d, objs in left.items() if objs}
    for deployment_id in left:
        force_remove(deployment_id)
    assert not left, f"browser tests left these on the Docker engine: {left}"


def new_page(browser, *, locale: str = "en-US", dark: bool = False, width: int = 1280, height: int = 800):
    context = browser.new_context(
        locale=locale,
        color_scheme="dark" if dark else "light",
        viewport={"width": width, "height": height},
        accept_downloads=True,
    )
    context.set_default_timeout(60_000)  # a shared 2-core machine can be slow; waits end as soon as they succeed
    page = context.new_page()
    _retry_network_changes(page)
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))  # type: ignore[attr-defined]
    page.watch = PageWatch(page)  # type: ignore[attr-defined]
    _WATCHED.append(page.watch)  # type: ignore[attr-defined]
    _CONTEXTS.append(context)
    return page


#: The browser contexts the running test opened with :func:`new_page`, closed when it ends.
_CONTEXTS: list = []


@pytest.fixture(autouse=True)
def _close_contexts() -> Iterator[None]:
    """Closes every context the test opened, whether it closed it itself or not. Playwright runs pages without
    background throttling, so a page left open went on for the rest of the session: polling the API (the
    notifications page every 2 s, the hooks panel every 5 s), holding its WebSocket and rendering every event
    of the other tests' deployments (test_automation_ui left six such pages open, a failed test all of its)."""
    yield
    while _CONTEXTS:
        _CONTEXTS.pop().close()


#: Chromium aborts what is loading when the host's network interfaces change (Docker creating or removing a
#: network for a test of the other stream, scripts/test-all.sh): not a failure of the UI.
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"
NAVIGATION_ATTEMPTS = 3


def _retry_network_changes(page) -> None:
    """``page.goto`` and ``page.reload`` load again when, and only when, Chromium aborted the load with
    ERR_NETWORK_CHANGED (any other failure is the test's). The UI's own requests: a GET without an answer
    is sent once more by the API client (``frontend/src/api/client.ts``); a lazy page that fails to load
    reloads once (``frontend/src/router/index.ts``)."""
    from playwright.sync_api import Error as PlaywrightError

    def retrying(load):
        def run(*args, **kwargs):
            for attempt in range(1, NAVIGATION_ATTEMPTS + 1):
                try:
                    return load(*args, **kwargs)
                except PlaywrightError as exc:
                    if NETWORK_CHANGED not in str(exc) or attempt == NAVIGATION_ATTEMPTS:
                        raise
                    page.wait_for_timeout(250 * attempt)

        return run

    page.goto = retrying(page.goto)
    page.reload = retrying(page.reload)


class PageWatch:
    """What a page asked of the network and printed, reported when its test fails: a request that never
    completed, one that failed, the console. A stuck page then says which request it waited for."""

    def __init__(self, page) -> None:
        self.page = page
        self.started = time.monotonic()
        self.pending: dict[int, tuple[float, str]] = {}
        self.events: list[str] = []
        self.network_changed = 0  # loads Chromium dropped because the host's network changed
        page.on("request", self._request)
        page.on("requestfinished", lambda r: self._done(r, "finished"))
        page.on("requestfailed", lambda r: self._done(r, f"FAILED {r.failure}"))
        page.on("console", lambda m: self._log(f"console.{m.type}: {m.text[:300]}"))
        page.on("framenavigated", lambda f: f == page.main_frame and self._log(f"navigated to {f.url}"))
        page.on("websocket", lambda ws: self._log(f"websocket {ws.url}"))

    def _log(self, line: str) -> None:
        self.events.append(f"+{time.monotonic() - self.started:7.2f}s {line}")

    def _request(self, request) -> None:
        self.pending[id(request)] = (time.monotonic(), f"{request.method} {request.url}")
        self._log(f"request {request.method} {request.url}")

    def _done(self, request, how: str) -> None:
        if NETWORK_CHANGED in how:
            self.network_changed += 1
        started, what = self.pending.pop(id(request), (time.monotonic(), request.url))
        response = None
        try:
            response = request.response() if how == "finished" else None
        except Exception:  # noqa: BLE001 - the page is gone
            pass
        status = f" {response.status}" if response is not None else ""
        self._log(f"{how}{status} {what} ({(time.monotonic() - started) * 1000:.0f} ms)")

    def report(self) -> str:
        now = time.monotonic()
        try:
            url = self.page.url
        except Exception:  # noqa: BLE001
            url = "?"
        lines = [f"page at {url}", "requests still pending:"]
        lines += [f"  {what} (for {now - t:.1f} s)" for t, what in self.pending.values()] or ["  none"]
        lines += ["last events:", *self.events[-80:]]
        return "\n".join(lines)


#: Pages and servers of the running test, reported when it fails.
_WATCHED: list[PageWatch] = []
_SERVERS: list[Server] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for n, watch in enumerate(_WATCHED):
            report.sections.append((f"browser page {n}", watch.report()))
        for server in _SERVERS:
            try:
                tail = server.log.read_text(errors="replace")[-6000:]
            except OSError:
                continue
            report.sections.append((f"server log {server.log}", tail))
    if report.when == "teardown":
        _WATCHED.clear()


def ui_login(page, server: Server, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> None:
    """Logs in through the login page, once more when Chromium dropped what the first try loaded because the
    host's network changed (its loads failed with ERR_NETWORK_CHANGED, or it ended on its own error page)."""
    for attempt in (1, 2):
        changed_before = page.watch.network_changed  # type: ignore[attr-defined]
        try:
            _log_in(page, server, email, password)
            return
        except AssertionError:
            dropped = page.watch.network_changed > changed_before or page.url.startswith("chrome-error:")  # type: ignore[attr-defined]
            if attempt == 2 or not dropped:
                raise


def _log_in(page, server: Server, email: str, password: str) -> None:
    page.goto(f"{server.url}/login")
    try:
        page.wait_for_selector("input[name=email]", timeout=45000)
    except Exception:  # noqa: BLE001 - whatever kept the form away is reported with a screenshot
        _try_screenshot(page, "FAILED-login")
        raise AssertionError(f"no login form at {page.url}: {page.errors}") from None
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("[data-testid=login-submit]")
    try:
        page.wait_for_url("**/deployments**", timeout=45000)
        # the list page has rendered: its chunks and their stylesheets are loaded (a navigation right away
        # would cut their preload short, which the page reports as an error)
        page.get_by_test_id("deployment-count").wait_for(timeout=45000)
    except Exception:  # noqa: BLE001 - whatever kept the list away is reported with a screenshot
        _try_screenshot(page, "FAILED-login-submit")
        raise AssertionError(f"login did not reach the deployments page ({page.url}): {page.errors}") from None


def _try_screenshot(page, name: str) -> None:
    try:
        screenshot(page, name)
    except Exception:  # noqa: BLE001 - Chromium's own error page cannot be captured: the report says where it is
        pass


#: What a page reports when the test navigates away while it still loads (a request or a lazy page's stylesheet
#: cut short by page.goto): not errors of the UI.
CUT_SHORT = ("Failed to fetch", "Unable to preload CSS")


def page_errors(page) -> list[str]:
    """The page's uncaught errors, but those of loads the test itself cut short by navigating."""
    return [e for e in page.errors if not any(c in e for c in CUT_SHORT)]


def screenshot(page, name: str) -> Path:
    """The page as it is shown, its CSS transitions and animations taken to their end (a dialog or a message
    fading in is shot whole, without waiting for it)."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=False, animations="disabled")
    return path


def navigate(page, path: str) -> None:
    """Goes to ``path`` inside the running UI as its own links do (its router, no reload of the page: a
    page.goto loads the whole application, its socket and its session again for every page). Fails when the
    router went elsewhere (a guard's redirect)."""
    landed = page.evaluate(
        """async (path) => {
            const router = document.querySelector('#app').__vue_app__.config.globalProperties.$router
            await router.push(path)
            return router.currentRoute.value.fullPath
        }""",
        path,
    )
    assert landed.split("?")[0] == path.split("?")[0], f"navigating to {path} landed on {landed}"
