"""The audit page (an organisation's changes as its admins see them: who, what, outcome, the change without
its secrets; filtered by the kind of change in the URL; English and French) and the notifications page (a
webhook channel created, "Send test" delivered to a real local receiver, its delivery log)."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid

from backend.app.services.hooks.signature import sign
from backend.tests.browser.conftest import Server, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_live_deployment import wait_status
from backend.tests.notify_helpers import Receiver


def test_the_audit_page_lists_changes_and_filters_them(chromium_browser, server: Server, admin_token, org_id) -> None:
    name = f"audited-{uuid.uuid4().hex[:6]}"
    stack = server.api(
        "POST", "/stacks", {"name": name, "template": "services:\n  web:\n    image: nginx\n", "organization_id": org_id}, token=admin_token
    )
    server.api("PATCH", f"/stacks/{stack['id']}", {"description": "changed from the API"}, token=admin_token)
    secret = f"Registry-Secret-{uuid.uuid4().hex[:8]}"
    server.api(
        "POST",
        "/registries",
        {"name": name, "server": f"{name}.example.com", "username": "ci", "password": secret, "organization_id": org_id},
        token=admin_token,
    )

    page = new_page(chromium_browser)
    ui_login(page, server)
    page.get_by_role("menuitem", name="Audit trail").click()
    page.wait_for_url("**/audit")
    rows = page.locator("[data-testid=audit-row]")
    page.locator("[data-testid=audit-row][data-action='registry.create']").first.wait_for()
    assert secret not in page.content()  # the password is only "changed"
    assert "password: changed" in page.locator("[data-testid=audit-row][data-action='registry.create']").first.inner_text()
    screenshot(page, "audit-en-light")

    page.get_by_test_id("audit-action").click()
    page.locator(".n-base-select-option", has_text="Stacks").first.click()
    page.wait_for_url("**/audit?action=stack")
    page.locator("[data-testid=audit-row][data-action='stack.update']").first.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=audit-row]')].every(r => r.dataset.action.startsWith('stack.'))"
    )
    assert rows.count() >= 2
    page.reload()
    page.locator("[data-testid=audit-row][data-action='stack.create']").first.wait_for()  # the filter survives a reload
    assert page_errors(page) == []

    french = new_page(chromium_browser, locale="fr-FR", dark=True)
    ui_login(french, server)
    french.goto(f"{server.url}/audit?action=stack")
    french.get_by_text("Journal d’audit").first.wait_for()
    french.locator("[data-testid=audit-row]").first.wait_for()
    screenshot(french, "audit-fr-dark")


def test_a_notification_channel_is_created_tested_and_its_log_shows_the_delivery(chromium_browser, server: Server, org_id) -> None:
    receiver = Receiver()
    try:
        page = new_page(chromium_browser)
        ui_login(page, server)
        page.get_by_role("menuitem", name="Notifications").click()
        page.wait_for_url("**/notifications")
        page.get_by_test_id("channel-new").click()
        name = f"ops-{uuid.uuid4().hex[:6]}"
        page.fill("input[name=channel-name]", name)
        page.fill("input[name=channel-target]", receiver.url)
        page.fill("input[name=channel-secret]", "a-signing-secret-123")
        screenshot(page, "notifications-new-en-light")
        page.get_by_test_id("channel-create").click()
        row = page.locator(f"[data-testid=channel-row][data-name='{name}']")
        row.wait_for()
        assert receiver.url not in page.content() and "a-signing-secret-123" not in page.content()  # host only
        row.get_by_test_id("channel-test").click()
        page.locator("[data-testid=delivery-row][data-event=test][data-status=delivered]").wait_for()
        assert len(receiver.received) == 1 and receiver.received[0].headers["x-windflow-event"] == "test"
        screenshot(page, "notifications-log-en-light")
        assert page_errors(page) == []
    finally:
        receiver.close()


def test_a_deploy_hook_is_created_on_the_deployment_page_and_its_calls_are_shown(
    chromium_browser, server: Server, admin_token, local_target, demo_stack, cleanup_deployments
) -> None:
    deployment = server.api(
        "POST", "/deployments", {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "hooked-1"}, token=admin_token
    )
    cleanup_deployments.append(deployment["id"])
    assert wait_status(server, admin_token, deployment["id"], {"running", "failed"})["status"] == "running"
    page = new_page(chromium_browser)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments/{deployment['id']}?tab=hooks")
    page.get_by_test_id("hooks-panel").wait_for()
    page.get_by_test_id("hook-create").click()
    page.get_by_test_id("hook-secret").wait_for()
    secret = page.get_by_test_id("hook-secret-value").inner_text().strip()
    url = page.get_by_test_id("hook-url").inner_text().strip()
    assert secret.startswith("whsec_") and url.endswith("/api/v1/hooks/" + url.rsplit("/", 1)[1])
    screenshot(page, "hooks-created-en-light")

    body = b"{}"
    refused = urllib.request.Request(url, data=body, method="POST", headers={"X-Hub-Signature-256": sign("whsec_wrong", body)})
    try:
        urllib.request.urlopen(refused, timeout=10)
        raise AssertionError("a wrong signature was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    accepted = urllib.request.Request(url, data=body, method="POST", headers={"X-Hub-Signature-256": sign(secret, body)})
    with urllib.request.urlopen(accepted, timeout=10) as answer:
        assert answer.status == 202
    page.get_by_test_id("hook-calls").click()
    page.locator("[data-testid=hook-call][data-code=accepted]").wait_for()
    page.locator("[data-testid=hook-call][data-code=hook_signature_invalid]").wait_for()
    page.get_by_test_id("hook-secret").locator(".n-alert__close").click()
    assert secret not in page.content()  # shown once
    screenshot(page, "hooks-calls-en-light")
    assert page_errors(page) == []
    assert wait_status(server, admin_token, deployment["id"], {"running", "failed"})["status"] == "running"
