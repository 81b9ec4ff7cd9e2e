"""Lifecycle actions as an operator meets them: a slow stop whose container ignores SIGTERM (a spinner saying
what it waits for, a double click sending one request, the row's transition at once), the dialogs' named
buttons (the destructive one red), a start sent once, the deployment page of a deployment deleted while it
is open, and a pending row saying why it waits."""

from __future__ import annotations

import re
import uuid

from backend.tests.browser.conftest import TEST_IMAGE, Server, new_page, page_errors, screenshot, tear_down, ui_login
from backend.tests.browser.test_live_deployment import hold_the_slot, wait_status

#: A service that ignores SIGTERM: stopping it waits for its whole grace period, then kills it.
STUBBORN_STACK = {
    "name": "stubborn",
    "description": "ignores SIGTERM: a stop waits for its grace period",
    "template": (
        "services:\n"
        "  app:\n"
        f"    image: {TEST_IMAGE}\n"
        "    stop_grace_period: 4s\n"
        '    command: ["sh", "-c", "trap \'\' TERM; echo up; while true; do sleep 1; done"]\n'
    ),
    "variables": [],
}

ROW = "[data-testid=deployment-row][data-id='{id}']"


def requests_to(page, suffix: str) -> list[str]:
    """Every request the page sends whose path ends with ``suffix`` (recorded from now on)."""
    sent: list[str] = []
    page.on("request", lambda r: r.method == "POST" and r.url.endswith(suffix) and sent.append(r.url))
    return sent


def is_red(rgb: str) -> bool:
    r, g, b = (int(x) for x in re.findall(r"\d+", rgb)[:3])
    return r > 150 and r > g + 60 and r > b + 40


def test_a_slow_stop_says_what_it_waits_for_and_is_sent_once(
    chromium_browser, server: Server, admin_token, org_id, local_target, demo_stack, cleanup_deployments
) -> None:
    stack = server.api("POST", "/stacks", {**STUBBORN_STACK, "organization_id": org_id}, token=admin_token)
    stubborn = server.api(
        "POST", "/deployments", {"stack_id": stack["id"], "target_id": local_target["id"], "name": "stubborn-1"}, token=admin_token
    )
    cleanup_deployments.append(stubborn["id"])
    # a deployment that stays deploying for a while, to see the Cancel dialog
    slow = server.api(
        "POST",
        "/deployments",
        {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "slow-1", "variables": {"delay": 40}},
        token=admin_token,
    )
    cleanup_deployments.append(slow["id"])
    assert wait_status(server, admin_token, stubborn["id"], {"running", "failed"})["status"] == "running"

    page = new_page(chromium_browser)
    ui_login(page, server)
    row = page.locator(ROW.format(id=stubborn["id"]))
    row.wait_for()

    # The Cancel dialog names its buttons: "Cancel deployment" (red) and "Keep it running" (nothing sent).
    page.locator(ROW.format(id=slow["id"])).get_by_test_id("action-cancel").click()
    dialog = page.get_by_test_id("confirm-dialog")
    dialog.wait_for()
    assert dialog.get_by_test_id("confirm-ok").inner_text().strip() == "Cancel deployment"
    assert dialog.get_by_test_id("confirm-cancel").inner_text().strip() in ("Keep it running", "Keep it queued")
    assert is_red(dialog.get_by_test_id("confirm-ok").evaluate("(b) => getComputedStyle(b).backgroundColor"))
    screenshot(page, "confirm-cancel-en-light")
    dialog.get_by_test_id("confirm-cancel").click()
    dialog.wait_for(state="hidden")
    assert server.api("GET", f"/deployments/{slow['id']}", token=admin_token)["status"] in ("pending", "deploying")

    # Stop: a double click on "Stop deployment" sends one request; the dialog says what it waits for.
    stops = requests_to(page, f"/deployments/{stubborn['id']}/stop")
    row.get_by_test_id("action-stop").click()
    dialog.wait_for()
    assert dialog.get_by_test_id("confirm-ok").inner_text().strip() == "Stop deployment"
    assert dialog.get_by_test_id("confirm-cancel").inner_text().strip() == "Keep it running"
    assert is_red(dialog.get_by_test_id("confirm-ok").evaluate("(b) => getComputedStyle(b).backgroundColor"))
    dialog.get_by_test_id("confirm-ok").dblclick()
    waiting = dialog.get_by_test_id("confirm-waiting")
    waiting.wait_for(timeout=3000)
    assert "Waiting for the containers to stop (grace 4 s)" in waiting.inner_text()
    # the row shows the transition at once, the button works and cannot be pressed again
    row.locator("[data-testid=status-badge][data-transition=stop]").wait_for(timeout=3000)
    assert dialog.get_by_test_id("confirm-ok").is_disabled()
    screenshot(page, "confirm-stop-waiting-en-light")
    dialog.wait_for(state="hidden", timeout=30_000)
    page.wait_for_function(
        f"document.querySelector(\"{ROW.format(id=stubborn['id'])} [data-testid=status-badge]\")?.dataset.status === 'stopped'"
    )
    assert len(stops) == 1, stops
    assert server.api("GET", f"/deployments/{stubborn['id']}", token=admin_token)["status"] == "stopped"

    # Start (no confirmation): a double click sends it once, and the row says so at once.
    starts = requests_to(page, f"/deployments/{stubborn['id']}/start")
    row.get_by_test_id("action-start").dblclick()
    page.wait_for_function(
        f"['pending', 'deploying', 'running'].includes(document.querySelector(\"{ROW.format(id=stubborn['id'])} "
        '[data-testid=status-badge]")?.dataset.status)'
    )
    page.wait_for_timeout(300)
    assert len(starts) == 1, starts
    assert page_errors(page) == [], page.errors
    page.context.close()


def test_the_detail_page_says_when_its_deployment_is_deleted(
    chromium_browser, server: Server, admin_token, local_target, demo_stack, cleanup_deployments
) -> None:
    deployment = server.api(
        "POST",
        "/deployments",
        {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "deleted-while-open", "variables": {"delay": 0}},
        token=admin_token,
    )
    cleanup_deployments.append(deployment["id"])
    wait_status(server, admin_token, deployment["id"], {"running", "failed"})
    page = new_page(chromium_browser)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments/{deployment['id']}")
    page.get_by_test_id("detail-name").wait_for()
    page.wait_for_function("document.querySelector('[data-testid=timeline]')")
    timeline = page.get_by_test_id("timeline").inner_text()
    assert "Taken by executor asyncio:" in timeline and "Created" in timeline
    taken = next(line for line in timeline.splitlines() if "Taken by executor" in line)
    assert taken.count("asyncio:") == 1 and "· by" not in taken, taken  # not "claimed by X · by X"
    server.api("DELETE", f"/deployments/{deployment['id']}", token=admin_token)
    page.get_by_test_id("deployment-deleted").wait_for()
    assert "deleted-while-open" in page.get_by_test_id("deployment-deleted").inner_text()
    assert page_errors(page) == [], page.errors
    page.context.close()


def test_a_pending_row_says_it_waits_for_a_free_slot_on_its_target(
    realtime, chromium_browser, server: Server, admin_token, org_id, demo_stack, cleanup_deployments
) -> None:
    narrow = server.api(
        "POST",
        "/targets",
        {
            "name": f"one-at-a-time-{uuid.uuid4().hex[:4]}",
            "organization_id": org_id,
            "endpoint": "unix:///var/run/docker.sock",
            "max_concurrent_deployments": 1,
        },
        token=admin_token,
    )
    try:
        hold_the_slot(server, admin_token, demo_stack["id"], narrow["id"], cleanup_deployments, "holds-the-slot", delay=30)
        page = new_page(chromium_browser)
        ui_login(page, server)
        # created while the list is open: the new row says at once why it does not start
        second = server.api(
            "POST",
            "/deployments",
            {"stack_id": demo_stack["id"], "target_id": narrow["id"], "name": "waits-for-it", "variables": {"delay": 0}},
            token=admin_token,
        )
        cleanup_deployments.append(second["id"])
        waiting = page.locator(ROW.format(id=second["id"])).get_by_test_id("waiting")
        waiting.wait_for(timeout=15_000)
        assert waiting.get_attribute("data-reason") == "target_capacity", waiting.inner_text()
        assert f"Waiting for a free slot on {narrow['name']} (1/1 deploying)" in waiting.inner_text()
        screenshot(page, "deployments-waiting-slot-en-light")
        # read again (a reload): the same
        page.reload()
        page.locator(ROW.format(id=second["id"])).get_by_test_id("waiting").filter(has_text="1/1 deploying").wait_for()
        assert page_errors(page) == [], page.errors
        page.context.close()
    finally:
        for deployment_id in list(cleanup_deployments):
            tear_down(server, admin_token, deployment_id)
        server.api("DELETE", f"/targets/{narrow['id']}", token=admin_token)
