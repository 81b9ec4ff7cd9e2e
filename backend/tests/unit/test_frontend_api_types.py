"""The UI's TypeScript types are generated from the OpenAPI document: a schema change must regenerate them.

``frontend/scripts/gen-api.mjs --check`` builds the document with ``create_app(...).openapi()`` (no server)
and compares openapi-typescript's output with the committed ``frontend/src/api/schema.d.ts``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FRONTEND = ROOT / "frontend"


def test_generated_api_types_match_the_openapi_document() -> None:
    node = shutil.which("node")
    if node is None or not (FRONTEND / "node_modules" / "openapi-typescript").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and frontend/node_modules are needed (make test installs them with npm ci)")
        pytest.skip("node or frontend/node_modules missing: run `make frontend` first")
    result = subprocess.run(
        [node, str(FRONTEND / "scripts" / "gen-api.mjs"), "--check", "--python", sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr or result.stdout
