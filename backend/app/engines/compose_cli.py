"""Locating the compose tool: ``docker compose`` (v2 plugin), else ``docker-compose`` (v1)."""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache


@lru_cache
def find_compose_command() -> tuple[str, ...] | None:
    """The compose command as argv prefix, or ``None`` when neither v2 nor v1 is installed."""
    docker = shutil.which("docker")
    if docker:
        try:
            probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is not None and probe.returncode == 0:
            return (docker, "compose")
    legacy = shutil.which("docker-compose")
    if legacy:
        return (legacy,)
    return None
