"""The audit page (an organisation's changes as its admins see them: who, what, outcome, the change without
its secrets; filtered by the kind of change in the URL; English and French), the notifications page (a
webhook channel created, "Send test" delivered to a real local receiver, its delivery log), deploy hooks on
the deployment page and on the stack page (a stack's hook rolls out both deployments of the stack), and a
scoped API token made with the Tokens form (its value shown once, its limits listed and enforced, revoked)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

from backend.app.services.hooks.signature import sign
from backend.tests.browser.conftest import DEMO_STACK, Server, navigate, new_page, page_errors, screenshot, ui_login
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
    channel = {
        "organization_id": org_id,
        "name": name,
        "kind": "webhook",
        "url": "http://127.0.0.1:9/hook",
        "events": ["deployment.failed"],
    }
    server.api("POST", "/notification-channels", channel, token=admin_token)  # a long action name

    page = new_page(chromium_browser)
    ui_login(page, server)
    page.get_by_role("menuitem", name="Audit trail").click()
    page.wait_for_url("**/audit")
    rows = page.locator("[data-testid=audit-row]")
    page.locator("[data-testid=audit-row][data-action='registry.create']").first.wait_for()
    page.locator("[data-testid=audit-row][data-action='notification_channel.create']").first.wait_for()
    assert secret not in page.content()  # the password is only "changed"
    assert "password: changed" in page.locator("[data-testid=audit-row][data-action='registry.create']").first.inner_text()
    screenshot(page, "audit-en-light")
    # who and from where read on one line each (a squeezed column broke the email and the address mid-word)
    actor = page.get_by_test_id("audit-actor-name").first
    assert actor.evaluate("e => e.getClientRects().length") == 1, actor.inner_text()
    # an action wraps after a dot at most ("deployment." / "create"), an object between its type and its id, each
    # word on one line
    broken = rows.locator("td:nth-child(3) span.mono, td:nth-child(4) span.mono").evaluate_all(
        """spans => spans.filter(s => [...s.childNodes].some(n => {
            if (n.nodeType !== 3) return false
            const r = document.createRange(); r.selectNodeContents(n); return r.getClientRects().length > 1
        })).map(s => s.textContent)"""
    )
    assert broken == [], broken

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
        "POST",
        "/deployments",
        {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "hooked-1", "variables": {"delay": 0}},
        token=admin_token,
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


def _wait_revision(server: Server, token: str, deployment_id: str, revision: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = server.api("GET", f"/deployments/{deployment_id}", token=token)
        if (body["revision"] == revision and body["status"] in {"running", "failed"}) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def _post_signed(url: str, body: bytes, secret: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, body)}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_stack_hook_made_on_the_stack_page_changes_every_deployment_of_the_stack(
    chromium_browser, server: Server, admin_token, org_id, local_target, cleanup_deployments
) -> None:
    stack = server.api(
        "POST", "/stacks", {**DEMO_STACK, "name": f"hooked-{uuid.uuid4().hex[:6]}", "organization_id": org_id}, token=admin_token
    )
    deployments = []
    for number in (1, 2):
        created = server.api(
            "POST",
            "/deployments",
            {"stack_id": stack["id"], "target_id": local_target["id"], "name": f"{stack['name']}-{number}", "variables": {"delay": 0}},
            token=admin_token,
        )
        cleanup_deployments.append(created["id"])
        deployments.append(created["id"])
    for deployment_id in deployments:
        assert wait_status(server, admin_token, deployment_id, {"running", "failed"})["status"] == "running"

    page = new_page(chromium_browser)
    ui_login(page, server)
    navigate(page, f"/stacks/{stack['id']}")
    panel = page.get_by_test_id("hooks-panel")
    panel.wait_for()
    assert "every deployment of this stack" in panel.inner_text()
    page.get_by_test_id("hook-allowed").click()
    page.locator(".n-base-select-option", has_text="greeting").first.click()
    page.get_by_test_id("hook-create").click()
    page.get_by_test_id("hook-secret").wait_for()
    secret = page.get_by_test_id("hook-secret-value").inner_text().strip()
    url = page.get_by_test_id("hook-url").inner_text().strip()
    assert secret.startswith("whsec_")
    assert [h["stack_id"] for h in server.api("GET", f"/stacks/{stack['id']}/hooks", token=admin_token)] == [stack["id"]]

    assert _post_signed(url, b"{}", "whsec_wrong")[0] == 401
    status, answer = _post_signed(url, json.dumps({"variables": {"greeting": "from-the-stack-hook"}}).encode(), secret)
    assert status == 202, answer
    assert sorted(d["deployment_id"] for d in answer["deployments"]) == sorted(deployments), answer
    assert {(d["action"], d["revision"]) for d in answer["deployments"]} == {("change", 2)} and answer["skipped"] == []
    for deployment_id in deployments:
        settled = _wait_revision(server, admin_token, deployment_id, 2)
        assert (settled["status"], settled["revision"]) == ("running", 2), settled.get("error_message")
        assert settled["variables"]["greeting"] == "from-the-stack-hook"
    page.get_by_test_id("hook-calls").click()
    page.locator("[data-testid=hook-call][data-code=accepted]").wait_for()
    page.locator("[data-testid=hook-call][data-code=hook_signature_invalid]").wait_for()
    screenshot(page, "stack-hooks-en-light")
    page.get_by_test_id("hook-secret").locator(".n-alert__close").click()
    assert secret not in page.content()  # shown once
    assert page_errors(page) == []


def test_a_scoped_token_is_made_with_the_tokens_form_shown_once_and_revoked(chromium_browser, server: Server, admin_token, org_id) -> None:
    tag = uuid.uuid4().hex[:6]
    template = "services:\n  web:\n    image: nginx\n"
    stack = server.api("POST", "/stacks", {"name": f"ci-only-{tag}", "template": template, "organization_id": org_id}, token=admin_token)
    name = f"ci-{tag}"
    page = new_page(chromium_browser)
    ui_login(page, server)
    navigate(page, "/tokens")
    page.get_by_test_id("token-new").click()
    page.fill("input[name=token-name]", name)
    page.get_by_test_id("field-token-scope").locator(".n-base-selection").click()
    page.locator(".n-base-select-option", has_text="Deploy").first.click()
    page.get_by_test_id("field-token-organization").locator(".n-base-selection").click()
    page.locator(".n-base-select-option", has_text="Acme").first.click()
    page.get_by_test_id("field-token-stacks").locator(".n-base-selection").click()
    page.locator(".n-base-select-option", has_text=stack["name"]).first.click()
    page.get_by_test_id("field-token-name").click()  # closes the stacks' menu
    screenshot(page, "token-scoped-form-en-light")
    page.get_by_test_id("token-create").click()

    value = page.get_by_test_id("new-token")
    value.wait_for()
    token = value.inner_text().strip()
    assert token.startswith("wf_")
    page.get_by_test_id("token-created").get_by_role("button", name="Copy").click()
    page.get_by_text("Copied").first.wait_for()
    listed = next(t for t in server.api("GET", f"/tokens?q={name}", token=admin_token)["items"] if t["name"] == name)
    assert (listed["scopes"], listed["organization_id"], listed["stack_ids"]) == (["deploy"], org_id, [stack["id"]])
    row = page.locator(f"[data-testid=token-row][data-name='{name}']")
    scope_text = row.get_by_test_id("token-scope").inner_text()
    assert "Deploy" in scope_text and "Acme" in scope_text and "1 stack" in scope_text, scope_text
    screenshot(page, "token-scoped-created-en-light")
    # what it is limited to: reads, not a stack change
    assert server.api("GET", "/auth/me", token=token)["email"]
    refused = urllib.request.Request(
        f"{server.url}/api/v1/stacks",
        data=json.dumps({"name": f"no-{tag}", "template": template, "organization_id": org_id}).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        urllib.request.urlopen(refused, timeout=10)
        raise AssertionError("a deploy token created a stack")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403 and json.loads(exc.read())["code"] == "token_scope"

    page.reload()  # shown once: not after a reload
    row.wait_for()
    assert token not in page.content()
    row.get_by_test_id("token-revoke").click()
    page.get_by_test_id("confirm-ok").click()
    row.get_by_test_id("token-revoke").wait_for(state="detached")
    assert "Revoked" in row.inner_text()
    try:
        urllib.request.urlopen(
            urllib.request.Request(f"{server.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}), timeout=10
        )
        raise AssertionError("a revoked token still works")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    screenshot(page, "token-scoped-revoked-en-light")
    assert page_errors(page) == []
