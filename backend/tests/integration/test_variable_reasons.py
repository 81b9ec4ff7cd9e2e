"""A refused variable value or variable schema carries, next to its unchanged English ``detail``, each
problem's ``reason`` and the values it quotes (``params.problems``), so that a client words it in its own
language; a secret's value is never quoted."""

from __future__ import annotations

from backend.tests.helpers import default_org, setup_admin

TEMPLATE = 'services:\n  web:\n    image: nginx:1.27-alpine\n    ports: ["{{ port }}:80"]\n    environment:\n      MODE: "{{ mode }}"\n'
VARIABLES = [
    {"name": "port", "type": "integer", "default": 8080, "min": 1024},
    {"name": "mode", "type": "enum", "options": ["fast", "safe"], "default": "safe"},
    {"name": "pw", "type": "secret", "default": "{{ generate_password(24) }}", "min_length": 12},
    {"name": "host", "type": "string", "default": "web", "pattern": "[a-z]+"},
]


async def test_a_deployment_with_bad_values_names_each_reason(client, db) -> None:
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    target = await client.post(
        "/api/v1/targets", json={"name": "remote", "endpoint": "tcp://192.0.2.10:2376", "organization_id": org}, headers=admin.headers
    )
    stack = await client.post(
        "/api/v1/stacks", json={"name": "web", "organization_id": org, "template": TEMPLATE, "variables": VARIABLES}, headers=admin.headers
    )
    assert stack.status_code == 201, stack.text
    secret = "short$ecret"
    refused = await client.post(
        "/api/v1/deployments",
        json={
            "stack_id": stack.json()["id"],
            "target_id": target.json()["id"],
            "variables": {"port": "abc", "mode": "slow", "pw": secret, "host": "Bad Host"},
        },
        headers=admin.headers,
    )
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == "invalid_variables"
    assert body["detail"] == (
        "invalid variables: port: must be an integer, got 'abc'; mode: must be one of fast, safe, got 'slow'; "
        "pw: must be at least 12 characters long; host: does not match the pattern [a-z]+"
    )
    assert secret not in refused.text
    problems = body["params"]["problems"]
    assert [(p["variable"], p["reason"]) for p in problems] == [
        ("port", "not_integer"),
        ("mode", "not_a_choice"),
        ("pw", "min_length"),
        ("host", "pattern"),
    ]
    assert problems[0]["got"] == "'abc'" and problems[1]["choices"] == "fast, safe" and problems[1]["got"] == "'slow'"
    assert problems[2] == {"variable": "pw", "reason": "min_length", "min_length": 12, "message": "must be at least 12 characters long"}
    assert problems[3]["pattern"] == "[a-z]+"
    assert {k: body["params"][k] for k in ("variable", "reason", "got")} == {"variable": "port", "reason": "not_integer", "got": "'abc'"}

    below = await client.post(
        "/api/v1/deployments",
        json={"stack_id": stack.json()["id"], "target_id": target.json()["id"], "variables": {"port": 80, "extra": 1}},
        headers=admin.headers,
    )
    assert below.status_code == 422, below.text
    assert [(p["variable"], p["reason"]) for p in below.json()["params"]["problems"]] == [("extra", "unknown_variable"), ("port", "min")]
    assert below.json()["params"]["problems"][1]["min"] == 1024


async def test_a_stack_whose_default_breaks_its_rules_names_the_reason(client, db) -> None:
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    variables = [
        {"name": "port", "type": "integer", "default": "eighty"},
        {"name": "size", "type": "integer", "min": 3, "max": 1},
        {"name": "host", "default": "Web", "pattern": "[a-z]+"},
    ]
    refused = await client.post(
        "/api/v1/stacks", json={"name": "web", "organization_id": org, "template": TEMPLATE, "variables": variables}, headers=admin.headers
    )
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == "invalid_variable_schema"
    assert body["detail"] == (
        "invalid variable schema: variables[0].default: must be an integer, got 'eighty'; variables[1].min: greater than max (1); "
        "variables[2].default: does not match the pattern [a-z]+"
    )
    assert body["params"]["problems"] == [
        {"field": "variables[0].default", "reason": "not_integer", "got": "'eighty'", "message": "must be an integer, got 'eighty'"},
        {"field": "variables[1].min", "reason": "min_above_max", "max": 1, "message": "greater than max (1)"},
        {"field": "variables[2].default", "reason": "pattern", "pattern": "[a-z]+", "message": "does not match the pattern [a-z]+"},
    ]
    assert body["params"]["reason"] == "not_integer" and body["params"]["field"] == "variables[0].default"


async def test_every_problem_of_a_variable_schema_names_its_reason(client, db) -> None:
    """Not only a default that breaks its rules: the schema's own problems (min above max, a duplicate name,
    an unknown field, a field of another type, a label that is not text, a source that is not a list) carry a
    reason and the values they quote, with the English message unchanged."""
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    variables = [
        {"name": "size", "type": "integer"},
        {"name": "size", "type": "string", "min_length": 1},
        {"name": "text", "type": "string", "min_length": 9, "max_length": 2},
        {"name": "colour", "type": "string", "colour": "red"},
        {"name": "mode", "type": "string", "options": ["a"]},
        {"name": "count", "type": "integer", "label": 5},
        {"name": "for", "type": "strange"},
    ]
    refused = await client.post(
        "/api/v1/stacks", json={"name": "web", "organization_id": org, "template": TEMPLATE, "variables": variables}, headers=admin.headers
    )
    assert refused.status_code == 422, refused.text
    problems = refused.json()["params"]["problems"]
    by_field = {p["field"]: p for p in problems}
    assert by_field["variables[2].min_length"] == {
        "field": "variables[2].min_length",
        "reason": "min_above_max_length",
        "max_length": 2,
        "message": "greater than max_length (2)",
    }
    assert by_field["variables[1].name"]["reason"] == "duplicate_name" and by_field["variables[1].name"]["name"] == "size"
    assert by_field["variables[3].colour"]["reason"] == "unknown_field" and by_field["variables[3].colour"]["key"] == "colour"
    assert by_field["variables[4].options"] == {
        "field": "variables[4].options",
        "reason": "field_of_other_type",
        "key": "options",
        "types": "enum",
        "message": "only applies to enum variables",
    }
    assert by_field["variables[5].label"] == {"field": "variables[5].label", "reason": "not_string", "message": "must be a string"}
    assert by_field["variables[6].type"]["reason"] == "unknown_type"
    assert all(isinstance(p.get("reason"), str) for p in problems), problems

    source = await client.post(
        "/api/v1/stacks",
        json={"name": "web", "organization_id": org, "template": TEMPLATE, "variables_source": "just: text\n"},
        headers=admin.headers,
    )
    assert source.status_code == 422, source.text
    assert source.json()["params"]["problems"] == [
        {"field": "variables_source", "reason": "not_a_list", "message": "must be a list of variable definitions (objects)"}
    ]
