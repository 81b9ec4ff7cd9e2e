"""A deployment's revisions: numbered, immutable records of what it deployed, and the changes that make them.

Every deployment starts at revision 1 (``created``). A change (``POST /deployments/{id}/revisions``: new
values merged over the current ones, and/or the stack's latest template) is validated exactly like a
creation, then becomes revision N+1 (``update``); a rollback (``POST .../rollback``) copies an older
revision's record, its images pinned to the digests it recorded (``rollback``); when a revision fails, the
runner calls :func:`begin_automatic_rollback`, which copies the last good one (``automatic_rollback``).
The new revision becomes the deployment's current one (``Deployment.revision``, with a copy of its values and
rendered compose: the snapshot the runner deploys) and is rolled out through the state machine like any
deployment: ``pending`` -> ``deploying`` -> ``running`` | ``failed``. Its outcome follows
(:mod:`.revision_outcomes`). One rollout at a time: a change asked while one is in progress is a 409 naming it.

Like every service this never commits; the routes dispatch the deployment after committing.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core import security
from backend.app.core.events import Event, EventType, RolledBackData, queue_event
from backend.app.core.exceptions import Conflict, NotFound
from backend.app.core.logging import SecretMask, register_secret
from backend.app.core.security import EncryptedValues
from backend.app.database import end_transaction, utcnow
from backend.app.models import (
    ACTIVE_STATUSES,
    Deployment,
    DeploymentRevision,
    DeploymentStatus,
    RevisionOutcome,
    RevisionReason,
    Stack,
    Target,
    User,
)
from backend.app.schemas.deployments import RevisionImage, RevisionRead
from backend.app.schemas.stack_variables import GroupVariable, StackVariable
from backend.app.services import pagination
from backend.app.services.deployments import history_reasons
from backend.app.services.deployments.context import check_compose_policy
from backend.app.services.deployments.state_machine import set_deployment_status
from backend.app.services.stacks import bounded_render, templating

S = DeploymentStatus
R = RevisionReason
NEWEST_FIRST = pagination.Ordering("revisions", (DeploymentRevision.number,), descending=True)
#: What a client sends back for a secret it did not change (the API shows secrets so): the value is kept.
MASK = templating.MASK


# --- reading ---------------------------------------------------------------------------------------


def image_models(images: list[dict[str, Any]] | None) -> list[RevisionImage]:
    """A revision's recorded images as the API shows them (without the internal pinned reference)."""
    return [
        RevisionImage(
            service=str(i.get("service", "")),
            image=str(i.get("image", "")),
            digest=i.get("digest"),
            size=i["size"] if isinstance(i.get("size"), int) else None,
        )
        for i in images or []
        if isinstance(i, dict)
    ]


async def current_images(session: AsyncSession, *, deployment_ids: list[str]) -> dict[str, list[RevisionImage]]:
    """The images each deployment's current revision recorded (one query for them all)."""
    if not deployment_ids:
        return {}
    rows = await session.execute(
        select(DeploymentRevision.deployment_id, DeploymentRevision.images)
        .join(Deployment, (Deployment.id == DeploymentRevision.deployment_id) & (Deployment.revision == DeploymentRevision.number))
        .where(Deployment.id.in_(deployment_ids))
    )
    return {deployment_id: image_models(images) for deployment_id, images in rows}


def read_model(revision: DeploymentRevision) -> RevisionRead:
    """A revision as the API shows it: secrets masked, images without their internal pinned reference."""
    return RevisionRead(
        number=revision.number,
        reason=revision.reason,
        rollback_of=revision.rollback_of,
        outcome=revision.outcome,
        stack_id=revision.stack_id,
        stack_version=revision.stack_version,
        variable_schema=revision.stack_variables,
        variables=EncryptedValues(revision.variables).masked(),
        images=image_models(revision.images),
        error_message=revision.error_message,
        created_at=revision.created_at,
        created_by=revision.created_by,
        finished_at=revision.finished_at,
    )


async def page(session: AsyncSession, *, deployment: Deployment, params: pagination.PageParams) -> pagination.Page:
    """The deployment's revisions, newest first (an index range on the primary key)."""
    query = select(DeploymentRevision).where(DeploymentRevision.deployment_id == deployment.id)
    return await pagination.paginate(session, query=query, ordering=NEWEST_FIRST, params=params)


async def get(session: AsyncSession, *, deployment_id: str, number: int) -> DeploymentRevision:
    revision = await session.get(DeploymentRevision, (deployment_id, number))
    if revision is None:
        raise NotFound(f"this deployment has no revision {number}", code="revision_not_found", params={"number": number})
    return revision


def pinned_images(revision: DeploymentRevision | None) -> dict[str, str]:
    """``service -> exact image reference`` recorded by ``revision``: every rollout of a revision after its
    first pull (a retry, a redeploy, a rollback's copy) runs the same images."""
    pins: dict[str, str] = {}
    for image in (revision.images if revision is not None else None) or []:
        if isinstance(image, dict) and image.get("service") and image.get("reference"):
            pins[str(image["service"])] = str(image["reference"])
    return pins


async def record_images(session: AsyncSession, *, deployment_id: str, number: int, images: list[dict[str, str]]) -> None:
    """Keep what the rollout's pull resolved each image to (``ResolvedImage.record()``). A revision that had
    recorded its images ran pinned to them: it records the same again."""
    if not images:
        return
    await session.execute(
        update(DeploymentRevision)
        .where(DeploymentRevision.deployment_id == deployment_id, DeploymentRevision.number == number)
        .values(images=images)
        .execution_options(synchronize_session=False)
    )


# --- creating revisions ----------------------------------------------------------------------------


def _stack_record(stack: Stack | None) -> dict[str, Any]:
    if stack is None:
        return {"stack_id": None, "stack_version": None, "stack_template": None, "stack_variables": None}
    return {"stack_id": stack.id, "stack_version": stack.version, "stack_template": stack.template, "stack_variables": stack.variables}


def first_revision(deployment: Deployment, *, stack: Stack, actor: str) -> DeploymentRevision:
    """Revision 1 of a deployment being created (written by ``record_creation``, before the deployment)."""
    return DeploymentRevision(
        deployment_id=deployment.id,
        number=1,
        reason=R.CREATED,
        outcome=RevisionOutcome.PENDING,
        variables=deployment.variables,
        rendered_compose=deployment.rendered_compose,
        images=[],
        created_by=actor,
        created_at=utcnow(),
        **_stack_record(stack),
    )


async def render_for_target(
    session: AsyncSession,
    *,
    settings: Settings,
    template: str,
    parsed: list[StackVariable],
    values: Mapping[str, Any],
    target: Target,
) -> str:
    """The checks every new rendered document passes, at creation as for a new revision: the sandboxed,
    bounded rendering, the target's compose policy and the real ``docker compose config``. Ends the
    caller's transaction first when the rendering or the compose tool must run (it may take seconds; nothing
    may be pending); a document this process rendered and the tool accepted before is checked at once, in
    the caller's transaction (the same checks: the policy, then the remembered render and verdict)."""
    secrets = templating.secret_values(parsed, values)
    for value in secrets:
        register_secret(value)
    limits = bounded_render.RenderLimits.from_settings(settings)
    known = bounded_render.known_render(template, parsed, values, limits)
    if known is None or not templating.judged_valid(known):
        await end_transaction(session)
    rendered = await bounded_render.render_stack(template, parsed, values, limits)
    check_compose_policy(rendered, target, redact=secrets)
    await bounded_render.validate_with_compose(rendered, redact=secrets, limits=limits)
    return rendered


def _refuse_during_rollout(deployment: Deployment) -> None:
    if deployment.status in ACTIVE_STATUSES:
        raise Conflict(
            f"revision {deployment.revision} is being rolled out ({deployment.status}); wait for it to end, or "
            "cancel it, before changing the deployment",
            code="rollout_in_progress",
            params={"revision": deployment.revision, "status": str(deployment.status)},
        )


def merge_values(variables: list[StackVariable], current: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` merged over ``current``: a variable left out keeps its value, a group merges member by member,
    and a secret sent back as ``***`` (as the API shows it) keeps its value. Current values of variables the
    schema no longer has are dropped (a variable ``given`` names that the schema lacks is still refused)."""
    merged: dict[str, Any] = {}
    by_name = {variable.name: variable for variable in variables}
    for name, value in current.items():
        if name in by_name:
            merged[name] = value
    for name, value in given.items():
        variable = by_name.get(name)
        if isinstance(variable, GroupVariable) and isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = merge_values(variable.variables, merged[name], value)
        elif variable is not None and variable.is_secret and value == MASK and name in merged:
            continue
        else:
            merged[name] = value
    return merged


async def _install(
    session: AsyncSession,
    *,
    deployment: Deployment,
    revision: DeploymentRevision,
    actor: str,
    reason: str,
) -> DeploymentRevision:
    """Make ``revision`` the deployment's current one and queue its rollout (a user's requeue: fresh attempts).

    A compare-and-set on the revision and a settled status: of two changes racing, the second is a 409."""
    previous = deployment.revision
    result = await session.execute(
        update(Deployment)
        .where(Deployment.id == deployment.id, Deployment.revision == previous, Deployment.status.not_in(ACTIVE_STATUSES))
        .values(revision=revision.number, variables=revision.variables, rendered_compose=revision.rendered_compose)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        current = await session.get(Deployment, deployment.id, populate_existing=True)
        if current is None:
            raise NotFound("deployment not found (deleted meanwhile)", code="deployment_not_found")
        _refuse_during_rollout(current)
        raise Conflict(
            f"the deployment changed meanwhile (it is now at revision {current.revision}); try again",
            code="revision_conflict",
            params={"revision": current.revision},
        )
    session.add(revision)
    await session.flush()
    moved = await set_deployment_status(
        session,
        deployment_id=deployment.id,
        to_status=S.PENDING,
        reason=reason,
        actor=actor,
        expected_from=frozenset({S.RUNNING, S.STOPPED, S.FAILED, S.CANCELLED}),
    )
    if not moved.accepted:  # the compare-and-set above held the row: only a bug gets here
        raise Conflict(f"cannot roll out revision {revision.number}: {moved.reason}", code="invalid_transition")
    await session.refresh(deployment)
    return revision


async def create_update(
    session: AsyncSession,
    *,
    settings: Settings,
    deployment: Deployment,
    user: User | None,
    variables: Mapping[str, Any] | None,
    stack_version: str | None,
    actor: str | None = None,
) -> DeploymentRevision:
    """Revision N+1 from new values merged over the current ones and/or the stack's latest template,
    validated like a creation (typed values, bounded rendering, compose policy, ``compose config``).
    ``actor`` names who asked when it is not a user (a deploy hook: ``hook:<name>``)."""
    who = actor or (user.email if user is not None else "system")
    _refuse_during_rollout(deployment)
    current = await get(session, deployment_id=deployment.id, number=deployment.revision)
    stack = await session.get(Stack, deployment.stack_id) if deployment.stack_id else None
    if stack_version == "latest":
        if stack is None:
            raise Conflict("the stack of this deployment was deleted: there is no latest template to render", code="stack_deleted")
        source = _stack_record(stack)
    elif current.stack_template is not None:
        source = {
            "stack_id": current.stack_id,
            "stack_version": current.stack_version,
            "stack_template": current.stack_template,
            "stack_variables": current.stack_variables,
        }
    else:
        raise Conflict(
            f'revision {current.number} did not record its template: change it with stack_version "latest"',
            code="no_template_recorded",
            params={"revision": current.number},
        )
    target = await session.get(Target, deployment.target_id)
    if target is None or not target.is_active:
        raise Conflict(
            "the target of this deployment is deactivated; activate it first", code="target_inactive", params={"id": deployment.target_id}
        )
    parsed = templating.parse_variables(source["stack_variables"] or [])
    given = variables or {}
    if not isinstance(given, Mapping):  # the schema says object; a direct caller may not
        raise templating.VariableErrors([("variables", templating.not_a_mapping())])
    values = templating.resolve_values(parsed, merge_values(parsed, EncryptedValues(current.variables).decrypt(settings), given))
    rendered = await render_for_target(
        session, settings=settings, template=source["stack_template"], parsed=parsed, values=values, target=target
    )
    revision = DeploymentRevision(
        deployment_id=deployment.id,
        number=deployment.revision + 1,
        reason=R.UPDATE,
        outcome=RevisionOutcome.PENDING,
        variables=EncryptedValues.encrypt(settings, values, templating.secret_paths(parsed)).stored,
        rendered_compose=security.encrypt_secret(settings, rendered),
        images=[],
        created_by=who,
        created_at=utcnow(),
        **source,
    )
    return await _install(
        session,
        deployment=deployment,
        revision=revision,
        actor=who,
        reason=history_reasons.text("revision_update", revision=revision.number),
    )


async def create_rollback(
    session: AsyncSession,
    *,
    settings: Settings,
    deployment: Deployment,
    user: User,
    number: int,
) -> DeploymentRevision:
    """Revision N+1 re-applying revision ``number``'s record: its values, its rendered compose and its images
    pinned to the digests it recorded. The target's compose policy as it is now still applies."""
    _refuse_during_rollout(deployment)
    source = await get(session, deployment_id=deployment.id, number=number)
    if not source.rendered_compose:
        raise Conflict(f"revision {number} has no rendered compose document to re-apply", code="no_snapshot", params={"number": number})
    target = await session.get(Target, deployment.target_id)
    if target is None or not target.is_active:
        raise Conflict(
            "the target of this deployment is deactivated; activate it first", code="target_inactive", params={"id": deployment.target_id}
        )
    check_compose_policy(
        security.decrypt_secret(settings, source.rendered_compose), target, redact=EncryptedValues(source.variables).secret_values(settings)
    )
    revision = _copy(source, deployment.revision + 1, R.ROLLBACK, user.email)
    return await _install(
        session,
        deployment=deployment,
        revision=revision,
        actor=user.email,
        reason=history_reasons.text("revision_rollback", revision=revision.number, of=number),
    )


def _copy(source: DeploymentRevision, number: int, reason: RevisionReason, actor: str | None) -> DeploymentRevision:
    return DeploymentRevision(
        deployment_id=source.deployment_id,
        number=number,
        reason=reason,
        rollback_of=source.number,
        outcome=RevisionOutcome.PENDING,
        stack_id=source.stack_id,
        stack_version=source.stack_version,
        stack_template=source.stack_template,
        stack_variables=source.stack_variables,
        variables=source.variables,
        rendered_compose=source.rendered_compose,
        images=list(source.images or []),
        created_by=actor,
        created_at=utcnow(),
    )


# --- automatic rollback ----------------------------------------------------------------------------


async def automatic_rollback_target(session: AsyncSession, *, deployment_id: str) -> DeploymentRevision | None:
    """The revision a failure of the deployment's current revision rolls back to, or None: automatic rollback
    is off, no revision passed the gate yet (a first deploy), the last good one is the failed one itself, or
    the failed revision is an automatic rollback (a rollback that fails does not roll back again)."""
    deployment = await session.get(Deployment, deployment_id, populate_existing=True)
    if deployment is None or not deployment.auto_rollback or deployment.last_good_revision is None:
        return None
    if deployment.last_good_revision == deployment.revision:
        return None
    current = await session.get(DeploymentRevision, (deployment_id, deployment.revision))
    if current is None or current.reason is R.AUTOMATIC_ROLLBACK:
        return None
    return await session.get(DeploymentRevision, (deployment_id, deployment.last_good_revision))


async def _retire_and_copy(
    session: AsyncSession,
    *,
    deployment_id: str,
    failed: int,
    good: DeploymentRevision,
    message: str,
    images: list[dict[str, str]] | None,
) -> DeploymentRevision:
    """Mark revision ``failed`` failed with ``message`` (and the images its pull resolved), retire the one
    that ran, and add the automatic rollback revision copying ``good``. The deployment already points at it."""
    now = utcnow()
    await record_images(session, deployment_id=deployment_id, number=failed, images=images or [])
    await session.execute(
        update(DeploymentRevision)
        .where(DeploymentRevision.deployment_id == deployment_id, DeploymentRevision.number == failed)
        .values(outcome=RevisionOutcome.FAILED, error_message=message, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(DeploymentRevision)
        .where(DeploymentRevision.deployment_id == deployment_id, DeploymentRevision.outcome == RevisionOutcome.RUNNING)
        .values(outcome=RevisionOutcome.SUPERSEDED)
        .execution_options(synchronize_session=False)
    )
    revision = _copy(good, failed + 1, R.AUTOMATIC_ROLLBACK, None)
    session.add(revision)
    await session.flush()
    return revision


def _rolled_back(session: AsyncSession, *, deployment: Deployment, failed: int, good: int, revision: int, message: str) -> None:
    queue_event(
        session,
        Event.of(
            EventType.DEPLOYMENT_ROLLED_BACK,
            deployment.id,
            deployment.organization_id,
            RolledBackData(from_revision=failed, to_revision=good, revision=revision, reason=message),
        ),
    )


async def begin_automatic_rollback(
    session: AsyncSession,
    *,
    deployment_id: str,
    owner: str | None,
    message: str,
    images: list[dict[str, str]] | None = None,
    orphaned: bool = False,
    actor: str | None = None,
) -> DeploymentRevision | None:
    """The executor holding the lease of a deployment whose current revision failed for good (or, with
    ``orphaned``, recovery or the reaper (``actor``) settling a ``deploying`` row whose executor died after its
    last attempt: its lease expired): mark that revision ``failed`` with ``message``, make a new revision copying the last good one (its
    images pinned) and queue its rollout (``deploying -> pending``, fresh attempts), with a
    ``DEPLOYMENT_ROLLED_BACK`` event. None when there is nothing to roll back to (see
    :func:`automatic_rollback_target`) or the executor lost the deployment; the caller then settles it ``failed``."""
    good = await automatic_rollback_target(session, deployment_id=deployment_id)
    if good is None:
        return None
    deployment = await session.get(Deployment, deployment_id)
    failed = deployment.revision
    held_by = Deployment.lease_expires_at < utcnow() if orphaned else Deployment.lease_owner == owner
    held = await session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id, Deployment.revision == failed, Deployment.status == S.DEPLOYING, held_by)
        .values(revision=failed + 1, variables=good.variables, rendered_compose=good.rendered_compose)
        .execution_options(synchronize_session=False)
    )
    if held.rowcount != 1:
        return None
    revision = await _retire_and_copy(session, deployment_id=deployment_id, failed=failed, good=good, message=message, images=images)
    moved = await set_deployment_status(
        session,
        deployment_id=deployment_id,
        to_status=S.PENDING,
        lease_owner=owner,
        actor=actor or owner or "recovery",
        fresh_attempts=True,
        require_lease_expired=orphaned,
        error_message=message,
        reason=history_reasons.text("automatic_rollback", failed=failed, revision=revision.number, of=good.number),
    )
    if not moved.accepted:
        raise RuntimeError(f"automatic rollback of deployment {deployment_id} refused: {moved.reason}")
    _rolled_back(session, deployment=deployment, failed=failed, good=good.number, revision=revision.number, message=message)
    return revision


async def roll_back_timed_out(session: AsyncSession, *, deployment_id: str, message: str, actor: str) -> DeploymentRevision | None:
    """Recovery's timeout of a ``pending`` rollout, when the deployment has a revision to go back to: the
    rollout ends ``failed`` with ``message`` (``pending -> failed``, as any timeout), then a new revision copying
    the last good one is queued (``failed -> pending``), with a ``DEPLOYMENT_ROLLED_BACK`` event. None (nothing
    done) when there is nothing to roll back to or the deployment moved meanwhile: the caller times it out as
    usual."""
    good = await automatic_rollback_target(session, deployment_id=deployment_id)
    if good is None:
        return None
    deployment = await session.get(Deployment, deployment_id)
    failed = deployment.revision
    timed_out = await set_deployment_status(
        session,
        deployment_id=deployment_id,
        to_status=S.FAILED,
        reason=history_reasons.text("recovery_timeout"),
        actor=actor,
        error_message=message,
        expected_from=S.PENDING,
    )
    if not timed_out.accepted:
        return None
    moved = await session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id, Deployment.revision == failed, Deployment.status == S.FAILED)
        .values(revision=failed + 1, variables=good.variables, rendered_compose=good.rendered_compose)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # the status change above holds the row: only a bug gets here
        raise RuntimeError(f"automatic rollback of deployment {deployment_id} refused: it changed meanwhile")
    revision = await _retire_and_copy(session, deployment_id=deployment_id, failed=failed, good=good, message=message, images=None)
    queued = await set_deployment_status(
        session,
        deployment_id=deployment_id,
        to_status=S.PENDING,
        actor=actor,
        error_message=message,
        expected_from=S.FAILED,
        reason=history_reasons.text("automatic_rollback", failed=failed, revision=revision.number, of=good.number),
    )
    if not queued.accepted:
        raise RuntimeError(f"automatic rollback of deployment {deployment_id} refused: {queued.reason}")
    _rolled_back(session, deployment=deployment, failed=failed, good=good.number, revision=revision.number, message=message)
    return revision


async def failed_before(session: AsyncSession, *, deployment_id: str, number: int) -> DeploymentRevision | None:
    """For an automatic rollback revision ``number``: the revision whose failure started it (the one before)."""
    revision = await session.get(DeploymentRevision, (deployment_id, number))
    if revision is None or revision.reason is not R.AUTOMATIC_ROLLBACK:
        return None
    return await session.get(DeploymentRevision, (deployment_id, number - 1))


# --- comparing -------------------------------------------------------------------------------------


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, Mapping) and not (len(value) == 1 and security.ENCRYPTED in value):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def _value_lines(settings: Settings, stored: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """One ``name: value`` line per value, secrets as ``***`` (``*** (changed)`` when ``other``'s differs)."""
    mine, theirs = _flatten(stored), _flatten(other)
    lines = []
    for name in sorted(mine):
        value = mine[name]
        if isinstance(value, Mapping) and security.ENCRYPTED in value:
            clear = security.decrypt_secret(settings, value[security.ENCRYPTED])
            peer = theirs.get(name)
            peer_clear = (
                security.decrypt_secret(settings, peer[security.ENCRYPTED])
                if isinstance(peer, Mapping) and security.ENCRYPTED in peer
                else peer
            )
            lines.append(f"{name}: {MASK}" + (" (changed)" if peer_clear != clear and name in theirs else ""))
        else:
            lines.append(f"{name}: {json.dumps(value, ensure_ascii=False, sort_keys=True)}")
    return lines


def diff(settings: Settings, a: DeploymentRevision, b: DeploymentRevision) -> str:
    """Unified diff from revision ``a`` to ``b``: the rendered compose, then the values. Every secret value of
    either revision is masked; a secret whose value changed reads ``*** (changed)`` on ``b``'s side."""
    secrets = EncryptedValues(a.variables).secret_values(settings) + EncryptedValues(b.variables).secret_values(settings)
    mask = SecretMask(secrets)

    def compose(revision: DeploymentRevision) -> list[str]:
        text = security.decrypt_secret(settings, revision.rendered_compose) if revision.rendered_compose else ""
        return mask(text).splitlines()

    parts = list(difflib.unified_diff(compose(a), compose(b), f"revision {a.number}/compose", f"revision {b.number}/compose", lineterm=""))
    a_values = [line.removesuffix(" (changed)") for line in _value_lines(settings, a.variables, b.variables)]
    b_values = _value_lines(settings, b.variables, a.variables)
    parts += difflib.unified_diff(a_values, b_values, f"revision {a.number}/values", f"revision {b.number}/values", lineterm="")
    return "\n".join(mask(line) for line in parts) + ("\n" if parts else "")


# --- what the runner needs of the revision it rolls out ---------------------------------------------


@dataclass(frozen=True)
class Rollout:
    """The revision a run rolls out: its number and reason, the images pinned, and for an automatic rollback
    the revision whose failure started it."""

    number: int
    reason: RevisionReason
    rollback_of: int | None = None
    pinned: dict[str, str] = field(default_factory=dict)
    failed: int | None = None
    failed_message: str = ""

    @property
    def is_automatic_rollback(self) -> bool:
        return self.reason is R.AUTOMATIC_ROLLBACK

    def opening(self) -> list[str]:
        """The log section that opens a rollback's rollout: what it re-applies, and why."""
        if self.reason not in (R.ROLLBACK, R.AUTOMATIC_ROLLBACK):
            return []
        images = ", ".join(f"{service} {reference}" for service, reference in sorted(self.pinned.items()))
        if self.is_automatic_rollback:
            lines = [
                f"--- Automatic rollback to revision {self.rollback_of} (the last that passed the health gate), "
                f"as revision {self.number} ---"
            ]
            if self.failed is not None:
                lines.append(f"Why: revision {self.failed} failed: {first_line(self.failed_message)}")
        else:
            lines = [f"--- Rollback to revision {self.rollback_of}, as revision {self.number} ---"]
        lines.append(
            f"Images pinned to what revision {self.rollback_of} recorded: {images}"
            if images
            else f"Revision {self.rollback_of} recorded no image digests: the images its document names are used"
        )
        return lines

    def failure_message(self, message: str) -> str:
        """``error_message`` of the deployment when this rollout fails for good: for an automatic rollback,
        both reasons."""
        if not self.is_automatic_rollback:
            return message
        text = f"automatic rollback to revision {self.rollback_of} failed: {message}"
        if self.failed is not None:
            text += f"; revision {self.failed} had failed: {self.failed_message}"
        return text


def first_line(text: str) -> str:
    return (text or "").splitlines()[0] if text else ""


async def rollout_of(session: AsyncSession, *, deployment: Deployment) -> Rollout:
    """The deployment's current revision as the runner rolls it out (a deployment without a revision row, made
    before revisions were recorded by a test or a script, rolls out as revision 1 without pins)."""
    revision = await session.get(DeploymentRevision, (deployment.id, deployment.revision))
    if revision is None:
        return Rollout(deployment.revision, R.CREATED)
    failed = await failed_before(session, deployment_id=deployment.id, number=revision.number)
    return Rollout(
        revision.number,
        revision.reason,
        revision.rollback_of,
        pinned_images(revision),
        failed.number if failed is not None else None,
        failed.error_message or "" if failed else "",
    )
