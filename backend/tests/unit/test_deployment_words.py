"""A deployment's ``error_message`` and WindFlow's own log lines get the code of their sentence
(``core/deployment_words.py``); a container's line, or a text that is none of them, gets none."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend.app.core.deployment_words import (
    CONTAINER_STATES,
    ERRORS,
    LOG_LINES,
    PREPARE_DETAILS,
    SERVICE_REASONS,
    WAITING_DETAILS,
    error_words,
    line_words,
    service_reason_words,
)
from backend.app.models import LogLevel
from backend.app.services.deployments.logs import LogLine

APP = Path(__file__).resolve().parents[2] / "app"
#: Sentences whose writer puts its words together differently: the pieces as the source has them.
COMPOSED = {
    "waiting_ready": "waiting for {service}: {description} {ready}/{count} ready, {states}",
    "wrote_project": "wrote {file} of project {project} ({count} services, {next} labelled {label})",
    "image_pulling_with_auth": "image {image} is not present locally, pulling it{with_auth} with the organisation's credentials for {registry}",
    "compose_up_failed": 'failure("compose up", {result}) {what} failed: {excerpt}',
    "stack_deploy_failed": 'failure("docker stack deploy", {result}) {what} failed: {excerpt}',
    "cancelled_removing_kept": "Cancelled{where} during step {step}/{len} {title}, stopped there: removing what this deployment created (named volumes are kept)",
    "no_live_worker": "no live worker serves target {target}: the deployment waits in the target's {next} queue until a worker that declares it (WORKER_TARGETS) runs",
    "cancelled_removing_step": "Cancelled{where} during step {step}/{len} {title}, stopped there: removing what this deployment created",
    "retrying_stop": "Transient failure: retrying the {action} in {delay}s",
    "retrying_delete": "Transient failure: retrying the {action} in {delay}s",
    "stop_failed": "{verb} failed: {detail}",
    "delete_failed": "{verb} failed: {detail}; delete it again to retry",
}


@pytest.mark.parametrize(
    ("message", "code", "params"),
    [
        ("service web exited with code 2; last log lines:\nboom\nbang", "service_exited", {"service": "web", "exit_code": "2"}),
        ("Cancelled by user", "cancelled_by_user", {}),
        ("compose up failed: Error response from daemon: x", "compose_up_failed", {"output": "Error response from daemon: x"}),
        ("revision 3 is degraded: web exited", "revision_health", {"revision": "3", "health": "degraded", "detail": "web exited"}),
        (
            "service web is unhealthy (last check: curl: (7) refused)",
            "service_unhealthy_probe",
            {"service": "web", "probe": "curl: (7) refused"},
        ),
        ("something nobody wrote", None, {}),
        (None, None, {}),
    ],
)
def test_an_error_message_gets_its_sentences_code(message, code, params) -> None:
    assert error_words(message) == (code, params)


def test_windflows_lines_get_a_code_and_a_containers_none() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    ours = LogLine(1, moment, LogLevel.INFO, "Deployment started (revision 2, attempt 1/3, executor asyncio)").to_dict()
    assert ours["code"] == "started" and ours["params"] == {"revision": "2", "attempt": "1", "max_attempts": "3", "executor": "asyncio"}
    theirs = LogLine(2, moment, LogLevel.INFO, "app | Deployment is running").to_dict()
    assert "code" not in theirs and "params" not in theirs
    assert line_words("[3/6] Check images") == ("step", {"number": "3", "total": "6", "title": "Check images"})
    waiting = "waiting for app: 0/1 ready, running (starting)"
    assert line_words(waiting) == (
        "waiting_ready",
        {
            "service": "app",
            "ready": "0",
            "count": "1",
            "states": "running (starting)",
            "states.parts": "1",
            "states.0.code": "health",
            "states.0.health": "starting",
        },
    )
    assert line_words("waiting for app: no container") == ("waiting_none", {"service": "app"})


def test_every_sentence_is_one_the_server_writes() -> None:
    """Each sentence's fixed words are in the application's source: a writer that changes its words
    without this list would leave the UI wording a sentence nobody writes any more."""
    source = "\n".join(path.read_text(encoding="utf-8") for path in APP.rglob("*.py") if path.name != "deployment_words.py")
    missing = []
    for code, template in {**ERRORS, **LOG_LINES, **SERVICE_REASONS, **PREPARE_DETAILS, **CONTAINER_STATES, **WAITING_DETAILS}.items():
        # writers compose some sentences from pieces (a reason after the service's name, an optional tail): each
        # run of words between parameters and punctuation is checked
        template = COMPOSED.get(code, template)
        pieces = [piece.strip() for piece in re.split(r"\{\w+\}|[():;]", template)]
        missing += [(code, piece) for piece in pieces if len(piece) >= 10 and piece not in source]
    assert missing == []


def test_every_line_the_server_logs_as_it_is_has_a_code() -> None:
    """A log line written as a constant (``log(LogLevel.INFO, "Stopped")``) is read by its code in the UI: one
    without a code was shown in English in every language (a French screenshot of the logs drawer)."""
    import ast

    uncoded = []
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and len(node.args) >= 2):
                continue
            level, text = node.args[0], node.args[1]
            logged = isinstance(level, ast.Attribute) and getattr(level.value, "id", None) == "LogLevel"
            if logged and isinstance(text, ast.Constant) and line_words(text.value)[0] is None:
                uncoded.append(f"{path.relative_to(APP)}:{node.lineno}: {text.value}")
    assert uncoded == []


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("Stopping (attempt 1/3)", "stopping"),
        ("Deleting: removing containers, networks and volumes (attempt 2/3)", "deleting"),
        ("Deleting: removing containers, networks and volumes (named volumes are kept) (attempt 1/3)", "deleting_kept_volumes"),
        ("Transient failure: retrying the stop in 0.5s", "retrying_stop"),
        ("Transient failure: retrying the delete in 2s", "retrying_delete"),
    ],
)
def test_a_teardowns_lines_get_their_codes(line, code) -> None:
    assert line_words(line)[0] == code
    assert error_words("Delete failed: could not remove web; delete it again to retry") == (
        "delete_failed",
        {"detail": "could not remove web"},
    )
    assert error_words("Stop failed: compose down failed: boom") == ("stop_failed", {"detail": "compose down failed: boom"})


def test_why_a_service_is_not_up_gets_its_code() -> None:
    from backend.app.core.events import RolledBackData, ServiceHealthData
    from backend.app.engines.base import ServiceState
    from backend.app.services.deployments.watch import Expected, judge

    assert service_reason_words("is starting") == ("starting", {})
    assert service_reason_words("is paused") == ("is_state", {"state": "paused"})
    assert service_reason_words("restarted 2 time(s) since the last look (5 in all)") == ("restarted_since", {"count": "2", "total": "5"})
    health = ServiceHealthData(service="web", state="down", expected=1, running=0, restarts=0, reason="exited with code 137")
    assert (health.reason_code, health.reason_params) == ("exited_code", {"exit_code": "137"})
    # as the watcher words them (its judge, without an engine)
    look = judge(
        Expected({"web": 1, "db": 1, "api": 2}),
        [
            ServiceState("web", "c1", "exited", None, exit_code=137),
            ServiceState("db", "c2", "running", "unhealthy", probe="pg_isready: no response"),
            ServiceState("api", "c3", "running", None),
        ],
        {},
    )
    coded = {s.service: (s.reason_code, s.reason_params) for s in look.services}
    assert coded == {
        "web": ("exited_code", {"exit_code": "137"}),
        "db": ("unhealthy_probe", {"probe": "pg_isready: no response"}),
        "api": ("missing", {"count": "1", "expected": "2"}),
    }
    back = RolledBackData(from_revision=2, to_revision=1, revision=3, reason="service web exited with code 3; last log lines:\nboom")
    assert (back.reason_code, back.reason_params) == ("service_exited", {"service": "web", "exit_code": "3"})


def _parts(params: dict[str, str], name: str) -> list[tuple[str, dict[str, str]]]:
    """A nested detail's parts as ``error_words`` and ``line_words`` give them flat (``detail.0.code``...)."""
    parts = []
    for i in range(int(params.get(f"{name}.parts", 0))):
        prefix = f"{name}.{i}."
        values = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix) and k != f"{prefix}code"}
        parts.append((params[f"{prefix}code"], values))
    return parts


def test_a_nested_detail_gets_the_codes_of_its_parts() -> None:
    """What the watcher, the health gate and the runner's preparation write inside a sentence is worded too:
    its parts' codes and values, as their writers produce them (no engine, no database)."""
    from backend.app.core import security
    from backend.app.core.exceptions import WindFlowError
    from backend.app.engines.base import ServiceState
    from backend.app.engines.health_gate import HealthGate
    from backend.app.services.deployments import context
    from backend.app.services.deployments.watch import Expected, judge
    from backend.tests.conftest import make_settings

    # the watcher's detail of a degraded revision (a revision row has no service_health to word it from)
    look = judge(
        Expected({"web": 1, "db": 1}),
        [ServiceState("web", "c1", "exited", None, exit_code=137), ServiceState("db", "c2", "running", "unhealthy", probe="no")],
        {},
    )
    code, params = error_words(f"revision 2 is degraded: {look.message}")
    assert code == "revision_health"
    assert sorted(_parts(params, "detail")) == [
        ("exited_code", {"service": "web", "exit_code": "137"}),
        ("unhealthy_probe", {"service": "db", "probe": "no"}),
    ]
    # the health gate's container states, joined as docker_base's waiting lines join them
    clock = iter([0.0, 0.0, 0.0, 1.0]).__next__
    gate = HealthGate(stable_seconds=5.0, clock=clock)
    running = {"State": {"Status": "running", "StartedAt": "t"}}
    checked = {
        "State": {"Status": "running", "StartedAt": "t", "Health": {"Status": "starting"}},
        "Config": {"Healthcheck": {"Test": ["CMD", "true"]}},
    }
    states = {
        gate.judge("a", {"State": {"Status": "created"}}).waiting,
        gate.judge("b", checked).waiting,
        gate.judge("c", running).waiting,
    }
    code, params = line_words(f"waiting for app: 0/3 ready, {', '.join(sorted(states))}")
    assert code == "waiting_ready" and len(states) == 3
    assert sorted(_parts(params, "states")) == [
        ("health", {"health": "starting"}),
        ("settling", {"seconds": "5.0"}),
        ("status", {"status": "created"}),
    ]
    # the health gate's timeout names what it still waited for, each service with its states (WaitReport.expired)
    from backend.app.engines.docker_base import WaitReport

    report = WaitReport(type("Spec", (), {"health_timeout": 60.0})(), {"app": 1, "db": 1}, None)
    report.waiting = {"app": "0/1 ready, running (starting)", "db": "no container"}
    code, params = error_words(str(report.expired()))
    assert code == "services_not_ready" and params["seconds"] == "60"
    assert _parts(params, "detail") == [
        (
            "not_ready",
            {
                "service": "app",
                "ready": "0",
                "count": "1",
                "states": "running (starting)",
                "states.parts": "1",
                "states.0.code": "health",
                "states.0.health": "starting",
            },
        ),
        ("no_container", {"service": "db"}),
    ]
    # why a deployment could not be prepared, as load_context's pieces raise it
    settings = make_settings("sqlite+aiosqlite://")
    raised = []
    for attempt in (
        lambda: context.snapshot_compose(settings, type("D", (), {"rendered_compose": None})()),
        lambda: context.stack_timeout({"x-windflow": {"up_timeout": 0}}, "up_timeout"),
        lambda: security.decrypt_secret(settings, "not-a-token"),
    ):
        with pytest.raises((WindFlowError, ValueError)) as caught:
            attempt()
        raised.append(_parts(error_words(f"cannot prepare the deployment: {caught.value}")[1], "detail"))
    assert raised == [
        [("no_snapshot", {})],
        [("invalid_timeout", {"key": "up_timeout", "max": "86400", "example": "{up_timeout: 600}"})],
        [("cannot_decrypt", {})],
    ]
    # a detail not made of sentences WindFlow words has no parts: the client quotes it
    assert "detail.parts" not in error_words("cannot prepare the deployment: disk full")[1]
    assert "detail.parts" not in error_words("revision 3 is degraded: web exited")[1]


def test_why_a_revision_or_its_automatic_rollback_failed_gets_its_parts() -> None:
    """The detail of ``rolling_back``, ``rollback_why`` and ``automatic_rollback_failed(_after)`` is a deployment's
    error_message: its sentence's code and values, with that sentence's own parts, as the writers produce them
    (the health gate's verdict as ``docker_base._fail`` words it, the watcher's judge as ``watch.py`` words it,
    ``WaitReport.expired``, and ``Rollout``'s own log line and failure message; no engine, no database)."""
    from backend.app.engines.base import ServiceState
    from backend.app.engines.docker_base import WaitReport
    from backend.app.engines.health_gate import HealthGate
    from backend.app.models import RevisionReason
    from backend.app.services.deployments.revisions import Rollout, first_line
    from backend.app.services.deployments.watch import Expected, judge

    verdict = HealthGate(stable_seconds=5.0).judge("c1", {"State": {"Status": "exited", "ExitCode": 1}})
    gate_failed = f"service web {verdict.reason}; last log lines:\nboom"  # as docker_base._fail words it
    look = judge(Expected({"web": 1}), [ServiceState("web", "c1", "exited", None, exit_code=137)], {})
    watch_failed = f"nothing of revision 2 runs any more: {look.message}"  # as watch.py words it
    report = WaitReport(type("Spec", (), {"health_timeout": 60.0})(), {"db": 1}, None)
    report.waiting = {"db": "no container"}
    timed_out = str(report.expired())

    rollout = Rollout(3, RevisionReason.AUTOMATIC_ROLLBACK, rollback_of=1, failed=2, failed_message=gate_failed)
    code, params = line_words(rollout.opening()[1])
    assert code == "rollback_why" and params["failed"] == "2"
    assert _parts(params, "detail") == [("service_exited", {"service": "web", "exit_code": "1"})]

    # runner._roll_back's line, the watcher's failure quoted: the services inside it are parts of that part
    code, params = line_words(
        f"Revision 2 failed: {first_line(watch_failed)}; rolling back to revision 1, the last that passed the health gate"
    )
    assert code == "rolling_back" and (params["failed"], params["of"]) == ("2", "1")
    [(part, values)] = _parts(params, "detail")
    assert (part, values["revision"]) == ("watch_down", "2")
    assert _parts(values, "detail") == [("exited_code", {"service": "web", "exit_code": "137"})]

    # the rollback timed out after the revision's own service had failed: both details in parts
    code, params = error_words(rollout.failure_message(timed_out))
    assert code == "automatic_rollback_failed_after" and params["failed"] == "2"
    [(part, values)] = _parts(params, "detail")
    assert (part, values["seconds"]) == ("services_not_ready", "60")
    assert _parts(values, "detail") == [("no_container", {"service": "db"})]
    assert _parts(params, "failed_detail") == [("service_exited", {"service": "web", "exit_code": "1"})]

    # the failed revision is unknown (a rollback of a deployment made before revisions were recorded)
    alone = Rollout(3, RevisionReason.AUTOMATIC_ROLLBACK, rollback_of=1)
    code, params = error_words(alone.failure_message(gate_failed))
    assert code == "automatic_rollback_failed"
    assert _parts(params, "detail") == [("service_exited", {"service": "web", "exit_code": "1"})]

    # a detail that is none of WindFlow's sentences has no parts: the client quotes it
    assert "detail.parts" not in line_words("Why: revision 2 failed: disk full")[1]
    assert "detail.parts" not in error_words("automatic rollback to revision 1 failed: disk full")[1]


def test_a_tagged_line_gets_its_sentences_code_and_the_tag() -> None:
    """``[WATCH]``, ``[WAITING]`` and ``[RECOVERY]`` lines: the sentence after the tag is classified (with its
    nested parts), the tag is the ``tag`` parameter; texts as the watcher, the dispatcher and the orphan
    recovery write them (the dispatcher's from its own function; the others are f-strings inside transactions)."""
    from backend.app.engines.base import ServiceState
    from backend.app.runtime.dispatch import Route, _unserved_line
    from backend.app.services.deployments.watch import Expected, judge

    look = judge(Expected({"web": 1}), [ServiceState("web", "c1", "exited", None, exit_code=137)], {})
    code, params = line_words(f"[WATCH] nothing of revision 1 runs any more: {look.message}")  # watch.py
    assert (code, params["tag"], params["revision"]) == ("watch_down", "WATCH", "1")
    assert _parts(params, "detail") == [("exited_code", {"service": "web", "exit_code": "137"})]
    code, params = line_words(f"[WATCH] revision 2 is degraded: {look.message}")
    assert (code, params["tag"], params["health"]) == ("revision_health", "WATCH", "degraded")
    assert _parts(params, "detail") == [("exited_code", {"service": "web", "exit_code": "137"})]
    assert line_words("[WATCH] every service of revision 3 is up and healthy: running again") == (
        "watch_running_again",
        {"tag": "WATCH", "revision": "3"},
    )
    assert line_words("[WATCH] every service of revision 3 is up again") == ("watch_up_again", {"tag": "WATCH", "revision": "3"})

    waiting = _unserved_line(Route(queue="deploy.t1", placed=True, target_id="t1", target_name="edge-1"))
    assert line_words(waiting) == ("no_live_worker", {"tag": "WAITING", "target": "edge-1"})

    # orphans.reclaim_orphan: the executor's lease expired on the last attempt, the last good revision again
    lost = "executor lost (lease expired) after 3 attempt(s)"
    assert error_words(lost) == ("executor_lost_after", {"attempts": "3"})
    code, params = line_words(
        f"[RECOVERY] revision 2 failed: {lost}; rolling back to revision 1, the last that passed the health gate, as revision 3"
    )
    assert code == "recovery_rolling_back"
    assert (params["tag"], params["failed"], params["of"], params["revision"]) == ("RECOVERY", "2", "1", "3")
    assert _parts(params, "detail") == [("executor_lost_after", {"attempts": "3"})]

    assert line_words("[OTHER] Deployment is running") == (None, {})
    assert line_words("app | [WATCH] every service of revision 3 is up again") == (None, {})


@pytest.mark.parametrize("code", ["executor_lost_running", "executor_lost_retrying", "executor_lost_failed", "automatic_rollback_failed"])
def test_a_status_history_reason_after_recovery_gets_the_reasons_code(code) -> None:
    """``orphans.reclaim_orphan`` logs ``[RECOVERY] {the status change's reason}``: the line is ``status_reason``,
    the reason's own code (``history_reasons``) under ``reason.0.code``."""
    from backend.app.services.deployments import history_reasons

    reason = history_reasons.text(code)
    assert line_words(f"[RECOVERY] {reason}") == (
        "status_reason",
        {"tag": "RECOVERY", "reason": reason, "reason.parts": "1", "reason.0.code": code},
    )
    assert history_reasons.classify(reason) == (code, {})
    assert line_words(reason) == (None, {})  # a reason only after [RECOVERY]: never a container's line


def test_a_history_reason_with_parameters_after_recovery_and_none_of_them() -> None:
    from backend.app.services.deployments import history_reasons

    reason = history_reasons.text("automatic_rollback", failed=2, of=1, revision=3)
    code, params = line_words(f"[RECOVERY] {reason}")
    assert code == "status_reason" and _parts(params, "reason") == [("automatic_rollback", {"failed": "2", "of": "1", "revision": "3"})]
    assert line_words("[RECOVERY] something nobody wrote") == (None, {})
    assert line_words("[WATCH] executor lost, no attempts left") == (None, {})  # a reason only after [RECOVERY]


def test_recoverys_timeout_and_retry_lines_get_their_codes() -> None:
    """The texts recovery writes (``recovery.py``): a pending deployment's timeout (an error_message, and the line
    of its automatic rollback), and a stuck deployment dispatched again after ``[RETRY]``."""
    from backend.app.services.deployments.recovery import dispatched_again_line, timeout_message, timeout_rollback_line

    message = timeout_message(30)
    assert error_words(message) == ("recovery_timed_out", {"minutes": "30"})
    assert line_words(message) == ("recovery_timed_out", {"minutes": "30"})
    assert line_words(timeout_rollback_line(message, failed=2, of=1, revision=3)) == (
        "timeout_rolling_back",
        {"minutes": "30", "failed": "2", "of": "1", "revision": "3"},
    )
    assert line_words(dispatched_again_line(1, 3)) == ("dispatched_again", {"tag": "RETRY", "attempt": "2", "max_attempts": "3"})
    # the timeout of an automatic rollback (Rollout.failure_message): its detail is the timeout's parts
    from backend.app.models import RevisionReason
    from backend.app.services.deployments.revisions import Rollout

    rollout = Rollout(3, RevisionReason.AUTOMATIC_ROLLBACK, rollback_of=1)
    code, params = error_words(rollout.failure_message(timeout_message(0.5)))
    assert code == "automatic_rollback_failed" and _parts(params, "detail") == [("recovery_timed_out", {"minutes": "0.5"})]
