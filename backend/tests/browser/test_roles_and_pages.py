"""Role gating in the browser, and screenshots of every page in light and dark, English and French."""

from __future__ import annotations

import uuid

from backend.tests.browser.conftest import Server, navigate, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_live_deployment import wait_status


def _viewer(server: Server, admin_token: str, org_id: str) -> tuple[str, str]:
    email = f"viewer-{uuid.uuid4().hex[:8]}@example.com"
    password = "viewer-password-1"
    user = server.api("POST", "/users", {"email": email, "password": password}, token=admin_token)
    server.api("POST", f"/organizations/{org_id}/members", {"user_id": user["id"], "role": "viewer"}, token=admin_token)
    return email, password


def test_viewer_sees_no_action_they_cannot_take(
    chromium_browser, server: Server, admin_token, org_id, local_target, demo_stack, cleanup_deployments
) -> None:
    # A settled deployment in the list, so row actions would show if they were offered.
    deployment = server.api(
        "POST",
        "/deployments",
        {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "viewer-sees", "variables": {"delay": 0}},
        token=admin_token,
    )
    cleanup_deployments.append(deployment["id"])
    email, password = _viewer(server, admin_token, org_id)
    page = new_page(chromium_browser)
    ui_login(page, server, email, password)
    page.get_by_test_id("deployment-row").first.wait_for()
    assert page.get_by_test_id("new-deployment").count() == 0
    assert page.get_by_test_id("logs-button").count() >= 1  # reading is allowed
    for action in ("stop", "start", "redeploy", "retry", "cancel", "delete"):
        assert page.get_by_test_id(f"action-{action}").count() == 0, action
    # The new-deployment page itself sends a viewer back to the list.
    page.goto(server.url + "/deployments/new")
    page.wait_for_url("**/deployments")
    page.goto(server.url + "/stacks")
    page.get_by_test_id("stack-card").first.wait_for()
    assert page.get_by_role("button", name="New stack").count() == 0
    assert page.get_by_role("button", name="Deploy").count() == 0
    page.goto(server.url + "/targets")
    page.get_by_role("heading", name="Targets").wait_for()
    assert page.get_by_role("button", name="Add target").count() == 0
    page.context.close()


# Every button of every row's Actions cell lies inside the table's visible box and the window, and is
# not covered (a pinned column over a scrolled one would cover it); the table needs no sideways scroll.
ACTIONS_VISIBLE = """
() => {
  const table = document.querySelector('.n-data-table');
  const box = table.getBoundingClientRect();
  const right = Math.min(box.right, window.innerWidth);
  const problems = [];
  const buttons = [...document.querySelectorAll('.row-actions button')];
  for (const b of buttons) {
    const r = b.getBoundingClientRect();
    const label = (b.innerText || b.getAttribute('aria-label') || '?').trim();
    if (r.left < box.left - 1 || r.right > right + 1) problems.push(`${label} outside the table (${r.left}-${r.right} not in ${box.left}-${right})`);
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    if (!hit || !b.contains(hit)) problems.push(`${label} covered by ${hit && hit.className}`);
  }
  const inner = document.querySelector('.n-data-table-table');
  if (inner && inner.getBoundingClientRect().width > box.width + 1) problems.push(`table ${inner.getBoundingClientRect().width}px wide in ${box.width}px`);
  return { buttons: buttons.length, problems };
}
"""

#: Naive UI's own placeholders ("Please Input", "Please Select"): every field says what it wants instead.
DEFAULT_PLACEHOLDERS = """
() => [...document.querySelectorAll('[placeholder], .n-base-selection-placeholder, .n-input__placeholder')]
  .map((e) => e.getAttribute('placeholder') ?? e.innerText)
  .filter((text) => /^please /i.test(text ?? ''))
"""

#: (name, path, what shows once the page has what it read): a test id, or a CSS selector (``css=...``).
PAGES = [
    ("deployments", "/deployments", "deployment-row"),
    ("new-deployment", "/deployments/new", "pick-stack"),
    ("new-deployment-form", "/deployments/new?stack={stack}", "field-delay"),
    ("stacks", "/stacks", "stack-card"),
    ("targets", "/targets", "target-row"),
    ("organization", "/organization", "member-row"),
    ("tokens", "/tokens", "css=[data-testid=token-row], .n-data-table-empty"),
    ("system", "/system", "engine"),
    ("profile", "/profile", "membership"),
    ("admin-users", "/admin", "user-row"),
    ("admin-organizations", "/admin?tab=organizations", "organization-row"),
    ("target-edit", "/targets?edit={target}", "target-save"),
    ("target-policy", "/targets?policy={target}", "policy-switch-allow_host_binds"),
    ("stack-new", "/stacks/new", "template-editor"),
]
#: Pages whose marker shows before all they read has arrived (the System page's engine facts).
SETTLE = {"system"}
#: The new screens at a phone's width too.
PHONE_PAGES = ["admin-users", "target-edit", "target-policy", "stack-new", "organization", "tokens", "system"]


def shown(page, marker: str) -> None:
    """Waits until the page shows ``marker`` (a test id, or ``css=<selector>``)."""
    locator = page.locator(marker[4:]) if marker.startswith("css=") else page.get_by_test_id(marker)
    locator.first.wait_for()


def shoot_pages(page, server: Server, names: list[str] | None, suffix: str, demo_stack: dict, local_target: dict) -> None:
    """Each page of PAGES (those of ``names``, or all), reached as the UI's links reach them, shot once it
    shows what it read."""
    for name, path, marker in PAGES:
        if names is not None and name not in names:
            continue
        navigate(page, path.format(stack=demo_stack["id"], target=local_target["id"]))
        try:
            shown(page, marker)
            if name in SETTLE:  # until its requests are answered
                page.wait_for_load_state("networkidle")
        except Exception:
            screenshot(page, f"FAILED-{name}-{suffix}")
            raise
        screenshot(page, f"{name}-{suffix}")
        assert page.evaluate(DEFAULT_PLACEHOLDERS) == [], (name, suffix)
        if name in ("deployments", "targets") and "phone" not in suffix:  # at 1280 x 800 the Actions column is whole
            layout = page.evaluate(ACTIONS_VISIBLE)
            assert layout["buttons"] >= 3 and layout["problems"] == [], (name, suffix, layout)
        if name == "deployments" and suffix == "en-light":
            page.get_by_test_id("more-actions").first.click()
            page.get_by_test_id("action-delete").wait_for()
            screenshot(page, "deployments-more-actions-en-light")
            page.keyboard.press("Escape")


def test_screenshots_of_every_page(
    chromium_browser, server: Server, admin_token, org_id, local_target, demo_stack, cleanup_deployments
) -> None:
    """Saved to test-output/screenshots/ to be looked at; also checks no page throws."""
    deployment = server.api(
        "POST",
        "/deployments",
        {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "screenshot-demo", "variables": {"delay": 0}},
        token=admin_token,
    )
    cleanup_deployments.append(deployment["id"])
    # the pages are shot with a running deployment (its actions include the "more" menu checked below)
    current = wait_status(server, admin_token, deployment["id"], {"running", "failed"}, timeout=90)
    assert current["status"] == "running", current
    for locale, lang in (("en-US", "en"), ("fr-FR", "fr")):
        for dark in (False, True):
            suffix = f"{lang}-{'dark' if dark else 'light'}"
            page = new_page(chromium_browser, locale=locale, dark=dark)
            page.goto(server.url + "/login")
            page.locator("input[name=email]").wait_for()
            screenshot(page, f"login-{suffix}")
            ui_login(page, server)
            shoot_pages(page, server, None, suffix, demo_stack, local_target)
            navigate(page, f"/deployments/{deployment['id']}")
            page.get_by_test_id("detail-name").wait_for()
            page.get_by_test_id("timeline").wait_for()  # its status history read
            screenshot(page, f"deployment-detail-{suffix}")
            navigate(page, f"/deployments?logs={deployment['id']}")
            page.get_by_test_id("log-line").first.wait_for()
            screenshot(page, f"logs-drawer-{suffix}")
            navigate(page, f"/stacks/{demo_stack['id']}")
            page.get_by_test_id("template-editor").wait_for()
            page.locator("[data-testid=template-editor] .cm-line").first.wait_for()
            screenshot(page, f"stack-editor-{suffix}")
            assert page_errors(page) == [], page.errors
            page.context.close()
    # The phone layout: the drawer takes the whole screen.
    page = new_page(chromium_browser, width=390, height=844)
    ui_login(page, server)
    page.get_by_test_id("deployment-row").first.wait_for()
    screenshot(page, "deployments-phone")
    navigate(page, f"/deployments?logs={deployment['id']}")
    page.get_by_test_id("log-line").first.wait_for()
    screenshot(page, "logs-drawer-phone")
    page.get_by_test_id("tab-services").click()
    page.get_by_test_id("service-scroller").wait_for()
    page.get_by_test_id("service-scroller").get_by_test_id("log-line").first.wait_for()
    screenshot(page, "logs-drawer-services-phone")
    shoot_pages(page, server, PHONE_PAGES, "phone", demo_stack, local_target)
    assert page_errors(page) == [], page.errors
    page.context.close()


def test_the_status_history_says_loading_until_it_is_read_never_no_change_yet(
    chromium_browser, server: Server, admin_token, local_target, demo_stack, cleanup_deployments
) -> None:
    """While a running deployment's history is on its way the card says so; "No status change yet." would be
    false of it (it went pending → deploying → running)."""
    deployment = server.api(
        "POST",
        "/deployments",
        {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "history-demo", "variables": {"delay": 0}},
        token=admin_token,
    )
    cleanup_deployments.append(deployment["id"])
    assert wait_status(server, admin_token, deployment["id"], {"running", "failed"}, timeout=90)["status"] == "running"
    page = new_page(chromium_browser)
    ui_login(page, server)
    held: list = []
    holding = [True]

    def hold(route) -> None:  # answered when released below
        if holding[0]:
            held.append(route)
        else:
            route.continue_()

    page.route(f"**/api/v1/deployments/{deployment['id']}/history*", hold)
    navigate(page, f"/deployments/{deployment['id']}")
    page.get_by_test_id("detail-name").wait_for()
    page.get_by_test_id("timeline-loading").wait_for()
    assert page.get_by_test_id("timeline-empty").count() == 0
    for _ in range(300):  # the request reaches the handler while Playwright waits
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the page never asked for the history"
    assert page.get_by_test_id("timeline-empty").count() == 0  # still loading, still not "no change yet"
    holding[0] = False
    for route in held:
        route.continue_()
    timeline = page.get_by_test_id("timeline")
    timeline.wait_for()
    assert "Running" in timeline.inner_text()
    assert page.get_by_test_id("timeline-loading").count() == 0
    assert page_errors(page) == [], page.errors
    page.context.close()
