"""The Services tab reads like the deployment log: it follows the end and pauses on scroll-up, colours levels
and ANSI sequences (HTML-looking text stays text), searches, filters by service, copies and downloads, with the
containers' backlogs merged by time and an exited container's last output shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.tests.browser.conftest import TEST_IMAGE, Server, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_live_deployment import wait_status

#: `once` runs first and exits (its output stays readable); alpha and beta then print a line a second each,
#: half a second apart, so that their output interleaves in time.
SERVICES_STACK = {
    "name": "chatty",
    "description": "two services printing in turn, after a one-shot job",
    "template": (
        "services:\n"
        "  once:\n"
        f"    image: {TEST_IMAGE}\n"
        '    command: ["sh", "-c", "echo \'migration done\'"]\n'
        "  alpha:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        "    depends_on: {once: {condition: service_completed_successfully}}\n"
        '    command: ["sh", "-c", "i=0; while true; do i=$$((i+1)); echo alpha-$$i; sleep 1; done"]\n'
        "  beta:\n"
        f"    image: {TEST_IMAGE}\n"
        "    init: true\n"
        "    depends_on: {once: {condition: service_completed_successfully}}\n"
        '    command: ["sh", "-c", "sleep 0.5; i=0; while true; do i=$$((i+1)); '
        "printf 'beta-%s <b>bold?</b> \\\\033[32mgreen\\\\033[0m\\\\n' $$i; "
        "[ $$i = 3 ] && echo 'WARNING beta is slow'; sleep 1; done\"]\n"
    ),
    "variables": [],
}
LINE = re.compile(r"^(\S+) (\w+) \| (.*)$")


@pytest.fixture
def chatty(server: Server, admin_token, org_id, local_target, cleanup_deployments) -> dict:
    stack = server.api("POST", "/stacks", {**SERVICES_STACK, "organization_id": org_id}, token=admin_token)
    deployment = server.api(
        "POST", "/deployments", {"stack_id": stack["id"], "target_id": local_target["id"], "name": "chatty"}, token=admin_token
    )
    cleanup_deployments.append(deployment["id"])
    final = wait_status(server, admin_token, deployment["id"], {"running", "failed"})
    assert final["status"] == "running", final
    return deployment


SCROLLER = "document.querySelector('[data-testid=service-scroller]')"
AT_BOTTOM = f"(() => {{ const el = {SCROLLER}; return el && el.scrollHeight - el.scrollTop - el.clientHeight < 4 }})()"


def test_the_services_tab_follows_merges_searches_filters_and_downloads(realtime, chromium_browser, server: Server, chatty) -> None:
    page = new_page(chromium_browser)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments?logs={chatty['id']}")
    page.get_by_test_id("tab-services").click()
    page.get_by_test_id("service-scroller").wait_for()

    # An exited container's last output is there; the others' lines keep coming, and the view follows them.
    page.locator("[data-testid=service-scroller] [data-testid=log-line]", has_text="migration done").first.wait_for()
    page.wait_for_function(f"{SCROLLER}.innerText.includes('beta-4')", timeout=30_000)
    page.wait_for_function(f"{SCROLLER}.scrollHeight > {SCROLLER}.clientHeight + 40", timeout=30_000)
    page.wait_for_function(AT_BOTTOM, timeout=5000)
    assert page.get_by_test_id("autoscroll").get_attribute("aria-pressed") == "true"

    # Levels and colours: the WARNING line is yellow; the green sequence is a green span; HTML stays text.
    warning = page.locator("[data-testid=service-scroller] [data-testid=log-line].lvl-warning").first
    assert "beta is slow" in warning.inner_text()
    green = page.locator("[data-testid=service-scroller] .msg span", has_text="green").last
    r, g, b = (int(x) for x in re.findall(r"\d+", green.evaluate("(e) => getComputedStyle(e).color"))[:3])
    assert g > r + 40 and g > b + 40, (r, g, b)
    bold = page.locator("[data-testid=service-scroller] [data-testid=log-line]", has_text="beta-").last
    assert "<b>bold?</b>" in bold.inner_text() and bold.locator("b").count() == 0
    assert bold.get_by_test_id("line-service").inner_text() == "beta"
    screenshot(page, "logs-drawer-services-en-light")

    # Scrolling up pauses following: new lines do not move the view.
    box = page.get_by_test_id("service-scroller").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)
    page.wait_for_function("document.querySelector('[data-testid=autoscroll]').getAttribute('aria-pressed') === 'false'")
    top = page.evaluate(f"{SCROLLER}.scrollTop")
    count = page.evaluate(f"{SCROLLER}.querySelectorAll('[data-testid=log-line]').length")
    page.wait_for_timeout(2200)  # two more lines of each service meanwhile
    assert abs(page.evaluate(f"{SCROLLER}.scrollTop") - top) < 2
    page.get_by_test_id("autoscroll").click()
    page.wait_for_function(AT_BOTTOM, timeout=5000)
    assert count > 0

    # Search: counted and highlighted.
    page.get_by_placeholder("Search the log").fill("beta-2 <b>")
    page.wait_for_function("document.querySelector('[data-testid=match-count]')?.innerText === '1/1'")
    assert page.locator("[data-testid=service-scroller] mark.match").count() == 1
    page.get_by_placeholder("Search the log").fill("")

    # Filter by service: alpha's lines go, beta's stay.
    page.get_by_test_id("service-alpha").click()
    page.wait_for_function(f"![...{SCROLLER}.querySelectorAll('[data-testid=line-service]')].some((e) => e.innerText === 'alpha')")
    assert page.locator("[data-testid=service-scroller] [data-testid=line-service]", has_text="beta").count() > 0
    page.get_by_test_id("service-alpha").click()

    # Download: what was received, merged by time (the two services interleave, timestamps never go back).
    with page.expect_download() as download_info:
        page.get_by_test_id("download-logs").click()
    download = download_info.value
    assert download.suggested_filename == "chatty-services.txt"
    lines = [LINE.match(row) for row in Path(download.path()).read_text(encoding="utf-8").splitlines()]
    assert all(lines), lines
    stamps = [m.group(1) for m in lines]
    services = [m.group(2) for m in lines]
    assert stamps == sorted(stamps), stamps
    assert services[0] == "once" and "migration done" in lines[0].group(3)
    ticks = [s for s in services if s in ("alpha", "beta")]
    switches = sum(1 for a, b in zip(ticks, ticks[1:], strict=False) if a != b)
    assert switches >= 4, ticks  # interleaved by time, not one container's backlog then the other's
    assert not any("\x1b" in m.group(3) for m in lines)  # plain text
    assert page_errors(page) == [], page.errors
    page.context.close()
