"""The second engine of ``remote_docker`` is a host of its own: starting and stopping it leaves the host's
engine exactly as it was (its ``docker0`` bridge, ``docker run`` on the default bridge), and it leaves no
network namespace or veth behind, even after a run that crashed before its teardown."""

from __future__ import annotations

import subprocess

import pytest

from backend.tests.conftest import TEST_IMAGE, require_service
from backend.tests.remote_docker import NETNS_PREFIX, remote_docker_or_skip, remove_leftover_namespaces

pytestmark = pytest.mark.docker


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def _has_docker0() -> bool:
    return _ip("link", "show", "docker0").returncode == 0


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _veths() -> list[str]:
    return [
        line.split()[1].split("@")[0].rstrip(":")
        for line in _ip("-o", "link", "show", "type", "veth").stdout.splitlines()
        if line.split()[1].startswith("wfr")
    ]


def _run_on_default_bridge() -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "run", "--rm", TEST_IMAGE, "true"], capture_output=True, text=True, timeout=60)


def test_the_remote_engine_leaves_the_host_bridge_and_network_alone(docker_engine):
    if not _has_docker0():
        pytest.skip("the host engine has no docker0 bridge to begin with")
    before = _run_on_default_bridge()
    assert before.returncode == 0, before.stderr
    veths_before = _veths()
    with remote_docker_or_skip() as engine:
        assert engine.netns in _namespaces()
        assert engine.endpoint == f"tcp://{engine.address}:2376" and not engine.address.startswith("127.")
        # Its interfaces are its own: the namespace sees its end of the veth pair, not the host's docker0.
        inside = subprocess.run(
            ["ip", "netns", "exec", engine.netns, "ip", "-o", "link"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        assert "docker0" not in inside and "eth0" in inside
        assert _has_docker0(), "starting the second engine removed the host's docker0"

    assert _has_docker0(), "the second engine removed the host's docker0"
    after = _run_on_default_bridge()
    assert after.returncode == 0, after.stderr
    assert engine.netns not in _namespaces()
    assert _veths() == veths_before


def test_a_namespace_left_by_a_crashed_run_is_removed(docker_engine):
    """A run killed before its teardown leaves ``wfremote-<its pid>-<n>``; the next start removes it."""
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=10)
    name = f"{NETNS_PREFIX}{gone.pid}-1"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        require_service("network namespaces (ip netns)", made.stderr.strip())
    try:
        # What a crash leaves running in it: a process holding the namespace.
        sleeper = subprocess.Popen(["nsenter", f"--net=/run/netns/{name}", "sleep", "300"])
        try:
            assert name in _namespaces()
            assert name in remove_leftover_namespaces()
            assert name not in _namespaces()
            assert sleeper.wait(timeout=15) != 0, "the process left in the namespace was killed"
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait(timeout=10)
    finally:
        _ip("netns", "delete", name)
