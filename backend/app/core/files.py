"""Files at rest: WindFlow's directories are 0700 and files holding secrets 0600, whatever the umask.

A rendered compose file holds a deployment's secret values in clear (compose needs them); another local
user of the WindFlow host must not be able to read it, nor list the deployments directory.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str], *, tighten: bool = False) -> Path:
    """Create ``path`` and its missing parents with mode 0700.

    Existing directories are left alone (they may be the operator's, e.g. ``/srv`` or ``/tmp``), unless
    ``tighten``: then an existing ``path`` (a directory WindFlow owns, such as a deployment's) is set to 0700.
    """
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
    if tighten:
        os.chmod(path, DIR_MODE)
    return path


def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` created (or truncated) with mode 0600, atomically via a temporary file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
    finally:
        if fd != -1:
            os.close(fd)
    os.replace(tmp, path)
