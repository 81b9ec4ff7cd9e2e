"""What WindFlow itself says about a deployment, as stable codes and parameters: its ``error_message`` and the
lines it writes into the deployment's log.

Writers store these as English text (the ``error_message`` column, the log lines), which API and log consumers
keep reading as they are. The API and the real-time events give each of them, next to the text, the ``code`` of
the sentence it is and the ``params`` it quotes, so that a client words it in its own language (the web UI:
``frontend/src/i18n/deploymentWords.ts``; ``backend/tests/unit/test_ui_words.py`` fails when a code lacks its
words there). The code is read from the text against :data:`ERRORS` and :data:`LOG_LINES`, the one list of these
sentences, as :data:`HISTORY_REASONS` is the one list of the reasons a status change is recorded with (read by
:mod:`backend.app.services.deployments.history_reasons`, their writers' module); a text that matches none has no
code (a client shows it as it is).

Parameters named in :data:`QUOTED` are other programs' words (Docker's, docker compose's, a container's output,
a probe's) or a detail WindFlow quotes in English: a client shows them as quoted output, never translated. Only
the first line of a text is matched; the lines after it (a failed service's last log lines) are quoted output.

A container could print a line that reads like one of WindFlow's; it is then worded like one, as the English
text already reads like one: the log shows container output prefixed with its service (``web | ...``).
"""

from __future__ import annotations

import re

#: code -> the English sentence of a deployment's ``error_message`` (``{name}``: a parameter), most specific first.
ERRORS: dict[str, str] = {
    "cancelled_by_user": "Cancelled by user",
    "executor_lost_retrying": "executor lost (lease expired); retrying",
    "executor_lost_after": "executor lost (lease expired) after {attempts} attempt(s)",
    "policy_refused": "refused by the compose policy: {detail}",
    "cannot_prepare": "cannot prepare the deployment: {detail}",
    "unexpected_error": "unexpected error: {detail}",
    "service_exited": "service {service} exited with code {exit_code}",
    "service_restarting": "service {service} is restarting (it exited with code {exit_code})",
    "service_restarted_exited": "service {service} restarted during the health gate (it exited with code {exit_code})",
    "service_restarted_count": "service {service} restarted during the health gate ({count} restart(s))",
    "service_restarted": "service {service} restarted during the health gate (it started again)",
    "service_unhealthy_probe": "service {service} is unhealthy (last check: {probe})",
    "service_unhealthy": "service {service} is unhealthy",
    "healthcheck_timeout_probe": "service {service} did not pass its healthcheck within {seconds}s (last check: {probe})",
    "healthcheck_timeout": "service {service} did not pass its healthcheck within {seconds}s",
    "services_not_ready": "services not ready after {seconds}s: {detail}",
    "tasks_still_running": "tasks still running after {seconds}s: {services}",
    "service_no_image": "service {service} has no image (WindFlow deploys images, it does not build them)",
    "engine_unreachable": "cannot reach Docker engine {endpoint}: {detail}",
    "engine_timeout": "Docker engine {endpoint} did not answer in time: {detail}",
    "engine_stopped_pulling": "the Docker engine stopped answering while pulling {image}: {detail}",
    "invalid_compose_document": "invalid compose document: {output}",
    "invalid_stack_document": "invalid stack document: {output}",
    "compose_up_failed": "compose up failed: {output}",
    "stack_deploy_failed": "docker stack deploy failed: {output}",
    "could_not_remove": "could not remove {names}",
    "watch_down": "nothing of revision {revision} runs any more: {detail}",
    "revision_health": "revision {revision} is {health}: {detail}",
    "automatic_rollback_failed_after": "automatic rollback to revision {of} failed: {detail}; revision {failed} had failed: {failed_detail}",
    "automatic_rollback_failed": "automatic rollback to revision {of} failed: {detail}",
    "recovery_timed_out": "Timeout: still pending after {minutes} minutes",
    "delete_failed": "Delete failed: {detail}; delete it again to retry",
    "stop_failed": "Stop failed: {detail}",
}

#: code -> the English sentence of a line WindFlow writes into a deployment's log (its errors are :data:`ERRORS`').
LOG_LINES: dict[str, str] = {
    "step": "[{number}/{total}] {title}",
    "started": "Deployment started (revision {revision}, attempt {attempt}/{max_attempts}, executor {executor})",
    "running": "Deployment is running",
    "retrying": "Transient failure: retrying in {seconds}s (attempt {attempt}/{max_attempts})",
    "giving_up": "Giving up after {attempts} attempt(s)",
    "cancelled": "Cancelled",
    "cancelled_removing_kept": "Cancelled during step {step}/{total} ({title}), stopped there: removing what this deployment created (named volumes are kept)",
    "cancelled_removing_step": "Cancelled during step {step}/{total} ({title}), stopped there: removing what this deployment created",
    "cancelled_removing_kept_volumes": "Cancelled: removing what this deployment created (named volumes are kept)",
    "cancelled_removing": "Cancelled: removing what this deployment created",
    "clean_up_failed": "Clean-up after cancel failed: {detail}",
    "removing_failed_revision": "Removing the containers of revision {revision}: nothing of a failed revision keeps running (named volumes are kept)",
    "could_not_remove_them": "Could not remove them: {detail}",
    "lease_lost": "This executor lost its lease (deployment is now {status}); stopping here",
    # a stop's or a delete's teardown (services/deployments/lifecycle.py)
    "stopping": "Stopping (attempt {attempt}/{max_attempts})",
    "deleting_kept_volumes": "Deleting: removing containers, networks and volumes (named volumes are kept) (attempt {attempt}/{max_attempts})",
    "deleting": "Deleting: removing containers, networks and volumes (attempt {attempt}/{max_attempts})",
    "retrying_stop": "Transient failure: retrying the stop in {seconds}s",
    "retrying_delete": "Transient failure: retrying the delete in {seconds}s",
    "stopped": "Stopped",
    "teardown_lease_lost": "This executor lost its lease; stopping here",
    # after a tag (:data:`TAGS`): the watcher's, the dispatcher's and the orphan recovery's own lines
    "watch_running_again": "every service of revision {revision} is up and healthy: running again",
    "watch_up_again": "every service of revision {revision} is up again",
    "no_live_worker": "no live worker serves target {target}: the deployment waits in the target's queue until a worker that declares it (WORKER_TARGETS) runs",
    "status_reason": "{reason}",  # a status-history reason (:data:`HISTORY_REASONS`), only after [RECOVERY]
    "dispatched_again": "Dispatched again by recovery (attempt {attempt}/{max_attempts})",
    "timeout_rolling_back": "Timeout: still pending after {minutes} minutes: revision {failed} failed; rolling back to revision {of}, the last that passed the health gate, as revision {revision}",
    "recovery_rolling_back": "revision {failed} failed: {detail}; rolling back to revision {of}, the last that passed the health gate, as revision {revision}",
    "rolling_back": "Revision {failed} failed: {detail}; rolling back to revision {of}, the last that passed the health gate",
    "automatic_rollback_opening": "--- Automatic rollback to revision {of} (the last that passed the health gate), as revision {revision} ---",
    "rollback_opening": "--- Rollback to revision {of}, as revision {revision} ---",
    "rollback_why": "Why: revision {failed} failed: {detail}",
    "rollback_images": "Images pinned to what revision {of} recorded: {images}",
    "rollback_no_images": "Revision {of} recorded no image digests: the images its document names are used",
    "waiting_none": "waiting for {service}: no container",
    "waiting_ready": "waiting for {service}: {ready}/{count} ready, {states}",
    "waiting_for": "waiting for {service}: {detail}",
    "all_running": "all services are running: {services}",
    # the engines' own lines (docker compose's and Docker's output is quoted as it is, without a code)
    "compose_valid_at_creation": "compose document is valid (checked by docker compose config at creation)",
    "compose_valid_in_process": "compose document is valid (checked in process; compose up is the final judge)",
    "compose_valid": "compose document is valid",
    "stack_valid": "stack document is valid",
    "wrote_project": "wrote {file} of project {project} ({count} services, labelled {label})",
    "image_present": "image {image} is present",
    "image_pulling_with_auth": "image {image} is not present locally, pulling it with the organisation's credentials for {registry}",
    "image_pulling": "image {image} is not present locally, pulling it",
    "image_pulled": "pulled image {image} ({facts})",
    "image_digest_pinned": "{service}: image {image} is {digest} (pinned)",
    "image_digest": "{service}: image {image} is {digest}",
    "removing": "removing {names}",
    "could_not_remove_yet": "could not remove {names} yet: {detail}",
    "compose_down_failed": "compose down failed ({output}); removing by label",
    "cannot_write_project": "cannot write the project directory ({detail}); removing by label",
    "stack_rm_failed": "docker stack rm failed ({output}); removing by label",
    "swarm_manager": "target is a swarm manager; networks are created by `docker stack deploy`",
    "nodes_registry_auth": "the nodes pull with the organisation's registry credentials (--with-registry-auth)",
    "global_service": "{service} is a global service: it cannot be scaled to 0",
    "scaling_down": "scaling {service} from {replicas} to 0",
    "scaling_back": "scaling {service} back to {replicas}",
    "tasks_stopped": "every task is stopped",
}

#: code -> why the watcher says a service is not up (``ServiceHealthData.reason``, after the service's name).
SERVICE_REASONS: dict[str, str] = {
    "unhealthy_probe": "is unhealthy (last check: {probe})",
    "unhealthy": "is unhealthy",
    "restarted_since": "restarted {count} time(s) since the last look ({total} in all)",
    "restarting_exited": "is restarting (it exited with code {exit_code}; {restarts} restart(s))",
    "restarting": "is restarting (it exited; {restarts} restart(s))",
    "exited_code": "exited with code {exit_code}",
    "exited": "exited",
    "state_exited_code": "{state} (exited with code {exit_code})",
    "state_exited": "{state} (exited)",
    "starting": "is starting",
    "is_state": "is {state}",
    "missing": "has {count} of its {expected} container(s)",
}

#: code -> why a deployment could not even be prepared (``cannot_prepare``'s ``detail``: what loading its target,
#: values and snapshot raised; ``services/deployments/context.py``, ``core/security.py``).
PREPARE_DETAILS: dict[str, str] = {
    "target_not_found": "the deployment's target no longer exists",
    "target_elsewhere": "target {target} is the engine of host {host}; this process runs on host {here} (its work runs on the workers of that host: WORKER_TARGETS=local)",
    "no_snapshot": "this deployment has no rendered compose snapshot",
    "invalid_timeout": "x-windflow.{key} must be a number of seconds between 1 and {max} (x-windflow is a mapping, e.g. x-windflow: {example})",
    "cannot_decrypt": "cannot decrypt a stored secret: was SECRET_KEY changed?",
}

#: code -> a container's state as the health gate's waiting lines name it (``waiting_ready``'s ``states``, joined
#: with ", "; ``engines/health_gate.py``): ``status`` and ``health`` are the engine's own words (``created``,
#: ``starting``...), which a client words from their fixed vocabulary.
CONTAINER_STATES: dict[str, str] = {
    "settling": "running, settling ({seconds}s left)",
    "no_health_yet": "running (no health status yet)",
    "health": "running ({health})",
    "status": "{status}",
}

#: code -> a service the health gate still waited for when its time ran out (``services_not_ready``'s ``detail``,
#: joined with "; "; ``engines/docker_base.py`` ``WaitReport.expired``); ``states`` as in ``waiting_ready``.
WAITING_DETAILS: dict[str, str] = {
    "no_container": "{service} (no container)",
    "not_ready": "{service} ({ready}/{count} ready, {states})",
}

#: code -> the English reason a status change is recorded with (the history's ``reason`` column, the server log,
#: ``[RECOVERY]`` lines); ``{name}`` is a parameter. Written and read through
#: :mod:`backend.app.services.deployments.history_reasons`; a client words each by its code (the web UI:
#: ``history.<code>`` in ``frontend/src/i18n/fr.ts``).
HISTORY_REASONS: dict[str, str] = {
    "created": "created",
    "claimed": "claimed by {executor}",
    "running": "all services running",
    "retry_scheduled": "transient failure, retry in {seconds}s",
    "failed": "deployment failed",
    "preparation_failed": "preparation failed",
    "stopped_by_user": "stopped by user",
    "stop_requested": "stop requested",
    "stopped": "stopped",
    "stop_failed": "stop failed",
    "delete_requested": "delete requested",
    "delete_failed": "delete failed",
    "cancelled_by_user": "cancelled by user",
    "start": "start",
    "redeploy": "redeploy",
    "retry": "retry",
    "recovery_timeout": "recovery timeout",
    "executor_lost_running": "executor lost; containers found running",
    "executor_lost_retrying": "executor lost (lease expired)",
    "executor_lost_failed": "executor lost, no attempts left",
    "revision_update": "revision {revision}: update",
    "revision_rollback": "revision {revision}: rollback to revision {of}",
    "automatic_rollback": "revision {failed} failed: automatic rollback to revision {of} as revision {revision}",
    "automatic_rollback_failed": "automatic rollback failed",
    "watch_down": "watcher: nothing of it runs any more",
    "watch_running": "watcher: every container up and healthy again",
}

#: The tags some writers put before a sentence (``[WATCH] revision 2 is degraded: ...``: ``services/deployments/watch.py``,
#: ``runtime/dispatch.py``, ``services/deployments/orphans.py``, ``services/deployments/recovery.py``): a tagged
#: line's code is its sentence's, the tag its ``tag`` parameter (a client shows the tag, then the sentence in its
#: own words). A status-history reason after ``[RECOVERY]`` is ``status_reason``, the reason's own code and
#: parameters under ``reason.0.*`` (:func:`_nest`).
TAGS = ("WATCH", "WAITING", "RECOVERY", "RETRY")

#: Parameters that quote other programs' words or an English detail (``states``: the engine's container states, as
#: the health gate saw them): shown quoted, never translated.
QUOTED = frozenset({"detail", "output", "probe", "failed_detail", "states"})


Table = tuple[tuple[str, ...], tuple[str, ...], list[tuple[str, str, re.Pattern[str]]]]


def _compile(templates: dict[str, str]) -> Table:
    compiled = []
    for code, template in templates.items():
        parts = re.split(r"\{(\w+)\}", template)
        regex = "".join(f"(?P<{part}>.+?)" if i % 2 else re.escape(part) for i, part in enumerate(parts))
        # what a line must start with, or (a sentence that starts with a parameter) contain, before its pattern
        # is tried: most log lines are containers' output, and a str test each rules them out at once
        needle = parts[0] or max(parts[2::2], key=len)
        compiled.append((code, needle, re.compile(f"^{regex}$")))
    prefixes = tuple({needle for code, needle, _ in compiled if templates[code].startswith(needle)})
    inner = tuple({needle for code, needle, _ in compiled if not templates[code].startswith(needle)})
    return prefixes, inner, compiled


_ERRORS = _compile(ERRORS)
_SERVICES = _compile(SERVICE_REASONS)
#: ``status_reason`` (any text) is matched only after ``[RECOVERY]``, as a reason of :data:`HISTORY_REASONS`.
_LINES = _compile({code: template for code, template in {**LOG_LINES, **ERRORS}.items() if code != "status_reason"})
_HISTORY = _compile(HISTORY_REASONS)
#: How a failed service's message announces the output on the lines after it (the log has them already).
_OUTPUT_FOLLOWS = "; last log lines:"
_TAGGED = re.compile(r"\[(" + "|".join(TAGS) + r")\] ")


def _classify(text: str | None, table: Table) -> tuple[str | None, dict[str, str]]:
    if not text:
        return None, {}
    prefixes, inner, compiled = table
    first = text.partition("\n")[0].removesuffix(_OUTPUT_FOLLOWS)
    if not first.startswith(prefixes) and not any(needle in first for needle in inner):
        return None, {}
    for code, needle, pattern in compiled:
        if needle not in first:
            continue
        match = pattern.match(first)
        if match:
            return code, match.groupdict()
    return None, {}


_PREPARE = _compile(PREPARE_DETAILS)
_STATES = _compile(CONTAINER_STATES)
_WAITING = _compile(WAITING_DETAILS)
_STATE_TOKEN = re.compile(r"\s*(running, settling \([^)]*\)|[^,]+)")
_SERVICE_SAID = re.compile(r"^service (\S+) (.+)$")
#: Sentences whose ``detail`` is a deployment's error_message (:data:`ERRORS`): why a revision failed before its
#: automatic rollback (``runner._roll_back``, ``revisions.Rollout.opening``, ``orphans.reclaim_orphan``), why that rollback failed
#: (``Rollout.failure_message``, whose ``failed_detail`` is the failed revision's error_message too).
_ROLLBACK = frozenset(
    {"rolling_back", "recovery_rolling_back", "rollback_why", "automatic_rollback_failed_after", "automatic_rollback_failed"}
)


def _parts(code: str, name: str, value: str) -> list[tuple[str, dict[str, str]]] | None:
    """The sentences a parameter is made of (a nested detail), or None when it is not one WindFlow words."""
    if name == "states" and code == "waiting_ready":
        tokens = [t.strip() for t in _STATE_TOKEN.findall(value)]
        return [_classify(t, _STATES) for t in tokens]
    if name == "detail" and code in ("watch_down", "revision_health"):
        parts = []
        for said in value.split("; "):
            match = _SERVICE_SAID.match(said)
            if not match:
                return None
            reason, params = service_reason_words(match.group(2))
            parts.append((reason, {"service": match.group(1), **params}))
        return parts
    if name == "reason" and code == "status_reason":
        return [_classify(value, _HISTORY)]
    if name == "detail" and code == "cannot_prepare":
        return [_classify(value, _PREPARE)]
    if (name == "detail" and code in _ROLLBACK) or (name == "failed_detail" and code == "automatic_rollback_failed_after"):
        # why a revision failed, or why its rollback did: a deployment's error_message, with its own nested parts
        # (the watcher's services, the health gate's waits) under detail.0.detail.*
        return [_nest(*_classify(value, _ERRORS))]
    if name == "detail" and code == "services_not_ready":
        # each service's states are a nested detail of their own: their parts under detail.<i>.states.*
        parts = []
        for said in value.split("; "):
            part, values = _classify(said, _WAITING)
            if part == "not_ready":
                _nest("waiting_ready", values)  # its states' own parts, under states.*
            parts.append((part, values))
        return parts
    return None


def _nest(code: str | None, params: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """``params`` with the sentences a nested detail is made of, flat: ``<name>.parts`` (how many), then
    ``<name>.<i>.code`` and ``<name>.<i>.<param>`` for each (``detail.0.code``: ``target_not_found``). Only
    when every part has a code: otherwise the detail is quoted as it is."""
    for name, value in list(params.items()):
        parts = _parts(code or "", name, value) if code else None
        if not parts or any(part is None for part, _ in parts):
            continue
        params[f"{name}.parts"] = str(len(parts))
        for i, (part, values) in enumerate(parts):
            params[f"{name}.{i}.code"] = part
            params.update({f"{name}.{i}.{key}": v for key, v in values.items()})
    return code, params


def error_words(message: str | None) -> tuple[str | None, dict[str, str]]:
    """``(code, params)`` of a deployment's ``error_message``; ``(None, {})`` for one not in :data:`ERRORS`.
    A failed service's message ends with ``; last log lines:`` and its output on the lines after: the code is
    the first line's, the output stays in the text (a client quotes the lines after the first). A nested detail
    WindFlow words (the watcher's services, why a deployment could not be prepared, why an automatic rollback
    failed) adds its parts: :func:`_nest`."""
    return _nest(*_classify(message, _ERRORS))


def line_words(line: str) -> tuple[str | None, dict[str, str]]:
    """``(code, params)`` of one log line WindFlow wrote (one of :data:`LOG_LINES` or :data:`ERRORS`), with the
    parts of a nested detail (a waiting line's container states, why a revision failed before its rollback):
    :func:`_nest`. A line after one of :data:`TAGS` is its sentence's, with the tag as ``tag``; after
    ``[RECOVERY]``, a status-history reason is ``status_reason`` (the reason's code under ``reason.0.code``)."""
    tagged = _TAGGED.match(line)
    if tagged is None:
        return _nest(*_classify(line, _LINES))
    sentence = line[tagged.end() :]
    code, params = _nest(*_classify(sentence, _LINES))
    if code is None and tagged.group(1) == "RECOVERY" and history_reason_words(sentence)[0]:
        code, params = _nest("status_reason", {"reason": sentence})
    return (code, {"tag": tagged.group(1), **params}) if code else (None, {})


def history_reason_words(reason: str | None) -> tuple[str | None, dict[str, str]]:
    """``(code, params)`` of a status change's reason; ``(None, {})`` for one not in :data:`HISTORY_REASONS`."""
    return _classify(reason, _HISTORY)


def service_reason_words(reason: str | None) -> tuple[str | None, dict[str, str]]:
    """``(code, params)`` of why the watcher says a service is not up; ``(None, {})`` for another text."""
    return _classify(reason, _SERVICES)
