"""The shipped catalogue respects the compose policy: nothing always-refused, and deployable on ``local``
under the default (all denied) policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.app.services.stacks import catalog, templating
from backend.app.services.targets.compose_policy import ComposePolicy, check_target, host_file_violations, target_violations

CATALOGUE = sorted((Path(__file__).resolve().parents[3] / "stacks_definitions").glob("*.yaml"))


def test_the_catalogue_is_not_empty():
    assert len(CATALOGUE) >= 4


@pytest.mark.parametrize("path", CATALOGUE, ids=[p.name for p in CATALOGUE])
async def test_catalogue_stack_passes_the_default_policy(path):
    entry = await catalog.read_definition(path)  # validates like a sync does (always-refused keys included)
    specs = templating.parse_variables(entry.variables)
    values, _ = templating.example_values(specs)
    document = templating.parse_compose_yaml(templating.render_stack(entry.template, specs, values))
    assert host_file_violations(document) == []
    assert target_violations(document, ComposePolicy()) == []
    check_target(document, ComposePolicy(), target_name="local", endpoint="unix:///var/run/docker.sock")


async def test_a_catalogue_file_reading_host_files_is_refused_at_sync(tmp_path):
    (tmp_path / "ok.yaml").write_text('name: ok\nversion: "1.0.0"\ntemplate: |\n  services:\n    app: {image: busybox}\n')
    (tmp_path / "evil.yaml").write_text(
        'name: evil\nversion: "1.0.0"\ntemplate: |\n  services:\n    app:\n      image: busybox\n      env_file: [/proc/self/environ]\n'
    )
    entries, failures = await catalog.read_catalog(tmp_path)
    assert [entry.name for entry in entries] == ["ok"]
    assert failures == [
        {
            "file": "evil.yaml",
            "reason": "services.app.env_file is not allowed: it makes the compose tool read a file of the WindFlow host; "
            "put the variables under environment instead",
        }
    ]
