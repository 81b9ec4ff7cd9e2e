"""Deployments: creation (validate, freeze, render, snapshot), queries, lifecycle actions, recovery.

This module stays at ``services/deployment_service.py``, next to the domain packages rather than inside
``services/deployments/``, because the product guide names this path (``DeploymentService`` and
``DeploymentService.recover_pending_deployments(db)``, docs/architecture.md): it is the deployments' façade
for the routes, the CLI and the guide's snippet, over the runner, the state machine and recovery in
:mod:`backend.app.services.deployments`.

``DeploymentService`` takes an ``AsyncSession`` and never commits: the caller owns the transaction and
dispatches the deployment to an executor *after* committing (see ``backend.app.runtime.dispatch``).
Every status change goes through :mod:`backend.app.services.deployments.state_machine`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from backend.app.config import Settings
from backend.app.core import security
from backend.app.core.exceptions import Conflict, NotFound
from backend.app.core.logging import SecretMask
from backend.app.core.security import EncryptedValues
from backend.app.database import utcnow
from backend.app.models import (
    Deployment,
    DeploymentStatus,
    DeploymentStatusHistory,
    Role,
    Stack,
    Target,
    User,
)
from backend.app.models.base import new_id
from backend.app.schemas.deployments import DeploymentRead, DeploymentWaiting, RevisionImage
from backend.app.services import pagination
from backend.app.services.deployments import history_reasons, recovery, revisions
from backend.app.services.deployments.context import check_compose_policy, snapshot_compose
from backend.app.services.deployments.runner import Dispatch
from backend.app.services.deployments.state_machine import TransitionResult, holds_a_slot, record_creation, set_deployment_status
from backend.app.services.identity import organization_service
from backend.app.services.stacks import templating

logger = logging.getLogger(__name__)
S = DeploymentStatus


def read_model(
    deployment: Deployment, waiting: DeploymentWaiting | None = None, images: list[RevisionImage] | None = None
) -> DeploymentRead:
    """The deployment as the API (and ``DEPLOYMENT_CREATED``) shows it: secrets masked; ``images``: its current
    revision's (:func:`read_models` reads them)."""
    computed = ("variables", "waiting", "service_health", "images", "error_code", "error_params")  # the last two: from error_message
    data = {field: getattr(deployment, field) for field in DeploymentRead.model_fields if field not in computed}
    return DeploymentRead(
        **data,
        variables=EncryptedValues(deployment.variables).masked(),
        waiting=waiting if deployment.status is S.PENDING else None,
        service_health=(deployment.service_health or {}).get("services") or [],
        images=images or [],
    )


#: :func:`waiting_of`'s query, built once (parameters ``target_ids``, ``now``): each target's name, limit and live
#: leases (a lease that expired belongs to a dead executor and holds no slot)
_TARGETS_DEPLOYING = (
    select(Target.id, Target.name, Target.max_concurrent_deployments, func.count(Deployment.id))
    .outerjoin(
        Deployment,
        (Deployment.target_id == Target.id) & holds_a_slot(bindparam("now")),
    )
    .where(Target.id.in_(bindparam("target_ids", expanding=True)))
    .group_by(Target.id, Target.name, Target.max_concurrent_deployments)
)


async def waiting_of(session: AsyncSession, *, deployments: list[Deployment]) -> dict[str, DeploymentWaiting]:
    """Why each ``pending`` deployment of ``deployments`` has not started: its retry backoff, or its target
    deploying as many as it may at once (the state machine's capacity rule: live leases hold a slot). One query
    for all their targets."""
    pending = [d for d in deployments if d.status is S.PENDING]
    if not pending:
        return {}
    now = utcnow()
    target_ids = sorted({d.target_id for d in pending})
    rows = await session.execute(_TARGETS_DEPLOYING, {"target_ids": target_ids, "now": now})
    targets = {target_id: (name, limit, deploying) for target_id, name, limit, deploying in rows}
    waiting: dict[str, DeploymentWaiting] = {}
    for d in pending:
        name, limit, deploying = targets.get(d.target_id, (None, None, 0))
        if d.not_before is not None and d.not_before > now:
            waiting[d.id] = DeploymentWaiting(reason="retry_backoff", until=d.not_before, target_name=name)
        elif limit is not None and deploying >= limit:
            waiting[d.id] = DeploymentWaiting(reason="target_capacity", target_name=name, limit=limit, deploying=deploying)
    return waiting


async def read_models(session: AsyncSession, *, deployments: list[Deployment]) -> list[DeploymentRead]:
    """:func:`read_model` of each, with why the pending ones wait and what their current revisions run."""
    waiting = await waiting_of(session, deployments=deployments)
    images = await revisions.current_images(session, deployment_ids=[d.id for d in deployments])
    return [read_model(d, waiting.get(d.id), images.get(d.id)) for d in deployments]


DEPLOYMENTS_NEWEST_FIRST = pagination.Ordering("deployments", (Deployment.created_at, Deployment.id), descending=True)
HISTORY_OLDEST_FIRST = pagination.Ordering("history", (DeploymentStatusHistory.id,))


def masked_compose(settings: Settings, deployment: Deployment) -> str:
    """The rendered compose snapshot as the API shows it: every secret value of the deployment as ``***``."""
    if not deployment.rendered_compose:
        raise NotFound("this deployment has no rendered compose document yet", code="no_snapshot")
    text = security.decrypt_secret(settings, deployment.rendered_compose)
    return SecretMask(EncryptedValues(deployment.variables).secret_values(settings))(text)


class Created(NamedTuple):
    """A new deployment and how the API shows it (the ``DEPLOYMENT_CREATED`` event's data)."""

    deployment: Deployment
    read: DeploymentRead


#: what a caller writes in the creation's transaction before the deployment's insert: (deployment id, organisation id)
BeforeInsert = Callable[[str, str], Awaitable[None]]


class DeploymentService:
    # --- creation ---------------------------------------------------------------------------------

    @staticmethod
    async def create(session: AsyncSession, **kwargs: Any) -> Deployment:
        """:meth:`create_read`, the deployment alone."""
        return (await DeploymentService.create_read(session, **kwargs)).deployment

    @staticmethod
    async def create_read(
        session: AsyncSession,
        *,
        settings: Settings,
        user: User,
        stack_id: str,
        target_id: str,
        name: str | None = None,
        variables: dict[str, Any] | None = None,
        organization_id: str | None = None,
        auto_rollback: bool | None = None,
        before_insert: BeforeInsert | None = None,
    ) -> Created:
        """Validate, freeze generators, render and store a ``pending`` deployment at its revision 1 (not
        dispatched). ``auto_rollback`` (None: on) rolls a later revision that fails back by itself.

        ``before_insert`` (the route's audit entry) is awaited once every check passed, in the transaction that
        inserts the deployment, and what it added is written before that insert: one commit for both, and
        nothing of it between the deployment's ``queued_at`` and that commit. The ``read`` returned is the
        deployment as the API shows it at its creation, so the caller answers without reading it again."""
        org_id = await organization_service.resolve_organization(session, user=user, organization_id=organization_id, minimum=Role.OPERATOR)
        stack = await session.get(Stack, stack_id)
        if stack is None or stack.organization_id != org_id:
            raise NotFound(f"stack {stack_id} not found in this organization", code="stack_not_found", params={"id": stack_id})
        target = await session.get(Target, target_id)
        if target is None or target.organization_id != org_id:
            raise NotFound(f"target {target_id} not found in this organization", code="target_not_found", params={"id": target_id})
        if not target.is_active:
            raise Conflict(
                f"target {target.name!r} is deactivated; activate it or pick another",
                code="target_inactive",
                params={"name": target.name, "id": target.id},
            )

        parsed = templating.parse_variables(stack.variables or [])
        values = templating.resolve_values(parsed, variables or {})
        secret_paths = templating.secret_paths(parsed)
        # Rendering and the compose tool may take seconds (a tenant's template): when they must run, no
        # transaction (on SQLite, no write lock) is held meanwhile and the deployment is written in the next one;
        # a document rendered and judged before is checked at once, and the lookups' transaction goes on.
        rendered = await revisions.render_for_target(
            session, settings=settings, template=stack.template, parsed=parsed, values=values, target=target
        )

        # queued_at is stamped by record_creation right before the deployment's INSERT, which it writes after the
        # rows that reference it: the dispatch latency (queued -> claimed) includes neither the validation above
        # nor the audit entry, the history row and the revision (what follows the INSERT: record_creation).
        deployment_id = new_id()
        if before_insert is not None:
            await before_insert(deployment_id, org_id)
            await session.flush()
        deployment = Deployment(
            id=deployment_id,
            organization_id=org_id,
            stack_id=stack.id,
            target_id=target.id,
            created_by=user.id,
            name=name or f"{stack.name}-{security.generate_api_token()[3:9].lower()}",
            variables=EncryptedValues.encrypt(settings, values, secret_paths).stored,
            rendered_compose=security.encrypt_secret(settings, rendered),
            max_attempts=settings.DEPLOYMENT_MAX_ATTEMPTS,
            status=S.PENDING,
            revision=1,
            auto_rollback=auto_rollback is not False,
        )
        waiting = (await waiting_of(session, deployments=[deployment])).get(deployment.id)  # as the list shows it
        shown: list[DeploymentRead] = []

        def snapshot(created: Deployment) -> DeploymentRead:
            shown.append(read_model(created, waiting))
            return shown[0]

        first = revisions.first_revision(deployment, stack=stack, actor=user.email)
        await record_creation(session, deployment=deployment, actor=user.email, snapshot=snapshot, children=[first])
        return Created(deployment, shown[0])

    @staticmethod
    async def update_settings(session: AsyncSession, *, deployment: Deployment, auto_rollback: bool | None) -> Deployment:
        """``PATCH /deployments/{id}``: the settings that are not inputs of a revision."""
        if auto_rollback is not None:
            deployment.auto_rollback = auto_rollback
        await session.flush()
        return deployment

    # --- queries ----------------------------------------------------------------------------------

    @staticmethod
    async def list_for_user(
        session: AsyncSession,
        *,
        user: User,
        page: pagination.PageParams,
        status: list[DeploymentStatus] | None = None,
        stack_id: str | None = None,
        target_id: str | None = None,
        organization_id: str | None = None,
    ) -> pagination.Page:
        """Deployments of the organisations ``user`` may read, newest first, one index range per page.

        Each organisation and each requested status is its own ordered query (merged), so that every
        part is read from an index in order (see :mod:`backend.app.services.pagination`).

        A stack or target filter is checked against the organisations first: a foreign or unknown id
        reads nothing. Once it passes, the query filters on the stack (target) alone, without
        ``organization_id``: a deployment's stack and target belong to its organisation (checked at
        creation; stacks and targets never change organisation), so the condition would be redundant,
        and it is harmful: PostgreSQL takes the two conditions as independent, underestimates the rows
        they match, and may read a page or the capped count along ``(created_at, id)`` with a filter
        instead of the ``(stack_id, [status,] created_at, id)`` range, which also covers the count alone.
        """
        org_ids = await organization_service.readable_organization_ids(session, user=user, organization_id=organization_id)
        query = select(Deployment).options(defer(Deployment.rendered_compose))  # not shown, and the widest column
        scoped_by_entity = False
        for model, column, entity_id in ((Stack, Deployment.stack_id, stack_id), (Target, Deployment.target_id, target_id)):
            if entity_id is None:
                continue
            owner = (await session.execute(select(model.organization_id).where(model.id == entity_id))).scalar_one_or_none()
            org_ids = [owner] if owner is not None and (org_ids is None or owner in org_ids) else []
            query = query.where(column == entity_id)
            scoped_by_entity = True
        if scoped_by_entity:
            scope = None if org_ids else []  # the entity's organisation is readable, or nothing is
        else:
            scope = None if org_ids is None else [[Deployment.organization_id == org_id] for org_id in org_ids]
        partitions = pagination.product(scope, pagination.any_of(Deployment.status, status))
        return await pagination.paginate(session, query=query, ordering=DEPLOYMENTS_NEWEST_FIRST, params=page, partitions=partitions)

    @staticmethod
    async def history(session: AsyncSession, *, deployment_id: str, limit: int = 1000, after_id: int = 0) -> list[DeploymentStatusHistory]:
        """Status changes after ``after_id``, oldest first (an index range on ``(deployment_id, id)``)."""
        rows = await session.execute(
            select(DeploymentStatusHistory)
            .where(DeploymentStatusHistory.deployment_id == deployment_id, DeploymentStatusHistory.id > after_id)
            .order_by(DeploymentStatusHistory.id)
            .limit(limit)
        )
        return list(rows.scalars())

    @staticmethod
    async def history_page(
        session: AsyncSession, *, deployment_id: str, limit: int, cursor: str | None = None
    ) -> tuple[list[DeploymentStatusHistory], str | None]:
        """One page of :meth:`history` and the cursor of the next one (``None`` on the last page)."""
        after_id = HISTORY_OLDEST_FIRST.decode(cursor)[0] if cursor is not None else 0
        rows = await DeploymentService.history(session, deployment_id=deployment_id, limit=limit + 1, after_id=after_id)
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, HISTORY_OLDEST_FIRST.encode([rows[-1].id])

    # --- recovery ---------------------------------------------------------------------------------

    @staticmethod
    async def recover_pending_deployments(
        session: AsyncSession,
        *,
        max_age_minutes: float = 2,
        timeout_minutes: float = 60,
        settings: Settings | None = None,
        dispatch: Dispatch | None = None,
    ) -> dict[str, Any]:
        """Recover stuck deployments; see :func:`backend.app.services.deployments.recovery.recover_pending_deployments`."""
        return await recovery.recover_pending_deployments(
            session, max_age_minutes=max_age_minutes, timeout_minutes=timeout_minutes, settings=settings, dispatch=dispatch
        )

    # --- lifecycle (status side; engine work happens in the runner / lifecycle module) -------------

    @staticmethod
    async def requeue(
        session: AsyncSession, *, deployment: Deployment, action: str, actor: str, settings: Settings | None = None
    ) -> TransitionResult:
        """``start``, ``redeploy`` and ``retry``: back to ``pending`` from the states where each makes sense.

        With ``settings``, the snapshot is first checked against the target's compose policy as it is now
        (422 when it was tightened since the deployment was created); the runner checks again.
        """
        if settings is not None and deployment.rendered_compose:
            target = await session.get(Target, deployment.target_id)
            if target is not None:
                # the deployment's secrets masked in the policy's message (decrypting them registers them
                # with the server log's redaction too), as at creation
                secrets = EncryptedValues(deployment.variables).secret_values(settings)
                check_compose_policy(snapshot_compose(settings, deployment), target, redact=secrets)
        allowed = {
            "start": frozenset({S.STOPPED}),
            "redeploy": frozenset({S.RUNNING, S.STOPPED}),
            "retry": frozenset({S.FAILED, S.CANCELLED}),
        }[action]
        result = await set_deployment_status(
            session,
            deployment_id=deployment.id,
            to_status=S.PENDING,
            reason=history_reasons.text(action),
            actor=actor,
            expected_from=allowed,
        )
        if not result.accepted:
            raise Conflict(
                f"cannot {action} this deployment: {result.reason}",
                code="invalid_transition",
                params={"action": action, "status": str(result.from_status) if result.from_status else None},
            )
        return result

    @staticmethod
    async def cancel(session: AsyncSession, *, deployment: Deployment, actor: str) -> TransitionResult:
        result = await set_deployment_status(
            session,
            deployment_id=deployment.id,
            to_status=S.CANCELLED,
            reason=history_reasons.text("cancelled_by_user"),
            actor=actor,
            error_message="Cancelled by user",
            expected_from=frozenset({S.PENDING, S.DEPLOYING}),
        )
        if not result.accepted:
            raise Conflict(
                f"cannot cancel this deployment: {result.reason}",
                code="invalid_transition",
                params={"action": "cancel", "status": str(result.from_status) if result.from_status else None},
            )
        return result
