"""Child processes for the tests and the benchmarks (``bench/_common.py`` imports this module too): a
process in its own process group with its output in a file, and the environment that gives a child
exactly a given ``Settings``. Imports nothing of the backend, so a benchmark can use it before its
bootstrap."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Prefixes of the variables a child must not inherit from this process: the settings give them.
SETTINGS_PREFIXES = ("CELERY_", "WINDFLOW_", "DEPLOYMENT", "RECOVERY_", "EVENT_BUS")


def settings_env(settings: Any, **extra: str) -> dict[str, str]:
    """The environment that gives a child process exactly ``settings`` (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(settings.as_environment())
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A child process in its own process group (so that stopping it reaches its children, e.g. Celery's
    prefork pool), with its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO_ROOT) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)

    def stop(self, grace: float = 15) -> None:
        """SIGTERM to the group, SIGKILL to whatever of it is left after ``grace`` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        self.kill9()  # the children of a warm-shut-down worker are gone with the group; make sure
        self._log.close()
