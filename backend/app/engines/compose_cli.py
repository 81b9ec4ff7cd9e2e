"""The compose tool: locating it (``docker compose`` v2 plugin, else ``docker-compose`` v1) and the one
runner of ``compose config -q`` that judges a document, used at stack/deployment creation
(``templating.validate_with_compose``) and by the compose driver's ``validate`` step."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from backend.app.core.files import write_private
from backend.app.engines.base import EngineError, LogSink
from backend.app.engines.process import CommandResult, run_command

#: Where the docker CLI looks for its compose plugin (docs.docker.com, "Install the plugin manually").
PLUGIN_DIRS = (
    Path.home() / ".docker" / "cli-plugins",
    Path("/usr/local/lib/docker/cli-plugins"),
    Path("/usr/local/libexec/docker/cli-plugins"),
    Path("/usr/lib/docker/cli-plugins"),
    Path("/usr/libexec/docker/cli-plugins"),
)


def _version(argv: tuple[str, ...]) -> str | None:
    try:
        probe = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return probe.stdout.strip().lstrip("v") if probe.returncode == 0 and probe.stdout.strip() else None


@lru_cache
def find_compose_command() -> tuple[str, ...] | None:
    """The compose command as argv prefix, or ``None`` when neither v2 nor v1 is installed.

    Compose v2's plugin binary is run directly when it can be found: it is the same program the docker
    CLI would exec (``docker compose`` = docker CLI + plugin), minus one process start, which halves
    the cost of a short command such as ``config -q`` (about 35 ms each here). Then ``docker compose``,
    then v1's ``docker-compose``.
    """
    for directory in PLUGIN_DIRS:
        plugin = directory / "docker-compose"
        if plugin.is_file() and os.access(plugin, os.X_OK) and (_version((str(plugin),)) or "").startswith("2"):
            return (str(plugin),)
    docker = shutil.which("docker")
    if docker and _version((docker, "compose")):
        return (docker, "compose")
    legacy = shutil.which("docker-compose")
    if legacy:
        return (legacy,)
    return None


@lru_cache
def compose_is_v2(command: tuple[str, ...]) -> bool:
    """True for compose v2 (``--progress``, ``--pull`` ...), False for v1 (1.29)."""
    if len(command) > 1:  # docker compose
        return True
    return (_version(command) or "1").startswith("2")


# --- documents the compose tool already accepted in this process ---------------------------------
# Creating a deployment runs `compose config` on its rendered document; the runner's first step would run
# it again on the very same text (about 90 ms of process start-up each). Remembering the hash of accepted
# documents lets the runner skip the second run when it executes in the process that validated them
# (the asyncio executor); a Celery worker, another process, validates again.

import hashlib  # noqa: E402
from collections import OrderedDict  # noqa: E402
from threading import Lock  # noqa: E402

_VALID_MAX = 1024
_valid: OrderedDict[str, None] = OrderedDict()
_valid_lock = Lock()


def _digest(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def remember_valid(document: str) -> None:
    with _valid_lock:
        _valid[_digest(document)] = None
        _valid.move_to_end(_digest(document))
        while len(_valid) > _VALID_MAX:
            _valid.popitem(last=False)


def known_valid(document: str) -> bool:
    with _valid_lock:
        return _digest(document) in _valid


# --- judging a document ------------------------------------------------------------------------------

VALIDATE_PROJECT_NAME = "windflow-validate"
#: What ``compose config`` may see of the backend's environment: nothing a template could interpolate.
_VALIDATE_ENV = ("PATH", "HOME", "DOCKER_CONFIG")


async def check_document(
    document: str,
    *,
    command: Sequence[str] | None = None,
    timeout: float,
    log: LogSink | None = None,
    normalised: bool = False,
) -> CommandResult:
    """``compose config -q`` on ``document``: the tool's verdict (``result.ok``) and its lines; with
    ``normalised``, ``compose config`` whose output (``result.stdout``) is the document as compose reads it
    (interpolated, ``extends`` merged).

    The tool runs in an empty temporary directory with a minimal environment, so neither the server's
    environment variables nor a stray ``.env`` reach the interpolation; the temporary paths in its
    messages read ``compose.yaml`` and ``.``. Raises a transient ``EngineError`` when the tool does not
    answer within ``timeout`` (its process group is killed), a permanent one when it cannot be run.
    """
    command = tuple(command or find_compose_command() or ())
    if not command:
        raise EngineError("no compose tool found (neither `docker compose` nor `docker-compose`)", transient=False)
    with tempfile.TemporaryDirectory(prefix="windflow-validate-") as workdir:
        path = Path(workdir) / "compose.yaml"
        write_private(path, document)  # it may hold secret values
        env = {key: os.environ[key] for key in _VALIDATE_ENV if key in os.environ}
        argv = [
            *command,
            "--project-name",
            VALIDATE_PROJECT_NAME,
            "--project-directory",
            workdir,
            "-f",
            str(path),
            "config",
            *([] if normalised else ["-q"]),
        ]
        result = await run_command(argv, env=env, log=log, cwd=Path(workdir), timeout=timeout, capture_stdout=normalised)
    lines = [line.replace(str(path), "compose.yaml").replace(workdir, ".") for line in result.lines]
    return CommandResult(result.returncode, lines, result.stdout)
