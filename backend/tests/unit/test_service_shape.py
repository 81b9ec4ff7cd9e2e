"""One service shape (docs/architecture.md): the session first, keyword-only arguments after it, and no
commit of the caller's transaction."""

from __future__ import annotations

import ast
from pathlib import Path

from backend.tests.processes import REPO_ROOT

SERVICES = REPO_ROOT / "backend/app/services"
#: Recovery commits each deployment's change on its own (one failure never undoes the others), on the
#: session of the product guide's snippet (docs/architecture.md#the-product-guide), which does not commit afterwards. Documented in the module.
COMMITS_THE_CALLERS_SESSION = {"recovery.py"}


def _functions(path: Path):
    def walk(body, owner):
        for node in body:
            if isinstance(node, ast.ClassDef):
                yield from walk(node.body, node.name)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield owner, node

    yield from walk(ast.parse(path.read_text()).body, None)


def _takes_session(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    positional = fn.args.posonlyargs + fn.args.args
    return bool(positional) and positional[0].arg == "session"


def _problems(path: Path) -> list[str]:
    problems = []
    for owner, fn in _functions(path):
        name = f"{path.name}::{owner + '.' if owner else ''}{fn.name}"
        if not _takes_session(fn):
            continue
        extra = [a.arg for a in (fn.args.posonlyargs + fn.args.args)[1:]]
        if extra and not fn.name.startswith("_"):
            problems.append(f"{name}: {', '.join(extra)} should be keyword-only (after `*`)")
        if path.name not in COMMITS_THE_CALLERS_SESSION:
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "commit"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "session"
                ):
                    problems.append(f"{name} commits the caller's session (line {node.lineno})")
    return problems


def test_services_take_the_session_then_keywords_and_never_commit_it():
    problems = [p for path in sorted(SERVICES.rglob("*.py")) for p in _problems(path)]
    assert problems == []


def test_the_check_finds_a_positional_argument_and_a_commit(tmp_path):
    bad = tmp_path / "bad_service.py"
    bad.write_text("async def create(session, user, *, data):\n    session.add(data)\n    await session.commit()\n")
    assert _problems(bad) == [
        "bad_service.py::create: user should be keyword-only (after `*`)",
        "bad_service.py::create commits the caller's session (line 3)",
    ]
