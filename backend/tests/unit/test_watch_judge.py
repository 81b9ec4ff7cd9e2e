"""The watcher's judgement of a deployment from its containers (pure logic; the watcher itself runs against the
real engine in backend/tests/docker/test_watch.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backend.app.engines.base import ServiceState
from backend.app.services.deployments.watch import DEGRADED, DOWN, HEALTHY, RESTART_SETTLE_SECONDS, Expected, judge

TWO = Expected({"web": 1, "worker": 1})


def c(
    service: str, state: str = "running", *, cid: str | None = None, health=None, exit_code=None, restarts=0, probe=None, started_at=None
):
    return ServiceState(service, cid or service, state, health, exit_code, restarts=restarts, probe=probe, started_at=started_at)


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


def test_a_restarted_container_up_for_a_moment_between_two_exits_is_not_up():
    """A crash loop seen running at two looks in a row (same restart count: it exits a moment later) is still
    restarting until its run has lasted RESTART_SETTLE_SECONDS; a container that restarted once and then ran on
    is up."""
    now = datetime(2026, 12, 6, 23, 0, 0, tzinfo=UTC)
    just = (now - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")  # as Docker writes it
    first = judge(TWO, [c("web", restarts=3, started_at=just), c("worker")], {"web": 3, "worker": 0}, now)
    assert first.health == DEGRADED
    assert by_service(first)["web"] == ("restarting", "restarted 3 time(s), up for 2 s only")
    settled = (now - timedelta(seconds=RESTART_SETTLE_SECONDS + 1)).isoformat()
    assert judge(TWO, [c("web", restarts=3, started_at=settled), c("worker")], first.restarts, now).health == HEALTHY
    # never restarted, or no start time from the engine (a swarm task): the count alone decides
    assert judge(TWO, [c("web", started_at=just), c("worker")], {}, now).health == HEALTHY
    assert judge(TWO, [c("web", restarts=3), c("worker")], first.restarts, now).health == HEALTHY


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
