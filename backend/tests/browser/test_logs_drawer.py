"""The logs drawer's reading tools on a real deployment whose service prints a line of each level.

The stack's service prints DEBUG/INFO/WARNING/ERROR lines and exits: the deployment fails and its log
holds those lines at their own levels (a failed service's last lines). Each retry appends another
attempt's lines to the same log, live, which is what auto-scroll is checked against.
"""

from __future__ import annotations

import re

import pytest

from backend.tests.browser.conftest import (
    TEST_IMAGE,
    Server,
    new_page,
    page_errors,
    screenshot,
    ui_login,
)
from backend.tests.browser.test_live_deployment import wait_status

#: A line far wider than the drawer (wrapping is measured on it).
LONG = "-".join(f"word{i}" for i in range(60))

LEVELS_STACK = {
    "name": "levels",
    "description": "prints a line of each level, a coloured one, one that looks like HTML and a long one, then fails",
    "template": (
        "services:\n"
        "  app:\n"
        f"    image: {TEST_IMAGE}\n"
        '    command: ["sh", "-c", "echo \'DEBUG cache warmed\'; echo \'INFO listening on 8080\'; '
        "echo 'WARNING disk almost full'; printf '\\\\033[32mready in green\\\\033[0m\\\\n'; "
        "echo '<img src=x onerror=alert(1)> <b>not bold</b>'; "
        f"echo 'INFO a long line {LONG}'; echo 'ERROR database unreachable'; exit 1\"]\n"
    ),
    "variables": [],
}

LINE_COUNT = "Number(document.querySelector('[data-testid=line-count]').innerText.split(' ')[0])"


@pytest.fixture(scope="module")
def levels_stack(server: Server, admin_token, org_id) -> dict:
    return server.api("POST", "/stacks", {**LEVELS_STACK, "organization_id": org_id}, token=admin_token)


@pytest.fixture
def levels_deployment(server: Server, admin_token, levels_stack, local_target, cleanup_deployments) -> dict:
    deployment = server.api(
        "POST", "/deployments", {"stack_id": levels_stack["id"], "target_id": local_target["id"], "name": "levels-demo"}, token=admin_token
    )
    cleanup_deployments.append(deployment["id"])
    assert wait_status(server, admin_token, deployment["id"], {"failed", "running"})["status"] == "failed"
    return deployment


def retry(server: Server, token: str, deployment_id: str) -> None:
    server.api("POST", f"/deployments/{deployment_id}/retry", token=token)
    assert wait_status(server, token, deployment_id, {"failed", "running"})["status"] == "failed"


def persisted_lines(server: Server, token: str, deployment_id: str) -> list[tuple[int, str, str]]:
    items = server.api("GET", f"/deployments/{deployment_id}/logs?since_seq=0&limit=5000", token=token)["items"]
    return [(line["seq"], line["level"].upper(), line["message"]) for line in items]


def in_view(page, seq: int) -> bool:
    """Whether the row of ``seq`` is rendered and inside the scroller's visible box."""
    return page.evaluate(
        """(seq) => {
          const row = document.querySelector(`[data-testid=log-line][data-seq="${seq}"]`);
          const box = document.querySelector('[data-testid=log-scroller]').getBoundingClientRect();
          if (!row) return false;
          const r = row.getBoundingClientRect();
          return r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
        }""",
        seq,
    )


AT_BOTTOM = (
    "(() => { const el = document.querySelector('[data-testid=log-scroller]');"
    " return el.scrollHeight - el.scrollTop - el.clientHeight < 4 })()"
)
AUTOSCROLL_ON = "document.querySelector('[data-testid=autoscroll]').getAttribute('aria-pressed') === 'true'"
AUTOSCROLL_OFF = "document.querySelector('[data-testid=autoscroll]').getAttribute('aria-pressed') === 'false'"


def at_bottom(page) -> bool:
    return page.evaluate(AT_BOTTOM)


def autoscroll_on(page) -> bool:
    return page.evaluate(AUTOSCROLL_ON)


def wheel(page, dy: int) -> None:
    """The user's mouse wheel over the log (not over whatever button was clicked last)."""
    box = page.get_by_test_id("log-scroller").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, dy)


def test_levels_colours_filter_autoscroll_search_first_error_and_permalink(
    chromium_browser, server: Server, admin_token, levels_deployment
) -> None:
    deployment_id = levels_deployment["id"]
    retry(server, admin_token, deployment_id)  # two attempts: more lines than the drawer shows at once
    page = new_page(chromium_browser, width=1280, height=800)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments?logs={deployment_id}")
    page.wait_for_function("document.querySelector('[data-testid=ws-badge]')?.dataset.state === 'live'")
    persisted = persisted_lines(server, admin_token, deployment_id)
    page.wait_for_function(f"{LINE_COUNT} >= {len(persisted)}")
    assert {level for _, level, _ in persisted} >= {"DEBUG", "INFO", "WARNING", "ERROR"}, persisted

    # Smart auto-scroll is on by default: the tail is in view.
    assert autoscroll_on(page)
    page.wait_for_function(
        "(() => { const el = document.querySelector('[data-testid=log-scroller]'); return el.scrollHeight > el.clientHeight + 100 })()"
    )
    page.wait_for_function(AT_BOTTOM, timeout=5000)

    # Colours by level: each level's label has its own colour, red / yellow / green / grey.
    colours = page.evaluate(
        """() => Object.fromEntries(['error', 'warning', 'info', 'debug'].map((level) => {
          const el = document.querySelector(`[data-testid=log-line].lvl-${level} .lvl`);
          const m = el && getComputedStyle(el).color.match(/\\d+/g).map(Number);
          return [level, m];
        }))"""
    )
    assert all(colours.values()), colours  # the tail holds a line of each level (the last attempt's)
    assert len({tuple(c) for c in colours.values()}) == 4, colours
    (er, eg, eb), (wr, wg, wb), (ir, ig, ib), (dr, dg, db) = (colours[k][:3] for k in ("error", "warning", "info", "debug"))
    assert er > 200 and er > eg + 60 and er > eb + 60, colours  # red
    assert wr > 180 and wg > 140 and wb < wg - 60, colours  # yellow
    assert ig > ir + 60 and ig > ib + 60, colours  # green
    assert max(dr, dg, db) - min(dr, dg, db) < 30 and 90 < dg < 200, colours  # grey
    screenshot(page, "logs-drawer-levels-1280x800")

    # Scrolling up turns auto-scroll off: lines that arrive then do not move the view.
    wheel(page, -300)
    page.wait_for_function(AUTOSCROLL_OFF, timeout=5000)
    top = page.evaluate("document.querySelector('[data-testid=log-scroller]').scrollTop")
    before = page.evaluate(LINE_COUNT)
    retry(server, admin_token, deployment_id)
    persisted = persisted_lines(server, admin_token, deployment_id)
    page.wait_for_function(f"{LINE_COUNT} >= {len(persisted)}")
    assert page.evaluate(LINE_COUNT) > before
    page.wait_for_timeout(300)
    assert abs(page.evaluate("document.querySelector('[data-testid=log-scroller]').scrollTop") - top) < 2
    assert not autoscroll_on(page) and not at_bottom(page)
    # The button turns it back on and goes to the tail.
    page.get_by_test_id("autoscroll").click()
    page.wait_for_function(AUTOSCROLL_ON, timeout=5000)
    page.wait_for_function(AT_BOTTOM, timeout=5000)
    assert in_view(page, persisted[-1][0])
    # Scrolling back down to the bottom by hand turns it on by itself.
    wheel(page, -300)
    page.wait_for_function(AUTOSCROLL_OFF, timeout=5000)
    wheel(page, 5000)
    page.wait_for_function(AUTOSCROLL_ON, timeout=5000)

    # Level filter: only the levels ticked are shown.
    all_rows = page.get_by_test_id("log-line").count()
    page.get_by_test_id("level-debug").click()
    page.get_by_test_id("level-info").click()
    page.wait_for_function("document.querySelectorAll('[data-testid=log-line].lvl-info, [data-testid=log-line].lvl-debug').length === 0")
    shown = page.evaluate("[...document.querySelectorAll('[data-testid=log-line]')].map((r) => r.className)")
    assert shown and all(("lvl-error" in c or "lvl-warning" in c) for c in shown), shown
    assert len(shown) < all_rows
    page.get_by_test_id("level-debug").click()
    page.get_by_test_id("level-info").click()
    page.wait_for_function("document.querySelectorAll('[data-testid=log-line].lvl-info').length > 0")

    # Jump to the first error: scrolled to it, selected, and its permalink in the address bar.
    first_error = next(seq for seq, level, _ in persisted if level == "ERROR")
    page.get_by_test_id("first-error").click()
    page.wait_for_function(f"document.querySelector('[data-testid=log-line][data-seq=\"{first_error}\"]')?.classList.contains('selected')")
    assert in_view(page, first_error)
    page.wait_for_url(re.compile(rf"[?&]seq={first_error}\b"))

    # Search with next / previous: matches counted and highlighted, each one scrolled into view.
    term = "database unreachable"
    expected = [seq for seq, _, message in persisted if term in message.lower()]
    assert len(expected) >= 3, persisted
    page.get_by_placeholder("Search the log").fill(term)
    count = page.get_by_test_id("match-count")
    page.wait_for_function(f"document.querySelector('[data-testid=match-count]')?.innerText === '1/{len(expected)}'")

    def current() -> int:
        return int(page.locator("[data-testid=log-line].current").get_attribute("data-seq"))

    assert current() == expected[0] and in_view(page, expected[0])
    assert page.locator("[data-testid=log-line].current mark.match").count() >= 1
    page.get_by_test_id("next-match").click()
    assert count.inner_text() == f"2/{len(expected)}"
    assert current() == expected[1] and in_view(page, expected[1])
    page.get_by_test_id("prev-match").click()
    page.get_by_test_id("prev-match").click()  # wraps round to the last match
    assert count.inner_text() == f"{len(expected)}/{len(expected)}"
    assert current() == expected[-1] and in_view(page, expected[-1])
    screenshot(page, "logs-drawer-search-1280x800")
    assert page.errors == [], page.errors

    # A permalink opens the drawer scrolled to that line and highlights it (the tail is elsewhere).
    warning = next(seq for seq, level, _ in persisted if level == "WARNING")
    link = page.context.new_page()
    link.goto(f"{server.url}/deployments?logs={deployment_id}&seq={warning}")
    link.wait_for_function(f"document.querySelector('[data-testid=log-line][data-seq=\"{warning}\"]')?.classList.contains('selected')")
    link.wait_for_timeout(300)
    assert in_view(link, warning)
    assert not in_view(link, persisted[-1][0])
    screenshot(link, "logs-drawer-permalink-1280x800")
    page.context.close()


def test_colours_html_and_wrap(chromium_browser, server: Server, levels_deployment) -> None:
    """ANSI colours are styled spans, text that looks like HTML stays text, and Wrap lines wraps (measured)."""
    page = new_page(chromium_browser, width=1280, height=800)
    ui_login(page, server)
    page.goto(f"{server.url}/deployments?logs={levels_deployment['id']}")
    green = page.locator("[data-testid=log-line] .msg span", has_text="ready in green").first
    green.wait_for()
    r, g, b = (int(x) for x in re.findall(r"\d+", green.evaluate("(e) => getComputedStyle(e).color"))[:3])
    assert g > r + 40 and g > b + 40, (r, g, b)  # green, although the line is an error (red) line
    assert "\x1b" not in green.inner_text() and "[32m" not in green.inner_text()
    html = page.locator("[data-testid=log-line]", has_text="not bold").first
    assert "<img src=x onerror=alert(1)> <b>not bold</b>" in html.inner_text()  # shown as text...
    assert html.locator("img, b").count() == 0  # ...never made into elements

    long_row = page.locator("[data-testid=log-line]", has_text="a long line").first
    long_row.scroll_into_view_if_needed()
    before = long_row.evaluate("(e) => [getComputedStyle(e).whiteSpace, e.getBoundingClientRect().height]")
    assert before[0] == "pre" and before[1] <= 21, before
    page.get_by_test_id("toggle-wrap").click()
    page.wait_for_function(
        """() => { const row = [...document.querySelectorAll('[data-testid=log-line]')]
                     .find((r) => r.innerText.includes('a long line'));
                   return row && getComputedStyle(row).whiteSpace === 'pre-wrap' && row.getBoundingClientRect().height > 50 }"""
    )
    width = page.evaluate(
        "document.querySelector('[data-testid=log-scroller]').scrollWidth - "
        "document.querySelector('[data-testid=log-scroller]').clientWidth"
    )
    assert width <= 1, width  # wrapped: nothing to scroll sideways
    screenshot(page, "logs-drawer-wrapped-1280x800")
    page.get_by_test_id("toggle-wrap").click()  # the setting is remembered: leave it as it was
    page.wait_for_function("getComputedStyle(document.querySelector('[data-testid=log-line]')).whiteSpace === 'pre'")
    assert page_errors(page) == [], page.errors
    page.context.close()
