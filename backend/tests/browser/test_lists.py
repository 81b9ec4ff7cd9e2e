"""Every list is live, paged and filtered like the deployments list: API tokens (their owner's), members (the
organisation's) and the administration's users and organisations (superusers') follow changes made elsewhere
without a reload; the shared list header keeps its filters in the URL; "Load more" pages."""

from __future__ import annotations

import uuid

from backend.tests.browser.conftest import Server, navigate, new_page, page_errors, screenshot, ui_login

NOT_RELOADED = "window.__still_the_same_page === true"


def row(page, testid: str, attr: str, value: str):
    return page.locator(f"[data-testid={testid}][data-{attr}='{value}']")


def test_lists_follow_changes_made_elsewhere_without_a_reload(realtime, chromium_browser, server: Server, admin_token, org_id) -> None:
    page = new_page(chromium_browser)
    ui_login(page, server)
    page.evaluate("window.__still_the_same_page = true")  # a reload would lose it
    tag = uuid.uuid4().hex[:6]

    # API tokens: one created and revoked by another session of the same user.
    navigate(page, "/tokens")
    page.get_by_test_id("token-count").wait_for()
    page.wait_for_load_state("networkidle")
    token = server.api("POST", "/tokens", {"name": f"live-{tag}"}, token=admin_token)
    created = row(page, "token-row", "name", f"live-{tag}")
    created.wait_for(timeout=15_000)
    assert created.get_by_test_id("token-revoke").count() == 1
    server.api("DELETE", f"/tokens/{token['id']}", token=admin_token)
    created.get_by_test_id("token-revoke").wait_for(state="detached", timeout=15_000)  # shown revoked instead

    # Members: a user another admin adds to the organisation.
    navigate(page, "/organization")
    page.get_by_test_id("member-row").first.wait_for()
    email = f"live-{tag}@example.com"
    user = server.api("POST", "/users", {"email": email, "password": "live-password-1"}, token=admin_token)
    server.api("POST", f"/organizations/{org_id}/members", {"user_id": user["id"], "role": "viewer"}, token=admin_token)
    row(page, "member-row", "email", email).wait_for(timeout=15_000)

    # Administration: a user and an organisation another superuser creates.
    navigate(page, "/admin")
    page.get_by_test_id("user-row").first.wait_for()
    other = f"live-other-{tag}@example.com"
    server.api("POST", "/users", {"email": other, "password": "live-password-1"}, token=admin_token)
    row(page, "user-row", "email", other).wait_for(timeout=15_000)
    navigate(page, "/admin?tab=organizations")
    page.get_by_test_id("organization-row").first.wait_for()
    server.api("POST", "/organizations", {"name": f"Live {tag}"}, token=admin_token)
    row(page, "organization-row", "name", f"Live {tag}").wait_for(timeout=15_000)

    assert page.evaluate(NOT_RELOADED)
    assert page_errors(page) == [], page.errors
    page.context.close()


def test_a_list_is_filtered_and_paged_from_its_header(chromium_browser, server: Server, admin_token) -> None:
    tag = uuid.uuid4().hex[:6]
    for n in range(27):
        server.api("POST", "/tokens", {"name": f"page-{tag}-{n:02d}"}, token=admin_token)
    page = new_page(chromium_browser)
    ui_login(page, server)
    navigate(page, f"/tokens?q=page-{tag}")
    rows = page.locator(f"[data-testid=token-row][data-name^='page-{tag}-']")
    rows.first.wait_for()
    assert page.get_by_test_id("filter-q").locator("input").input_value() == f"page-{tag}"  # the URL's filter shown
    assert rows.count() == 25  # one page
    page.get_by_test_id("load-more").click()
    page.wait_for_function(f"document.querySelectorAll(\"[data-testid=token-row][data-name^='page-{tag}-']\").length === 27")
    assert page.get_by_test_id("load-more").count() == 0  # nothing more

    # Typing in the header's search narrows the list and puts the filter in the URL, which a reload keeps.
    page.get_by_test_id("filter-q").locator("input").fill(f"page-{tag}-1")
    page.wait_for_url(f"**/tokens?q=page-{tag}-1")
    page.wait_for_function('document.querySelectorAll("[data-testid=token-row]").length === 10')  # 10 to 19
    screenshot(page, "tokens-filtered-en-light")
    page.reload()
    page.wait_for_function('document.querySelectorAll("[data-testid=token-row]").length === 10')
    assert page.get_by_test_id("filter-q").locator("input").input_value() == f"page-{tag}-1"
    # A select of the header: the revoked ones, none among these.
    page.get_by_test_id("filter-state").click()
    page.locator(".n-base-select-option", has_text="Revoked or expired").first.click()
    page.wait_for_url("**state=inactive**")
    page.wait_for_function("document.querySelectorAll('[data-testid=token-row]').length === 0")
    assert page_errors(page) == [], page.errors
    page.context.close()


def test_a_new_tokens_value_is_shown_once_and_leaves_with_its_revocation(chromium_browser, server: Server) -> None:
    name = f"laptop-{uuid.uuid4().hex[:6]}"
    page = new_page(chromium_browser)
    ui_login(page, server)
    navigate(page, "/tokens")
    page.get_by_test_id("token-new").click()
    page.fill("input[name=token-name]", name)
    page.get_by_test_id("token-create").click()
    value = page.get_by_test_id("new-token")
    value.wait_for()
    token = value.inner_text().strip()
    assert token.startswith("wf_")
    assert server.api("GET", "/auth/me", token=token)["email"]  # the value shown is the token
    screenshot(page, "token-created-en-light")
    created = row(page, "token-row", "name", name)
    created.get_by_test_id("token-revoke").click()
    page.get_by_test_id("confirm-ok").click()
    value.wait_for(state="detached")  # a revoked token's value does not stay on the screen
    created.get_by_test_id("token-revoke").wait_for(state="detached")
    assert page_errors(page) == [], page.errors
    page.context.close()
