"""Rendering a tenant's template off the event loop, in a child process with hard limits.

Jinja's sandbox stops attribute tricks but not work: ``{% for i in range(100000) %}{% for j in
range(100000) %}`` or ``'a'|center(50000000)`` run as long and allocate as much as they like, and a thread
cannot be interrupted. So :func:`render_stack` and :func:`render_preview` run
:func:`backend.app.services.stacks.templating.render_stack` (render, then the bounded YAML parse) in a child
process forked from a ``forkserver`` (the templating module is preloaded there) with ``RLIMIT_CPU`` and
``RLIMIT_AS`` set, and a wall-clock deadline enforced by the parent, which kills it.

* The child is kept warm: a render child that answered within its limits waits for the next render (with the
  same limits) instead of exiting, so a render pays a pipe round trip rather than a process start (a fork,
  unpickling, the interpreter's first steps: 15-40 ms on a loaded two-core machine). Each render gets the whole
  CPU budget again (``RLIMIT_CPU`` is raised to the CPU time used so far plus the budget; its hard limit is
  the child's lifetime budget, and a child that has no full budget left is replaced first). A child that hit a
  limit (CPU time, memory, output size, nesting, YAML expansion), missed the deadline, died, grew (its peak resident memory
  :data:`WORKER_MAX_GROWTH_KB` above what it started with) or served :data:`WORKER_MAX_RENDERS` renders is
  killed and never reused; a fresh one is started in the background for the next render. Between renders the
  child keeps nothing of a render (no module state is written by one; the sandbox's templates are compiled
  per render from their source).

* The event loop only waits (in a small dedicated thread pool), so ``/health`` and every other request are
  served while a hostile template burns its CPU budget in its own process.
* Exceeding a limit is a 422 naming it: ``template_limit`` (CPU time, memory, output size) or
  ``yaml_limit`` (alias expansion, nesting). A child that dies for another reason refuses the document too.
* The limits are settings (``TEMPLATE_RENDER_*``, ``YAML_MAX_*``); see docs/configuration.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import multiprocessing
import multiprocessing.context
import os
import resource
import signal
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import set_spawning_popen
from typing import Any

from backend.app.config import Settings, get_settings
from backend.app.core.exceptions import ServiceUnavailable, ValidationFailed
from backend.app.engines import compose_yaml
from backend.app.services.stacks import templating
from backend.app.services.stacks.templating import sandbox

logger = logging.getLogger(__name__)

#: Renders waiting on their child process at once; more queue here, never on the event loop's executor.
MAX_CONCURRENT_RENDERS = 4


@dataclass(frozen=True)
class RenderLimits:
    cpu_seconds: float = 5.0
    memory_bytes: int = 512 * 1024 * 1024
    max_output_chars: int = 1_048_576
    yaml_max_nodes: int = 100_000
    yaml_max_expanded_chars: int = 4 * 1_048_576
    compose_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RenderLimits:
        """The limits of ``settings``; without, those the application was created with (else the environment's)."""
        if settings is None and _configured is not None:
            return _configured
        s = settings or get_settings()
        return cls(
            cpu_seconds=s.TEMPLATE_RENDER_TIMEOUT_SECONDS,
            memory_bytes=s.TEMPLATE_RENDER_MEMORY_MB * 1024 * 1024,
            max_output_chars=s.TEMPLATE_MAX_OUTPUT_CHARS,
            yaml_max_nodes=s.YAML_MAX_NODES,
            yaml_max_expanded_chars=s.YAML_MAX_EXPANDED_CHARS,
            compose_timeout=s.COMPOSE_VALIDATE_TIMEOUT_SECONDS,
        )


_configured: RenderLimits | None = None


def configure(settings: Settings) -> None:
    """Make ``settings``' limits the default of this process (``create_app`` calls it)."""
    global _configured
    _configured = RenderLimits.from_settings(settings)
    # every compose document this process reads (the policy's, the drivers') has the renderer's YAML bounds
    compose_yaml.configure(max_nodes=_configured.yaml_max_nodes, max_expanded_chars=_configured.yaml_max_expanded_chars)


_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["backend.app.services.stacks.render_preload"])


class _Popen(popen_forkserver.Popen):
    """The forkserver launcher, minus re-running the parent's ``__main__`` in the child.

    multiprocessing re-imports the main module in every child (so that pickled functions defined there
    resolve). The render child needs nothing from it, and re-running it would cost an import of the whole
    application per render (``python -m backend.app.main``) or run an unguarded script's body.

    ``_launch`` is a copy of ``multiprocessing.popen_forkserver.Popen._launch`` (plus the two ``pop``), pinned
    by ``tests/unit/test_dependency_pins.py::test_bounded_render_launch_is_the_forkserver_launch_minus_main_reimport``
    and ``test_the_forkserver_hooks_bounded_render_relies_on``: a change of the standard library's launcher
    fails there.
    """

    def _launch(self, process_obj) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_name", None)
        prep_data.pop("init_main_from_path", None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _RenderProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _Popen(process_obj)


_threads = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_RENDERS, thread_name_prefix="render")
#: Starts a replacement for a render child that was killed, off the render threads.
_starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render-start")

#: A warm render child serves at most this many renders, then is replaced.
WORKER_MAX_RENDERS = 200
#: A render child whose peak resident memory grew this much (KiB) above its start is replaced after its render.
WORKER_MAX_GROWTH_KB = 64 * 1024


def _lower(kind: int, soft: int, hard: int) -> None:
    _, ceiling = resource.getrlimit(kind)  # never ask for more than the process may have
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(kind, (soft, hard))


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _apply_limits(limits: RenderLimits) -> int:
    """The limits of a render child, set once when it starts; returns its lifetime CPU bound (the hard
    ``RLIMIT_CPU``, in CPU seconds): room for one render's full budget and as much again."""
    budget = _whole_seconds(limits.cpu_seconds)
    first = _whole_seconds(_cpu_used() + limits.cpu_seconds)
    _lower(resource.RLIMIT_CPU, first, first + 1 + budget)
    _lower(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)
    sandbox.configure(max_output_chars=limits.max_output_chars)
    compose_yaml.configure(max_nodes=limits.yaml_max_nodes, max_expanded_chars=limits.yaml_max_expanded_chars)
    return resource.getrlimit(resource.RLIMIT_CPU)[1]


def _arm_cpu(limits: RenderLimits, hard: int, *, first: bool) -> bool:
    """Give the next render its whole CPU budget: the soft ``RLIMIT_CPU`` (SIGXCPU) at the CPU time used so far
    plus the budget, below the child's hard bound (SIGKILL). False when that no longer fits: the child retires
    (a child's first render takes what the process may have, as a process of its own would)."""
    soft = _whole_seconds(_cpu_used() + limits.cpu_seconds)
    if hard != resource.RLIM_INFINITY and soft + 1 > hard:
        if not first:
            return False
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    return True


#: Refusals that mean a limit was hit (output size, YAML expansion): the child that hit one is not reused.
_LIMIT_CODES = frozenset({"template_limit", "yaml_limit"})


def _render_reply(kind: str, template: str, variables: list, values: dict) -> tuple:
    """One render: ``("ok", result, deterministic)``, ``("error", detail, code, params)`` (a compose-policy
    refusal's params name its rules and paths, as the API's error handler would), ``("memory",)`` or
    ``("limit", detail, code, params)`` (nesting too deep)."""
    try:
        if kind == "preview":
            result: Any = templating.render_preview(template, variables, values)
        else:
            result = templating.render_stack(template, variables, values)
        return ("ok", result, sandbox.is_deterministic(template))
    except ValidationFailed as exc:
        params = dict(exc.params)
        if violations := getattr(exc, "violations", None):
            params.setdefault("rules", sorted({v.rule for v in violations}))
            params.setdefault("paths", list(dict.fromkeys(v.path for v in violations)))
        return ("error", exc.detail, exc.code, params)
    except MemoryError:
        return ("memory",)
    except RecursionError:
        return ("limit", "template: nested too deeply", "template_limit", {"reason": "nesting"})


def _serve(conn, limits: RenderLimits) -> None:
    """Runs in a render child: render one request after another (``(kind, template, variables, values)``),
    answering ``(reply, reusable)``; ``("retire",)`` when it has no full CPU budget left. Returns (the child
    exits) when the parent closes the pipe or after a render that makes it unfit for another."""
    try:
        hard = _apply_limits(limits)
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        served = 0
        while True:
            try:
                kind, template, variables, values = conn.recv()
            except (EOFError, OSError):
                return
            if not _arm_cpu(limits, hard, first=served == 0):
                conn.send(("retire",))
                return
            reply = _render_reply(kind, template, variables, values)
            served += 1
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline > WORKER_MAX_GROWTH_KB
            within = reply[0] == "ok" or (reply[0] == "error" and reply[2] not in _LIMIT_CODES)
            reusable = within and not grown and served < WORKER_MAX_RENDERS
            del template, variables, values
            conn.send((reply, reusable))
            del reply
            if not reusable:
                return
    finally:
        conn.close()


class _Worker:
    """A render child (its process and the parent's end of its pipe), used by one render thread at a time."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.conn, child_end = _context.Pipe(duplex=True)
        self.process = _RenderProcess(target=_serve, args=(child_end, limits), name="windflow-render", daemon=True)
        try:
            self.process.start()
        except (OSError, RuntimeError) as exc:
            self.conn.close()
            logger.error("cannot start a template rendering process: %s", exc)
            raise ServiceUnavailable("the template renderer could not start a process; retry later", code="renderer_unavailable") from None
        finally:
            child_end.close()

    def kill(self) -> int | None:
        """Kill the child (if it still runs) and reap it; its exit status (None: not reaped within 10 s)."""
        self.conn.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        exitcode = self.process.exitcode
        if exitcode is not None:
            self.process.close()
        return exitcode


_idle: list[_Worker] = []
_idle_lock = threading.Lock()


def _forget_after_fork() -> None:
    """In a process forked from this one (a prefork worker pool): the children and pipes are the parent's, and
    the lock may have been held by one of its other threads; start with none."""
    global _idle, _idle_lock
    _idle, _idle_lock = [], threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _take(limits: RenderLimits) -> _Worker:
    with _idle_lock:
        for index in range(len(_idle) - 1, -1, -1):
            if _idle[index].limits == limits:
                return _idle.pop(index)
    return _Worker(limits)


def _give_back(worker: _Worker) -> None:
    with _idle_lock:
        _idle.append(worker)
        excess = _idle[: max(0, len(_idle) - MAX_CONCURRENT_RENDERS)]  # the oldest ones (other limits, mostly)
        del _idle[: len(excess)]
    for old in excess:
        old.kill()


def _start_spare(limits: RenderLimits) -> None:
    """A warm child for the next render with ``limits``, unless one is waiting already (runs on ``_starter``)."""
    with _idle_lock:
        if any(worker.limits == limits for worker in _idle):
            return
    try:
        _give_back(_Worker(limits))
    except ServiceUnavailable:
        pass  # logged; the next render starts its own


def stop_workers() -> None:
    """Kill every idle render child (tests; the children of a process that exits die with it anyway)."""
    with _idle_lock:
        workers = list(_idle)
        _idle.clear()
    for worker in workers:
        worker.kill()


def _memory_error(limits: RenderLimits) -> ValidationFailed:
    return ValidationFailed(
        f"template: rendering exceeded the memory limit of {limits.memory_bytes // (1024 * 1024)} MiB "
        "(TEMPLATE_RENDER_MEMORY_MB); the document is refused",
        code="template_limit",
        params={"reason": "memory", "mib": limits.memory_bytes // (1024 * 1024)},
    )


def _time_error(limits: RenderLimits) -> ValidationFailed:
    return ValidationFailed(
        f"template: rendering exceeded the CPU time limit of {limits.cpu_seconds:g} s "
        "(TEMPLATE_RENDER_TIMEOUT_SECONDS); the document is refused",
        code="template_limit",
        params={"reason": "cpu_time", "seconds": limits.cpu_seconds},
    )


def _run_blocking(kind: str, template: str, variables: list, values: dict, limits: RenderLimits) -> Any:
    message = None
    exitcode: int | None = None
    reusable = False
    for _ in range(2):  # a second time only with a fresh child, after one that had retired or died while it waited
        worker = _take(limits)
        sent = False
        answer = None
        try:
            worker.conn.send((kind, template, variables, values))
            sent = True
            # Wall clock: the CPU budget plus slack for a loaded machine and a child that sleeps rather than computes.
            if worker.conn.poll(limits.cpu_seconds * 2 + 2):
                answer = worker.conn.recv()
        except (EOFError, OSError):
            pass  # it died: before this render if the request could not even be sent
        finally:
            if answer is not None and answer != ("retire",):
                message, reusable = answer
            if reusable:
                _give_back(worker)
            else:
                exitcode = worker.kill()
        if sent and answer != ("retire",):
            break
    if not reusable:
        with contextlib.suppress(RuntimeError):  # the interpreter is shutting down: no spare then
            _starter.submit(_start_spare, limits)  # a warm child for the next render
    if message is None:
        # Killed by RLIMIT_CPU (SIGXCPU, SIGKILL at the hard limit) or by our deadline: time ran out.
        if exitcode in (None, -signal.SIGXCPU, -signal.SIGKILL):
            raise _time_error(limits)
        raise ValidationFailed(
            f"template: the rendering process failed (exit status {exitcode}); the document is refused",
            code="template_limit",
            params={"reason": "process_failed", "status": exitcode},
        )
    if message[0] == "ok":
        return message[1], message[2]
    if message[0] == "memory":
        raise _memory_error(limits)
    raise ValidationFailed(message[1], code=message[2], params=message[3] if len(message) > 3 else None)


async def _run(kind: str, template: str, variables: list, values: dict, limits: RenderLimits | None) -> tuple[Any, bool]:
    limits = limits or RenderLimits.from_settings()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_threads, _run_blocking, kind, template, variables, values, limits)


# --- documents already rendered within the limits --------------------------------------------------------
# A stack deployed again with the same values (or previewed, then deployed) renders to the same text: the
# template is a pure function of the values unless it draws at random (sandbox.is_deterministic). So the
# bounded child's result is remembered by the hash of everything it depended on: the template, the variable
# schema, the values and the limits (a tightened limit misses and renders again, within the new limits).
# Only successes are kept. The texts hold secret values: they stay in this process's memory, which had them
# anyway, bounded in count and size; nothing is written anywhere.

RENDERED_MAX_ENTRIES = 256
RENDERED_MAX_CHARS = 16 * 1_048_576
_rendered: OrderedDict[str, str] = OrderedDict()
_rendered_chars = 0
_rendered_lock = threading.Lock()


def _render_key(template: str, variables: list, values: dict, limits: RenderLimits) -> str:
    schema = [v.model_dump(mode="json") if hasattr(v, "model_dump") else v for v in variables]
    material = json.dumps([template, schema, values, dataclasses.astuple(limits)], sort_keys=True, default=repr)
    return hashlib.sha256(material.encode()).hexdigest()


def _remember_render(key: str, rendered: str) -> None:
    global _rendered_chars
    if len(rendered) > RENDERED_MAX_CHARS // 4:
        return
    with _rendered_lock:
        if key in _rendered:
            return
        _rendered[key] = rendered
        _rendered_chars += len(rendered)
        while len(_rendered) > RENDERED_MAX_ENTRIES or _rendered_chars > RENDERED_MAX_CHARS:
            _, dropped = _rendered.popitem(last=False)
            _rendered_chars -= len(dropped)


def forget_renders() -> None:
    """Empty the cache of rendered documents (tests)."""
    global _rendered_chars
    with _rendered_lock:
        _rendered.clear()
        _rendered_chars = 0


async def render_stack(template: str, variables: list, values: dict, limits: RenderLimits | None = None) -> str:
    """:func:`templating.render_stack` in a bounded child process (see the module docstring); the same
    template, schema, values and limits rendered before in this process give the text it rendered then."""
    limits = limits or RenderLimits.from_settings()
    key = _render_key(template, variables, values, limits)
    with _rendered_lock:
        known = _rendered.get(key)
    if known is not None:
        return known
    rendered, deterministic = await _run("stack", template, variables, values, limits)
    if deterministic:
        _remember_render(key, rendered)
    return rendered


def known_render(template: str, variables: list, values: dict, limits: RenderLimits | None = None) -> str | None:
    """What :func:`render_stack` would give at once, from this process's memory (no child): the text it
    rendered before for the same template, schema, values and limits; None when it must render."""
    limits = limits or RenderLimits.from_settings()
    key = _render_key(template, variables, values, limits)
    with _rendered_lock:
        return _rendered.get(key)


async def render_preview(template: str, variables: list, values: dict, limits: RenderLimits | None = None) -> str:
    """:func:`templating.render_preview` in a bounded child process."""
    preview, _ = await _run("preview", template, variables, values, limits)
    return preview


async def validate_with_compose(rendered: str, *, redact=(), limits: RenderLimits | None = None) -> None:
    """:func:`templating.validate_with_compose` with the configured timeout (fails closed)."""
    limits = limits or RenderLimits.from_settings()
    await templating.validate_with_compose(rendered, redact=redact, timeout=limits.compose_timeout)
