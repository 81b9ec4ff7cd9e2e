"""The health gate's waiting lines in French, the containers' states too (issue 19): a service whose
healthcheck passes only after a few seconds is seen ``running (starting)``; the API gives the line's states as
parts (``states.0.code`` ``health``, ``starting``) and the French drawer words every part
('attente de app : 0/1 prêt(s), états en marche (contrôle de santé en cours)'), no English state left."""

from __future__ import annotations

from backend.tests.browser.conftest import TEST_IMAGE, Server, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_live_deployment import wait_status

SLOW_HEALTH = {
    "name": "slow-health-words",
    "description": "a service healthy after its healthcheck's first interval",
    "template": (
        "services:\n"
        "  app:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "sleep 3600"]\n'
        "    healthcheck:\n"
        '      test: ["CMD", "true"]\n'
        "      interval: 3s\n"
        "      retries: 3\n"
    ),
    "variables": [],
}


def test_the_health_gates_waiting_line_reads_in_french(
    chromium_browser, server: Server, admin_token, org_id, local_target, cleanup_deployments
) -> None:
    stack = server.api("POST", "/stacks", {**SLOW_HEALTH, "organization_id": org_id}, token=admin_token)
    deployment = server.api(
        "POST", "/deployments", {"stack_id": stack["id"], "target_id": local_target["id"], "name": "slow-health"}, token=admin_token
    )
    cleanup_deployments.append(deployment["id"])
    assert wait_status(server, admin_token, deployment["id"], {"failed", "running"})["status"] == "running"
    lines = server.api("GET", f"/deployments/{deployment['id']}/logs?since_seq=0&limit=1000", token=admin_token)["items"]
    waiting = [line for line in lines if line["code"] == "waiting_ready"]
    assert waiting, [line["message"] for line in lines]
    assert waiting[0]["message"] == "waiting for app: 0/1 ready, running (starting)", waiting[0]
    assert {k: v for k, v in waiting[0]["params"].items() if k.startswith("states.")} == {
        "states.parts": "1",
        "states.0.code": "health",
        "states.0.health": "starting",
    }

    page = new_page(chromium_browser, locale="fr-FR")
    try:
        ui_login(page, server)
        page.goto(f"{server.url}/deployments?logs={deployment['id']}")
        said = page.locator("[data-testid=log-line]", has_text="attente de app : 0/1 prêt(s)")
        said.first.wait_for()
        text = said.first.inner_text()
        assert "états en marche (contrôle de santé en cours)" in text, text
        assert "running" not in text and "starting" not in text, text
        said.first.scroll_into_view_if_needed()
        screenshot(page, "waiting-line-words-fr")
        assert page_errors(page) == []
    finally:
        page.context.close()
