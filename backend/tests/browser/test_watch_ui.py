"""After the gate, in the browser: a service of a running deployment killed on the engine is marked on its row
of the list and on its page (the services and why, pushed by the socket, no reload), the page says why while
the deployment stays running with what still runs, and the mark goes when the container is back."""

from __future__ import annotations

import subprocess

from backend.tests.browser.conftest import Server, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_live_deployment import wait_status
from backend.tests.browser.test_revisions_ui import REVISED_STACK, SETTLED, container_id

MARK = "[data-testid=health-mark]"


def test_a_service_that_dies_after_the_gate_is_marked_in_the_list_and_on_the_page(
    realtime, chromium_browser, server: Server, admin_token, org_id, local_target, cleanup_deployments
) -> None:
    stack = server.api("POST", "/stacks", {**REVISED_STACK, "name": "watched", "organization_id": org_id}, token=admin_token)
    created = server.api(
        "POST", "/deployments", {"stack_id": stack["id"], "target_id": local_target["id"], "name": "watched-1"}, token=admin_token
    )
    deployment_id = created["id"]
    cleanup_deployments.append(deployment_id)
    assert wait_status(server, admin_token, deployment_id, SETTLED)["status"] == "running"
    web = container_id(deployment_id, "web")

    page = new_page(chromium_browser)
    try:
        ui_login(page, server)
        page.goto(f"{server.url}/deployments")
        row = page.locator("tr", has_text="watched-1")
        row.wait_for()
        assert row.locator(MARK).count() == 0
        subprocess.run(["docker", "kill", web], capture_output=True, timeout=60, check=True)
        mark = row.locator(f"{MARK}[data-health=degraded]")
        mark.wait_for(timeout=60_000)  # the watcher's next look (5 s), pushed to the list
        assert mark.inner_text() == "Degraded"
        assert mark.get_attribute("title") == "web: down (exited with code 137)"
        assert row.locator("[data-testid=status-badge]").get_attribute("data-status") == "running"
        screenshot(page, "watch-list-degraded")

        page.goto(f"{server.url}/deployments/{deployment_id}")
        page.locator(f".page-header {MARK}[data-health=degraded]").wait_for()
        assert "revision 1 is degraded: service web exited with code 137" in page.locator("[data-testid=detail-error]").inner_text()
        screenshot(page, "watch-detail-degraded")
        # In French: the watcher's sentence and why each service is not up, from their codes (issue 19)
        french = new_page(chromium_browser, locale="fr-FR")
        try:
            ui_login(french, server)
            french.goto(f"{server.url}/deployments/{deployment_id}")
            french_mark = french.locator(f".page-header {MARK}[data-health=degraded]")
            french_mark.wait_for()
            said = french.get_by_test_id("detail-error-text").inner_text().strip()
            assert said == "révision 1 en état dégradé : service web arrêté avec le code 137", said
            assert "(arrêté avec le code 137)" in (french_mark.get_attribute("title") or "")
            french.get_by_text("En déploiement → En service").wait_for()  # the page read its history
            french.get_by_test_id("services-not-running").wait_for()  # and the engine's containers
            screenshot(french, "watch-detail-degraded-fr")
            assert page_errors(french) == []
        finally:
            french.context.close()
        subprocess.run(["docker", "start", web], capture_output=True, timeout=60, check=True)
        page.locator(f".page-header {MARK}").wait_for(state="detached", timeout=60_000)
        page.locator("[data-testid=detail-error]").wait_for(state="detached")
        assert page_errors(page) == []
    finally:
        page.close()
