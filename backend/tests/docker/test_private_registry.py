"""Private images through a real registry (``docker-registry`` 2.8 with htpasswd auth, on a loopback port):
a deployment pulls with its organisation's registry credentials (the engine API's auth parameter only), records
the digest and logs one line per image pulled; a refused login fails at once, clearly, without a retry; an
unknown image in a reachable registry is permanent too. The password shows in no response, log line, event,
project file or Docker config file."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path

import docker
import pytest

from backend.app.runtime import background_tasks
from backend.tests.conftest import TEST_IMAGE
from backend.tests.deploy_helpers import all_logs, force_cleanup, wait_status
from backend.tests.docker.test_deployments import make_env
from backend.tests.registry_fixtures import PASSWORD, USERNAME, LocalRegistry, open_registry, private_registry  # noqa: F401

#: The registry, its credentials and the engine's pull are the same code on either database: one database is
#: enough (SQLite, the embedded default; the credentials' storage on both is tested in tests/integration)
pytestmark = [pytest.mark.docker, pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)]


def push(registry: LocalRegistry, repository: str, tag: str) -> str:
    """Push the test image as ``registry/repository:tag``; the local copy of that name removed (so a deploy
    pulls it). Returns the reference."""
    client = docker.from_env()
    reference = f"{registry.server}/{repository}"
    client.images.get(TEST_IMAGE).tag(reference, tag)
    auth = {"username": registry.username, "password": registry.password, "serveraddress": registry.server} if registry.username else None
    for line in client.api.push(reference, tag, stream=True, decode=True, auth_config=auth):
        assert "error" not in line, line
    client.images.remove(f"{reference}:{tag}")
    return f"{reference}:{tag}"


def forget(reference: str) -> None:
    try:
        docker.from_env().images.remove(reference, force=True)
    except docker.errors.NotFound:
        pass


@pytest.fixture
async def env(db, docker_engine, tmp_path):
    client, environment = await make_env(db, docker_engine, tmp_path, DEPLOYMENT_MAX_ATTEMPTS=3)
    try:
        yield environment
    finally:
        await background_tasks.shutdown()
        for deployment_id in environment.created:
            force_cleanup(deployment_id)
        await client.aclose()


async def _registry(env, server: str, password: str) -> dict:
    response = await env.client.post(
        "/api/v1/registries",
        json={"name": "private", "server": server, "username": USERNAME, "password": password},
        headers=env.admin.headers,
    )
    assert response.status_code == 201, response.text
    return response.json()


def _image_stack(reference: str) -> str:
    return f'services:\n  app:\n    image: {reference}\n    init: true\n    command: ["sh", "-c", "while true; do sleep 1; done"]\n'


async def test_private_image_deployed_with_the_organisations_credentials(env, private_registry, events, caplog, tmp_path):
    caplog.set_level("DEBUG")
    reference = push(private_registry, "team/app", f"v{os.urandom(3).hex()}")
    try:
        registry = await _registry(env, private_registry.server, PASSWORD)
        stack_id = await env.stack(_image_stack(reference), name="private")
        created = await env.deploy({}, stack_id=stack_id)
        running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
        assert running["status"] == "running", running["error_message"]

        logs = await all_logs(env.client, env.admin.headers, created["id"])
        pulled = [line["message"] for line in logs if line["message"].startswith(f"pulled image {reference}")]
        assert len(pulled) == 1 and "sha256:" in pulled[0] and " MB" in pulled[0], pulled
        assert any("with the organisation's credentials for " + private_registry.server in line["message"] for line in logs)
        revisions = await env.client.get(f"/api/v1/deployments/{created['id']}/revisions", headers=env.admin.headers)
        images = revisions.json()["items"][0]["images"]
        assert images[0]["service"] == "app" and images[0]["digest"].startswith("sha256:"), images
        assert images[0]["digest"] in pulled[0]
        # the deployment shows what its current revision runs: image as named, digest, size on the engine
        local = docker.from_env().images.get(reference)
        assert running["images"] == [{"service": "app", "image": reference, "digest": images[0]["digest"], "size": local.attrs["Size"]}]
        assert images[0]["size"] == local.attrs["Size"] > 0
        listed = await env.client.get("/api/v1/deployments", headers=env.admin.headers)
        assert [d["images"] for d in listed.json()["items"] if d["id"] == created["id"]] == [running["images"]]

        # the password: in no response, log line, event, server log, project file or docker config file
        responses = [
            await env.client.get(url, headers=env.admin.headers)
            for url in (
                f"/api/v1/deployments/{created['id']}",
                f"/api/v1/deployments/{created['id']}/logs",
                f"/api/v1/deployments/{created['id']}/revisions",
                f"/api/v1/registries/{registry['id']}",
                "/api/v1/registries",
            )
        ]
        for response in responses:
            assert response.status_code == 200 and PASSWORD not in response.text
        assert PASSWORD not in json.dumps([line["message"] for line in logs])
        assert PASSWORD not in repr([e.data for e in events])
        assert PASSWORD not in caplog.text
        for path in (tmp_path / "deployments").rglob("*"):
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path
        for config in (Path.home() / ".docker" / "config.json", Path("/root/.docker/config.json")):
            if config.exists():
                assert private_registry.server not in config.read_text()
                assert PASSWORD not in config.read_text()
    finally:
        forget(reference)


async def test_wrong_password_fails_at_once_and_says_why(env, private_registry):
    reference = push(private_registry, "team/app", f"v{os.urandom(3).hex()}")
    try:
        await _registry(env, private_registry.server, "not-the-password-123")
        stack_id = await env.stack(_image_stack(reference), name="wrong")
        created = await env.deploy({}, stack_id=stack_id)
        failed = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
        assert failed["status"] == "failed"
        assert failed["attempt"] == 1, "a refused login is permanent: no retry"
        assert f"registry {private_registry.server} refused the credentials" in failed["error_message"]
        assert "not-the-password-123" not in failed["error_message"]
        logs = await all_logs(env.client, env.admin.headers, created["id"])
        assert any(line["level"] == "error" and "refused the credentials" in line["message"] for line in logs)
        assert "not-the-password-123" not in json.dumps(logs)
    finally:
        forget(reference)


async def test_unknown_tag_is_permanent_and_unreachable_registry_transient(env, open_registry):
    stack_id = await env.stack(_image_stack(f"{open_registry.server}/team/nothing:1.0"), name="unknown")
    created = await env.deploy({}, stack_id=stack_id)
    failed = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    assert failed["status"] == "failed" and failed["attempt"] == 1
    assert "unknown image or tag" in failed["error_message"]

    stack_id = await env.stack(_image_stack("127.0.0.1:1/team/nothing:1.0"), name="unreachable")
    created = await env.deploy({}, stack_id=stack_id)
    failed = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
    assert failed["status"] == "failed"
    assert failed["attempt"] == 3, "an unreachable registry is transient: retried with the deployment's attempts"
    assert "registry 127.0.0.1:1 is unreachable" in failed["error_message"]


def push_fresh_layer(registry: LocalRegistry, size: int) -> str:
    """Build an image with a layer of ``size`` random bytes on the test image, push it, and remove it locally
    (its own layer with it): a deploy then downloads that layer."""
    client = docker.from_env()
    tag = f"{registry.server}/team/big:v{os.urandom(3).hex()}"
    dockerfile = f"FROM {TEST_IMAGE}\nRUN head -c {size} /dev/urandom > /blob\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True, pull=False)
    repository, _, version = tag.rpartition(":")
    auth = {"username": registry.username, "password": registry.password, "serveraddress": registry.server} if registry.username else None
    for line in client.api.push(repository, version, stream=True, decode=True, auth_config=auth):
        assert "error" not in line, line
    for _ in range(50):  # the builder removes its last container a moment after the build returns
        try:
            client.images.remove(tag)
            break
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            time.sleep(0.1)
    else:
        raise AssertionError(f"{tag} still in use after the build")
    return tag


async def test_pull_progress_events_are_typed_ordered_and_bounded(env, private_registry, events):
    size = 4_000_000
    reference = push_fresh_layer(private_registry, size)
    try:
        await _registry(env, private_registry.server, PASSWORD)
        stack_id = await env.stack(_image_stack(reference), name="big")
        created = await env.deploy({}, stack_id=stack_id)
        running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
        assert running["status"] == "running", running["error_message"]
        pulls = [e for e in events if e.deployment_id == created["id"] and e.type == "DEPLOYMENT_PULL_PROGRESS"]
        assert pulls, "no pull progress event"
        assert all(e.data["image"] == reference for e in pulls)
        assert pulls[-1].data["status"] == "pulled"
        last = pulls[-1].data
        assert last["total_bytes"] >= size and last["current_bytes"] == last["total_bytes"]
        assert last["layers_total"] >= 2 and last["layers_done"] == last["layers_total"]
        done = [e.data["current_bytes"] for e in pulls]
        assert done == sorted(done), "bytes done never go back"
        stamps = [e.timestamp for e in pulls]
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
        assert all(gap >= 0.15 for gap in gaps), gaps  # at most ~5 a second
        assert PASSWORD not in repr([e.data for e in pulls])
        logs = await all_logs(env.client, env.admin.headers, created["id"])
        assert len([line for line in logs if line["message"].startswith("pulled image")]) == 1
    finally:
        await background_tasks.shutdown()
        for deployment_id in env.created:  # the container first: the image it ran is then removed, not untagged
            force_cleanup(deployment_id)
        forget(reference)


def push_layer_as(registry: LocalRegistry, reference: str, size: int) -> None:
    """Build a fresh layer image under ``reference`` (a tag that exists: it moves), push it, drop the local tag."""
    client = docker.from_env()
    dockerfile = f"FROM {TEST_IMAGE}\nRUN head -c {size} /dev/urandom > /moved\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=reference, rm=True, forcerm=True, pull=False)
    repository, _, version = reference.rpartition(":")
    for line in client.api.push(repository, version, stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(reference)


async def test_a_redeploy_runs_the_recorded_digest_after_the_tag_moved(env, open_registry):
    reference = push_fresh_layer(open_registry, 100_000)
    first_image = None
    try:
        stack_id = await env.stack(_image_stack(reference), name="moving")
        created = await env.deploy({}, stack_id=stack_id)
        running = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
        assert running["status"] == "running", running["error_message"]
        recorded = running["images"][0]["digest"]
        client = docker.from_env()
        label = {"label": f"windflow.deployment_id={created['id']}"}
        first_image = client.containers.list(ignore_removed=True, filters=label)[0].image.id

        push_layer_as(open_registry, reference, 100_000)  # the tag now names another image in the registry
        redeployed = await env.client.post(f"/api/v1/deployments/{created['id']}/redeploy", headers=env.admin.headers)
        assert redeployed.status_code == 200, redeployed.text
        await asyncio.sleep(0.5)
        again = await wait_status(env.client, env.admin.headers, created["id"], {"running", "failed"})
        assert again["status"] == "running", again["error_message"]
        assert again["images"][0]["digest"] == recorded
        containers = client.containers.list(ignore_removed=True, filters=label)
        assert [c.image.id for c in containers] == [first_image], "the redeploy ran what the tag points to now"
        logs = await all_logs(env.client, env.admin.headers, created["id"])
        assert any(f"is {recorded} (pinned)" in line["message"] for line in logs), [line["message"] for line in logs][-15:]
    finally:
        forget(reference)
        if first_image is not None:  # untagged once the tag moved: removed with the containers that ran it
            await background_tasks.shutdown()
            for deployment_id in env.created:
                force_cleanup(deployment_id)
            forget(first_image)
