"""Persisted deployment log lines and progress.

Every line gets a per-deployment ``seq`` before it is published, so a client that reconnects with the last
``seq`` it saw can fetch exactly what it missed (``GET /deployments/{id}/logs?since_seq=N``). Lines are
redacted before they are stored, by the deployment's own redactor (its secrets, its target's credentials,
``SECRET_KEY``; see :mod:`backend.app.services.deployments.redaction`), and stripped of control characters; colour
sequences (SGR) are kept, as the container wrote them (:mod:`backend.app.services.deployments.log_text`).

:class:`DeploymentLogWriter` is the documented exception to "services never commit": the runner's log
lines and progress are short, frequent writes that must reach clients while the deployment is still
running, so the writer batches them and commits each batch in its own short transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app import database
from backend.app.core.deployment_words import line_words
from backend.app.core.events import Event, EventType, ProgressData, PullProgressData, iso_utc, queue_event
from backend.app.core.exceptions import ValidationFailed
from backend.app.core.logging import Redactor
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentLog, LogLevel
from backend.app.services import pagination
from backend.app.services.deployments.log_text import redact_keeping_colours

logger = logging.getLogger(__name__)
MAX_LINE_LENGTH = 8000
#: Largest sequence number (a signed 64-bit column); a larger ``since_seq`` is a 422, not a database error.
MAX_SEQ = 2**63 - 1
LOGS_IN_ORDER = pagination.Ordering("logs", (DeploymentLog.seq,))


@dataclass(frozen=True)
class LogLine:
    seq: int
    timestamp: datetime
    level: LogLevel
    message: str

    def to_dict(self) -> dict:
        line = {"seq": self.seq, "timestamp": iso_utc(self.timestamp), "level": str(self.level), "message": self.message}
        code, params = line_words(self.message)  # a sentence WindFlow wrote: its code, for a client's own words
        if code is not None:
            line["code"], line["params"] = code, params
        return line


_GENERIC = Redactor()


async def append_logs(
    session: AsyncSession,
    *,
    deployment_id: str,
    lines: list[tuple[LogLevel, str, datetime]],
    redactor: Redactor | None = None,
) -> list[LogLine]:
    """Store ``lines`` with consecutive ``seq`` numbers and queue one ``DEPLOYMENT_LOGS_UPDATE`` event.

    The range of numbers is reserved with one atomic ``UPDATE ... RETURNING``, so concurrent writers for
    the same deployment never collide.
    """
    if not lines:
        return []
    reserved = await session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id)
        .values(last_log_seq=Deployment.last_log_seq + len(lines))
        .returning(Deployment.last_log_seq, Deployment.organization_id)
        .execution_options(synchronize_session=False)
    )
    row = reserved.one_or_none()
    if row is None:
        return []
    last_seq, organization_id = row
    first = last_seq - len(lines) + 1
    stored = [
        LogLine(first + i, moment, LogLevel(level), redact_keeping_colours(redactor or _GENERIC, message)[:MAX_LINE_LENGTH])
        for i, (level, message, moment) in enumerate(lines)
    ]
    # A Core executemany, not ORM objects: a runner's batch of 1,000 lines costs one round trip and no
    # per-row bookkeeping (the ORM path was the bottleneck of the log throughput benchmark).
    await session.execute(
        insert(DeploymentLog.__table__),
        [{"deployment_id": deployment_id, "seq": l.seq, "timestamp": l.timestamp, "level": l.level, "message": l.message} for l in stored],
    )
    now = utcnow()
    # The JSON form of ``LogsUpdateData`` built directly from the typed lines (as the receiver of a log
    # pointer does, event_transport.runtime._Runtime._resolve_pointer): a model per line cost ~6 us, a tenth of a line's budget.
    data = {"logs": [line.to_dict() for line in stored], "append": True, "timestamp": iso_utc(now)}
    queue_event(session, Event(EventType.DEPLOYMENT_LOGS_UPDATE, deployment_id, organization_id, data, now))
    return stored


async def append_logs_committed(
    deployment_id: str, lines: list[tuple[LogLevel, str, datetime]], *, redactor: Redactor | None = None
) -> None:
    """Append ``lines`` in a transaction of their own: for a caller whose transaction is about to roll back
    (a failed request) but whose lines say why."""
    async with database.AsyncSessionLocal() as session:
        await append_logs(session, deployment_id=deployment_id, lines=lines, redactor=redactor)
        await session.commit()


async def read_logs(session: AsyncSession, *, deployment_id: str, since_seq: int = 0, limit: int = 1000) -> list[LogLine]:
    rows = await session.execute(
        select(DeploymentLog)
        .where(DeploymentLog.deployment_id == deployment_id, DeploymentLog.seq > since_seq)
        .order_by(DeploymentLog.seq)
        .limit(limit)
    )
    return [LogLine(r.seq, r.timestamp, LogLevel(r.level), r.message) for r in rows.scalars()]


async def read_log_page(
    session: AsyncSession, *, deployment_id: str, since_seq: int = 0, cursor: str | None = None, limit: int = 1000
) -> tuple[list[LogLine], str | None]:
    """Lines after ``since_seq`` (or after ``cursor``) and the cursor of the next page (``None`` at the end)."""
    if cursor is not None:
        if since_seq:
            raise ValidationFailed("pass either since_seq or cursor, not both", code="invalid_page")
        since_seq = LOGS_IN_ORDER.decode(cursor)[0]
    lines = await read_logs(session, deployment_id=deployment_id, since_seq=since_seq, limit=limit + 1)
    if len(lines) <= limit:
        return lines, None
    lines = lines[:limit]
    return lines, LOGS_IN_ORDER.encode([lines[-1].seq])


async def set_progress(
    session: AsyncSession, *, deployment_id: str, owner: str | None, current_step: int, total_steps: int, step_name: str
) -> bool:
    """Record the runner's progress (guarded by its lease) and queue a ``DEPLOYMENT_PROGRESS`` event."""
    progress = int(100 * (current_step - 1) / total_steps) if total_steps else 0
    conditions = [Deployment.id == deployment_id]
    if owner is not None:
        conditions.append(Deployment.lease_owner == owner)
    result = await session.execute(
        update(Deployment)
        .where(*conditions)
        .values(progress=progress, current_step=current_step, total_steps=total_steps, step_name=step_name)
        .returning(Deployment.organization_id)
        .execution_options(synchronize_session=False)
    )
    organization_id = result.scalar_one_or_none()
    if organization_id is None:
        return False
    data = ProgressData(progress=progress, current_step=current_step, total_steps=total_steps, step_name=step_name)
    queue_event(session, Event.of(EventType.DEPLOYMENT_PROGRESS, deployment_id, organization_id, data))
    return True


#: Seconds between two ``DEPLOYMENT_PULL_PROGRESS`` events of one deployment (at most 5 a second)
PULL_EVENT_INTERVAL = 0.2


async def set_pull_progress(session: AsyncSession, *, deployment_id: str, snapshot: dict[str, Any]) -> bool:
    """Fold one image's pull into the deployment's progress (within its images step, by bytes, guarded by the
    lease) and queue its ``DEPLOYMENT_PULL_PROGRESS`` event."""
    step = snapshot.get("step") or {}
    conditions = [Deployment.id == deployment_id]
    if step.get("owner") is not None:
        conditions.append(Deployment.lease_owner == step["owner"])
    values: dict[str, Any] = {}
    current, total = step.get("current_step"), step.get("total_steps")
    if current and total:
        start, end = 100 * (current - 1) / total, 100 * current / total
        fraction = snapshot["current_bytes"] / snapshot["total_bytes"] if snapshot["total_bytes"] else 0.0
        values["progress"] = int(start + (end - start) * min(1.0, fraction))
    query = update(Deployment).where(*conditions).returning(Deployment.organization_id)
    query = query.values(**values) if values else query.values(progress=Deployment.progress)
    organization_id = (await session.execute(query.execution_options(synchronize_session=False))).scalar_one_or_none()
    if organization_id is None:
        return False
    data = PullProgressData(**{key: snapshot[key] for key in PullProgressData.model_fields})
    queue_event(session, Event.of(EventType.DEPLOYMENT_PULL_PROGRESS, deployment_id, organization_id, data))
    return True


class DeploymentLogWriter:
    """Buffers a runner's log lines and commits them in batches (every ``interval`` s or ``batch`` lines)."""

    def __init__(self, deployment_id: str, interval: float = 0.2, batch: int = 200, redactor: Redactor | None = None) -> None:
        self.deployment_id = deployment_id
        #: set by the runner once the deployment (and so its secrets) is loaded
        self.redactor = redactor
        self.interval = interval
        self.batch = batch
        self._buffer: list[tuple[LogLevel, str, datetime]] = []
        self._progress: list[dict] = []
        #: image -> its latest pull snapshot not yet sent (images in the order they started)
        self._pulls: dict[str, dict[str, Any]] = {}
        self._last_pull_event = 0.0
        self._step: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self.written = 0
        # the database down or restarting: one warning, not a traceback at every flush (5 a second)
        self._outage = database.OutageLog(f"storing the log lines of deployment {deployment_id}", logger)

    async def __aenter__(self) -> DeploymentLogWriter:
        self._task = asyncio.create_task(self._flush_periodically(), name=f"logs-{self.deployment_id}")
        return self

    async def __aexit__(self, *_exc) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()

    async def log(self, level: LogLevel, message: str) -> None:
        for line in message.splitlines() or [""]:
            self._buffer.append((level, line.rstrip(), utcnow()))
        if len(self._buffer) >= self.batch:
            await self.flush()

    def progress(self, *, owner: str | None, current_step: int, total_steps: int, step_name: str) -> None:
        """Record the runner's progress; written (and its event published) with the next batch of lines,
        so a step never waits for a commit of its own."""
        self._progress.append({"owner": owner, "current_step": current_step, "total_steps": total_steps, "step_name": step_name})

    async def pull_progress(self, state: Any) -> None:
        """Take where an image's pull stands (``engines.pull.PullProgress``): sent as a
        ``DEPLOYMENT_PULL_PROGRESS`` event by a later flush, at most one every :data:`PULL_EVENT_INTERVAL`
        seconds for the whole deployment (the latest snapshot of each image; none is skipped for good: an
        image's last one, ``pulled``, always goes), and folded into the deployment's progress."""
        self._pulls[state.image] = {**state.snapshot(), "step": self._step}

    def _next_pull(self) -> dict[str, Any] | None:
        if not self._pulls or time.monotonic() - self._last_pull_event < PULL_EVENT_INTERVAL:
            return None
        self._last_pull_event = time.monotonic()
        image = next(iter(self._pulls))
        return self._pulls.pop(image)

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer and not self._progress and not self._pulls:
                return
            pending, self._buffer = self._buffer, []
            progress, self._progress = self._progress, []
            if progress:
                self._step = progress[-1]
            pull = self._next_pull()
            if not pending and not progress and pull is None:
                return  # only pull snapshots, and the last event was less than PULL_EVENT_INTERVAL ago
            try:
                async with database.AsyncSessionLocal() as session:
                    for update in progress:  # guarded by the lease: a settled deployment keeps its 100 %
                        await set_progress(session, deployment_id=self.deployment_id, **update)
                    if pull is not None:
                        await set_pull_progress(session, deployment_id=self.deployment_id, snapshot=pull)
                    await append_logs(session, deployment_id=self.deployment_id, lines=pending, redactor=self.redactor)
                    await session.commit()
                self.written += len(pending)
            except Exception as exc:
                if database.is_unavailable(exc):
                    self._outage.failed(exc)
                else:
                    logger.exception("could not store %d log line(s) of deployment %s", len(pending), self.deployment_id)
                self._buffer[:0] = pending
                self._progress[:0] = progress
                if pull is not None:
                    self._pulls.setdefault(pull["image"], pull)
            else:
                self._outage.succeeded()

    @contextlib.asynccontextmanager
    async def written_with(self, session: AsyncSession) -> AsyncIterator[None]:
        """Write the buffered lines and progress in ``session``, the caller's transaction, which must commit
        inside this block: the runner's last lines and its status change then cost one commit, not two (the
        lines are written first, so they still land, and their event goes, before the status). Should the
        block fail, the lines go back to the buffer for the next flush. Pull snapshots wait for that flush."""
        async with self._lock:
            pending, self._buffer = self._buffer, []
            progress, self._progress = self._progress, []
            try:
                for update in progress:  # guarded by the lease, as in flush
                    await set_progress(session, deployment_id=self.deployment_id, **update)
                await append_logs(session, deployment_id=self.deployment_id, lines=pending, redactor=self.redactor)
                yield
            except BaseException:
                self._buffer[:0] = pending
                self._progress[:0] = progress
                raise
            if progress:
                self._step = progress[-1]
            self.written += len(pending)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            # Shielded: closing the writer cancels this task, maybe while a flush is writing (a slow or busy
            # database); that flush finishes, and the closing flush, waiting for its lock, comes after it.
            # Unshielded, the lines it had taken were lost (a cancelled run's last lines, on SQLite).
            await asyncio.shield(self.flush())
