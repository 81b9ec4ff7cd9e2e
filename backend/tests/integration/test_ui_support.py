"""What the web UI needs from the backend: the built UI served at ``/``, the setup status, and the
rendered compose document of a deployment with its secrets masked."""

from __future__ import annotations

import httpx
import pytest

from backend.app import database
from backend.app.main import create_app
from backend.app.services.deployment_service import DeploymentService
from backend.tests.helpers import default_org, setup_admin


@pytest.fixture
def dist(tmp_path):
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>WindFlow UI</title>")
    (root / "assets" / "app-1a2b3c.js").write_text("console.log('app')")
    (root / "favicon.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("outside dist")
    (root / "assets" / "link.txt").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
async def ui_client(db, dist):
    app = create_app(db.settings.model_copy(update={"FRONTEND_DIST": dist}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield client


async def test_the_ui_is_served_with_spa_fallback_and_cache_headers(ui_client) -> None:
    index = await ui_client.get("/")
    assert index.status_code == 200 and "WindFlow UI" in index.text
    assert index.headers["cache-control"] == "no-cache"  # a new build is picked up at once

    route = await ui_client.get("/deployments/abc?logs=abc&seq=3")  # a client-side route
    assert route.status_code == 200 and "WindFlow UI" in route.text
    assert route.headers["cache-control"] == "no-cache"

    asset = await ui_client.get("/assets/app-1a2b3c.js")
    assert asset.status_code == 200 and asset.text == "console.log('app')"
    assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert (await ui_client.head("/assets/app-1a2b3c.js")).status_code == 200

    icon = await ui_client.get("/favicon.svg")
    assert icon.status_code == 200 and icon.headers["cache-control"] == "no-cache"

    missing = await ui_client.get("/assets/app-old.js")  # a stale bundle is a 404, not the HTML
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


async def test_the_api_keeps_its_json_404_and_nothing_outside_dist_is_served(ui_client) -> None:
    for path in ("/api/v1/nope", "/api/v1", "/health/x", "/docs/x"):
        response = await ui_client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("application/json"), path
    for path in ("/..%2f..%2fsecret.txt", "/assets/..%2f..%2fsecret.txt", "/%2e%2e/secret.txt", "/assets/link.txt", "/assets/%00.js"):
        response = await ui_client.get(path)
        assert "outside dist" not in response.text, path
        assert response.status_code in (200, 404), path  # the app's index, or a 404: never the file


async def test_no_dist_means_no_catch_all(db, tmp_path) -> None:
    app = create_app(db.settings.model_copy(update={"FRONTEND_DIST": tmp_path / "nothing"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        response = await client.get("/")
        assert response.status_code == 404 and "no such route" in response.json()["detail"]


async def test_setup_status(client) -> None:
    assert (await client.get("/api/v1/auth/setup")).json() == {"needed": True}
    await setup_admin(client)
    assert (await client.get("/api/v1/auth/setup")).json() == {"needed": False}


@pytest.mark.docker
async def test_rendered_compose_masks_every_secret(client, db, docker_engine) -> None:
    admin = await setup_admin(client)
    org_id = await default_org(client, admin)
    stack = await client.post(
        "/api/v1/stacks",
        headers=admin.headers,
        json={
            "name": "masked",
            "organization_id": org_id,
            "template": (
                "services:\n  app:\n    image: windflow-test/busybox:latest\n    environment:\n"
                '      GENERATED: "{{ generated }}"\n      GIVEN: "{{ given }}"\n      PLAIN: "{{ plain }}"\n'
            ),
            "variables": [
                {"name": "generated", "type": "secret", "default": "{{ generate_password(20) }}"},
                {"name": "given", "type": "secret"},
                {"name": "plain", "type": "string", "default": "visible-value"},
            ],
        },
    )
    assert stack.status_code == 201, stack.text
    target = await client.post(
        "/api/v1/targets", headers=admin.headers, json={"name": "nowhere", "endpoint": "tcp://127.0.0.1:9", "organization_id": org_id}
    )
    assert target.status_code == 201, target.text
    from backend.app.models import User

    async with database.AsyncSessionLocal() as session:
        user = await session.get(User, admin.user_id)
        deployment = await DeploymentService.create(
            session,
            settings=db.settings,
            user=user,
            stack_id=stack.json()["id"],
            target_id=target.json()["id"],
            variables={"given": "pa$word-given-1"},
        )
        await session.commit()
        generated = None
        from backend.app.core.security import EncryptedValues

        generated = EncryptedValues(deployment.variables).decrypt(db.settings)["generated"]

    response = await client.get(f"/api/v1/deployments/{deployment.id}/compose", headers=admin.headers)
    assert response.status_code == 200, response.text
    compose = response.json()["compose"]
    assert "visible-value" in compose
    assert generated not in compose and "pa$word-given-1" not in compose and "pa$$word-given-1" not in compose
    assert compose.count("***") == 2
