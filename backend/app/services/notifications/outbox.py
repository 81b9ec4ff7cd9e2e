"""The deliveries a deployment's change queues, in the same transaction as the change (an outbox).

A session hook (``before_commit``, registered by importing ``backend.app.services``) reads the events the
session is about to publish (``core/events.py``: queued on the session, published after its commit) and, for
each that ends a deployment, adds one :class:`NotificationDelivery` per enabled channel of the deployment's
organisation that wants the event. The rows commit with the change or not at all: a change that is rolled
back notifies nobody, and a process that dies after its commit leaves its deliveries for any sender.

Events (``EVENTS``), from the status change and the history row written with it:

* ``deployment.succeeded`` — the deployment reached ``running``;
* ``deployment.failed`` — it ended ``failed``; also ``deployment.stuck`` when recovery failed it for being
  pending or deploying past its timeout, and ``target.unreachable`` when its error says the engine could not
  be reached;
* ``deployment.cancelled``;
* ``deployment.rolled_back`` — an automatic rollback (``DEPLOYMENT_ROLLED_BACK``) brought back a good revision;
* ``deployment.recovered`` — it reached ``running`` in a rollout that had lost its executor (a worker that
  died: recovery re-ran it or found its containers running).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlalchemy import and_, event, insert, select
from sqlalchemy.orm import Session

from backend.app.core import events as core_events
from backend.app.core.events import EventType
from backend.app.engines.connection import is_unreachable
from backend.app.models import (
    Deployment,
    DeploymentRevision,
    DeploymentStatusHistory,
    NotificationChannel,
    NotificationDelivery,
    Organization,
)
from backend.app.models.base import new_id

EVENTS = (
    "deployment.succeeded",
    "deployment.failed",
    "deployment.cancelled",
    "deployment.rolled_back",
    "deployment.recovered",
    "deployment.stuck",
    "target.unreachable",
)
TEST_EVENT = "test"
_LOST = "executor lost"
_TIMEOUT = "recovery timeout"
#: the events only the deployment's history tells (:func:`classify` needs its reasons for them)
_FROM_HISTORY = frozenset({"deployment.recovered", "deployment.stuck"})
#: a history row that starts a rollout (the ``executor lost`` rows after it belong to that rollout)
_ROLLOUT_START = ("created", "start", "redeploy", "retry", "revision ")


def _reasons(session: Session, deployment_id: str) -> list[str]:
    rows = session.execute(
        select(DeploymentStatusHistory.reason)
        .where(DeploymentStatusHistory.deployment_id == deployment_id)
        .order_by(DeploymentStatusHistory.id.desc())
        .limit(20)
    )
    return [r or "" for r in rows.scalars()]


def _field(data: Any, name: str) -> Any:
    return data.get(name) if isinstance(data, dict) else getattr(data, name, None)


def classify(evt: core_events.Event, reasons: list[str]) -> list[str]:
    """The notification events of one bus event (``reasons``: the deployment's latest history reasons, newest
    first, the change's own row included)."""
    if evt.type == EventType.DEPLOYMENT_ROLLED_BACK:
        return ["deployment.rolled_back"]
    if evt.type != EventType.DEPLOYMENT_STATUS_CHANGED:
        return []
    data = evt.data
    status = _field(data, "new_status")
    if status == "running":
        found = ["deployment.succeeded"]
        for reason in reasons[1:]:
            if reason.startswith(_ROLLOUT_START):
                break
            if reason.startswith(_LOST):
                found.append("deployment.recovered")
                break
        if reasons and reasons[0].startswith(_LOST):  # containers found running after the executor was lost
            found.append("deployment.recovered") if "deployment.recovered" not in found else None
        return found
    if status == "failed":
        found = ["deployment.failed"]
        if reasons and reasons[0].startswith(_TIMEOUT):
            found.append("deployment.stuck")
        if is_unreachable(_field(data, "error_message") or ""):
            found.append("target.unreachable")
        return found
    if status == "cancelled":
        return ["deployment.cancelled"]
    return []


def images_of(images: list[Any] | None) -> list[dict[str, Any]]:
    """A revision's recorded images (``DeploymentRevision.images``) as a message names them."""
    return [
        {"service": str(i.get("service", "")), "image": str(i.get("image", "")), "digest": i.get("digest")}
        for i in images or []
        if isinstance(i, dict)
    ]


def payload(*, delivery_id: str, event_name: str, occurred_at: str, organization: Any, deployment: Any) -> dict[str, Any]:
    """What every channel is told (the webhook's body as it is; the other kinds word it): never a secret —
    the error message was redacted with the deployment's secrets before it was stored."""
    return {
        "id": delivery_id,
        "event": event_name,
        "occurred_at": occurred_at,
        "organization": {"id": organization.id, "name": organization.name},
        "deployment": {
            "id": deployment.id,
            "name": deployment.name,
            "status": str(deployment.status),
            "revision": deployment.revision,
            "images": images_of(deployment.images),
            "error_message": deployment.error_message,
            "path": f"/deployments/{deployment.id}",
        },
    }


#: the statuses a deployment's change may be notified for (its end): a change to another one queues nothing
ENDING_STATUSES = frozenset({"running", "failed", "cancelled"})


def may_notify(evt: core_events.Event) -> bool:
    """Whether ``evt`` may queue deliveries (a deployment's end, or its automatic rollback)."""
    if evt.type == EventType.DEPLOYMENT_ROLLED_BACK:
        return True
    return evt.type == EventType.DEPLOYMENT_STATUS_CHANGED and _field(evt.data, "new_status") in ENDING_STATUSES


def enqueue(session: Session, *, evts: list[core_events.Event]) -> int:
    """Insert the deliveries of ``evts`` in ``session``'s transaction (a synchronous session); returns how many."""
    rows: list[dict[str, Any]] = []
    channels_of: dict[str, tuple[list[Any], Any]] = {}
    with session.no_autoflush:
        for evt in evts:
            if not may_notify(evt):
                continue
            org_id = evt.organization_id
            if org_id is None or evt.deployment_id is None:
                continue
            if org_id not in channels_of:  # the enabled channels (what they want) with their organisation's name, in one query
                found = session.execute(
                    select(NotificationChannel.id, NotificationChannel.events, Organization.name)
                    .join(Organization, Organization.id == NotificationChannel.organization_id)
                    .where(NotificationChannel.organization_id == org_id, NotificationChannel.enabled.is_(True))
                ).all()
                channels_of[org_id] = (
                    [SimpleNamespace(id=r[0], events=r[1]) for r in found],
                    SimpleNamespace(id=org_id, name=found[0][2]) if found else None,
                )
            channels, organization = channels_of[org_id]
            if not channels:
                continue
            # the history is read only when a channel wants an event that needs it (recovered, stuck)
            needs_history = any(n in _FROM_HISTORY for c in channels for n in (c.events or []))
            if needs_history:
                session.flush()  # the change's own history row, for the classification
            names = classify(evt, _reasons(session, evt.deployment_id) if needs_history else [])
            wanted = [(c, n) for n in names for c in channels if n in (c.events or [])]
            if not wanted:
                continue
            # read, not the identity map: the state machine changes the row with a compare-and-set UPDATE; with
            # its current revision's images, in one query
            deployment = session.execute(
                select(
                    Deployment.id,
                    Deployment.name,
                    Deployment.status,
                    Deployment.revision,
                    Deployment.error_message,
                    DeploymentRevision.images,
                )
                .outerjoin(
                    DeploymentRevision,
                    and_(DeploymentRevision.deployment_id == Deployment.id, DeploymentRevision.number == Deployment.revision),
                )
                .where(Deployment.id == evt.deployment_id)
            ).first()
            if deployment is None or organization is None:
                continue
            for channel, name in wanted:
                delivery_id = new_id()
                body = payload(
                    delivery_id=delivery_id,
                    event_name=name,
                    occurred_at=evt.timestamp.isoformat().replace("+00:00", "Z"),
                    organization=organization,
                    deployment=deployment,
                )
                rows.append({"id": delivery_id, "channel_id": channel.id, "organization_id": org_id, "event": name, "payload": body})
    if rows:  # one INSERT (the table's defaults: pending, due now), not the unit of work's
        session.execute(insert(NotificationDelivery.__table__), rows)
    return len(rows)


@event.listens_for(Session, "before_commit")
def _enqueue_before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    pending = session.info.get(core_events._PENDING_KEY)  # the events this commit will publish
    if pending:
        enqueue(session, evts=list(pending))
