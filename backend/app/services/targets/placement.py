"""Placement: which workers run a target's work, so that a deployment, its stop and its delete run where the
target is reachable.

* A target that is **not placed** (the default) has its work on the shared queue (``celery``), which every
  worker without a declaration consumes, as does the backend's embedded worker; with no worker at all the
  backend runs it in-process (the asyncio fallback). One machine works exactly as it always did.
* A **placed** target has a queue of its own (:func:`queue_name`), consumed only by the workers that declare
  it in ``WORKER_TARGETS``: by id, by name, or ``local`` — the engine of the worker's own host
  (``LOCAL_DOCKER_ENDPOINT``), registered as a target bound to that host (``Target.host = HOST_ID``) the first
  time a worker of the host declares it. A target bound to a host is reached only by processes of that host.
* A worker's declaration places what it names (:func:`resolve`, at the worker's start); an admin may place
  or unplace a target (``PATCH /targets/{id}``).

The coverage (:class:`Coverage`: which live workers serve which targets) is read from the workers'
heartbeats by the runtime and shown on ``/health``, on each target (``served``, ``workers``) and in the log
of a deployment dispatched to a placed target nobody serves.

Services take the caller's session and never commit.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.app.config import Settings
from backend.app.core.events import queue_event, resource_changed
from backend.app.models import Deployment, Organization, Target, TargetType

logger = logging.getLogger(__name__)

#: the queue of every target that is not placed (Celery's default queue: a worker started without ``-Q``)
SHARED_QUEUE = "celery"
#: ``WORKER_TARGETS`` words: this host's engine; also the shared queue
LOCAL = "local"
SHARED = "*"
_QUEUE_PREFIX = "windflow.target."


def queue_name(target_id: str) -> str:
    """The queue of a placed target."""
    return f"{_QUEUE_PREFIX}{target_id}"


def queue_for(*, target_id: str, placed: bool) -> str:
    """Where the work of a target goes: its own queue when it is placed, else the shared queue."""
    return queue_name(target_id) if placed else SHARED_QUEUE


def local_target_name(host_id: str) -> str:
    return f"{LOCAL}@{host_id}"[:100]


@dataclass(frozen=True)
class Declaration:
    """A worker's ``WORKER_TARGETS``: ids or names, ``local``, ``*``. Empty: no declaration (the shared queue)."""

    names: tuple[str, ...] = ()
    local: bool = False
    shared: bool = False

    @classmethod
    def parse(cls, text: str) -> Declaration:
        words = [w.strip() for w in text.replace(";", ",").replace("\n", ",").split(",")]
        names: list[str] = []
        local = shared = False
        for word in words:
            if not word:
                continue
            if word == LOCAL:
                local = True
            elif word == SHARED:
                shared = True
            elif word not in names:
                names.append(word)
        return cls(tuple(names), local, shared)

    @property
    def everything(self) -> bool:
        """No declaration: the worker consumes the shared queue only, as every worker did before placement."""
        return not (self.names or self.local)


@dataclass
class Resolved:
    """What a declaring worker serves: the targets found (each now placed) and what could not be resolved."""

    target_ids: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # target id -> name, for the worker's log
    shared: bool = False
    problems: list[str] = field(default_factory=list)

    def queues(self) -> list[str]:
        return [*([SHARED_QUEUE] if self.shared else []), *(queue_name(t) for t in self.target_ids)]

    def heartbeat_targets(self) -> list[str]:
        """What the worker's heartbeat says it serves (``"*"`` for the shared queue)."""
        return [*([SHARED] if self.shared else []), *self.target_ids]


async def resolve(session: AsyncSession, *, settings: Settings, declaration: Declaration) -> Resolved:
    """The targets ``declaration`` names, each marked placed (its work now goes to its own queue); ``local``
    is every target bound to this host (``settings.host_id``), this host's engine registered first if it has
    none. A name matches a target's id or its name in any organisation. The caller commits."""
    resolved = Resolved(shared=declaration.shared)
    found: dict[str, Target] = {}
    for word in declaration.names:
        rows = (
            (await session.execute(select(Target).where(or_(Target.id == word, Target.name == word)).order_by(Target.created_at)))
            .scalars()
            .all()
        )
        if not rows:
            resolved.problems.append(f"no target has the id or name {word!r}")
        for target in rows:
            found[target.id] = target
    if declaration.local:
        bound = await host_targets(session, settings=settings)
        if not bound:
            registered = await register_local_target(session, settings=settings)
            if registered is None:
                resolved.problems.append(
                    f"no target is bound to this host ({settings.host_id!r}) and none could be registered: no "
                    "organisation exists yet (finish the setup, then restart this worker)"
                )
            else:
                bound = [registered]
        for target in bound:
            found[target.id] = target
    for target in found.values():
        if not target.is_active:
            resolved.problems.append(f"target {target.name!r} is inactive: its deployments are refused meanwhile")
        if not target.placed:
            target.placed = True
            queue_event(session, resource_changed(target.organization_id, "target", "updated", target.id, target.name))
        resolved.target_ids.append(target.id)
        resolved.names[target.id] = target.name
    await session.flush()
    return resolved


async def host_targets(session: AsyncSession, *, settings: Settings) -> list[Target]:
    """Every target bound to this host (``settings.host_id``), oldest first."""
    return list((await session.execute(select(Target).where(Target.host == settings.host_id).order_by(Target.created_at))).scalars().all())


async def register_local_target(session: AsyncSession, *, settings: Settings) -> Target | None:
    """Register this host's engine (``LOCAL_DOCKER_ENDPOINT``) as target ``local@<HOST_ID>``, placed and bound
    to this host, in the first organisation (the one setup created, which holds the ``local`` target of the
    host WindFlow was set up on). ``None`` when there is no organisation yet. Two workers of one host starting
    together register it once (the second finds the first's)."""
    organization_id = (
        await session.execute(select(Organization.id).order_by(Organization.created_at, Organization.id).limit(1))
    ).scalar_one_or_none()
    if organization_id is None:
        return None
    host = settings.host_id
    target = Target(
        organization_id=organization_id,
        name=local_target_name(host),
        description=f"The Docker engine of host {host} (registered by a worker of that host: WORKER_TARGETS=local)"[:500],
        type=TargetType.DOCKER,
        endpoint=settings.LOCAL_DOCKER_ENDPOINT,
        max_concurrent_deployments=2,
        is_active=True,
        placed=True,
        host=host,
    )
    try:
        async with session.begin_nested():
            session.add(target)
    except IntegrityError:  # registered meanwhile, or the name is taken by another target of that organisation
        existing = await host_targets(session, settings=settings)
        if existing:
            return existing[0]
        raise
    queue_event(session, resource_changed(organization_id, "target", "created", target.id, target.name))
    logger.info("registered target %s (%s) for this host's engine", target.name, target.id)
    return target


async def deployment_placed(session: AsyncSession, *, deployment_id: str) -> bool:
    """Whether ``deployment_id``'s target is placed (its work runs only on the target's workers)."""
    placed = (
        await session.execute(
            select(Target.placed).join(Deployment, Deployment.target_id == Target.id).where(Deployment.id == deployment_id)
        )
    ).scalar_one_or_none()
    return bool(placed)


def reachable_here(target: Target, settings: Settings) -> bool:
    """Whether this process may reach ``target``'s engine: any target not bound to a host, or one bound to this
    host. (A unix socket of another host is not this one's: the same path here is another engine.)"""
    return target.host is None or target.host == settings.host_id


@dataclass(frozen=True)
class Coverage:
    """Which live, healthy workers serve which targets (from their heartbeats' ``targets``)."""

    by_target: Counter = field(default_factory=Counter)  # target id -> live workers consuming its queue
    shared: int = 0  # live workers consuming the shared queue

    @classmethod
    def of(cls, declarations: Iterable[list[str] | None]) -> Coverage:
        by_target: Counter = Counter()
        shared = 0
        for targets in declarations:
            if targets is None or SHARED in targets:
                shared += 1
            by_target.update(t for t in (targets or []) if t != SHARED)
        return cls(by_target, shared)

    def workers(self, *, target_id: str, placed: bool) -> int:
        """Live workers that run this target's work."""
        return self.by_target[target_id] if placed else self.shared

    def served(self, *, target_id: str, placed: bool) -> bool:
        """Whether the target's work runs somewhere now: a placed target only on its workers; any other on the
        shared queue's workers, or else in the backend (its embedded worker, or the asyncio fallback)."""
        return self.by_target[target_id] > 0 if placed else True


async def placed_targets(session: AsyncSession) -> list[tuple[str, str]]:
    """``(id, name)`` of every active placed target."""
    return [
        (i, n)
        for i, n in (
            await session.execute(
                select(Target.id, Target.name).where(Target.placed.is_(True), Target.is_active.is_(True)).order_by(Target.name)
            )
        ).all()
    ]
