"""The live path in a real browser: the generated form, the organisation subscription, the logs drawer.

These need the WebSocket ``/api/v1/ws`` of docs/architecture.md ("The event envelope and the WebSocket protocol"): status changes and
progress reach the list without polling, and the drawer streams the deployment's lines.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from backend.tests.browser.conftest import Server, new_page, screenshot, ui_login
from backend.tests.realtime_helpers import established

SETTLED = {"running", "failed", "stopped", "cancelled"}

# Records, inside the page, every status each row's badge shows and every value the drawer's progress
# bar takes, as they happen (a test polling from outside could miss short-lived states).
RECORDER = """
() => {
  window.__seen = { statuses: {}, progress: [] };
  const note = (list, v) => { if (v !== null && v !== undefined && list[list.length - 1] !== v) list.push(v); };
  const scan = () => {
    document.querySelectorAll('[data-testid=deployment-row]').forEach((row) => {
      const badge = row.querySelector('[data-testid=status-badge]');
      if (badge) note((window.__seen.statuses[row.dataset.id] ??= []), badge.getAttribute('data-status'));
    });
    const bar = document.querySelector('[data-testid=log-progress]');
    if (bar) note(window.__seen.progress, Number(bar.getAttribute('data-value')));
  };
  new MutationObserver(scan).observe(document.body, { subtree: true, childList: true, attributes: true,
    attributeFilter: ['data-status', 'data-value'] });
  scan();
}
"""


def wait_status(server: Server, token: str, deployment_id: str, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = server.api("GET", f"/deployments/{deployment_id}", token=token)
        if body["status"] in statuses or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def hold_the_slot(server: Server, token: str, stack_id: str, target_id: str, cleanup: list[str], name: str, delay: int) -> dict:
    """A deployment of the demo stack that stays ``deploying`` for ``delay`` seconds (its health gate), holding one
    of its target's slots; it is ``deploying`` when this returns."""
    holder = server.api(
        "POST", "/deployments", {"stack_id": stack_id, "target_id": target_id, "name": name, "variables": {"delay": delay}}, token=token
    )
    cleanup.append(holder["id"])
    assert wait_status(server, token, holder["id"], {"deploying"} | SETTLED)["status"] == "deploying"
    return holder


def persisted_lines(server: Server, token: str, deployment_id: str) -> list[tuple[str, str]]:
    items = server.api("GET", f"/deployments/{deployment_id}/logs?since_seq=0&limit=5000", token=token)["items"]
    return [(line["level"].upper(), line["message"]) for line in items]


def parse_copied(text: str) -> list[tuple[str, str]]:
    out = []
    for row in text.splitlines():
        match = re.match(r"^\S+ \[(\w+)\] (.*)$", row)
        assert match, f"unexpected copied line {row!r}"
        out.append((match.group(1), match.group(2)))
    return out


def copy_from_drawer(page) -> list[tuple[str, str]]:
    page.get_by_test_id("copy-logs").click()
    page.wait_for_timeout(300)
    return parse_copied(page.evaluate("navigator.clipboard.readText()"))


def test_deploy_from_the_generated_form_and_watch_it_live(
    realtime, chromium_browser, server: Server, admin_token, local_target, demo_stack, cleanup_deployments
) -> None:
    page = new_page(chromium_browser)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments/new?stack={demo_stack['id']}")
    page.get_by_test_id("field-delay").wait_for()

    # The form generated from the schema: the right input per type.
    assert page.locator("input[name=delay]").input_value() == "4"  # integer with its default
    assert page.get_by_test_id("input-mode").get_by_text("Safe mode", exact=True).is_visible()  # enum shows labels
    assert page.get_by_test_id("input-verbose").get_attribute("role") == "switch"  # boolean as a switch
    assert page.locator("input[name=password]").get_attribute("type") == "password"  # secret masked
    assert page.get_by_test_id("field-password").get_by_text(re.compile("Generated at deploy")).first.is_visible()
    assert page.get_by_test_id("group-db").get_by_text("Database").is_visible()  # group as a section
    screenshot(page, "new-deployment-filled-en-light")

    # Validation before submit: out of range and a pattern, shown beside the fields, nothing sent.
    page.fill("input[name=delay]", "999")
    page.locator("input[name=delay]").blur()
    page.fill("input[name=greeting]", "NOT VALID")
    page.get_by_test_id("deploy-submit").click()
    assert page.get_by_test_id("field-greeting").get_by_text(re.compile("Must match")).is_visible()
    assert "/deployments/new" in page.url  # nothing was sent
    page.fill("input[name=greeting]", "hello-browser")
    page.fill("input[name=delay]", "6")
    page.fill("input[name=deployment-name]", "live-demo")

    # The target is kept full until the page watches: the new deployment waits (pending, its bar at 0) and
    # starts when the one holding the slot is cancelled, so the page sees its progress move however fast the
    # run's first steps are next to the page's own loading (they took less time than it on a loaded machine).
    limit = server.api("GET", f"/targets/{local_target['id']}", token=admin_token)["max_concurrent_deployments"]
    server.api("PATCH", f"/targets/{local_target['id']}", {"max_concurrent_deployments": 1}, token=admin_token)
    try:
        holder = hold_the_slot(server, admin_token, demo_stack["id"], local_target["id"], cleanup_deployments, "slot-holder", delay=60)

        page.evaluate(RECORDER)  # the list page replaces this page; re-armed below
        page.get_by_test_id("deploy-submit").click()
        page.wait_for_url("**/deployments?logs=*")
        page.evaluate(RECORDER)
        deployment_id = page.url.split("logs=")[1].split("&")[0]
        cleanup_deployments.append(deployment_id)
        page.wait_for_function("document.querySelector('[data-testid=log-progress]')?.dataset.value === '0'")
        assert server.api("GET", f"/deployments/{deployment_id}", token=admin_token)["status"] == "pending"
        server.api("POST", f"/deployments/{holder['id']}/cancel", token=admin_token)
    finally:
        server.api("PATCH", f"/targets/{local_target['id']}", {"max_concurrent_deployments": limit}, token=admin_token)

    # The drawer is open on the new deployment and the socket is live.
    badge = page.get_by_test_id("ws-badge")
    page.wait_for_function("document.querySelector('[data-testid=ws-badge]')?.dataset.state === 'live'")
    assert badge.inner_text().strip() == "Live"
    # on the server's WebSocket listener, which the page names (WS_PUBLIC_URL): a connection on its port
    assert page.evaluate("document.querySelector('meta[name=windflow-websocket-url]')?.content") == server.ws_url
    assert established(server.ws_port) >= 1
    row = page.locator(f"[data-testid=deployment-row][data-id='{deployment_id}']")
    row.wait_for()  # at the top of the list without a reload

    # Lines stream in while it deploys, with the progress bar moving.
    page.wait_for_function("document.querySelectorAll('[data-testid=log-line]').length > 0")
    screenshot(page, "logs-drawer-streaming-en-light")
    final = wait_status(server, admin_token, deployment_id, SETTLED)
    assert final["status"] == "running", final
    page.wait_for_function(
        f"document.querySelector(\"[data-testid=deployment-row][data-id='{deployment_id}'] [data-testid=status-badge]\")"
        "?.dataset.status === 'running'"
    )
    seen = page.evaluate("window.__seen")
    statuses = seen["statuses"][deployment_id]  # its row's badge, as it changed
    assert statuses[0] == "pending" and "deploying" in statuses and statuses[-1] == "running", seen
    assert len(set(seen["progress"])) >= 2 and any(0 < p < 100 for p in seen["progress"]), seen

    # The drawer shows exactly the persisted lines: Copy gives them, once each, in order.
    persisted = persisted_lines(server, admin_token, deployment_id)
    page.wait_for_function(f"Number(document.querySelector('[data-testid=line-count]').innerText.split(' ')[0]) >= {len(persisted)}")
    assert copy_from_drawer(page) == persisted

    # Download: the whole persisted log as a .txt file.
    with page.expect_download() as download_info:
        page.get_by_test_id("download-logs").click()
    download = download_info.value
    assert download.suggested_filename == "live-demo-logs.txt"
    assert parse_copied(Path(download.path()).read_text(encoding="utf-8")) == persisted

    # The services' live output, labelled per service, in the second tab of a running deployment.
    page.get_by_role("tab", name="Services").click()
    page.get_by_test_id("service-lines").get_by_text("tick").first.wait_for()
    assert page.get_by_test_id("service-lines").get_by_text("app", exact=True).first.is_visible()
    screenshot(page, "logs-drawer-services-en-light")
    page.get_by_role("tab", name="Deployment log").click()

    # Search highlights and counts matches; Clear empties the view only.
    page.get_by_placeholder("Search the log").fill("compose")
    page.wait_for_function("document.querySelector('[data-testid=match-count]')?.innerText.match(/^\\d+\\/[1-9]/)")
    assert page.locator("mark.match").count() >= 1
    page.get_by_test_id("clear-logs").click()
    assert page.get_by_test_id("log-line").count() == 0
    assert page.get_by_test_id("line-count").inner_text().startswith("0")
    assert page.errors == [], page.errors
    page.context.close()


def test_server_restart_shows_offline_then_live_with_no_line_lost_or_doubled(
    realtime, chromium_browser, server: Server, admin_token, local_target, demo_stack, cleanup_deployments
) -> None:
    deployment = server.api(
        "POST",
        "/deployments",
        {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "restart-demo", "variables": {"delay": 8}},
        token=admin_token,
    )
    cleanup_deployments.append(deployment["id"])
    page = new_page(chromium_browser)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments?logs={deployment['id']}")
    page.wait_for_function("document.querySelector('[data-testid=ws-badge]')?.dataset.state === 'live'")
    page.wait_for_function("document.querySelectorAll('[data-testid=log-line]').length > 0")
    wait_status(server, admin_token, deployment["id"], {"deploying"} | SETTLED)

    # Mid-deployment, the server goes away: the badge says Offline and the lines stay.
    server.stop()
    page.wait_for_function("document.querySelector('[data-testid=ws-badge]')?.dataset.state !== 'live'")
    assert page.get_by_test_id("ws-badge").inner_text().strip() == "Offline"
    assert page.get_by_test_id("log-line").count() > 0
    screenshot(page, "logs-drawer-offline-en-light")

    server.start()
    # Back to Live by itself, without a click (the backoff is capped: the next attempt is at most 30 s away).
    page.wait_for_function("document.querySelector('[data-testid=ws-badge]')?.dataset.state === 'live'", timeout=45_000)
    assert page.get_by_test_id("ws-badge").inner_text().strip() == "Live"
    # Everything shown was read again: while it deploys, the progress bar says what the API says.
    deadline = time.monotonic() + 60
    while True:
        api = server.api("GET", f"/deployments/{deployment['id']}", token=admin_token)
        if api["status"] != "deploying":
            break
        shown = page.evaluate("Number(document.querySelector('[data-testid=log-progress]')?.dataset.value ?? -1)")
        if shown == api["progress"]:
            break
        assert time.monotonic() < deadline, f"the drawer shows {shown} % while the API says {api['progress']} %"
        page.wait_for_timeout(200)

    # The deployment finishes after the restart (recovery resumes it); its later lines arrive too.
    final = wait_status(server, admin_token, deployment["id"], SETTLED, timeout=180)
    assert final["status"] in SETTLED
    persisted = persisted_lines(server, admin_token, deployment["id"])
    page.wait_for_function(f"Number(document.querySelector('[data-testid=line-count]').innerText.split(' ')[0]) >= {len(persisted)}")
    page.wait_for_timeout(1000)
    assert copy_from_drawer(page) == persisted  # nothing lost, nothing twice
    assert page.errors == [], page.errors
    page.context.close()
