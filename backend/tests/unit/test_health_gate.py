"""The health gate's judgement of one container (pure logic over inspection data, on a fake clock)."""

from __future__ import annotations

from backend.app.engines.docker_base import image_digest, repository_of
from backend.app.engines.health_gate import Healthcheck, HealthGate

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def attrs(status="running", health=None, restarts=0, started="t1", exit_code=0, check=None, probes=()):
    state = {"Status": status, "ExitCode": exit_code, "StartedAt": started}
    if health:
        state["Health"] = {"Status": health, "Log": list(probes)}
    return {"State": state, "RestartCount": restarts, "Config": {"Healthcheck": check} if check else {}}


def test_without_a_healthcheck_a_container_is_ready_after_the_window() -> None:
    clock = Clock()
    gate = HealthGate(3.0, clock)
    assert gate.judge("c", attrs()).waiting.startswith("running, settling (3.0s left)")
    clock.now += 2.9
    assert not gate.judge("c", attrs()).ready
    clock.now += 0.2
    assert gate.judge("c", attrs()).ready


def test_exits_restarts_and_unhealthy_fail_at_once() -> None:
    gate = HealthGate(3.0, Clock())
    assert gate.judge("a", attrs(status="exited", exit_code=3)).reason == "exited with code 3"
    assert gate.judge("b", attrs(status="exited", exit_code=0), one_shot=True).ready
    assert gate.judge("c", attrs(status="restarting", exit_code=137)).reason == "is restarting (it exited with code 137)"
    gate.judge("d", attrs(restarts=2))  # restarts before the gate saw it: a container this rollout kept
    assert gate.judge("d", attrs(restarts=2)).failed is False
    assert gate.judge("d", attrs(restarts=3, exit_code=1)).reason.startswith("restarted during the health gate")
    gate.judge("e", attrs(started="t1"))
    assert gate.judge("e", attrs(started="t2")).reason == "restarted during the health gate (it started again)"
    # running again: Docker has reset the exit code to 0, so the verdict does not claim one
    gate.judge("g", attrs())
    assert gate.judge("g", attrs(restarts=2, started="t2")).reason == "restarted during the health gate (2 restart(s))"
    check = {"Test": ["CMD", "false"], "Interval": S}
    probe = {"ExitCode": 1, "Output": "connection\nrefused  "}
    verdict = gate.judge("f", attrs(health="unhealthy", check=check, probes=[probe]))
    assert verdict.reason == "is unhealthy (last check: exit 1: connection refused)"


def test_a_healthcheck_must_pass_within_its_bound_and_is_its_window() -> None:
    clock = Clock()
    gate = HealthGate(5.0, clock)
    check = {"Test": ["CMD", "true"], "Interval": 2 * S, "Timeout": 1 * S, "StartPeriod": 4 * S, "Retries": 2}
    assert Healthcheck.of(attrs(check=check)).bound == 4 + 2 * (2 + 1)
    assert gate.judge("c", attrs(health="starting", check=check)).waiting == "running (starting)"
    clock.now += 10 + 2.1  # bound 10 s, plus the slack
    verdict = gate.judge("c", attrs(health="starting", check=check, probes=[{"ExitCode": -1, "Output": "timed out"}]))
    assert verdict.reason == "did not pass its healthcheck within 10s (last check: exit -1: timed out)"

    gate = HealthGate(5.0, clock)
    gate.judge("c", attrs(health="starting", check=check))
    clock.now += 3
    assert gate.judge("c", attrs(health="healthy", check=check)).ready  # Docker probed it an interval after its start
    assert gate.judge("c", attrs(health="healthy", check=check, restarts=1)).failed  # ... and a restart still fails it


def test_docker_defaults_for_unset_healthcheck_fields_and_none_disables() -> None:
    check = Healthcheck.of(attrs(check={"Test": ["CMD-SHELL", "curl -f localhost"]}))
    assert (check.interval, check.timeout, check.start_period, check.retries) == (30, 30, 0, 3)
    assert Healthcheck.of(attrs(check={"Test": ["NONE"]})) is None


def test_digest_of_an_image() -> None:
    assert repository_of("docker.io/library/busybox:1.36") == "busybox" == repository_of("busybox")
    assert repository_of("registry:5000/team/app:2") == "registry:5000/team/app"
    pulled = {"Id": "sha256:aaa", "RepoDigests": ["other@sha256:zzz", "busybox@sha256:bbb"]}
    assert image_digest("busybox:1.36", pulled) == ("sha256:bbb", "busybox@sha256:bbb")
    assert image_digest("registry:5000/app:2", {"Id": "sha256:ccc", "RepoDigests": []}) == ("sha256:ccc", "sha256:ccc")
    assert image_digest("busybox@sha256:bbb", pulled) == ("sha256:bbb", "busybox@sha256:bbb")
    assert image_digest("sha256:aaa", pulled) == ("sha256:aaa", "sha256:aaa")
