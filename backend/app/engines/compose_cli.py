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
# The verdict of `compose config` on a document depends only on the document and on the tool that judged
# it: the validation runs in an empty directory with a minimal environment (check_document), and what
# WindFlow checks of its output (the always-refused keys) is code of this process. So an accepted verdict
# is remembered by the document's hash and the tool's identity, and neither deployment creation (a stack
# deployed again with the same values, a preview followed by the POST) nor the runner's first step (the
# asyncio executor, in the process that validated at creation) pays the tool's process start again for
# the same text. A changed document, or a tool replaced on disk (another binary, an upgrade: its inode,
# size or mtime change), misses. Only acceptances are remembered; a refusal runs the tool again, so its
# message is always the tool's current one. The target's compose policy is not part of it: it is judged
# in process, before the tool, on every creation and every run (services/deployments/context.py).

import hashlib  # noqa: E402
from collections import OrderedDict  # noqa: E402
from threading import Lock  # noqa: E402

_VALID_MAX = 1024
_valid: OrderedDict[tuple[str, tuple], frozenset[str]] = OrderedDict()
_valid_lock = Lock()


def _digest(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def _file_identity(path: str | None) -> tuple:
    if not path:
        return ()
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def tool_identity(command: Sequence[str] | None = None) -> tuple:
    """What identifies the compose tool ``command`` runs: its argv and the identity (device, inode, size,
    mtime) of each program it executes (``docker compose``: the docker CLI and its compose plugin)."""
    command = tuple(command or find_compose_command() or ())
    if not command:
        return ()
    program = command[0] if os.sep in command[0] else shutil.which(command[0])
    identity: tuple = (command, _file_identity(program))
    if len(command) > 1 and command[1] == "compose":
        plugin = next((str(d / "docker-compose") for d in PLUGIN_DIRS if (d / "docker-compose").is_file()), None)
        identity += (_file_identity(plugin),)
    return identity


#: The two verdicts a document can have: accepted by ``compose config -q`` (the runner's check), and accepted
#: with its normalised output checked for the always-refused keys too (creation's check, which also implies
#: the first).
CONFIG_OK = "config"
NORMALISED_OK = "normalised"


def remember_valid(document: str, command: Sequence[str] | None = None, *, verdict: str = CONFIG_OK) -> None:
    """Record that ``command`` (default: the found tool) accepted ``document`` with ``verdict``."""
    key = (_digest(document), tool_identity(command))
    with _valid_lock:
        verdicts = _valid.get(key) or frozenset()
        _valid[key] = verdicts | {verdict}
        _valid.move_to_end(key)
        while len(_valid) > _VALID_MAX:
            _valid.popitem(last=False)


def known_valid(document: str, command: Sequence[str] | None = None, *, verdict: str = CONFIG_OK) -> bool:
    """Whether this very tool (same program on disk) already accepted this very document in this process,
    with ``verdict`` (:data:`NORMALISED_OK` answers for :data:`CONFIG_OK` too)."""
    key = (_digest(document), tool_identity(command))
    with _valid_lock:
        verdicts = _valid.get(key) or frozenset()
    return verdict in verdicts or NORMALISED_OK in verdicts


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
