"""What creation remembers of its checks, and what it never lets through because of it.

A stack deployed again with the same values renders to the same text and the compose tool gives it the same
verdict, so neither the bounded rendering nor ``docker compose config`` runs twice for it in one process
(``bounded_render.render_stack``, ``compose_cli.known_valid``). These tests hold the other side of that: a
changed document, a replaced tool, a tightened limit or a tightened target policy is judged again, and a
template that draws at random is rendered every time.
"""

from __future__ import annotations

import dataclasses
import shlex
import uuid

import pytest
from sqlalchemy import event

from backend.app.core.exceptions import ValidationFailed
from backend.app.engines.compose_cli import NORMALISED_OK, known_valid
from backend.app.services.stacks import bounded_render, templating
from backend.app.services.stacks.templating import documents
from backend.tests.conftest import TEST_IMAGE

#: A valid key outside the in-process judge's subset (engines/compose_judge.py): the document goes to the tool.
OUTSIDE_THE_JUDGE = "    stop_signal: SIGTERM\n"


async def test_an_accepted_document_is_not_judged_twice_but_a_changed_one_is(compose, tool_runs):
    document = f"services:\n  web:\n    image: cache-{uuid.uuid4().hex[:8]}\n{OUTSIDE_THE_JUDGE}"
    await templating.validate_with_compose(document)
    await templating.validate_with_compose(document)
    assert tool_runs == [document]
    assert known_valid(document, compose, verdict=NORMALISED_OK)

    changed = document + "    not_a_compose_key: 1\n"
    with pytest.raises(ValidationFailed) as refused:
        await templating.validate_with_compose(changed)
    assert refused.value.code == "invalid_compose" and "not_a_compose_key" in refused.value.detail
    assert tool_runs == [document, changed]
    with pytest.raises(ValidationFailed):  # a refusal is never remembered: the tool says it again
        await templating.validate_with_compose(changed)
    assert tool_runs == [document, changed, changed]


async def test_a_replaced_compose_tool_judges_again(compose, tool_runs, monkeypatch, tmp_path):
    tool = tmp_path / "compose"
    script = "#!/bin/sh\nexec " + " ".join(shlex.quote(part) for part in compose) + ' "$@"\n'
    tool.write_text(script)
    tool.chmod(0o755)
    monkeypatch.setattr(documents, "find_compose_command", lambda: (str(tool),))
    document = f"services:\n  web:\n    image: tool-{uuid.uuid4().hex[:8]}\n{OUTSIDE_THE_JUDGE}"
    await templating.validate_with_compose(document)
    await templating.validate_with_compose(document)
    assert tool_runs == [document]
    tool.write_text(script + "# upgraded\n")  # another program at the same path
    await templating.validate_with_compose(document)
    assert tool_runs == [document, document]


@pytest.fixture
def renders(monkeypatch) -> list[str]:
    """The kinds of bounded rendering that started a child process, in order."""
    bounded_render.forget_renders()
    started: list[str] = []
    original = bounded_render._run

    async def counting(kind, *args):
        started.append(kind)
        return await original(kind, *args)

    monkeypatch.setattr(bounded_render, "_run", counting)
    yield started
    bounded_render.forget_renders()


async def test_a_rendering_is_reused_only_for_the_same_template_values_and_limits(renders):
    parsed = templating.parse_variables([{"name": "greeting", "type": "string", "default": "hi"}])
    template = "services:\n  web:\n    image: x\n    command: ['echo', '{{ greeting }}']\n"
    limits = bounded_render.RenderLimits()
    first = await bounded_render.render_stack(template, parsed, {"greeting": "hi"}, limits)
    assert await bounded_render.render_stack(template, parsed, {"greeting": "hi"}, limits) == first
    assert renders == ["stack"]

    other = await bounded_render.render_stack(template, parsed, {"greeting": "ho"}, limits)
    assert "'ho'" in other and len(renders) == 2
    await bounded_render.render_stack(template + "    init: true\n", parsed, {"greeting": "hi"}, limits)
    assert len(renders) == 3

    tightened = dataclasses.replace(limits, max_output_chars=len(first) - 1)
    with pytest.raises(ValidationFailed) as refused:
        await bounded_render.render_stack(template, parsed, {"greeting": "hi"}, tightened)
    assert "TEMPLATE_MAX_OUTPUT_CHARS" in refused.value.detail and len(renders) == 4


async def test_a_template_that_draws_at_random_is_rendered_every_time(renders):
    limits = bounded_render.RenderLimits()
    for template in (
        "services:\n  web:\n    image: {{ ['x', 'y'] | random }}\n",
        "services:\n  web:\n    image: {% filter random %}xy{% endfilter %}\n",
    ):
        renders.clear()
        await bounded_render.render_stack(template, [], {}, limits)
        await bounded_render.render_stack(template, [], {}, limits)
        assert renders == ["stack", "stack"], template


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)  # what is remembered is the same on SQLite
async def test_a_tightened_target_policy_refuses_a_document_validated_before(world, compose):
    """The same stack and values, accepted while the target allowed privileged mode, are refused once the
    policy no longer does, although the document's compose verdict is remembered."""
    template = f"services:\n  app:\n    image: {TEST_IMAGE}\n    privileged: true\n    command: ['true']\n    restart: 'no'\n"
    stack = await world.stack(template)
    granted = await world.set_policy({"allow_privileged": True})
    assert granted.status_code == 200, granted.text
    assert (await world.deploy(stack["id"]))["status"] in ("pending", "deploying")  # accepted
    assert known_valid(template, compose, verdict=NORMALISED_OK)  # the POST's verdict is remembered

    reset = await world.set_policy(None)
    assert reset.status_code == 200 and reset.json()["compose_policy"]["allow_privileged"] is False
    refused = await world.deploy(stack["id"], expect=422)
    assert refused["code"] == "compose_policy_denied"
    assert refused["detail"].startswith("services.app.privileged is not allowed")


async def test_a_judged_document_is_checked_in_the_lookups_transaction(world, compose, db):
    """A document never judged before is rendered and judged with no transaction open (the lookups' one ends
    first); one judged before is checked at once, and the deployment is written in the lookups' transaction
    (one commit fewer). Its policy is checked on both (the test above)."""
    template = f"services:\n  app:\n    image: {TEST_IMAGE}\n    command: ['true']\n    restart: 'no'\n    labels: {{x: '{{{{ tag }}}}'}}\n"
    stack = await world.stack(template, [{"name": "tag", "type": "string", "default": "a"}])
    values = {"tag": str(uuid.uuid4())}  # a document that neither the stack's checks nor anything else judged
    statements: dict[int, list[str]] = {}
    committed: list[list[str]] = []

    def statement(conn, _cursor, text, *_args) -> None:
        statements.setdefault(id(conn.connection), []).append(" ".join(text.split())[:40])

    def commit(conn) -> None:
        committed.append(statements.pop(id(conn.connection), []))

    def creation() -> list[str]:
        (found,) = [t for t in committed if any(s.startswith("INSERT INTO deployments ") for s in t)]
        return found

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    try:
        await world.deploy(stack["id"], values)
        first = creation()
        committed.clear()
        await world.deploy(stack["id"], values)
        second = creation()
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)
    assert not any(s.startswith("SELECT stacks.") for s in first), first
    assert any(s.startswith("SELECT stacks.") for s in second), second
