"""The stack catalogue: the real ``stacks_definitions/`` on SQLite and PostgreSQL, load strategies,
broken files, and every catalogue stack rendered with its defaults and judged by the real compose tool."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from backend.app.config import PROJECT_ROOT
from backend.app.engines.compose_cli import find_compose_command
from backend.app.models import Organization, Stack
from backend.app.services.stacks import catalog, templating
from backend.app.services.stacks.catalog import is_newer, load_catalog, version_key
from backend.tests.conftest import make_settings

CATALOG_DIR = PROJECT_ROOT / "stacks_definitions"
CATALOG_FILES = sorted(CATALOG_DIR.glob("*.yaml"))
EXPECTED = {"nginx", "postgresql", "redis", "gitea"}


def _names() -> set[str]:
    return {yaml.safe_load(path.read_text())["name"] for path in CATALOG_FILES}


async def _org(session, name: str = "acme") -> str:
    org = Organization(name=name)
    session.add(org)
    await session.flush()
    return org.id


async def _stacks(session, organization_id: str) -> dict[str, Stack]:
    rows = (await session.execute(select(Stack).where(Stack.organization_id == organization_id))).scalars().all()
    return {stack.name: stack for stack in rows}


def _copy_catalog(tmp_path: Path) -> Path:
    directory = tmp_path / "catalog"
    shutil.copytree(CATALOG_DIR, directory)
    return directory


def _rewrite(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _counts(stats: dict) -> tuple[int, int, int, int]:
    return stats["created"], stats["updated"], stats["skipped"], stats["errors"]


# --- the real catalogue --------------------------------------------------------------------------


def test_the_catalogue_has_the_promised_stacks():
    assert _names() >= EXPECTED
    assert len(_names()) == len(CATALOG_FILES)  # one stack per file, no duplicates


async def test_the_real_catalogue_loads(session):
    org_id = await _org(session)
    stats = await load_catalog(session, organization_id=org_id, directory=CATALOG_DIR, strategy="update")
    await session.commit()
    assert stats == {"created": len(CATALOG_FILES), "updated": 0, "skipped": 0, "errors": 0, "failures": []}
    stacks = await _stacks(session, org_id)
    assert set(stacks) == _names()
    for stack in stacks.values():
        assert stack.source == "catalog"
        assert version_key(stack.version)
        assert stack.description and stack.template.startswith("services:")
        # stored in canonical form: it parses back to itself
        assert [s.model_dump() for s in templating.parse_variables(stack.variables)] == stack.variables
    # loading again changes nothing
    again = await load_catalog(session, organization_id=org_id, directory=CATALOG_DIR, strategy="update")
    assert _counts(again) == (0, 0, len(CATALOG_FILES), 0)


@pytest.mark.parametrize("path", CATALOG_FILES, ids=[p.stem for p in CATALOG_FILES])
async def test_every_catalogue_stack_renders_and_passes_compose(path):
    if find_compose_command() is None:
        pytest.skip("no docker compose installed")
    entry = await catalog.read_definition(path)
    specs = templating.parse_variables(entry.variables)
    assert templating.missing_required(specs) == []  # deployable with the defaults alone
    values = templating.resolve_values(specs, {})
    rendered = templating.render_stack(entry.template, specs, values)
    await templating.validate_with_compose(rendered)
    document = templating.parse_compose_yaml(rendered)
    for service in document["services"].values():
        assert ":" in service["image"], f"{path.name}: pin an image tag"
    # the generated secrets reach the document; the preview hides every one of them
    secrets = templating.secret_values(specs, values)
    for secret in secrets:
        assert secret in rendered
    preview = templating.render_preview(entry.template, specs, values)
    for secret in secrets:
        assert secret not in preview


async def test_the_web_app_stack_generates_its_database_password_once(session):
    entry = await catalog.read_definition(CATALOG_DIR / "gitea.yaml")
    specs = templating.parse_variables(entry.variables)
    assert "database.password" in templating.secret_paths(specs)
    password_spec = next(v for v in next(s for s in specs if s.name == "database").variables if v.name == "password")
    assert password_spec.default == "{{ generate_password(24) }}"
    values = templating.resolve_values(specs, {})
    password = values["database"]["password"]
    assert len(password) == 24
    rendered = templating.render_stack(entry.template, specs, values)
    document = templating.parse_compose_yaml(rendered)
    # the web service and the database agree on the one generated password
    assert document["services"]["gitea"]["environment"]["GITEA__database__PASSWD"] == password
    assert document["services"]["db"]["environment"]["POSTGRES_PASSWORD"] == password
    assert 20000 <= values["ssh_port"] <= 40000


# --- strategies -------------------------------------------------------------------------------------


async def test_strategy_skip_keeps_existing_stacks(session, tmp_path):
    directory = _copy_catalog(tmp_path)
    org_id = await _org(session)
    await load_catalog(session, organization_id=org_id, directory=directory, strategy="skip")
    _rewrite(directory / "nginx.yaml", version="2.0.0", description="newer")
    stats = await load_catalog(session, organization_id=org_id, directory=directory, strategy="skip")
    assert _counts(stats) == (0, 0, len(CATALOG_FILES), 0)
    assert (await _stacks(session, org_id))["nginx"].version == "1.0.0"


async def test_strategy_update_compares_versions_semantically(session, tmp_path):
    directory = _copy_catalog(tmp_path)
    org_id = await _org(session)
    await load_catalog(session, organization_id=org_id, directory=directory, strategy="update")
    nginx = directory / "nginx.yaml"

    _rewrite(nginx, version="1.9.0", description="nine")
    assert _counts(await load_catalog(session, organization_id=org_id, directory=directory, strategy="update")) == (
        0,
        1,
        len(CATALOG_FILES) - 1,
        0,
    )
    _rewrite(nginx, version="1.10.0", description="ten")  # 1.10 > 1.9, though "1.10" < "1.9" as text
    assert _counts(await load_catalog(session, organization_id=org_id, directory=directory, strategy="update")) == (
        0,
        1,
        len(CATALOG_FILES) - 1,
        0,
    )
    _rewrite(nginx, version="1.2.0", description="older file")
    assert _counts(await load_catalog(session, organization_id=org_id, directory=directory, strategy="update"))[1] == 0
    _rewrite(nginx, version="1.10.0", description="same version, other text")
    assert _counts(await load_catalog(session, organization_id=org_id, directory=directory, strategy="update"))[1] == 0
    await session.commit()
    stack = (await _stacks(session, org_id))["nginx"]
    assert (stack.version, stack.description, stack.source) == ("1.10.0", "ten", "catalog")


async def test_strategy_force_overwrites(session, tmp_path):
    directory = _copy_catalog(tmp_path)
    org_id = await _org(session)
    await load_catalog(session, organization_id=org_id, directory=directory, strategy="update")
    _rewrite(directory / "redis.yaml", description="forced, same version")
    stats = await load_catalog(session, organization_id=org_id, directory=directory, strategy="force")
    assert _counts(stats) == (0, 1, len(CATALOG_FILES) - 1, 0)  # identical stacks are left alone
    assert (await _stacks(session, org_id))["redis"].description == "forced, same version"
    _rewrite(directory / "redis.yaml", version="0.1.0", description="forced downgrade")
    assert _counts(await load_catalog(session, organization_id=org_id, directory=directory, strategy="force"))[1] == 1
    assert (await _stacks(session, org_id))["redis"].version == "0.1.0"


async def test_edited_stacks_survive_update_but_not_force(client, db, tmp_path):
    """A catalogue stack edited through the API becomes a user stack: ``update`` keeps the edit."""
    from backend.app.database import AsyncSessionLocal
    from backend.tests.helpers import default_org, setup_admin

    admin = await setup_admin(client)
    org_id = await default_org(client, admin)
    directory = _copy_catalog(tmp_path)
    async with AsyncSessionLocal() as session:
        await load_catalog(session, organization_id=org_id, directory=directory, strategy="update")
        await session.commit()
        nginx_id = (await _stacks(session, org_id))["nginx"].id

    listed = (await client.get("/api/v1/stacks", headers=admin.headers)).json()
    assert {s["name"]: s["source"] for s in listed["items"]}["nginx"] == "catalog"
    by_name = {s["name"]: s for s in listed["items"]}
    edited = await client.patch(
        f"/api/v1/stacks/{nginx_id}",
        json={"template": by_name["nginx"]["template"] + "      # local edit\n"},
        headers=admin.headers,
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["source"] == "user"
    # a description-only edit does not change the origin
    redis_id = by_name["redis"]["id"]
    touched = await client.patch(f"/api/v1/stacks/{redis_id}", json={"description": "ours"}, headers=admin.headers)
    assert touched.json()["source"] == "catalog"

    _rewrite(directory / "nginx.yaml", version="9.0.0")
    async with AsyncSessionLocal() as session:
        stats = await load_catalog(session, organization_id=org_id, directory=directory, strategy="update")
        await session.commit()
        assert stats["updated"] == 0
        assert (await _stacks(session, org_id))["nginx"].version == "1.0.0"
        stats = await load_catalog(session, organization_id=org_id, directory=directory, strategy="force")
        await session.commit()
        assert stats["updated"] == 2  # nginx (edited) and redis (description changed)
        stacks = await _stacks(session, org_id)
        assert (stacks["nginx"].version, stacks["nginx"].source) == ("9.0.0", "catalog")
        assert "# local edit" not in stacks["nginx"].template


async def test_a_user_stack_with_a_catalogue_name_is_kept_by_update(session, tmp_path):
    org_id = await _org(session)
    session.add(Stack(organization_id=org_id, name="redis", template="services:\n  r:\n    image: redis\n", variables=[]))
    await session.flush()
    stats = await load_catalog(session, organization_id=org_id, directory=CATALOG_DIR, strategy="update")
    assert _counts(stats) == (len(CATALOG_FILES) - 1, 0, 1, 0)
    assert (await _stacks(session, org_id))["redis"].source == "user"


async def test_stacks_are_per_organization(session):
    first, second = await _org(session, "one"), await _org(session, "two")
    await load_catalog(session, organization_id=first, directory=CATALOG_DIR, strategy="update")
    stats = await load_catalog(session, organization_id=second, directory=CATALOG_DIR, strategy="update")
    assert stats["created"] == len(CATALOG_FILES)


async def test_sync_catalog_loads_every_organization(session, db, tmp_path):
    first, second = await _org(session, "one"), await _org(session, "two")
    await session.commit()
    settings = make_settings(db.settings.DATABASE_URL, STACKS_DEFINITIONS_DIR=CATALOG_DIR, STACKS_LOAD_STRATEGY="skip")
    results = await catalog.sync_catalog(session, settings=settings)
    await session.commit()
    assert set(results) == {first, second}
    assert all(stats["created"] == len(CATALOG_FILES) for stats in results.values())
    assert set(await _stacks(session, second)) == _names()


def test_settings_defaults():
    settings = make_settings("sqlite+aiosqlite:///unused.db")
    assert settings.STACKS_DEFINITIONS_DIR == PROJECT_ROOT / "stacks_definitions"
    assert settings.STACKS_LOAD_STRATEGY == "update"
    with pytest.raises(ValueError):
        make_settings("sqlite+aiosqlite:///unused.db", STACKS_LOAD_STRATEGY="merge")


# --- broken files --------------------------------------------------------------------------------------

BROKEN = {
    "syntax.yaml": ("name: syntax\nversion: '1.0.0'\ntemplate: |\n  services: {}\n variables: [\n", "invalid YAML: line 5"),
    "undefined.yaml": (
        "name: undefined\nversion: '1.0.0'\ntemplate: |\n  services:\n    web:\n      image: '{{ image }}'\n",
        "template line 3: 'image' is undefined",
    ),
    "schema.yaml": (
        "name: schema\nversion: '1.0.0'\ntemplate: |\n  services:\n    web:\n      image: nginx\n"
        "variables:\n  - name: mode\n    type: enum\n",
        "variables[0].options: enum needs a non-empty options list",
    ),
    "float-version.yaml": (
        "name: floaty\nversion: 1.10\ntemplate: |\n  services:\n    web:\n      image: nginx\n",
        "version: required, a quoted string",
    ),
    "bad-version.yaml": (
        "name: badversion\nversion: latest\ntemplate: |\n  services:\n    web:\n      image: nginx\n",
        "version: 'latest' is not a version",
    ),
    "unknown-key.yaml": (
        "name: extra\nversion: '1.0.0'\nicon: x.png\ntemplate: |\n  services:\n    web:\n      image: nginx\n",
        "unknown key(s) icon",
    ),
    "not-a-mapping.yaml": ("- name: list\n", "must be a YAML mapping"),
    "no-template.yaml": ("name: notemplate\nversion: '1.0.0'\n", "template: required"),
    "zz-duplicate.yaml": (
        "name: nginx\nversion: '1.0.0'\ntemplate: |\n  services:\n    web:\n      image: nginx\n",
        "stack name 'nginx' is already defined by nginx.yaml",
    ),
    "not-compose.yaml": (
        "name: notcompose\nversion: '1.0.0'\ntemplate: |\n  services:\n    web:\n      imagex: nginx\n",
        "docker compose rejected the document",
    ),
}


async def test_broken_files_are_reported_and_the_rest_loads(session, tmp_path, caplog):
    directory = _copy_catalog(tmp_path)
    for name, (text, _) in BROKEN.items():
        (directory / name).write_text(text)
    (directory / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (directory / "README.md").write_text("not a stack")
    expected = {name: reason for name, (_, reason) in BROKEN.items()}
    expected["latin1.yaml"] = "not UTF-8 text"
    if find_compose_command() is None:
        expected.pop("not-compose.yaml")
        (directory / "not-compose.yaml").unlink()

    org_id = await _org(session)
    with caplog.at_level(logging.WARNING, logger="backend.app.services.stacks.catalog"):
        stats = await load_catalog(session, organization_id=org_id, directory=directory, strategy="update")
    assert _counts(stats) == (len(CATALOG_FILES), 0, 0, len(expected))
    failures = {f["file"]: f["reason"] for f in stats["failures"]}
    assert set(failures) == set(expected)
    for name, reason in expected.items():
        assert reason in failures[name], (name, failures[name])
        assert any(name in record.getMessage() and reason in record.getMessage() for record in caplog.records), name
    assert set(await _stacks(session, org_id)) == _names()


async def test_a_missing_directory_loads_nothing(session, tmp_path, caplog):
    org_id = await _org(session)
    with caplog.at_level(logging.WARNING, logger="backend.app.services.stacks.catalog"):
        stats = await load_catalog(session, organization_id=org_id, directory=tmp_path / "nope", strategy="update")
    assert _counts(stats) == (0, 0, 0, 0)
    assert "is not a directory" in caplog.text


async def test_an_unknown_strategy_is_refused(session):
    with pytest.raises(ValueError, match="strategy must be one of skip, update, force"):
        await load_catalog(session, organization_id=await _org(session), directory=CATALOG_DIR, strategy="merge")  # type: ignore[arg-type]


# --- versions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        ("1.10.0", "1.9.2"),
        ("2.0.0", "1.99.99"),
        ("1.0.1", "1.0"),
        ("1.0.0", "1.0.0-rc.1"),
        ("1.0.0-rc.2", "1.0.0-rc.1"),
        ("1.0.0-rc.10", "1.0.0-rc.9"),
        ("1.0.0-beta", "1.0.0-alpha"),
        ("1.0.0-alpha", "1.0.0-1"),
        ("v1.2.0", "1.1.9"),
    ],
)
def test_version_order(newer, older):
    assert is_newer(newer, older)
    assert not is_newer(older, newer)


def test_equal_and_unparsable_versions():
    assert version_key("1.0") == version_key("1.0.0") == version_key("v1.0.0+build.5")
    assert not is_newer("1.0.0", "1.0")
    assert is_newer("1.0.0", "not-a-version")  # a stored version that does not parse is replaced
    with pytest.raises(ValueError):
        version_key("latest")
