"""The layers of docs/architecture.md, checked by import-linter (the contract is in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from backend.tests.processes import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)},
    )


def _layered_modules() -> set[str]:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    return {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}


def test_imports_point_down_and_make_no_cycle():
    done = _lint(REPO_ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_every_module_of_the_app_is_in_a_layer():
    """A new top-level module or core module cannot escape the contract by not being named in it."""
    named = _layered_modules()
    app = REPO_ROOT / "backend/app"
    found = {f"backend.app.{p.stem}" for p in app.iterdir() if p.suffix == ".py" and p.stem != "__init__"}
    found |= {f"backend.app.{p.name}" for p in app.iterdir() if (p / "__init__.py").exists() and p.name != "core"}
    found |= {f"backend.app.core.{p.stem}" for p in (app / "core").glob("*.py") if p.stem != "__init__"}
    assert found - named == set(), f"modules in no layer of pyproject.toml's contract: {sorted(found - named)}"


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: a service that imports the runtime (as recovery once did) is reported."""
    shutil.copytree(REPO_ROOT / "backend", tmp_path / "backend", ignore=shutil.ignore_patterns("tests", "__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "backend/app/services/upward.py").write_text(
        "def dispatch_now():\n    from backend.app.runtime.dispatch import Dispatcher  # lazy, still counted\n\n    return Dispatcher\n"
    )
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "backend.app.services.upward -> backend.app.runtime.dispatch" in done.stdout
