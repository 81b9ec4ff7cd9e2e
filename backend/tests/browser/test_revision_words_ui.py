"""A revision's row on the Revisions tab says in French why it failed, the watcher's detail too (issue 19): the
one container of a running deployment is killed on the engine, the watcher fails the deployment at its second
look ("nothing of revision 1 runs any more: service web exited with code 137", copied onto the revision), and
the French row reads 'plus rien de la révision 1 ne tourne : service web arrêté avec le code 137' from the
detail's parts (a revision has no service_health to word it from), no English left."""

from __future__ import annotations

import subprocess

from backend.tests.browser.conftest import TEST_IMAGE, Server, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_live_deployment import wait_status
from backend.tests.browser.test_revisions_ui import container_id

ONE_SERVICE = {
    "name": "killed-words",
    "description": "one service, no restart policy",
    "template": f'services:\n  web:\n    image: {TEST_IMAGE}\n    init: true\n    command: ["sh", "-c", "sleep 3600"]\n',
    "variables": [],
}


def test_a_failed_revisions_row_reads_in_french(
    chromium_browser, server: Server, admin_token, org_id, local_target, cleanup_deployments
) -> None:
    stack = server.api("POST", "/stacks", {**ONE_SERVICE, "organization_id": org_id}, token=admin_token)
    deployment = server.api(
        "POST", "/deployments", {"stack_id": stack["id"], "target_id": local_target["id"], "name": "killed-words"}, token=admin_token
    )
    deployment_id = deployment["id"]
    cleanup_deployments.append(deployment_id)
    assert wait_status(server, admin_token, deployment_id, {"failed", "running"})["status"] == "running"
    subprocess.run(["docker", "kill", container_id(deployment_id, "web")], capture_output=True, timeout=60, check=True)
    failed = wait_status(server, admin_token, deployment_id, {"failed"}, timeout=90)  # the watcher's second look
    assert failed["status"] == "failed", failed
    (revision,) = server.api("GET", f"/deployments/{deployment_id}/revisions", token=admin_token)["items"]
    assert revision["error_message"] == "nothing of revision 1 runs any more: service web exited with code 137", revision
    assert revision["error_code"] == "watch_down"
    assert revision["error_params"]["detail.0.code"] == "exited_code" and revision["error_params"]["detail.0.service"] == "web"

    page = new_page(chromium_browser, locale="fr-FR")
    try:
        ui_login(page, server)
        page.goto(f"{server.url}/deployments/{deployment_id}?tab=revisions")
        row = page.locator("[data-testid=revision-row][data-number='1']")
        row.wait_for()
        said = row.locator(".err-line").first.inner_text().strip()
        assert said == "plus rien de la révision 1 ne tourne : service web arrêté avec le code 137", said
        assert row.locator(".err-line").first.get_attribute("title") == said  # the row cuts it: the whole, in French
        screenshot(page, "revision-row-words-fr")
        assert page_errors(page) == []
    finally:
        page.context.close()
