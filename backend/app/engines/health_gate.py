"""The health gate: when a rollout's containers count as up, and when they have failed.

A rollout is ``running`` only once every expected container of every service is up *and has stayed up*
for a settle window, measured on WindFlow's clock across polls (a remote engine's clock does not matter):

* a container **without a healthcheck** must run for ``stable_seconds`` (``DEPLOYMENT_STABLE_SECONDS``);
* a container **with a healthcheck** (the compose file's or the image's, as the engine reports it): its
  healthcheck is its window. Docker runs the first probe one ``interval`` after the start, so a healthy
  container has stayed up at least that long and passed its check; it must turn healthy within its bound,
  ``start_period + retries × (interval + timeout)`` (Docker's defaults for what is not set: 30 s, 30 s,
  0 s, 3), the time Docker itself needs to call it unhealthy.

It fails, at once, when a container exits (a one-shot dependency that exits 0 is done, not failed), is
restarting, restarted since the gate first saw it (its restart count or start time changed), or is
unhealthy; or when its healthcheck has not passed within its bound. :class:`Verdict` says which, with the
exit code or the last probe's output; the driver adds the container's last log lines.

Pure logic over the engine's inspection data (``container.attrs``): the drivers poll, this judges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Docker's own defaults for a healthcheck field left unset (or 0).
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
#: Slack over a healthcheck's bound: the engine's probes are scheduled, not exact.
BOUND_SLACK = 2.0
_NS = 1_000_000_000


@dataclass(frozen=True)
class Healthcheck:
    interval: float
    timeout: float
    start_period: float
    retries: int

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> Healthcheck | None:
        """The container's effective healthcheck (``Config.Healthcheck``), None without one (or ``NONE``)."""
        config = (attrs.get("Config") or {}).get("Healthcheck") or {}
        test = config.get("Test") or []
        if not test or test[0] == "NONE":
            return None
        return cls(
            interval=(config.get("Interval") or 0) / _NS or DEFAULT_INTERVAL,
            timeout=(config.get("Timeout") or 0) / _NS or DEFAULT_TIMEOUT,
            start_period=(config.get("StartPeriod") or 0) / _NS,
            retries=int(config.get("Retries") or 0) or DEFAULT_RETRIES,
        )

    @property
    def bound(self) -> float:
        """Seconds within which it must turn healthy: what Docker needs to call it unhealthy."""
        return self.start_period + self.retries * (self.interval + self.timeout)


@dataclass
class _Seen:
    """What the gate remembers of one container since it first saw it."""

    first_seen: float
    started_at: str
    restarts: int
    up_since: float | None = None  # running since, on our clock (a container without a healthcheck)


@dataclass(frozen=True)
class Verdict:
    """One container's state for the gate: ``ready``, still ``waiting`` (with what it waits for), or ``failed``
    (``reason``: "exited with code 3", "is unhealthy (last check: ...)")."""

    ready: bool = False
    failed: bool = False
    reason: str = ""
    waiting: str = ""


def last_probe(attrs: Mapping[str, Any]) -> str:
    """The last healthcheck probe's exit code and output, as one line."""
    probes = (((attrs.get("State") or {}).get("Health") or {}).get("Log")) or []
    if not probes:
        return ""
    probe = probes[-1]
    output = " ".join((probe.get("Output") or "").split())
    code = probe.get("ExitCode")
    return f"exit {code}" + (f": {output[:300]}" if output else "") if code is not None else output[:300]


@dataclass
class HealthGate:
    """Judges each container of a rollout, poll after poll (one gate per wait)."""

    stable_seconds: float
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def judge(self, container_id: str, attrs: Mapping[str, Any], *, one_shot: bool = False) -> Verdict:
        now = self.clock()
        state = attrs.get("State") or {}
        status = state.get("Status", "")
        exit_code = state.get("ExitCode")
        restarts = int(attrs.get("RestartCount") or 0)
        started_at = str(state.get("StartedAt") or "")
        seen = self._seen.get(container_id)
        if seen is None:
            seen = self._seen[container_id] = _Seen(now, started_at, restarts)

        if status in ("exited", "dead"):
            if one_shot and exit_code == 0:
                return Verdict(ready=True)
            return Verdict(failed=True, reason=f"exited with code {exit_code}")
        if status == "restarting":
            return Verdict(failed=True, reason=f"is restarting (it exited with code {exit_code})")
        if restarts > seen.restarts or (started_at and started_at != seen.started_at):
            # Docker resets ``State.ExitCode`` when the container starts again: once it runs, the code of the run
            # that ended is gone (0 here says nothing); its last lines, which the caller appends, tell what happened
            if exit_code:
                how = f" (it exited with code {exit_code})"
            elif restarts > seen.restarts:
                how = f" ({restarts - seen.restarts} restart(s))"
            else:
                how = " (it started again)"
            return Verdict(failed=True, reason=f"restarted during the health gate{how}")
        if status != "running":
            return Verdict(waiting=status or "unknown")

        check = Healthcheck.of(attrs)
        if check is None:
            seen.up_since = seen.up_since if seen.up_since is not None else now
            left = self.stable_seconds - (now - seen.up_since)
            return Verdict(ready=True) if left <= 0 else Verdict(waiting=f"running, settling ({left:.1f}s left)")
        health = (state.get("Health") or {}).get("Status")
        if health == "unhealthy":
            probe = last_probe(attrs)
            return Verdict(failed=True, reason="is unhealthy" + (f" (last check: {probe})" if probe else ""))
        if health == "healthy":
            return Verdict(ready=True)
        if now - seen.first_seen > check.bound + BOUND_SLACK:
            probe = last_probe(attrs)
            return Verdict(
                failed=True, reason=f"did not pass its healthcheck within {check.bound:g}s" + (f" (last check: {probe})" if probe else "")
            )
        return Verdict(waiting=f"running ({health or 'no health status yet'})")
