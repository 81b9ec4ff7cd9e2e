"""The engine's pull stream read into typed progress, and pull failures classified (pure logic)."""

from __future__ import annotations

import pytest

from backend.app.core.exceptions import ValidationFailed
from backend.app.engines.pull import PullFailed, PullProgress, auth_for, classify
from backend.app.services.deployments.context import stack_timeout


def test_stream_lines_fold_into_bytes_and_layers():
    state = PullProgress("r.example/a:1")
    lines = [
        {"status": "Pulling from a", "id": "1"},
        {"status": "Pulling fs layer", "id": "l1"},
        {"status": "Already exists", "id": "l0"},
        {"status": "Pulling fs layer", "id": "l2"},
        {"status": "Downloading", "id": "l1", "progressDetail": {"current": 100, "total": 1000}},
        {"status": "Downloading", "id": "l2", "progressDetail": {"current": 50, "total": 500}},
    ]
    for line in lines:
        state.feed(line)
    assert state.snapshot() == {
        "image": "r.example/a:1",
        "status": "downloading",
        "current_bytes": 150,
        "total_bytes": 1500,
        "layers_done": 1,
        "layers_total": 3,
    }
    for line in (
        {"status": "Download complete", "id": "l1"},
        {"status": "Extracting", "id": "l1", "progressDetail": {"current": 10, "total": 1000}},
        {"status": "Pull complete", "id": "l1"},
        {"status": "Verifying Checksum", "id": "l2"},
        {"status": "Pull complete", "id": "l2"},
        {"status": "Digest: sha256:abc"},
        {"status": "Status: Downloaded newer image for r.example/a:1"},
    ):
        state.feed(line)
    assert state.digest == "sha256:abc" and state.status == "pulled"
    assert (state.current_bytes, state.total_bytes, state.layers_done, state.layers_total) == (1500, 1500, 3, 3)


def test_failures_say_why_and_only_unreachable_is_transient():
    assert classify("manifest for x:1 not found: manifest unknown", 404) == "unknown_image"
    assert classify("pull access denied for x, repository does not exist or may require 'docker login'") == "unknown_image"
    assert classify("unauthorized: authentication required", 500) == "authentication"
    assert classify('Head "http://127.0.0.1:5000/v2/x/manifests/1": no basic auth credentials', 500) == "authentication"
    assert classify('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused', 500) == "unreachable"
    assert classify("lookup registry.example: no such host") == "unreachable"
    assert classify("write /var/lib/docker/tmp: no space left on device") == "disk_full"
    assert classify("something else went wrong", 500) == "error"
    assert PullFailed("127.0.0.1:1/x:1", "unreachable", "dial tcp").transient is True
    for reason in ("unknown_image", "authentication", "disk_full", "error"):
        failed = PullFailed("r.example/x:1", reason, "detail")
        assert failed.transient is False and failed.message.startswith("image r.example/x:1 is not available")


def test_credentials_match_the_images_registry():
    auth = {
        "r.example:5000": {"username": "u", "password": "p", "serveraddress": "r.example:5000"},
        "docker.io": {"username": "h", "password": "q", "serveraddress": "docker.io"},
    }
    assert auth_for("r.example:5000/team/api:1", auth)["username"] == "u"
    assert auth_for("busybox", auth)["username"] == "h" and auth_for("library/busybox:1", auth)["username"] == "h"
    assert auth_for("other.example/team/api:1", auth) is None


@pytest.mark.parametrize("key", ["pull_timeout", "up_timeout"])
@pytest.mark.parametrize(("extension", "expected"), [(None, None), ({}, None), ({"k": None}, None), ({"k": 600}, 600.0), ({"k": 1.5}, 1.5)])
def test_a_stacks_own_timeout(key, extension, expected) -> None:
    extension = None if extension is None else {key if name == "k" else name: value for name, value in extension.items()}
    document = {"services": {"a": {"image": "x"}}} | ({} if extension is None else {"x-windflow": extension})
    assert stack_timeout(document, key) == expected


def test_each_timeout_of_a_stack_is_its_own() -> None:
    document = {"services": {}, "x-windflow": {"pull_timeout": 30, "up_timeout": 5}}
    assert (stack_timeout(document, "pull_timeout"), stack_timeout(document, "up_timeout")) == (30.0, 5.0)


@pytest.mark.parametrize("key", ["pull_timeout", "up_timeout"])
@pytest.mark.parametrize("value", [0, 86401, "soon", True])
def test_an_invalid_stack_timeout_says_what_to_fix(key, value) -> None:
    for extension in ({key: value}, 600):
        with pytest.raises(ValidationFailed) as caught:
            stack_timeout({"services": {}, "x-windflow": extension}, key)
        assert caught.value.code == f"invalid_{key}"
        assert f"x-windflow.{key} must be a number of seconds between 1 and 86400" in caught.value.detail
