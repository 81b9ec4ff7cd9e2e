"""A target's keys never outlive the process that wrote them: the session directories of a killed process are
removed by the next WindFlow process's first engine session (``engines/connection.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from backend.app.engines import connection
from backend.app.engines.connection import MATERIAL_PREFIX, sweep_orphaned_material

REPO = Path(__file__).resolve().parents[3]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_the_directories_of_gone_processes_are_removed(tmp_path):
    dead = _dead_pid()
    orphan = tmp_path / f"{MATERIAL_PREFIX}{dead}-k3y5"
    orphan.mkdir(mode=0o700)
    (orphan / "key.pem").write_text("-----BEGIN PRIVATE KEY-----")
    live = tmp_path / f"{MATERIAL_PREFIX}{os.getppid()}-l1ve"  # a replica or a worker on this host
    live.mkdir()
    (live / "key.pem").write_text("in use")
    older = tmp_path / f"{MATERIAL_PREFIX}abc_1234"  # no process id in its name: not ours to judge
    older.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not a session's")
    link = tmp_path / f"{MATERIAL_PREFIX}{dead}-l1nk"
    link.symlink_to(elsewhere, target_is_directory=True)

    assert sweep_orphaned_material(str(tmp_path)) == [orphan]
    assert not orphan.exists()
    assert (live / "key.pem").read_text() == "in use"
    assert older.is_dir()
    assert link.is_symlink() and (elsewhere / "keep").read_text() == "not a session's"


def test_the_keys_of_a_process_killed_mid_session_are_gone_after_the_next_session_opens(tmp_path, monkeypatch):
    """A child process opens a TLS target's session (its keys on disk) and is killed with SIGKILL: its
    directory stays. This process's first session removes it, and its own is named after its pid."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(connection, "_swept_in", None)
    script = textwrap.dedent(
        """
        import sys, tempfile, time
        tempfile.tempdir = sys.argv[1]
        from backend.app.engines.base import TargetConnection, TargetType
        from backend.app.engines.connection import EngineSession
        session = EngineSession(TargetConnection(type=TargetType.DOCKER, endpoint="tcp://10.0.0.1:2376",
                                                 tls_ca="CA", tls_cert="CERT", tls_key="SECRET KEY"))
        session.open()
        print(session.material_dir, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "DEBUG": "true"}
    )
    try:
        material = Path(child.stdout.readline().strip())
        assert (material / "key.pem").read_text().strip() == "SECRET KEY"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert material.name.startswith(f"{MATERIAL_PREFIX}{child.pid}-")
    assert (material / "key.pem").exists()  # killed: nothing removed it

    from backend.app.engines.base import TargetConnection, TargetType

    session = connection.EngineSession(TargetConnection(type=TargetType.DOCKER, endpoint="unix:///var/run/docker.sock"))
    session.open()
    try:
        assert not material.exists()
        assert session.material_dir.name.startswith(f"{MATERIAL_PREFIX}{os.getpid()}-")
    finally:
        session._cleanup_dir()
    assert list(tmp_path.iterdir()) == []
