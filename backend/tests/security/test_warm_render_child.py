"""The bounded renderer's warm child: reused across renders, each render with its whole CPU budget, and a child
that hit a limit killed and replaced, the next render still served (``services/stacks/bounded_render.py``)."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid

import pytest

from backend.app.core.exceptions import ValidationFailed
from backend.app.services.stacks import bounded_render, templating

N = templating.parse_variables([{"name": "n", "type": "integer", "default": 1, "min": 0, "max": 10_000_000}])
TAG = templating.parse_variables([{"name": "tag", "type": "string", "default": "x"}])
BENIGN = "services:\n  web:\n    image: 'x:{{ tag }}'\n"
LOOPS = "{% for i in range(n) %}{% for j in range(1000) %}{% endfor %}{% endfor %}services:\n  web:\n    image: x\n"
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}services:\n  web:\n    image: x\n"
NAMESPACE_DOUBLING = (
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    'services:\n  web:\n    image: "{{ ns.s|length }}"\n'
)
YAML_BOMB = (
    'x-l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + "".join(f"x-l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 9))
    + "services:\n  web:\n    image: x\n"
)


@pytest.fixture(autouse=True)
def fresh_children():
    bounded_render.stop_workers()
    bounded_render.forget_renders()
    yield
    bounded_render.stop_workers()
    bounded_render.forget_renders()


def _idle_pids(limits: bounded_render.RenderLimits) -> list[int]:
    with bounded_render._idle_lock:
        return [worker.process.pid for worker in bounded_render._idle if worker.limits == limits]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _benign(limits: bounded_render.RenderLimits) -> str:
    tag = uuid.uuid4().hex[:8]  # never rendered before: not answered from the cache of rendered documents
    rendered = await bounded_render.render_stack(BENIGN, TAG, {"tag": tag}, limits)
    assert f"x:{tag}" in rendered
    return rendered


async def test_a_render_child_serves_the_next_render(renderer_limits):
    await _benign(renderer_limits)
    (warm,) = _idle_pids(renderer_limits)
    for _ in range(3):
        await _benign(renderer_limits)
        assert _idle_pids(renderer_limits) == [warm]  # the same process, not a new one per render


@pytest.mark.parametrize(
    ("template", "values", "reason"),
    [
        pytest.param(NESTED_LOOPS, {}, "cpu_time", id="cpu"),
        pytest.param(NAMESPACE_DOUBLING, {}, None, id="memory"),
        pytest.param(YAML_BOMB, {}, None, id="yaml-expansion"),
    ],
)
async def test_a_child_that_hit_a_limit_is_killed_and_the_next_render_works(renderer_limits, template, values, reason):
    await _benign(renderer_limits)
    (warm,) = _idle_pids(renderer_limits)
    with pytest.raises(ValidationFailed) as refused:
        await bounded_render.render_stack(template, [], values, renderer_limits)
    assert refused.value.code in {"template_limit", "yaml_limit"}, refused.value.detail
    if reason is not None:
        assert refused.value.params["reason"] == reason
    assert _gone(warm), "the child that rendered a hostile template still runs"
    assert warm not in _idle_pids(renderer_limits)
    await _benign(renderer_limits)  # a fresh child (started in the background, or by this render) serves it
    assert warm not in _idle_pids(renderer_limits) and _idle_pids(renderer_limits)


async def test_each_render_of_a_warm_child_has_its_whole_cpu_budget():
    """Renders of 0.4 s of CPU each, with a budget of 1 s: the child's CPU time adds up past the budget, yet
    none is killed (``RLIMIT_CPU`` is raised before each render); a child with no full budget left retires
    and a fresh one renders."""
    limits = bounded_render.RenderLimits(cpu_seconds=1.0)
    started = time.process_time()
    templating.render_stack(LOOPS, N, {"n": 2000})
    per_outer = (time.process_time() - started) / 2000
    n = int(0.4 / per_outer)
    await bounded_render.render_stack(LOOPS, N, {"n": n}, limits)
    (first,) = _idle_pids(limits)
    survived = 1
    for extra in range(1, 6):
        await bounded_render.render_stack(LOOPS, N, {"n": n + extra}, limits)  # n + extra: never from the cache
        survived += first in _idle_pids(limits)
    # three renders or more in one child, their CPU time together past the 1 s budget, none of them refused
    assert survived >= 3


async def test_a_child_serves_only_renders_with_its_own_limits(renderer_limits):
    await _benign(renderer_limits)
    (warm,) = _idle_pids(renderer_limits)
    tightened = dataclasses.replace(renderer_limits, memory_bytes=renderer_limits.memory_bytes // 2)
    await _benign(tightened)
    assert _idle_pids(renderer_limits) == [warm]
    assert warm not in _idle_pids(tightened) and len(_idle_pids(tightened)) == 1


async def test_a_child_killed_while_it_waited_is_replaced(renderer_limits):
    await _benign(renderer_limits)
    (warm,) = _idle_pids(renderer_limits)
    os.kill(warm, 9)
    time.sleep(0.2)
    await _benign(renderer_limits)
    assert warm not in _idle_pids(renderer_limits) and _idle_pids(renderer_limits)


@pytest.fixture
def renderer_limits() -> bounded_render.RenderLimits:
    return bounded_render.RenderLimits(cpu_seconds=2.0, memory_bytes=512 * 1024 * 1024)


async def test_a_forked_process_does_not_use_its_parents_children(renderer_limits):
    """A process forked from the backend (a prefork pool) would share the warm child's pipe with its parent:
    it starts with no warm child of its own."""
    await _benign(renderer_limits)
    assert _idle_pids(renderer_limits)
    pid = os.fork()
    if pid == 0:  # the forked process: exit 0 when it sees no warm child
        os._exit(0 if not bounded_render._idle else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _idle_pids(renderer_limits)  # the parent's warm child is still there
