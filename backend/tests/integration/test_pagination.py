"""Listings: keyset cursors, bounded offsets, capped totals (issue 10; issue 7 item 10).

Through the HTTP API on SQLite and PostgreSQL. Rows are placed directly in the database (thousands of
compose validations would test nothing more); the listing code under test is the real one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from datetime import timedelta

import pytest

from backend.app import database
from backend.app.database import utcnow
from backend.app.models import Deployment, DeploymentStatus, Organization, Stack, Target, TargetType
from backend.app.models.base import new_id
from backend.app.services import pagination
from backend.app.services.deployments.logs import append_logs
from backend.app.services.deployments.state_machine import set_deployment_status
from backend.tests.helpers import add_member, create_user, default_org, setup_admin

API = "/api/v1"
DEPLOYMENTS = f"{API}/deployments"
S = DeploymentStatus
STATUSES = [S.RUNNING, S.FAILED, S.STOPPED, S.CANCELLED, S.PENDING]


async def _org_with_stack_and_target(session, org_id: str | None = None, name: str = "org") -> tuple[str, str, str]:
    if org_id is None:
        org = Organization(name=f"{name}-{new_id()[:8]}")
        session.add(org)
        await session.flush()
        org_id = org.id
    target = Target(organization_id=org_id, name=f"t-{new_id()[:8]}", type=TargetType.DOCKER, endpoint="tcp://127.0.0.1:1")
    stack = Stack(organization_id=org_id, name=f"s-{new_id()[:8]}", template="services: {}\n", variables=[])
    session.add_all([target, stack])
    await session.flush()
    return org_id, stack.id, target.id


async def _seed(org_stacks_targets: list[tuple[str, str, str]], count: int, *, rng: random.Random, newer: bool = False):
    """``count`` deployments spread over the given (org, stack, target) triples; many share a created_at."""
    base = utcnow() - timedelta(days=1)
    rows = []
    async with database.AsyncSessionLocal() as session:
        for i in range(count):
            org_id, stack_id, target_id = rng.choice(org_stacks_targets)
            created = utcnow() if newer else base + timedelta(seconds=i // 3)  # triples share a timestamp
            rows.append(
                Deployment(
                    organization_id=org_id,
                    stack_id=stack_id,
                    target_id=target_id,
                    name=f"d-{i}",
                    status=rng.choice(STATUSES),
                    created_at=created,
                    queued_at=created,
                )
            )
        session.add_all(rows)
        await session.commit()
        return [(d.id, d.organization_id, d.stack_id, d.target_id, d.status, d.created_at) for d in rows]


def _newest_first(rows) -> list[str]:
    return [r[0] for r in sorted(rows, key=lambda r: (r[5], r[0]), reverse=True)]


async def _walk(client, headers, params: dict, limit: int, on_page=None) -> tuple[list[str], list[dict]]:
    seen, pages, cursor = [], [], None
    for _ in range(1000):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await client.get(DEPLOYMENTS, params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        seen += [d["id"] for d in body["items"]]
        if on_page is not None:
            await on_page()
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
    raise AssertionError("the walk did not end")


@pytest.fixture
async def world(client, db):
    """A superuser, two organisations (two stacks and targets each) and a viewer member of both."""
    admin = await setup_admin(client)
    acme = await default_org(client, admin)
    async with database.AsyncSessionLocal() as session:
        triples = [
            await _org_with_stack_and_target(session, acme),
            await _org_with_stack_and_target(session, acme),
        ]
        other = await _org_with_stack_and_target(session, name="other")
        triples += [other, await _org_with_stack_and_target(session, other[0])]
        await session.commit()
    viewer = await create_user(client, admin, "viewer@example.com")
    await add_member(client, admin, acme, viewer, "viewer")
    await add_member(client, admin, other[0], viewer, "viewer")
    return {"admin": admin, "viewer": viewer, "triples": triples, "acme": acme, "other": other[0]}


async def test_cursor_walk_returns_every_row_exactly_once_while_rows_are_inserted(client, world):
    rng = random.Random(10)
    seeded = await _seed(world["triples"], 150, rng=rng)
    expected = _newest_first(seeded)
    inserted: list = []

    async def insert_meanwhile() -> None:  # newer rows land while the walk goes on
        inserted.extend(await _seed(world["triples"], 2, rng=rng, newer=True))

    for who in ("admin", "viewer"):  # one index range (superuser) and the per-organisation fan-out (member)
        inserted.clear()
        seen, pages = await _walk(client, world[who].headers, {}, 7, on_page=insert_meanwhile)
        assert len(pages) > 10 and inserted
        assert len(seen) == len(set(seen)), "a row was returned twice"
        assert seen == expected, f"{who}: rows missing, repeated or out of order"
        assert not set(seen) & {r[0] for r in inserted}, "rows inserted after the walk began leaked in"
        assert all(len(p["items"]) == 7 for p in pages[:-1])
        assert pages[-1]["next_cursor"] is None
        seeded += inserted
        expected = _newest_first(seeded)


async def test_concurrent_inserts_with_a_real_writer_task(client, world):
    """A writer task inserts in its own sessions while a reader walks the list: every original row once."""
    rng = random.Random(11)
    seeded = await _seed(world["triples"], 120, rng=rng)
    stop = asyncio.Event()

    async def writer() -> int:
        written = 0
        while not stop.is_set() and written < 200:
            await _seed(world["triples"], 1, rng=rng, newer=True)
            written += 1
            await asyncio.sleep(0)
        return written

    task = asyncio.create_task(writer())
    try:
        seen, _ = await _walk(client, world["viewer"].headers, {}, 9)
    finally:
        stop.set()
        written = await asyncio.wait_for(task, 30)
    assert written > 0
    original = {r[0] for r in seeded}
    walked_originals = [i for i in seen if i in original]
    assert len(walked_originals) == len(set(walked_originals)) == len(original)
    assert walked_originals == _newest_first(seeded)


@pytest.mark.parametrize(
    "make_params",
    [
        lambda w: {"status": ["failed", "stopped"]},
        lambda w: {"status": ["running"], "organization_id": w["acme"]},
        lambda w: {"stack_id": w["triples"][1][1]},
        lambda w: {"target_id": w["triples"][2][2], "status": ["running", "pending"]},
        lambda w: {"organization_id": w["other"]},
    ],
    ids=["two-statuses", "status-and-org", "stack", "target-and-statuses", "org"],
)
async def test_filters_combine_with_cursors(client, world, make_params):
    seeded = await _seed(world["triples"], 160, rng=random.Random(12))
    params = make_params(world)

    def matches(row) -> bool:
        _id, org, stack, target, status, _created = row
        return (
            ("status" not in params or str(status) in params["status"])
            and params.get("organization_id", org) == org
            and params.get("stack_id", stack) == stack
            and params.get("target_id", target) == target
        )

    expected = _newest_first([r for r in seeded if matches(r)])
    assert 0 < len(expected) < 160
    for who in ("admin", "viewer"):
        seen, pages = await _walk(client, world[who].headers, params, 6)
        assert seen == expected, who
        assert pages[0]["total"] == len(expected) and pages[0]["total_is_exact"] is True


async def test_foreign_stack_filter_reads_nothing(client, world):
    await _seed(world["triples"], 30, rng=random.Random(13))
    outsider = await create_user(client, world["admin"], "outsider@example.com")
    response = await client.get(DEPLOYMENTS, params={"stack_id": world["triples"][0][1]}, headers=outsider.headers)
    assert response.status_code == 200
    assert response.json() == {"items": [], "total": 0, "total_is_exact": True, "next_cursor": None}


@pytest.mark.parametrize(
    "make_params",
    [
        lambda w: {"stack_id": w["triples"][0][1], "organization_id": w["other"]},
        lambda w: {"target_id": w["triples"][2][2], "organization_id": w["acme"]},
        lambda w: {"stack_id": w["triples"][0][1], "target_id": w["triples"][2][2]},
    ],
    ids=["stack-of-acme-in-other", "target-of-other-in-acme", "stack-and-target-of-two-orgs"],
)
async def test_entity_filters_of_another_organisation_read_nothing(client, world, make_params):
    """The stack/target filter reads by the entity alone (no organisation condition), so the scoping to the
    organisations asked for rests on the owner check: a member of both organisations still gets nothing."""
    await _seed(world["triples"], 40, rng=random.Random(16))
    for who in ("admin", "viewer"):
        response = await client.get(DEPLOYMENTS, params=make_params(world), headers=world[who].headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"items": [], "total": 0, "total_is_exact": True, "next_cursor": None}, who


async def test_total_is_capped_and_says_so(client, world, monkeypatch):
    seeded = await _seed(world["triples"], 40, rng=random.Random(14))
    monkeypatch.setattr(pagination, "COUNT_CAP", 25)
    body = (await client.get(DEPLOYMENTS, headers=world["admin"].headers)).json()
    assert (body["total"], body["total_is_exact"]) == (25, False)
    failed = sum(1 for r in seeded if r[4] is S.FAILED)
    assert failed < 25
    body = (await client.get(DEPLOYMENTS, params={"status": "failed"}, headers=world["viewer"].headers)).json()
    assert (body["total"], body["total_is_exact"]) == (failed, True)


async def test_offset_still_works_for_small_offsets(client, world):
    seeded = await _seed(world["triples"], 30, rng=random.Random(15))
    body = (await client.get(DEPLOYMENTS, params={"offset": 10, "limit": 5}, headers=world["viewer"].headers)).json()
    assert [d["id"] for d in body["items"]] == _newest_first(seeded)[10:15]
    assert body["next_cursor"] is not None
    rest, _ = await _walk(client, world["viewer"].headers, {}, 100)
    after = await client.get(DEPLOYMENTS, params={"cursor": body["next_cursor"], "limit": 100}, headers=world["viewer"].headers)
    assert [d["id"] for d in after.json()["items"]] == rest[15:]


def _listings(world) -> list[str]:
    return [
        DEPLOYMENTS,
        f"{API}/stacks",
        f"{API}/targets",
        f"{API}/users",
        f"{API}/organizations",
        f"{API}/organizations/{world['acme']}/members",
        f"{API}/tokens",
    ]


async def test_offset_past_the_bound_is_a_clear_422_on_every_listing(client, world):
    for url in _listings(world):
        for offset in (18446744073709551616, pagination.MAX_OFFSET + 1, 10**400):
            response = await client.get(url, params={"offset": offset}, headers=world["admin"].headers)
            assert response.status_code == 422, (url, offset, response.text)
            assert response.json()["code"] == "offset_too_large"
            assert "cursor" in response.json()["detail"]
        ok = await client.get(url, params={"offset": pagination.MAX_OFFSET}, headers=world["admin"].headers)
        assert ok.status_code == 200 and ok.json()["items"] == [], url
        for bad in ({"limit": 18446744073709551616}, {"offset": -1}, {"limit": 0}):
            response = await client.get(url, params=bad, headers=world["admin"].headers)
            assert response.status_code == 422, (url, bad, response.text)


async def test_bad_cursor_is_a_422_on_every_listing(client, world):
    await _seed(world["triples"], 5, rng=random.Random(16))
    stacks_cursor = pagination.Ordering("stacks", (Stack.name, Stack.id)).encode(["a", "b"])

    def forged(payload) -> str:
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")

    bad = [
        "not-a-cursor!",
        "%%%",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        forged([1, 2]),
        forged({"o": "deployments", "k": ["yesterday", "x"]}),
        forged({"o": "deployments", "k": [12, "x"]}),
        forged({"o": "deployments", "k": ["2026-01-01T00:00:00+00:00"]}),
        forged({"o": "deployments", "k": ["2026-01-01T00:00:00+00:00", "a\u0000b"]}),
        stacks_cursor,
    ]
    for cursor in bad:
        response = await client.get(DEPLOYMENTS, params={"cursor": cursor}, headers=world["viewer"].headers)
        assert response.status_code == 422, (cursor, response.text)
        assert response.json()["code"] == "invalid_cursor"
    too_long = await client.get(DEPLOYMENTS, params={"cursor": "a" * 5000}, headers=world["viewer"].headers)
    assert too_long.status_code == 422
    deployments_cursor = forged({"o": "deployments", "k": ["2026-01-01T00:00:00+00:00", "x"]})
    for url in _listings(world)[1:]:
        response = await client.get(url, params={"cursor": deployments_cursor}, headers=world["admin"].headers)
        assert response.status_code == 422 and response.json()["code"] == "invalid_cursor", url
    both = await client.get(DEPLOYMENTS, params={"cursor": deployments_cursor, "offset": 3}, headers=world["admin"].headers)
    assert both.status_code == 422 and both.json()["code"] == "invalid_page"


async def test_logs_and_history_pages_with_cursors(client, world):
    rows = await _seed(world["triples"][:1], 1, rng=random.Random(17))
    deployment_id = rows[0][0]
    async with database.AsyncSessionLocal() as session:
        await append_logs(session, deployment_id=deployment_id, lines=[("info", f"line {i}", utcnow()) for i in range(25)])
        await session.commit()
    url = f"{DEPLOYMENTS}/{deployment_id}"
    headers = world["viewer"].headers

    seqs, cursor = [], None
    for _ in range(10):
        body = (await client.get(f"{url}/logs", params={"limit": 10, **({"cursor": cursor} if cursor else {})}, headers=headers)).json()
        seqs += [line["seq"] for line in body["items"]]
        assert body["last_seq"] == 25
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seqs == list(range(1, 26))
    assert [l["seq"] for l in (await client.get(f"{url}/logs", params={"since_seq": 20}, headers=headers)).json()["items"]] == [
        21,
        22,
        23,
        24,
        25,
    ]
    for params in (
        {"since_seq": 2**63},
        {"since_seq": 18446744073709551616},
        {"cursor": "junk"},
        {"cursor": cursor or "x", "since_seq": 3},
    ):
        assert (await client.get(f"{url}/logs", params=params, headers=headers)).status_code == 422, params

    async with database.AsyncSessionLocal() as session:  # a history long enough for three pages
        for i in range(6):
            current = (await session.get(Deployment, deployment_id, populate_existing=True)).status
            step = {S.RUNNING: S.STOPPED, S.STOPPED: S.PENDING, S.FAILED: S.PENDING, S.CANCELLED: S.PENDING, S.PENDING: S.CANCELLED}
            await set_deployment_status(session, deployment_id=deployment_id, to_status=step[S(current)], actor=f"step-{i}")
        await session.commit()
    full = (await client.get(f"{url}/history", headers=headers)).json()
    assert [h["actor"] for h in full] == [f"step-{i}" for i in range(6)]
    walked, cursor, pages = [], None, 0
    for pages in range(1, 20):  # noqa: B007 - the page count is read after the loop
        response = await client.get(f"{url}/history", params={"limit": 3, **({"cursor": cursor} if cursor else {})}, headers=headers)
        walked += response.json()
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            break
    assert walked == full and pages == 2
    bad = await client.get(f"{url}/history", params={"cursor": "nope"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"
