"""The watcher's judgement of a deployment from its containers (pure logic; the watcher itself runs against the
real engine in backend/tests/docker/test_watch.py)."""

from __future__ import annotations

from backend.app.engines.base import ServiceState
from backend.app.services.deployments.watch import DEGRADED, DOWN, HEALTHY, Expected, judge

TWO = Expected({"web": 1, "worker": 1})


def c(service: str, state: str = "running", *, cid: str | None = None, health=None, exit_code=None, restarts=0, probe=None):
    return ServiceState(service, cid or service, state, health, exit_code, restarts=restarts, probe=probe)


def by_service(look):
    return {s.service: (s.state, s.reason) for s in look.services}


def test_every_service_up_is_healthy():
    look = judge(TWO, [c("web", health="healthy"), c("worker")], {})
    assert look.health == HEALTHY and look.message is None
    assert by_service(look) == {"web": ("up", None), "worker": ("up", None)}
    assert look.restarts == {"web": 0, "worker": 0}


def test_an_exited_service_degrades_and_nothing_running_is_down():
    look = judge(TWO, [c("web", "exited", exit_code=3), c("worker")], {})
    assert look.health == DEGRADED
    assert by_service(look)["web"] == ("down", "exited with code 3")
    assert look.message == "service web exited with code 3"
    assert judge(TWO, [c("web", "exited", exit_code=3), c("worker", "exited", exit_code=137)], {}).health == DOWN
    assert judge(TWO, [], {}).health == DOWN  # every container removed


def test_unhealthy_names_its_probe_and_still_counts_as_running():
    look = judge(TWO, [c("web", health="unhealthy", probe="exit 1: GET /health 503"), c("worker", "exited", exit_code=1)], {})
    assert look.health == DEGRADED  # something runs: not down
    assert by_service(look)["web"] == ("unhealthy", "is unhealthy (last check: exit 1: GET /health 503)")


def test_a_restart_between_two_looks_is_a_crash_loop_sign():
    first = judge(TWO, [c("web", restarts=2), c("worker")], {})
    assert first.health == DEGRADED and by_service(first)["web"][0] == "restarting"  # restarted since the rollout
    again = judge(TWO, [c("web", restarts=4), c("worker")], first.restarts)
    assert by_service(again)["web"] == ("restarting", "restarted 2 time(s) since the last look (4 in all)")
    calm = judge(TWO, [c("web", restarts=4), c("worker")], again.restarts)
    assert calm.health == HEALTHY
    assert by_service(judge(TWO, [c("web", "restarting", exit_code=5, restarts=5), c("worker")], {}))["web"] == (
        "restarting",
        "is restarting (it exited with code 5; 5 restart(s))",
    )


def test_one_shot_jobs_missing_replicas_and_swarm_tasks():
    jobs = Expected({"migrate": 1, "web": 1}, frozenset({"migrate"}))
    assert judge(jobs, [c("migrate", "exited", exit_code=0), c("web")], {}).health == HEALTHY
    assert by_service(judge(jobs, [c("migrate", "exited", exit_code=2), c("web")], {}))["migrate"] == ("down", "exited with code 2")
    three = Expected({"web": 3})
    look = judge(three, [c("web", cid="a"), c("web", cid="b")], {})
    assert look.health == DEGRADED and by_service(look)["web"] == ("missing", "has 2 of its 3 container(s)")
    swarm = judge(TWO, [c("web", "failed", exit_code=1), c("worker", "starting")], {})
    assert swarm.health == DOWN and by_service(swarm) == {
        "web": ("down", "failed (exited with code 1)"),
        "worker": ("starting", "is starting"),
    }
