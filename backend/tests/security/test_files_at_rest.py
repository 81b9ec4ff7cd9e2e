"""Files at rest: ``.env`` written 0600 by the Makefile, data directories created 0700, secret files 0600,
whatever the umask. (The deployment directory and its rendered compose file are checked against the real
engine in ``test_redaction_isolation.py``.)"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from backend.app.core.files import private_dir, write_private
from backend.app.core.logging import add_file_handler
from backend.app.database import build_engine
from backend.tests.conftest import make_settings

REPO = Path(__file__).resolve().parents[3]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def loose_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_makefile_writes_env_0600(tmp_path, loose_umask):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    shutil.copy(REPO / ".env.example", tmp_path / ".env.example")
    result = subprocess.run(["make", ".env", "PYTHON=python3"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    env = tmp_path / ".env"
    assert _mode(env) == 0o600
    assert "SECRET_KEY=" in env.read_text() and "change-me" not in env.read_text().split("SECRET_KEY=")[1].split("\n")[0]


def test_private_dir_and_write_private(tmp_path, loose_umask):
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    created = private_dir(existing / "a" / "b")
    assert _mode(existing) == 0o755, "an existing parent (maybe the operator's) is left alone"
    assert _mode(existing / "a") == 0o700 and _mode(created) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o755)
    private_dir(loose, tighten=True)
    assert _mode(loose) == 0o700
    secret = created / "compose.yml"
    secret.write_text("old")
    os.chmod(secret, 0o644)
    write_private(secret, "password: s3cret\n")
    assert _mode(secret) == 0o600 and secret.read_text() == "password: s3cret\n"
    assert [p.name for p in created.iterdir()] == ["compose.yml"]


async def test_sqlite_data_directory_created_0700(tmp_path, loose_umask):
    path = tmp_path / "fresh-data" / "windflow.db"
    engine = build_engine(make_settings(f"sqlite+aiosqlite:///{path}"))
    await engine.dispose()
    assert _mode(path.parent) == 0o700


def test_log_directory_created_0700(tmp_path, loose_umask):
    import logging

    target = logging.getLogger("windflow-test-files-at-rest")
    log_file = tmp_path / "logs" / "backend.log"
    add_file_handler(target, str(log_file))
    try:
        assert _mode(log_file.parent) == 0o700
    finally:
        for handler in list(target.handlers):
            target.removeHandler(handler)
            handler.close()
