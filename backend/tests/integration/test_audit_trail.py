"""The audit trail over HTTP: an entry for every mutating route (walked from the OpenAPI document), who,
what, which organisation, no secret in any entry, and GET /audit's access rules, filters and cursor."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import httpx
import pytest
from fastapi import routing
from fastapi.routing import APIRoute
from sqlalchemy import event, select, update

from backend.app.api.audit_trail import ACTIONS, MUTATING, route_key
from backend.app.database import utcnow
from backend.app.models import AuditEntry, DeploymentRevision, DeploymentStatusCount, DeploymentStatusHistory
from backend.app.runtime.background import RetentionLoop
from backend.tests.helpers import add_member, create_user, default_org, setup_admin

AUDIT = "/api/v1/audit"
MISSING = "00000000-0000-4000-8000-000000000000"


async def _entries(db) -> list[AuditEntry]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(select(AuditEntry.__table__).order_by(AuditEntry.at, AuditEntry.id))).all())


def _mutating_routes(app) -> list[tuple[str, str, object]]:
    """Every (method, path, endpoint) of the OpenAPI document that changes something."""
    documented = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops if m.upper() in MUTATING}
    found = []
    for context in routing.iter_route_contexts(list(app.routes)):
        if isinstance(context.original_route, APIRoute):
            for method in context.methods:
                if (method, context.path_format) in documented:
                    found.append((method, context.path_format, context.original_route.endpoint))
    assert {(m, p) for m, p, _ in found} == documented and len(documented) >= 40
    return found


def test_every_mutating_route_has_an_audit_action(app):
    missing = [f"{m} {p} ({route_key(e)})" for m, p, e in _mutating_routes(app) if route_key(e) not in ACTIONS]
    assert not missing, f"routes without an audit action in api/audit_trail.py ACTIONS: {missing}"


async def test_every_mutating_route_writes_an_entry(client, db, app):
    """Each mutating route, called once (with ids that do not exist and an empty body where that is
    enough), leaves exactly one entry with its action, naming the caller."""
    admin = await setup_admin(client)
    before = len(await _entries(db))
    routes = sorted(_mutating_routes(app), key=lambda r: "logout" in r[1])  # log out last: the others need the token
    for method, path, endpoint in routes:
        key = route_key(endpoint)
        url = re.sub(r"\{[a-z_]+\}", MISSING, path)
        kwargs: dict = {"headers": admin.headers}
        if key == "auth.login":
            kwargs["data"] = {"username": admin.email, "password": "wrong password"}
        elif key in ("auth.refresh", "auth.logout"):
            kwargs["json"] = {"refresh_token": admin.refresh_token}
        elif method != "DELETE":
            kwargs["json"] = {}
        response = await client.request(method, url, **kwargs)
        assert response.status_code < 500, (method, path, response.text)
        rows = await _entries(db)
        if key == "hooks.call_hook":  # an unknown hook names nobody: not recorded (test_hooks.py records real calls)
            assert len(rows) == before and response.status_code == 404
            continue
        assert len(rows) == before + 1, f"{method} {path}: {len(rows) - before} audit entries"
        before += 1
        entry = rows[-1]
        assert entry.action == ACTIONS[key][0] and entry.status_code == response.status_code, (method, path, entry)
        if key != "auth.setup":
            assert (entry.actor_kind, entry.actor_name) == ("user", admin.email), (method, path, entry)
        if key == "auth.refresh" and response.status_code == 200:
            admin.refresh_token = response.json()["refresh_token"]


async def test_changes_are_recorded_with_actor_object_organization_and_no_secret(client, db):
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    secrets = ["Registry-Passw0rd-9f1c", "Carol-Passw0rd-77ab", "Db-Secret-5e5e"]
    registry = await client.post(
        "/api/v1/registries",
        json={"name": "hub", "server": "registry.example.com", "username": "ci", "password": secrets[0]},
        headers=admin.headers,
    )
    assert registry.status_code == 201, registry.text
    carol = await create_user(client, admin, "carol@example.com", password=secrets[1])
    await add_member(client, admin, org, carol, "operator")
    changed = await client.patch(f"/api/v1/organizations/{org}/members/{carol.user_id}", json={"role": "viewer"}, headers=admin.headers)
    assert changed.status_code == 200, changed.text
    token = await client.post("/api/v1/tokens", json={"name": "ci"}, headers=admin.headers)
    secrets.append(token.json()["token"])
    # a deployment asked with a secret variable, refused (the stack does not exist): its summary still holds no value
    refused = await client.post(
        "/api/v1/deployments",
        json={"stack_id": MISSING, "target_id": MISSING, "variables": {"db_password": secrets[2]}},
        headers=admin.headers,
    )
    assert refused.status_code == 404
    # a viewer's refused stop is recorded as denied, in the organisation it aimed at
    viewer_target = await client.patch(f"/api/v1/registries/{registry.json()['id']}", json={"username": "x"}, headers=carol.headers)
    assert viewer_target.status_code == 403

    rows = await _entries(db)
    dump = json.dumps([dict(r._mapping) for r in rows], default=str)
    for secret in secrets:
        assert secret not in dump
    by_action = {r.action: r for r in rows}
    role = by_action["member.role_change"]
    assert (role.organization_id, role.object_type, role.object_id) == (org, "member", carol.user_id)
    assert role.summary == {"role": "viewer"} and role.outcome == "success" and role.actor_name == admin.email
    assert role.client == "127.0.0.1"
    created = by_action["registry.create"]
    assert created.object_id == registry.json()["id"] and created.organization_id == org
    assert created.summary["password"] == "changed" and created.summary["username"] == "ci"
    assert by_action["user.create"].summary["password"] == "changed"
    deploy = by_action["deployment.create"]
    assert (
        deploy.summary["variables"] == {"db_password": "changed"}
        and deploy.outcome == "failed"
        and deploy.summary["error"] == "stack_not_found"
    )
    denied = by_action["registry.update"]
    assert (denied.outcome, denied.status_code, denied.organization_id, denied.actor_name) == ("denied", 403, org, "carol@example.com")


async def test_api_token_is_the_actor_and_login_attempts_are_recorded(client, db):
    admin = await setup_admin(client)
    token = (await client.post("/api/v1/tokens", json={"name": "pipeline"}, headers=admin.headers)).json()
    response = await client.post("/api/v1/tokens", json={"name": "other"}, headers={"Authorization": f"Bearer {token['token']}"})
    assert response.status_code == 201
    failed = await client.post("/api/v1/auth/login", data={"username": "nobody@example.com", "password": "guess"})
    assert failed.status_code == 401
    rows = await _entries(db)
    by_token = [r for r in rows if r.actor_kind == "token"]
    assert len(by_token) == 1 and by_token[0].actor_id == token["id"] and by_token[0].actor_name == f"pipeline ({admin.email})"
    login = rows[-1]
    assert (login.action, login.actor_kind, login.actor_name, login.outcome) == ("auth.login", "anonymous", "nobody@example.com", "denied")
    assert login.summary == {"username": "nobody@example.com", "password": "changed", "error": "invalid_credentials"}
    # anonymous traffic on other routes leaves nothing
    before = len(rows)
    assert (await client.post(f"/api/v1/deployments/{MISSING}/stop")).status_code == 401
    assert len(await _entries(db)) == before


async def test_reading_the_audit_trail(client, db):
    admin = await setup_admin(client)
    org = await default_org(client, admin)
    other = (await client.post("/api/v1/organizations", json={"name": "other"}, headers=admin.headers)).json()["id"]
    dana = await create_user(client, admin, "dana@example.com")
    erin = await create_user(client, admin, "erin@example.com")
    await add_member(client, admin, org, dana, "admin")
    await add_member(client, admin, org, erin, "operator")
    for n in range(3):
        await client.post(
            "/api/v1/stacks", json={"name": f"s{n}", "template": "services: {}\n", "organization_id": other}, headers=admin.headers
        )

    # an org admin reads their organisation's entries, and only those
    page = await client.get(AUDIT, headers=dana.headers)
    assert page.status_code == 200, page.text
    items = page.json()["items"]
    assert items and {i["organization_id"] for i in items} == {org}
    assert [i["action"] for i in items][:2] == ["member.add", "member.add"]
    assert items[0]["actor"] == {"kind": "user", "id": admin.user_id, "name": admin.email}
    assert (await client.get(AUDIT, params={"organization_id": other}, headers=dana.headers)).status_code == 404
    # an operator does not
    refused = await client.get(AUDIT, headers=erin.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "role_required"
    assert (await client.get(AUDIT, params={"organization_id": org}, headers=erin.headers)).status_code == 403
    # a superuser reads everything, also the entries of no organisation; filters and the cursor
    everything = (await client.get(AUDIT, params={"limit": 200}, headers=admin.headers)).json()
    assert any(i["organization_id"] is None and i["action"] == "user.create" for i in everything["items"])
    stacks = await client.get(AUDIT, params={"action": "stack.", "organization_id": other, "limit": 2}, headers=admin.headers)
    body = stacks.json()
    assert [i["action"] for i in body["items"]] == ["stack.create"] * 2 and body["next_cursor"] and body["total"] == 3
    rest = (
        await client.get(AUDIT, params={"action": "stack.", "organization_id": other, "cursor": body["next_cursor"]}, headers=admin.headers)
    ).json()
    assert len(rest["items"]) == 1 and rest["items"][0]["id"] not in {i["id"] for i in body["items"]}
    by_actor = (await client.get(AUDIT, params={"actor": admin.email, "object_type": "member"}, headers=admin.headers)).json()["items"]
    assert {i["object_id"] for i in by_actor} == {dana.user_id, erin.user_id}
    future = (await client.get(AUDIT, params={"since": (utcnow() + timedelta(hours=1)).isoformat()}, headers=admin.headers)).json()
    assert future["items"] == []
    bad = await client.get(AUDIT, params={"action": "DROP TABLE"}, headers=admin.headers)
    assert bad.status_code == 422 and bad.json()["code"] == "validation_error"


@pytest.mark.parametrize("days", [30])
async def test_retention_removes_old_entries(client, db, days):
    await setup_admin(client)
    async with db.engine.begin() as conn:
        await conn.execute(update(AuditEntry).values(at=utcnow() - timedelta(days=days + 1)))
    await client.post("/api/v1/auth/login", data={"username": "x@example.com", "password": "y"})
    settings = db.settings.model_copy(update={"AUDIT_RETENTION_DAYS": days, "RETENTION_DAYS": 0, "RETENTION_MAX_LOG_LINES": 0})
    await RetentionLoop(settings).run_once()
    rows = await _entries(db)
    assert [r.action for r in rows] == ["auth.login"]


async def test_a_route_that_reads_after_its_commit_is_recorded_at_once(client, db):
    """On SQLite every transaction takes the write lock (BEGIN IMMEDIATE): a route that reads again after its
    commit holds it until its session closes, so the entry is written in the route's own session (a second
    session waited out the 30 s busy timeout and lost the entry)."""
    admin = await setup_admin(client)
    created = await client.post(
        "/api/v1/targets", json={"name": "engine", "type": "docker", "endpoint": "unix:///var/run/docker.sock"}, headers=admin.headers
    )
    assert created.status_code == 201, created.text
    rows = [r for r in await _entries(db) if r.action == "target.create"]
    assert len(rows) == 1 and rows[0].object_id == created.json()["id"] and rows[0].outcome == "success"


async def test_nul_characters_are_dropped_from_an_entry(client, db):
    """PostgreSQL refuses NUL in text and JSON: a request carrying one is still recorded (and its session's
    connection goes back to the pool: a failed entry used to leave it to the garbage collector)."""
    await setup_admin(client)
    response = await client.post("/api/v1/auth/login", data={"username": "evil\x00@example.com", "password": "x"})
    assert response.status_code in (401, 422)
    (entry,) = [r for r in await _entries(db) if r.action == "auth.login"]
    assert entry.actor_name == "evil@example.com" and "\x00" not in json.dumps(entry.summary)


class _Dispatcher:
    """Records what it is asked to run (nothing runs); ``fail`` makes it raise, after the creation committed."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    async def dispatch(self, deployment_id: str, **_kwargs) -> None:
        self.sent.append(deployment_id)
        if self.fail:
            raise RuntimeError("the executor is gone")

    async def commit_and_dispatch_new(self, session, deployment_id: str, **kwargs) -> None:
        await session.commit()  # as the real one does on every broker but Redis
        await self.dispatch(deployment_id, **kwargs)


async def _deployable(client, app, dispatcher) -> tuple:
    app.state.dispatcher = dispatcher
    admin = await setup_admin(client)
    target = await client.post(
        "/api/v1/targets", json={"name": "engine", "type": "docker", "endpoint": "unix:///var/run/docker.sock"}, headers=admin.headers
    )
    stack = await client.post(
        "/api/v1/stacks",
        json={"name": "web", "template": "services:\n  web:\n    image: windflow-test/busybox:latest\n"},
        headers=admin.headers,
    )
    assert target.status_code == 201 and stack.status_code == 201, (target.text, stack.text)
    return admin, {"stack_id": stack.json()["id"], "target_id": target.json()["id"], "variables": {}}


class _Transactions:
    """The statements of each transaction, by connection, while it is open (SQLAlchemy's engine events)."""

    def __init__(self, engine) -> None:
        self.engine = engine.sync_engine
        self.open: dict[int, list[str]] = {}
        self.committed: list[list[str]] = []

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)

    def _statement(self, conn, _cursor, statement, *_args) -> None:
        self.open.setdefault(id(conn.connection), []).append(" ".join(statement.split()[:3]))

    def _commit(self, conn) -> None:
        self.committed.append(self.open.pop(id(conn.connection), []))


async def test_a_deployment_and_its_audit_entry_are_one_commit(client, db, app):
    """POST /deployments writes its entry in the deployment's own transaction, before the deployment's insert
    (so nothing of it lies between the deployment's queued_at and its commit): one commit for both, and the
    middleware writes no second entry."""
    dispatcher = _Dispatcher()
    admin, payload = await _deployable(client, app, dispatcher)
    with _Transactions(db.engine) as transactions:
        created = await client.post("/api/v1/deployments", json=payload, headers=admin.headers)
    assert created.status_code == 201, created.text
    assert dispatcher.sent == [created.json()["id"]]
    (creation,) = [t for t in transactions.committed if "INSERT INTO deployments" in t]
    assert creation.index("INSERT INTO audit_entries") < creation.index("INSERT INTO deployments"), creation
    assert sum("INSERT INTO audit_entries" in t for t in transactions.committed) == 1, transactions.committed
    (entry,) = [r for r in await _entries(db) if r.action == "deployment.create"]
    assert (entry.object_id, entry.status_code, entry.outcome, entry.actor_name) == (created.json()["id"], 201, "success", admin.email)
    assert entry.organization_id == created.json()["organization_id"]
    # the answer is the deployment as created, as GET shows it
    shown = (await client.get(f"/api/v1/deployments/{created.json()['id']}", headers=admin.headers)).json()
    assert created.json() == shown


async def test_a_deployment_is_the_last_row_its_creation_writes(client, db, app):
    """The rows that reference the new deployment (its history row, its revision 1) are written before the
    deployment's INSERT, their foreign keys checked at the commit, and on SQLite the status counts too: nothing
    lies between that INSERT, where queued_at is stamped, and the commit but, on PostgreSQL, the counts' upsert
    (kept last for its lock order) and the event's pg_notify. Each row is there once, counted once."""
    dispatcher = _Dispatcher()
    admin, payload = await _deployable(client, app, dispatcher)
    with _Transactions(db.engine) as transactions:
        created = await client.post("/api/v1/deployments", json=payload, headers=admin.headers)
    assert created.status_code == 201, created.text
    (creation,) = [t for t in transactions.committed if "INSERT INTO deployments" in t]
    insert = creation.index("INSERT INTO deployments")
    after = ("INSERT INTO deployment_status_counts", "SELECT pg_notify") if db.kind == "postgresql" else ()
    assert all(s.startswith(after) for s in creation[insert + 1 :]), creation
    for statement in ("INSERT INTO deployment_status_history", "INSERT INTO deployment_revisions"):
        assert creation.count(statement) == 1 and creation.index(statement) < insert, (statement, creation)
    assert creation.count("INSERT INTO deployment_status_counts") == 1, creation
    deployment_id = created.json()["id"]
    async with db.engine.connect() as conn:
        history = (await conn.execute(select(DeploymentStatusHistory).where(DeploymentStatusHistory.deployment_id == deployment_id))).all()
        revisions = (await conn.execute(select(DeploymentRevision).where(DeploymentRevision.deployment_id == deployment_id))).all()
        counts = dict((await conn.execute(select(DeploymentStatusCount.status, DeploymentStatusCount.count))).all())
    assert [(h.from_status, h.to_status) for h in history] == [(None, "pending")]
    assert history[0].created_at <= datetime.fromisoformat(created.json()["queued_at"].replace("Z", "+00:00"))
    assert [r.number for r in revisions] == [1]
    assert {s: n for s, n in counts.items() if n} == {"pending": 1}


def _answering(app) -> httpx.AsyncClient:
    """A client that gets the 500 an unexpected error answers (instead of the error raised into the test)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://testserver")


async def test_a_failure_after_the_commit_corrects_the_entry(db, app):
    """The deployment committed with its entry (201), then the route failed: the entry says what the client got."""
    client = _answering(app)
    admin, payload = await _deployable(client, app, _Dispatcher(fail=True))
    response = await client.post("/api/v1/deployments", json=payload, headers=admin.headers)
    assert response.status_code == 500
    (entry,) = [r for r in await _entries(db) if r.action == "deployment.create"]
    assert (entry.status_code, entry.outcome) == (500, "failed") and entry.object_id is not None
    assert entry.summary["error"] == response.json()["code"]


async def test_a_creation_rolled_back_with_its_entry_is_still_recorded(db, app, monkeypatch):
    """The entry written with the change goes with it when the transaction fails: the middleware records the
    failure as for any route, once."""
    from backend.app.services.deployments import revisions

    client = _answering(app)
    admin, payload = await _deployable(client, app, _Dispatcher())

    def broken(*_args, **_kwargs):
        raise RuntimeError("no revision today")

    monkeypatch.setattr(revisions, "first_revision", broken)
    response = await client.post("/api/v1/deployments", json=payload, headers=admin.headers)
    assert response.status_code == 500
    (entry,) = [r for r in await _entries(db) if r.action == "deployment.create"]
    assert (entry.status_code, entry.outcome, entry.actor_name) == (500, "failed", admin.email)
    assert (await client.get("/api/v1/deployments", headers=admin.headers)).json()["items"] == []
