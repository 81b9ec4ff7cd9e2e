"""Revisions in the browser: a deployment edited from its generated form, watched as it rolls out to revision 2,
rolled back to revision 1 from the Revisions tab (a confirmation naming the action, sent once), and an automatic
rollback that the open page says by itself. What runs is checked on the engine (the containers' environment),
not only on the screen."""

from __future__ import annotations

import json
import subprocess

from backend.tests.browser.conftest import TEST_IMAGE, Server, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_actions import requests_to
from backend.tests.browser.test_live_deployment import wait_status

SETTLED = {"running", "failed", "stopped", "cancelled"}

#: Two services: ``web`` (a healthcheck that passes after ``delay`` seconds, a published port, the greeting and
#: the API key in its environment; with ``crash`` it exits with code 3 at once) and ``worker`` (no healthcheck).
REVISED_STACK = {
    "name": "revised",
    "description": "two services whose values change between revisions",
    "template": (
        "services:\n"
        "  web:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "{% if crash %}echo \'boom: bad configuration\' >&2; exit 3; {% endif %}'
        'echo serving {{ greeting }}; sleep {{ delay }}; touch /tmp/ready; while true; do sleep 1; done"]\n'
        "    environment:\n"
        '      GREETING: "{{ greeting }}"\n'
        '      API_KEY: "{{ api_key }}"\n'
        '    ports: ["80"]\n'
        "    healthcheck:\n"
        '      test: ["CMD", "test", "-f", "/tmp/ready"]\n'
        "      interval: 1s\n"
        "      timeout: 1s\n"
        "      retries: 60\n"
        "  worker:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        '    command: ["sh", "-c", "echo worker {{ mode }}; while true; do sleep 1; done"]\n'
    ),
    "variables": [
        {
            "name": "greeting",
            "type": "string",
            "label": "Greeting",
            "description": "What the web service says",
            "default": "hello-r1",
            "pattern": "[a-z0-9-]+",
            "required": True,
        },
        {"name": "delay", "type": "integer", "label": "Start delay (s)", "default": 1, "min": 0, "max": 30},
        {
            "name": "mode",
            "type": "enum",
            "label": "Mode",
            "default": "safe",
            "options": [{"value": "fast", "label": "Fast mode"}, {"value": "safe", "label": "Safe mode"}],
        },
        {"name": "crash", "type": "boolean", "label": "Crash at start", "default": False},
        {"name": "api_key", "type": "secret", "label": "API key", "default": "{{ generate_password(16) }}"},
    ],
}


def container_id(deployment_id: str, service: str) -> str:
    """The deployment's one running container of ``service``."""
    ids = subprocess.run(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=windflow.deployment_id={deployment_id}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert len(ids) == 1, f"expected one running {service} container, found {ids}"
    return ids[0]


def container_env(deployment_id: str, service: str) -> dict[str, str]:
    """The environment of the deployment's running container of ``service``, read from the engine."""
    inspect = json.loads(
        subprocess.run(
            ["docker", "inspect", container_id(deployment_id, service)], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )
    return dict(item.split("=", 1) for item in inspect[0]["Config"]["Env"])


def revisions(server: Server, token: str, deployment_id: str) -> dict[int, dict]:
    items = server.api("GET", f"/deployments/{deployment_id}/revisions?limit=50", token=token)["items"]
    return {r["number"]: r for r in items}


def wait_page_revision(page, n: int, status: str) -> None:
    """The page's header shows revision ``n`` and its badge ``status`` (pushed by the socket, no reload)."""
    page.wait_for_function(
        "([n, s]) => document.querySelector('[data-testid=detail-revision]')?.textContent.trim() === `r${n}` && "
        "document.querySelector('.page-header [data-testid=status-badge]')?.dataset.status === s",
        arg=[n, status],
        timeout=120_000,
    )


# Records every status the page's header badge shows and every revision it names, as they happen.
RECORDER = """
() => {
  window.__seen = [];
  const scan = () => {
    const badge = document.querySelector('.page-header [data-testid=status-badge]');
    const rev = document.querySelector('[data-testid=detail-revision]');
    const now = `${rev?.textContent.trim()}:${badge?.dataset.status}`;
    if (badge && window.__seen[window.__seen.length - 1] !== now) window.__seen.push(now);
  };
  new MutationObserver(scan).observe(document.body, { subtree: true, childList: true, characterData: true,
    attributes: true, attributeFilter: ['data-status'] });
  scan();
}
"""


def test_edit_watch_the_rollout_and_roll_back_from_the_ui(
    realtime, chromium_browser, server: Server, admin_token, org_id, local_target, cleanup_deployments
) -> None:
    stack = server.api("POST", "/stacks", {**REVISED_STACK, "organization_id": org_id}, token=admin_token)
    created = server.api(
        "POST", "/deployments", {"stack_id": stack["id"], "target_id": local_target["id"], "name": "revised-1"}, token=admin_token
    )
    deployment_id = created["id"]
    cleanup_deployments.append(deployment_id)
    assert wait_status(server, admin_token, deployment_id, SETTLED)["status"] == "running"
    first_env = container_env(deployment_id, "web")
    assert first_env["GREETING"] == "hello-r1"

    page = new_page(chromium_browser)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments/{deployment_id}")
    page.get_by_test_id("detail-name").wait_for()
    wait_page_revision(page, 1, "running")

    # The services of revision 1: both, with their image and the digest the rollout recorded; a published port.
    web = page.get_by_test_id("service-web")
    web.wait_for()
    assert page.get_by_test_id("service-worker").is_visible()
    repository, tag = TEST_IMAGE.rsplit(":", 1)
    assert web.get_by_test_id("service-image").inner_text() == repository
    assert web.get_by_test_id("service-tag").inner_text() == tag
    page.wait_for_function(
        "document.querySelector('[data-testid=service-web] [data-testid=service-digest]')?.textContent.includes('sha256:')"
    )
    # Their containers as the engine reports them: running, healthy where there is a healthcheck, the host port
    # Docker bound (the document asks for a random one).
    web.locator("[data-testid=service-container] [data-state=running]").wait_for()
    assert "healthy" in web.get_by_test_id("service-container").inner_text()
    page.get_by_test_id("service-worker").locator("[data-testid=service-container] [data-state=running]").wait_for()
    bound = (
        subprocess.run(
            ["docker", "port", container_id(deployment_id, "web"), "80/tcp"], capture_output=True, text=True, timeout=60, check=True
        )
        .stdout.split()[0]
        .rsplit(":", 1)[1]
    )
    assert f"{bound}→80/tcp" in web.get_by_test_id("service-ports").inner_text()
    assert page.get_by_test_id("services-state-error").count() == 0
    # The variables as a labelled table: labels and descriptions of the schema, the secret as ***.
    table = page.get_by_test_id("variables-table")
    assert "Greeting" in table.get_by_test_id("variable-greeting").inner_text()
    assert "What the web service says" in table.get_by_test_id("variable-greeting").inner_text()
    assert "Safe mode" in table.get_by_test_id("variable-mode").inner_text()
    assert table.get_by_test_id("variable-api_key").get_by_test_id("variable-value").inner_text() == "***"
    assert first_env["API_KEY"] not in page.content()  # the secret never reaches the page
    screenshot(page, "deployment-services-variables-en-light")

    # The stack gains a variable after revision 1: the form is built from the schema revision 1 recorded (what the
    # API checks a change against), the stack's current one only when "render from the latest version" is ticked.
    motto = {"name": "motto", "type": "string", "label": "Motto", "default": "carpe-diem"}
    server.api("PATCH", f"/stacks/{stack['id']}", {"variables": [*REVISED_STACK["variables"], motto]}, token=admin_token)

    # Edit & redeploy: the generated form with the current values, the secret blank (= unchanged).
    page.evaluate(RECORDER)
    page.get_by_test_id("edit-redeploy").click()
    page.wait_for_url(f"**/deployments/{deployment_id}/edit")
    page.get_by_test_id("field-greeting").wait_for()
    assert page.locator("input[name=motto]").count() == 0
    page.get_by_test_id("use-latest").click()
    page.locator("input[name=motto]").wait_for()
    assert page.locator("input[name=motto]").input_value() == "carpe-diem"
    page.get_by_test_id("use-latest").click()
    page.locator("input[name=motto]").wait_for(state="detached")
    assert page.locator("input[name=greeting]").input_value() == "hello-r1"
    assert page.locator("input[name=delay]").input_value() == "1"
    assert page.locator("input[name=api_key]").input_value() == ""
    assert "Unchanged" in page.locator("input[name=api_key]").get_attribute("placeholder")
    page.fill("input[name=greeting]", "bonjour-r2")
    page.fill("input[name=delay]", "6")  # a rollout long enough to try a second change during it
    page.locator("input[name=delay]").blur()
    assert "greeting" in page.get_by_test_id("edit-summary").inner_text()
    screenshot(page, "deployment-edit-en-light")
    creations = requests_to(page, f"/deployments/{deployment_id}/revisions")
    page.get_by_test_id("edit-submit").dblclick()
    page.wait_for_url(f"**/deployments/{deployment_id}")
    assert len(creations) == 1, creations  # a double click sends one change

    # A second change while revision 2 rolls out: 409, said in words, nothing sent twice.
    page.get_by_test_id("edit-redeploy").click()
    page.get_by_test_id("field-greeting").wait_for()
    page.fill("input[name=greeting]", "too-early")
    page.get_by_test_id("edit-submit").click()
    alert = page.get_by_test_id("form-error")
    alert.wait_for()
    assert "A rollout is in progress (revision 2)" in alert.inner_text(), alert.inner_text()
    screenshot(page, "deployment-edit-409-en-light")
    page.go_back()
    page.get_by_test_id("detail-name").wait_for()

    # Revision 2 rolls out live: the page goes to r2, deploying, then running, by itself.
    wait_page_revision(page, 2, "running")
    seen = page.evaluate("window.__seen")
    assert "r2:running" in seen and any(s in seen for s in ("r2:deploying", "r2:pending")), seen
    second_env = container_env(deployment_id, "web")
    assert second_env["GREETING"] == "bonjour-r2"
    assert second_env["API_KEY"] == first_env["API_KEY"]  # the blank secret kept its value
    revs = revisions(server, admin_token, deployment_id)
    assert (revs[2]["reason"], revs[2]["outcome"], revs[1]["outcome"]) == ("update", "running", "superseded"), revs

    # The Revisions tab: both, and their diff side by side (the greeting changed, the secret did not).
    page.locator(".n-tabs-tab[data-name=revisions]").click()
    panel = page.get_by_test_id("revisions-panel")
    panel.locator("[data-testid=revision-row][data-number='2'][data-outcome=running]").wait_for()
    row1 = panel.locator("[data-testid=revision-row][data-number='1']")
    assert "Created" in row1.inner_text() and "admin@example.com" in row1.inner_text()
    assert "Update" in panel.locator("[data-testid=revision-row][data-number='2']").inner_text()
    diff = page.get_by_test_id("revision-diff")
    diff.wait_for()
    assert diff.get_attribute("data-mode") == "split"
    removed = diff.locator("[data-side=old][data-kind=del]").all_inner_texts()
    added = diff.locator("[data-side=new][data-kind=add]").all_inner_texts()
    assert any("hello-r1" in t for t in removed) and any("bonjour-r2" in t for t in added), (removed, added)
    assert not any("api_key" in t for t in removed + added)  # unchanged secret: no line
    colours = diff.locator("[data-side=new][data-kind=add]").first.evaluate("(e) => getComputedStyle(e).backgroundColor")
    assert colours != "rgba(0, 0, 0, 0)", colours  # coloured
    screenshot(page, "deployment-revisions-en-light")
    diff.scroll_into_view_if_needed()
    screenshot(page, "deployment-revisions-diff-en-light")
    page.get_by_test_id("diff-mode").get_by_text("Unified").click()
    assert diff.get_attribute("data-mode") == "unified"

    # Roll back to revision 1: the dialog names the action, a double click sends one request.
    rollbacks = requests_to(page, f"/deployments/{deployment_id}/rollback")
    row1.get_by_test_id("rollback-button").click()
    dialog = page.get_by_test_id("confirm-dialog")
    dialog.wait_for()
    assert dialog.get_by_test_id("confirm-ok").inner_text().strip() == "Roll back to revision 1"
    assert dialog.get_by_test_id("confirm-cancel").inner_text().strip() == "Keep revision 2"
    screenshot(page, "deployment-rollback-confirm-en-light")
    dialog.get_by_test_id("confirm-ok").dblclick()
    dialog.wait_for(state="hidden")
    wait_page_revision(page, 3, "running")
    assert len(rollbacks) == 1, rollbacks
    revs = revisions(server, admin_token, deployment_id)
    assert (revs[3]["reason"], revs[3]["rollback_of"], revs[3]["outcome"]) == ("rollback", 1, "running"), revs[3]
    assert revs[2]["outcome"] in ("rolled_back", "superseded"), revs[2]
    panel.locator("[data-testid=revision-row][data-number='3'][data-outcome=running]").wait_for()
    assert "Rollback to r1" in panel.locator("[data-testid=revision-row][data-number='3']").inner_text()
    third_env = container_env(deployment_id, "web")
    assert third_env["GREETING"] == "hello-r1" and third_env["API_KEY"] == first_env["API_KEY"]
    assert [i["digest"] for i in revs[3]["images"]] == [i["digest"] for i in revs[1]["images"]]  # the same images

    # The automatic rollback switch (PATCH), then the list shows the current revision.
    page.locator(".n-tabs-tab[data-name=overview]").click()
    switch = page.get_by_test_id("auto-rollback")
    assert switch.get_attribute("aria-checked") == "true"
    switch.click()
    page.wait_for_function("document.querySelector('[data-testid=auto-rollback]')?.getAttribute('aria-checked') === 'false'")
    assert server.api("GET", f"/deployments/{deployment_id}", token=admin_token)["auto_rollback"] is False
    switch.click()
    page.wait_for_function("document.querySelector('[data-testid=auto-rollback]')?.getAttribute('aria-checked') === 'true'")
    assert server.api("GET", f"/deployments/{deployment_id}", token=admin_token)["auto_rollback"] is True
    page.goto(f"{server.url}/deployments")
    row = page.locator(f"[data-testid=deployment-row][data-id='{deployment_id}']")
    row.wait_for()
    assert row.get_by_test_id("row-revision").inner_text().strip() == "r3"
    assert page_errors(page) == [], page.errors
    page.context.close()

    # The new screens in dark, in French, and at a phone's width.
    for name, kwargs in (("en-dark", {"dark": True}), ("fr-light", {"locale": "fr-FR"}), ("phone", {"width": 390, "height": 844})):
        shot = new_page(chromium_browser, **kwargs)
        ui_login(shot, server)
        shot.goto(f"{server.url}/deployments/{deployment_id}")
        shot.get_by_test_id("service-web").wait_for()
        shot.wait_for_timeout(300)
        screenshot(shot, f"deployment-services-variables-{name}")
        shot.goto(f"{server.url}/deployments/{deployment_id}?tab=revisions")
        shot.get_by_test_id("revision-diff").wait_for()
        shot.wait_for_timeout(300)
        screenshot(shot, f"deployment-revisions-{name}")
        shot.get_by_test_id("revision-diff").scroll_into_view_if_needed()
        shot.wait_for_timeout(300)
        screenshot(shot, f"deployment-revisions-diff-{name}")
        shot.goto(f"{server.url}/deployments/{deployment_id}/edit")
        shot.get_by_test_id("field-greeting").wait_for()
        shot.wait_for_timeout(300)
        screenshot(shot, f"deployment-edit-{name}")
        assert page_errors(shot) == [], shot.errors
        shot.context.close()


def test_an_automatic_rollback_is_said_on_the_open_page(
    realtime, chromium_browser, server: Server, admin_token, org_id, local_target, cleanup_deployments
) -> None:
    stack = server.api("POST", "/stacks", {**REVISED_STACK, "name": "revised-auto", "organization_id": org_id}, token=admin_token)
    created = server.api(
        "POST",
        "/deployments",
        {"stack_id": stack["id"], "target_id": local_target["id"], "name": "revised-auto", "variables": {"delay": 0}},
        token=admin_token,
    )
    deployment_id = created["id"]
    cleanup_deployments.append(deployment_id)
    assert wait_status(server, admin_token, deployment_id, SETTLED)["status"] == "running"

    page = new_page(chromium_browser)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments/{deployment_id}/edit")
    try:
        page.get_by_test_id("field-crash").wait_for()
    except Exception:
        screenshot(page, "FAILED-edit-crash")
        raise
    page.get_by_test_id("input-crash").click()  # revision 2's web service exits with code 3 at once
    page.get_by_test_id("edit-submit").click()
    page.wait_for_url(f"**/deployments/{deployment_id}")
    notice = page.get_by_test_id("rollback-notice")
    notice.wait_for(timeout=120_000)
    text = notice.inner_text()
    assert "Revision 2 failed" in text and "revision 1" in text and "revision 3" in text, text
    wait_page_revision(page, 3, "running")
    page.locator(".n-tabs-tab[data-name=revisions]").click()
    panel = page.get_by_test_id("revisions-panel")
    panel.locator("[data-testid=revision-row][data-number='2'][data-outcome=failed]").wait_for()
    auto = panel.locator("[data-testid=revision-row][data-number='3'][data-outcome=running]")
    auto.wait_for()
    assert "Automatic rollback to r1" in auto.inner_text() and "WindFlow" in auto.inner_text()
    screenshot(page, "deployment-automatic-rollback-en-light")
    assert container_env(deployment_id, "web")["GREETING"] == "hello-r1"

    # A container that dies behind WindFlow's back: the open page's Services card says so by itself.
    page.locator(".n-tabs-tab[data-name=overview]").click()
    worker = page.get_by_test_id("service-worker")
    worker.locator("[data-testid=service-container] [data-state=running]").wait_for()
    subprocess.run(["docker", "kill", container_id(deployment_id, "worker")], capture_output=True, timeout=60, check=True)
    worker.locator("[data-testid=service-container] [data-state=exited]").wait_for(timeout=30_000)
    assert "exit code 137" in worker.get_by_test_id("service-container").inner_text()
    warning = page.get_by_test_id("services-not-running")  # the status says running; the page does not pretend
    warning.wait_for()
    assert "worker" in warning.inner_text() and "web" not in warning.inner_text()
    screenshot(page, "deployment-service-exited-en-light")
    assert page_errors(page) == [], page.errors
    page.context.close()
