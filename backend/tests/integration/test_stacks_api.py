"""The /stacks API over HTTP, on SQLite and PostgreSQL: CRUD, RBAC, conflicts, validation, render preview."""

from __future__ import annotations

import httpx
import pytest

from backend.app.core import security
from backend.app.database import AsyncSessionLocal
from backend.app.engines.compose_cli import find_compose_command
from backend.app.models import Membership, Organization, Role, User
from backend.tests.helpers import Actor

STACKS = "/api/v1/stacks"

WEB_TEMPLATE = 'services:\n  web:\n    image: nginx:1.27-alpine\n    ports: ["{{ port }}:80"]\n'
DB_TEMPLATE = (
    "services:\n"
    "  web:\n"
    "    image: nginx:1.27-alpine\n"
    '    ports: ["{{ port }}:80"]\n'
    "  db:\n"
    "    image: postgres:16-alpine\n"
    "    environment:\n"
    "      POSTGRES_USER: {{ db.user | tojson }}\n"
    "      POSTGRES_PASSWORD: {{ db.password | tojson }}\n"
    '      APP_SECRET: "{{ app_secret }}"\n'
)
DB_VARIABLES = [
    {"name": "port", "type": "integer", "default": 8080, "required": True, "label": "Port", "min": 1, "max": 65535},
    {"name": "app_secret", "type": "password", "default": "{{ generate_password(24) }}"},
    {
        "name": "db",
        "type": "group",
        "variables": [
            {"name": "user", "default": "app", "pattern": "[a-z]+"},
            {"name": "password", "type": "secret", "default": "{{ generate_password(24) }}", "min_length": 12},
        ],
    },
]


def stack_body(name: str = "web", **overrides) -> dict:
    body = {
        "name": name,
        "description": "nginx on a port",
        "template": WEB_TEMPLATE,
        "variables": [
            {"name": "port", "type": "integer", "default": 8080, "required": True, "label": "Port", "min": 1, "max": 65535},
            {"name": "db_password", "type": "secret", "default": "{{ generate_password(24) }}"},
        ],
    }
    body.update(overrides)
    return body


async def create_stack(client: httpx.AsyncClient, actor: Actor, name: str = "web", **overrides) -> dict:
    response = await client.post(STACKS, json=stack_body(name, **overrides), headers=actor.headers)
    assert response.status_code == 201, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str | None = None, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    if code is not None:
        assert body["code"] == code, body
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body


@pytest.fixture
async def team(db):
    """The superuser, its organisation ``acme`` with a viewer, an operator and an admin; and an outsider,
    operator of the organisation ``other``.

    Rows are inserted directly and access tokens minted with the server's key: every request of the
    tests still authenticates through the real bearer-token path, but the set-up skips nine argon2
    hashes (seconds per test on a small CI machine). Sign-up and login have their own tests.
    """
    async with AsyncSessionLocal() as session:
        acme, other = Organization(name="acme"), Organization(name="other")
        session.add_all([acme, other])
        await session.flush()
        actors: dict[str, Actor] = {}
        for key, org, role, superuser in (
            ("superuser", acme, Role.OWNER, True),
            ("viewer", acme, Role.VIEWER, False),
            ("operator", acme, Role.OPERATOR, False),
            ("admin", acme, Role.ADMIN, False),
            ("outsider", other, Role.OPERATOR, False),
        ):
            user = User(email=f"{key}@example.com", hashed_password="!unusable", is_superuser=superuser)
            session.add(user)
            await session.flush()
            session.add(Membership(user_id=user.id, organization_id=org.id, role=role))
            token = security.create_access_token(db.settings, user.id).token
            actors[key] = Actor(user.email, "", token, "", user.id)
        await session.commit()
        return {"org_id": acme.id, "other_org_id": other.id, **actors}


# --- CRUD ----------------------------------------------------------------------------------------


async def test_crud_round_trip(client, team):
    operator = team["operator"]
    created = await create_stack(client, operator)
    assert created["organization_id"] == team["org_id"]
    assert created["name"] == "web" and created["version"] == "1.0.0" and created["source"] == "user"
    assert created["template"] == WEB_TEMPLATE  # byte for byte, trailing newline included
    assert created["variables"] == [
        {"name": "port", "type": "integer", "label": "Port", "required": True, "default": 8080, "min": 1, "max": 65535},
        {"name": "db_password", "type": "secret", "required": False, "default": "{{ generate_password(24) }}"},
    ]
    assert set(created) == {
        "id",
        "organization_id",
        "name",
        "description",
        "version",
        "template",
        "variables",
        "variables_source",
        "source",
        "created_at",
        "updated_at",
    }
    assert created["variables_source"] is None  # sent as a list, not as text
    stack_id = created["id"]

    fetched = await client.get(f"{STACKS}/{stack_id}", headers=team["viewer"].headers)
    assert fetched.status_code == 200 and fetched.json() == created

    patched = await client.patch(f"{STACKS}/{stack_id}", json={"description": "changed", "version": "1.1.0"}, headers=operator.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["description"] == "changed" and patched.json()["version"] == "1.1.0"
    assert patched.json()["template"] == WEB_TEMPLATE and patched.json()["variables"] == created["variables"]
    assert patched.json()["updated_at"] >= created["updated_at"]

    new_template = WEB_TEMPLATE + "    restart: unless-stopped\n"
    patched = await client.patch(f"{STACKS}/{stack_id}", json={"template": new_template}, headers=operator.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["template"] == new_template and patched.json()["description"] == "changed"

    cleared = await client.patch(f"{STACKS}/{stack_id}", json={"description": None}, headers=operator.headers)
    assert cleared.status_code == 200 and cleared.json()["description"] is None

    listed = await client.get(STACKS, headers=team["viewer"].headers)
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()["items"]] == [stack_id] and listed.json()["total"] == 1

    deleted = await client.delete(f"{STACKS}/{stack_id}", headers=team["admin"].headers)
    assert deleted.status_code == 204
    assert_error(await client.get(f"{STACKS}/{stack_id}", headers=team["admin"].headers), 404, "stack_not_found")
    assert (await client.get(STACKS, headers=team["admin"].headers)).json() == {
        "items": [],
        "total": 0,
        "total_is_exact": True,
        "next_cursor": None,
    }


async def test_create_in_an_explicit_organization(client, team):
    admin = team["superuser"]
    created = await create_stack(client, admin, organization_id=team["other_org_id"])
    assert created["organization_id"] == team["other_org_id"]
    filtered = await client.get(STACKS, params={"organization_id": team["other_org_id"]}, headers=admin.headers)
    assert [s["id"] for s in filtered.json()["items"]] == [created["id"]]
    assert (await client.get(STACKS, params={"organization_id": team["org_id"]}, headers=admin.headers)).json()["total"] == 0


async def test_pagination_and_order(client, team):
    operator = team["operator"]
    for name in ("echo", "alpha", "delta", "charlie", "bravo"):
        await create_stack(client, operator, name)
    first = await client.get(STACKS, params={"limit": 2}, headers=operator.headers)
    assert first.status_code == 200
    assert [s["name"] for s in first.json()["items"]] == ["alpha", "bravo"] and first.json()["total"] == 5
    middle = await client.get(STACKS, params={"limit": 2, "offset": 2}, headers=operator.headers)
    assert [s["name"] for s in middle.json()["items"]] == ["charlie", "delta"]
    last = await client.get(STACKS, params={"limit": 2, "offset": 4}, headers=operator.headers)
    assert [s["name"] for s in last.json()["items"]] == ["echo"] and last.json()["total"] == 5
    assert_error(await client.get(STACKS, params={"limit": 0}, headers=operator.headers), 422, "validation_error")
    assert_error(await client.get(STACKS, params={"limit": 201}, headers=operator.headers), 422, "validation_error")


# --- RBAC ----------------------------------------------------------------------------------------


async def test_roles(client, team):
    stack = await create_stack(client, team["operator"])
    url = f"{STACKS}/{stack['id']}"
    viewer, operator, admin = team["viewer"], team["operator"], team["admin"]

    # viewers read, never write
    assert (await client.get(url, headers=viewer.headers)).status_code == 200
    assert_error(await client.post(STACKS, json=stack_body("mine"), headers=viewer.headers), 403, "role_required", "operator")
    assert_error(await client.patch(url, json={"description": "x"}, headers=viewer.headers), 403, "role_required")
    assert_error(await client.delete(url, headers=viewer.headers), 403, "role_required")
    assert_error(await client.post(f"{url}/render", json={}, headers=viewer.headers), 403, "role_required")

    # operators create, edit and preview; deleting needs an admin
    assert (await client.patch(url, json={"description": "x"}, headers=operator.headers)).status_code == 200
    assert (await client.post(f"{url}/render", json={}, headers=operator.headers)).status_code == 200
    assert_error(await client.delete(url, headers=operator.headers), 403, "role_required", "admin")
    assert (await client.delete(url, headers=admin.headers)).status_code == 204


async def test_other_organizations_stacks_are_invisible(client, team):
    stack = await create_stack(client, team["operator"])
    url = f"{STACKS}/{stack['id']}"
    outsider = team["outsider"]
    assert_error(await client.get(url, headers=outsider.headers), 404, "stack_not_found")
    assert_error(await client.patch(url, json={"description": "x"}, headers=outsider.headers), 404, "stack_not_found")
    assert_error(await client.delete(url, headers=outsider.headers), 404, "stack_not_found")
    assert_error(await client.post(f"{url}/render", json={}, headers=outsider.headers), 404, "stack_not_found")
    assert (await client.get(STACKS, headers=outsider.headers)).json() == {
        "items": [],
        "total": 0,
        "total_is_exact": True,
        "next_cursor": None,
    }
    assert_error(await client.get(STACKS, params={"organization_id": team["org_id"]}, headers=outsider.headers), 404)
    foreign = await client.post(STACKS, json=stack_body("x", organization_id=team["org_id"]), headers=outsider.headers)
    assert_error(foreign, 404)
    assert_error(await client.get(f"{STACKS}/does-not-exist", headers=outsider.headers), 404, "stack_not_found")
    # the outsider's own stack lands in its own organisation, and the org's members do not see it
    own = await create_stack(client, outsider, "web")
    assert own["organization_id"] == team["other_org_id"]
    assert_error(await client.get(f"{STACKS}/{own['id']}", headers=team["admin"].headers), 404)
    # the superuser sees every organisation's stacks
    assert (await client.get(STACKS, headers=team["superuser"].headers)).json()["total"] == 2


async def test_unauthenticated_is_401(client, team):
    assert (await client.get(STACKS)).status_code == 401
    assert (await client.post(STACKS, json=stack_body())).status_code == 401


# --- conflicts -------------------------------------------------------------------------------------


async def test_duplicate_names(client, team):
    operator = team["operator"]
    first = await create_stack(client, operator, "web")
    assert_error(await client.post(STACKS, json=stack_body("web"), headers=operator.headers), 409, "stack_exists", "'web'")
    # the same name in another organisation is fine
    await create_stack(client, team["outsider"], "web")
    second = await create_stack(client, operator, "api")
    renamed = await client.patch(f"{STACKS}/{second['id']}", json={"name": "web"}, headers=operator.headers)
    assert_error(renamed, 409, "stack_exists")
    # the failed rename changed nothing, and renaming to its own name is not a conflict
    assert (await client.get(f"{STACKS}/{second['id']}", headers=operator.headers)).json()["name"] == "api"
    same = await client.patch(f"{STACKS}/{first['id']}", json={"name": "web"}, headers=operator.headers)
    assert same.status_code == 200, same.text


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "code", "fragments"),
    [
        (
            {"variables": [{"name": "port"}, {"name": "mode", "type": "enum"}]},
            "invalid_variable_schema",
            ["variables[1].options: enum needs a non-empty options list"],
        ),
        (
            {"variables": [{"name": "port", "type": "integer", "default": "http"}]},
            "invalid_variable_schema",
            ["variables[0].default: must be an integer"],
        ),
        (
            {"variables": [{"name": "pw", "type": "secret", "default": "hunter22"}]},
            "invalid_variable_schema",
            ["variables[0].default: a secret's default must be a generator"],
        ),
        ({"variables": []}, "template_error", ["rendering the template with the default values failed", "'port' is undefined"]),
        ({"template": "services:\n  web:\n    image: {{ image \n"}, "template_error", ["template line 3: syntax error"]),
        ({"template": "services:\n  web:\n    image: {{ ''.__class__.__mro__ }}\n"}, "template_error", ["refused by the sandbox"]),
        (
            {"template": "services:\n  web:\n    image: x\n{% include '/etc/passwd' %}\n"},
            "template_error",
            ["template line 4: include, import and extends are not available"],
        ),
        ({"template": "services:\n  web:\n    image: nginx\n   ports: ['{{ port }}:80']\n"}, "invalid_yaml", ["line 4, column 4"]),
        ({"template": "web:\n  image: nginx\n  port: {{ port }}\n"}, "invalid_compose", ["non-empty 'services' mapping"]),
        (
            {"template": "services:\n  web:\n    imagex: nginx\n    ports: ['{{ port }}:80']\n"},
            "invalid_compose",
            ["docker compose rejected the document", "imagex"],
        ),
    ],
)
async def test_invalid_definitions_are_422(client, team, overrides, code, fragments):
    if "docker compose rejected the document" in fragments and find_compose_command() is None:
        pytest.skip("no compose tool installed")
    response = await client.post(STACKS, json=stack_body(**overrides), headers=team["operator"].headers)
    assert_error(response, 422, code, *fragments)
    assert (await client.get(STACKS, headers=team["operator"].headers)).json()["total"] == 0


@pytest.mark.parametrize(
    ("overrides", "code", "params"),
    [
        ({"variables": []}, "template_error", {"reason": "undefined", "name": "port", "line": 4, "defaults": True}),
        ({"template": "services:\n  web:\n    image: {{ image \n"}, "template_error", {"reason": "syntax", "line": 3}),
        ({"template": "services:\n  web:\n    image: {{ ''.__class__.__mro__ }}\n"}, "template_error", {"reason": "sandbox", "line": 3}),
        ({"template": "services:\n  web:\n    image: x\n{% include 'x' %}\n"}, "template_error", {"reason": "forbidden_tag", "line": 4}),
        ({"template": "services:\n  web:\n    image: nginx\n   ports: ['{{ port }}:80']\n"}, "invalid_yaml", {"line": 4, "column": 4}),
        ({"template": "web:\n  image: nginx\n  port: {{ port }}\n"}, "invalid_compose", {"reason": "no_services", "defaults": True}),
        ({"template": "services:\n  web: nginx\n"}, "invalid_compose", {"reason": "service_not_mapping", "service": "web"}),
        (
            {
                "template": "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: &d [*c, *c]\ne: &e [*d, *d]\nf: &f [*e, *e]\n"
                "g: &g [*f, *f]\nh: &h [*g, *g]\ni: &i [*h, *h]\nj: &j [*i, *i]\nk: &k [*j, *j]\nl: &l [*k, *k]\n"
                "m: &m [*l, *l]\nn: &n [*m, *m]\no: &o [*n, *n]\np: &p [*o, *o]\nq: [*p, *p]\n"
            },
            "yaml_limit",
            {"reason": "nodes"},
        ),
        (
            {"template": "services:\n  web:\n    image: x\n    env_file: /etc/passwd\n"},
            "compose_forbidden",
            {"paths": ["services.web.env_file"]},
        ),
    ],
)
async def test_a_refused_definition_names_its_reason_and_line_for_the_editor(client, team, overrides, code, params):
    """What the stack editor words in the user's language and puts at its line: a stable ``reason`` and the
    values the English detail quotes (``line``, the undefined name, ...), through the bounded renderer."""
    response = await client.post(STACKS, json=stack_body(**overrides), headers=team["operator"].headers)
    assert response.status_code == 422 and response.json()["code"] == code, response.text
    got = response.json()["params"]
    assert {key: got.get(key) for key in params} == params, got


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "template": WEB_TEMPLATE},
        {"name": "x" * 101, "template": WEB_TEMPLATE},
        {"name": "web"},
        {"name": "web", "template": WEB_TEMPLATE, "colour": "red"},
        {"name": "web", "template": WEB_TEMPLATE, "variables": {"port": 1}},
    ],
)
async def test_malformed_bodies_are_422(client, team, body):
    assert_error(await client.post(STACKS, json=body, headers=team["operator"].headers), 422, "validation_error")


async def test_required_variables_without_default_are_allowed(client, team):
    """A stack may ask for a value the user must give: validation renders it with a placeholder."""
    created = await create_stack(
        client,
        team["operator"],
        template="services:\n  web:\n    image: \"{{ image }}\"\n    ports: ['{{ port }}:80']\n",
        variables=[{"name": "image", "required": True}, {"name": "port", "type": "integer", "required": True, "min": 1024}],
    )
    assert [v["name"] for v in created["variables"]] == ["image", "port"]


async def test_patch_is_validated_against_the_stored_half(client, team):
    operator = team["operator"]
    stack = await create_stack(client, operator)
    url = f"{STACKS}/{stack['id']}"
    # new variables that the stored template cannot render with
    assert_error(await client.patch(url, json={"variables": []}, headers=operator.headers), 422, "template_error", "'port'")
    # a new template using a variable the stored schema lacks
    bad_template = WEB_TEMPLATE + "    hostname: {{ host }}\n"
    assert_error(await client.patch(url, json={"template": bad_template}, headers=operator.headers), 422, "template_error", "'host'")
    # both together are fine
    both = await client.patch(
        url,
        json={"template": bad_template, "variables": [*stack["variables"], {"name": "host", "default": "web1"}]},
        headers=operator.headers,
    )
    assert both.status_code == 200, both.text
    for field in ("name", "template", "variables", "version"):
        assert_error(await client.patch(url, json={field: None}, headers=operator.headers), 422, None, f"{field} cannot be null")
    unchanged = (await client.get(url, headers=operator.headers)).json()
    assert unchanged["template"] == bad_template


# --- render preview ----------------------------------------------------------------------------------


async def test_render_preview_masks_secrets(client, team):
    operator = team["operator"]
    stack = await create_stack(client, operator, "app", template=DB_TEMPLATE, variables=DB_VARIABLES)
    url = f"{STACKS}/{stack['id']}/render"
    given_password = "Given-Db-Passw0rd"
    response = await client.post(
        url, json={"variables": {"port": "18080", "db": {"user": "owner", "password": given_password}}}, headers=operator.headers
    )
    assert response.status_code == 200, response.text
    compose = response.json()["compose"]
    assert given_password not in compose
    assert 'ports: ["18080:80"]' in compose
    assert 'POSTGRES_USER: "owner"' in compose
    assert 'POSTGRES_PASSWORD: "***"' in compose
    assert 'APP_SECRET: "***"' in compose
    assert set(response.json()) == {"compose"}

    defaults = await client.post(url, json={}, headers=operator.headers)
    assert defaults.status_code == 200, defaults.text
    assert 'ports: ["8080:80"]' in defaults.json()["compose"] and 'POSTGRES_USER: "app"' in defaults.json()["compose"]


async def test_render_preview_reports_every_bad_value_without_secrets(client, team):
    operator = team["operator"]
    stack = await create_stack(client, operator, "app", template=DB_TEMPLATE, variables=DB_VARIABLES)
    short = "tiny$ecret"
    response = await client.post(
        f"{STACKS}/{stack['id']}/render",
        json={"variables": {"port": "80a", "db": {"user": "Bad User", "password": short}, "colour": "red"}},
        headers=operator.headers,
    )
    body = assert_error(
        response,
        422,
        "invalid_variables",
        "port: must be an integer",
        "db.user: does not match the pattern",
        "db.password: must be at least 12 characters",
        "colour: unknown variable",
    )
    assert short not in body["detail"]
    assert_error(
        await client.post(f"{STACKS}/{stack['id']}/render", json={"values": {}}, headers=operator.headers), 422, "validation_error"
    )


async def test_the_variable_schema_is_typed_in_openapi(client):
    """A client builds the stack form from the OpenAPI document: one model per variable type, by `type`."""
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    read = schemas["StackRead"]["properties"]["variables"]["items"]
    mapping = read["discriminator"]["mapping"]
    assert read["discriminator"]["propertyName"] == "type"
    assert sorted(mapping) == ["boolean", "enum", "group", "integer", "number", "password", "secret", "string", "textarea"]
    assert mapping["password"] == mapping["secret"]
    enum = schemas[mapping["enum"].rsplit("/", 1)[-1]]
    assert enum["additionalProperties"] is False and "options" in enum["required"]
    group = schemas[mapping["group"].rsplit("/", 1)[-1]]
    assert group["properties"]["variables"]["items"]["discriminator"]["propertyName"] == "type"
    created = schemas["StackCreate"]["properties"]["variables"]["items"]
    assert created["discriminator"]["propertyName"] == "type"


# --- the variables as their author wrote them ------------------------------------------------------

VARIABLES_TEXT = """# the port nginx listens on, on the host
- name: port
  type: integer
  default: 8080   # a free one
  min: 1
  max: 65535
- {name: db_password, type: secret, default: "{{ generate_password(24) }}"}
"""


async def test_variables_sent_as_text_are_kept_as_written(client, team):
    operator = team["operator"]
    body = {k: v for k, v in stack_body("texty").items() if k != "variables"}
    created = await client.post(STACKS, json={**body, "variables_source": VARIABLES_TEXT}, headers=operator.headers)
    assert created.status_code == 201, created.text
    stack = created.json()
    assert stack["variables_source"] == VARIABLES_TEXT  # comments, order and flow style as written
    assert [v["name"] for v in stack["variables"]] == ["port", "db_password"]
    assert stack["variables"][0] == {"name": "port", "type": "integer", "required": False, "default": 8080, "min": 1, "max": 65535}
    url = f"{STACKS}/{stack['id']}"
    assert (await client.get(url, headers=team["viewer"].headers)).json()["variables_source"] == VARIABLES_TEXT

    # a new text replaces both; variables sent as a list drop the text (it would no longer say the same)
    edited = VARIABLES_TEXT.replace("default: 8080", "default: 9090")
    patched = await client.patch(url, json={"variables_source": edited}, headers=operator.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["variables_source"] == edited and patched.json()["variables"][0]["default"] == 9090
    renamed = await client.patch(url, json={"description": "only this"}, headers=operator.headers)
    assert renamed.json()["variables_source"] == edited  # untouched by other fields
    as_list = await client.patch(url, json={"variables": stack["variables"]}, headers=operator.headers)
    assert as_list.status_code == 200 and as_list.json()["variables_source"] is None


async def test_variables_text_errors_name_their_line(client, team):
    operator = team["operator"]
    body = {k: v for k, v in stack_body("broken").items() if k != "variables"}
    bad_yaml = await client.post(STACKS, json={**body, "variables_source": "- name: port\n  type: [integer\n"}, headers=operator.headers)
    error = assert_error(bad_yaml, 422, "invalid_yaml", "variables_source: invalid YAML: line 3")
    assert error["params"]["line"] == 3 and error["params"]["field"] == "variables_source"
    not_a_list = await client.post(STACKS, json={**body, "variables_source": "port: 8080\n"}, headers=operator.headers)
    assert_error(not_a_list, 422, "invalid_variable_schema", "must be a list")
    both = await client.post(STACKS, json={**stack_body("both"), "variables_source": VARIABLES_TEXT}, headers=operator.headers)
    assert_error(both, 422, "variables_twice")
    wrong_type = await client.post(
        STACKS, json={**body, "variables_source": "- name: port\n- name: x\n  type: nope\n"}, headers=operator.headers
    )
    assert_error(wrong_type, 422, "invalid_variable_schema", "variables[1]")
