"""A private PostgreSQL server that a test (or a benchmark) may stop and start: a database restart is an
ordinary fault, and the shared server on 5432 must never be the one restarted.

``initdb`` refuses to run as root, so the cluster belongs to the ``postgres`` system user (Debian's package
creates it) when the caller is root; its socket directory and data directory live under a private temporary
directory, and it listens on a free loopback port with trust authentication, like the machine's own server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin_dir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise FileNotFoundError("PostgreSQL's server binaries (pg_ctl, initdb) are not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """``initdb`` + ``pg_ctl`` on a free port; :meth:`stop` (``fast`` or ``immediate``) and :meth:`start` at will."""

    def __init__(self, database: str = "windflow") -> None:
        self.bin = _bin_dir()
        # in the system's temporary directory: the server's user must reach it (a test's tmp_path is root's)
        self.root = Path(tempfile.mkdtemp(prefix="windflow-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.database = database
        self._user = "postgres" if os.geteuid() == 0 else None
        self.root.mkdir(parents=True, exist_ok=True)
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                # fsync off: a stopped server's writes are in the OS cache, which outlives it; synchronous_commit
                # stays on, or `stop -m immediate` would lose transactions that had committed
                "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
            )
        self.start()
        self._psql(f'CREATE DATABASE "{database}"')

    # --- addresses -------------------------------------------------------------------------------------
    @property
    def async_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    # --- control ---------------------------------------------------------------------------------------
    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [str(self.bin / tool), *args]
        if self._user:
            argv = ["runuser", "-u", self._user, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def _psql(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def start(self, timeout: float = 30) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start")
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients disconnected, a clean shutdown; ``immediate``: like a crash (recovery at start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True)
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the private PostgreSQL on {self.port} is not ready after {timeout}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
