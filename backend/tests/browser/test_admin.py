"""No dead ends: a member who does not exist yet is created from the UI and added to the organisation; a
deployment the target's compose policy refuses links to that policy, which is changed there (with the target
itself edited) until the same deployment is accepted."""

from __future__ import annotations

import uuid

from backend.tests.browser.conftest import TEST_IMAGE, Server, new_page, page_errors, screenshot, tear_down, ui_login
from backend.tests.browser.test_live_deployment import wait_status


def test_a_user_created_from_the_ui_becomes_a_member(chromium_browser, server: Server, admin_token, org_id) -> None:
    email = f"newcomer-{uuid.uuid4().hex[:6]}@example.com"
    page = new_page(chromium_browser)
    ui_login(page, server)
    page.goto(f"{server.url}/organization")
    page.get_by_test_id("member-add").click()
    page.fill("input[name=member-email]", email)
    page.get_by_test_id("member-add-submit").click()

    # The refusal names what to do and links to the screen that does it.
    error = page.get_by_test_id("member-add-error")
    error.wait_for()
    assert "a superuser must create the user first" in error.inner_text()
    screenshot(page, "member-add-dead-end-en-light")
    error.get_by_test_id("error-resolve").click()
    page.wait_for_url("**/admin?*create=*")
    modal = page.get_by_test_id("user-modal")
    modal.wait_for()
    assert page.locator("input[name=user-email]").input_value() == email  # carried over
    page.fill("input[name=user-full-name]", "New Comer")
    page.fill("input[name=user-password]", "short")
    page.get_by_test_id("user-create").click()
    modal.get_by_text("At least 8 characters").wait_for()  # checked before sending
    page.fill("input[name=user-password]", "a-long-enough-password")
    modal.get_by_text("At least 8 characters").wait_for(state="detached")  # corrected: no longer said to be wrong
    assert page.get_by_test_id("user-add-to-org").get_attribute("aria-checked") == "true"
    page.get_by_test_id("user-role").click()
    page.locator(".n-base-select-option", has_text="Operator").first.click()
    screenshot(page, "admin-new-user-en-light")
    page.get_by_test_id("user-create").click()
    modal.wait_for(state="hidden")
    page.locator(f"[data-testid=user-row][data-email='{email}']").wait_for()
    screenshot(page, "admin-users-en-light")

    # A member of the organisation, with the role chosen, on the Organization page (live: no reload needed).
    page.goto(f"{server.url}/organization")
    page.locator(f"[data-testid=member-row][data-email='{email}']").wait_for()
    members = server.api("GET", f"/organizations/{org_id}/members?q={email}", token=admin_token)["items"]
    assert [(m["email"], m["role"]) for m in members] == [(email, "operator")]
    # and the new user logs in with that password
    assert server.login(email, "a-long-enough-password")

    # The organisations tab: a new organisation, its creator its owner.
    page.goto(f"{server.url}/admin?tab=organizations")
    page.get_by_test_id("organization-new").click()
    name = f"Lab {uuid.uuid4().hex[:4]}"
    page.fill("input[name=organization-name]", name)
    page.get_by_test_id("organization-create").click()
    page.locator(f"[data-testid=organization-row][data-name='{name}']").wait_for()
    screenshot(page, "admin-organizations-en-light")
    assert page_errors(page) == [], page.errors
    page.context.close()


BIND_STACK = {
    "name": "reads-host-files",
    "description": "binds a host directory (the compose policy must allow it)",
    "template": (
        "services:\n"
        "  app:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        "    volumes: ['{{ directory }}:/data:ro']\n"
        "    command: ['sh', '-c', 'cat /data/hello.txt; while true; do sleep 1; done']\n"
    ),
}


def test_a_target_is_edited_and_its_policy_changed_until_a_bind_deploy_is_accepted(
    chromium_browser, server: Server, admin_token, org_id, tmp_path, cleanup_deployments
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("hello-from-the-host\n")
    shared.chmod(0o755)
    stack = server.api(
        "POST",
        "/stacks",
        {**BIND_STACK, "organization_id": org_id, "variables": [{"name": "directory", "type": "string", "default": str(shared)}]},
        token=admin_token,
    )
    target = server.api(
        "POST",
        "/targets",
        {"name": f"binds-{uuid.uuid4().hex[:4]}", "endpoint": "unix:///var/run/docker.sock", "organization_id": org_id},
        token=admin_token,
    )
    page = new_page(chromium_browser)
    ui_login(page, server)
    try:
        # Edit the target: a new name and concurrency.
        page.goto(f"{server.url}/targets?q={target['name']}")
        row = page.locator(f"[data-testid=target-row][data-id='{target['id']}']")
        row.get_by_test_id("target-edit").click()
        page.get_by_test_id("target-modal").wait_for()
        new_name = target["name"] + "-edited"
        page.fill("input[name=target-name]", new_name)
        page.fill("input[name=target-max-concurrent]", "3")
        screenshot(page, "target-edit-en-light")
        page.get_by_test_id("target-save").click()
        page.get_by_test_id("target-modal").wait_for(state="hidden")
        page.locator(f"[data-testid=target-row][data-name='{new_name}']").wait_for()
        edited = server.api("GET", f"/targets/{target['id']}", token=admin_token)
        assert (edited["name"], edited["max_concurrent_deployments"]) == (new_name, 3)

        # A deploy the policy refuses links to the policy that refuses it.
        page.goto(f"{server.url}/deployments/new?stack={stack['id']}")
        page.get_by_test_id("pick-target").click()
        page.locator(".n-base-select-option", has_text=new_name).first.click()
        page.get_by_test_id("deploy-submit").click()
        error = page.get_by_test_id("form-error")
        error.wait_for()
        assert "allow_host_binds" in error.inner_text()
        error.get_by_test_id("error-resolve").click()
        page.wait_for_url(f"**/targets?*policy={target['id']}*")
        policy = page.get_by_test_id("policy-modal")
        policy.wait_for()
        assert "highlight" in (page.get_by_test_id("policy-allow_host_binds").get_attribute("class") or "")
        page.get_by_test_id("policy-switch-allow_host_binds").click()
        page.get_by_test_id("policy-prefixes").get_by_role("button").first.click()  # add a prefix
        page.get_by_test_id("policy-prefixes").locator("input").first.fill(str(shared))
        screenshot(page, "target-policy-en-light")
        page.get_by_test_id("policy-save").click()
        policy.wait_for(state="hidden")
        saved = server.api("GET", f"/targets/{target['id']}", token=admin_token)["compose_policy"]
        assert saved["allow_host_binds"] is True and saved["host_bind_prefixes"] == [str(shared)]

        # The same deploy is now accepted, and runs with the host's file.
        page.goto(f"{server.url}/deployments/new?stack={stack['id']}")
        page.get_by_test_id("pick-target").click()
        page.locator(".n-base-select-option", has_text=new_name).first.click()
        page.get_by_test_id("deploy-submit").click()
        page.wait_for_url("**/deployments?logs=*")
        deployment_id = page.url.split("logs=")[1].split("&")[0]
        cleanup_deployments.append(deployment_id)
        final = wait_status(server, admin_token, deployment_id, {"running", "failed"})
        assert final["status"] == "running", final["error_message"]
        assert page_errors(page) == [], page.errors
    finally:
        page.context.close()
        for deployment_id in list(cleanup_deployments):  # gone before the target (a deleting one still uses it)
            tear_down(server, admin_token, deployment_id)
        server.api("DELETE", f"/targets/{target['id']}", token=admin_token)


def test_a_superuser_resets_a_password_and_deactivates_a_user(chromium_browser, server: Server, admin_token) -> None:
    email = f"forgetful-{uuid.uuid4().hex[:6]}@example.com"
    server.api("POST", "/users", {"email": email, "password": "the-old-password"}, token=admin_token)
    page = new_page(chromium_browser)
    ui_login(page, server)
    page.goto(f"{server.url}/admin?q={email}")
    user = page.locator(f"[data-testid=user-row][data-email='{email}']")
    user.get_by_test_id("user-reset").click()
    page.fill("input[name=reset-password]", "the-new-password")
    page.fill("input[name=reset-confirm]", "the-new-password")
    screenshot(page, "admin-reset-password-en-light")
    page.get_by_test_id("reset-submit").click()
    page.locator("input[name=reset-password]").wait_for(state="hidden")
    assert server.login(email, "the-new-password")
    try:
        server.login(email, "the-old-password")
        raise AssertionError("the old password still works")
    except AssertionError as exc:
        assert "-> 401" in str(exc), exc

    # Deactivated (after a confirmation naming the action): the account can no longer log in.
    user.get_by_test_id("user-toggle-active").click()
    page.get_by_test_id("confirm-ok").click()
    user.get_by_test_id("user-toggle-active").filter(has_text="Reactivate").wait_for()
    try:
        server.login(email, "the-new-password")
        raise AssertionError("a deactivated user logged in")
    except AssertionError as exc:
        assert "-> 401" in str(exc) or "-> 403" in str(exc), exc
    assert page_errors(page) == [], page.errors
    page.context.close()
