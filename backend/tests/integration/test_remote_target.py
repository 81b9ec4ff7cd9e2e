"""A remote engine over TCP + mutual TLS: the second dockerd of ``remote_docker`` (see that module)."""

from __future__ import annotations

import pytest

from backend.app.schemas.targets import TEST_FAILURE_MESSAGES, TestFailure
from backend.tests.helpers import setup_admin
from backend.tests.remote_docker import RemoteDocker, remote_docker  # noqa: F401 - the fixture

API = "/api/v1/targets"


async def _test(client, actor, body: dict) -> dict:
    created = await client.post(API, json={"type": "docker", **body}, headers=actor.headers)
    assert created.status_code == 201, created.text
    assert created.json()["has_tls"] is bool(body.get("tls_ca") or body.get("tls_cert"))
    result = await client.post(f"{API}/{created.json()['id']}/test", headers=actor.headers)
    assert result.status_code == 200, result.text
    return result.json()


async def test_tls_target_with_client_certificate_reports_the_engine(client, remote_docker: RemoteDocker):
    admin = await setup_admin(client)
    result = await _test(
        client,
        admin,
        {
            "name": "remote-tls",
            "endpoint": remote_docker.endpoint,
            "tls_ca": remote_docker.ca,
            "tls_cert": remote_docker.client.cert,
            "tls_key": remote_docker.client.key,
        },
    )
    assert result["ok"] is True, result["error"]
    assert result["version"] == remote_docker.version
    assert result["api_version"] == remote_docker.api_version
    assert result["swarm_manager"] is False
    assert result["os"] and result["error"] is None


@pytest.mark.parametrize(
    "credentials",
    ["no-client-cert", "client-cert-of-another-ca", "wrong-ca", "no-tls-at-all"],
)
async def test_wrong_or_missing_certificates_fail_with_the_tls_category(client, remote_docker: RemoteDocker, credentials):
    """Each failure is the ``tls`` category with its fixed message, never the driver's text."""
    admin = await setup_admin(client)
    good, rogue = remote_docker.client, remote_docker.rogue_client
    body = {
        "no-client-cert": {"tls_ca": remote_docker.ca},
        "client-cert-of-another-ca": {"tls_ca": remote_docker.ca, "tls_cert": rogue.cert, "tls_key": rogue.key},
        "wrong-ca": {"tls_ca": remote_docker.rogue_ca, "tls_cert": good.cert, "tls_key": good.key},
        "no-tls-at-all": {},
    }[credentials]
    result = await _test(client, admin, {"name": credentials, "endpoint": remote_docker.endpoint, **body})
    assert result["ok"] is False and result["version"] is None
    assert result["category"] == "tls", result
    assert result["error"] == TEST_FAILURE_MESSAGES[TestFailure.TLS]
    # the client key never appears in what the API says
    assert good.key.splitlines()[1] not in result["error"]


# The operator chose not to verify the engine: urllib3's InsecureRequestWarning is expected, not a defect.
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_tls_verify_false_skips_the_engine_certificate_check(client, remote_docker: RemoteDocker):
    """``tls_verify=false``: TLS with our client certificate, without checking the engine's (like ``--tls``)."""
    admin = await setup_admin(client)
    good = remote_docker.client
    result = await _test(
        client,
        admin,
        {
            "name": "no-verify",
            "endpoint": remote_docker.endpoint,
            "tls_verify": False,
            "tls_ca": remote_docker.rogue_ca,
            "tls_cert": good.cert,
            "tls_key": good.key,
        },
    )
    assert result["ok"] is True, result["error"]
    assert result["version"] == remote_docker.version
