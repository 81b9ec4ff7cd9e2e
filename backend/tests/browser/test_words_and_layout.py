"""What a French page says and how a phone shows it (issue 19's last points): the System page's execution-mode
reason and a degraded worker's problem in the user's language, a stack editor's template refusal in French at its
line, the members as readable cards on a 390 px phone, and the Targets page saying where each target's work
runs (its own workers, which ones, or none: its deployments wait). Screenshots at 1280 and 390 px, light and dark,
English and French."""

from __future__ import annotations

import json
import sqlite3
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from backend.tests.browser.conftest import Server, navigate, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_roles_and_pages import ACTIONS_VISIBLE

LOCALES = (("en-US", "en"), ("fr-FR", "fr"))
PHONE = {"width": 390, "height": 844}


def _suffix(lang: str, dark: bool, phone: bool = False) -> str:
    return f"{lang}-{'dark' if dark else 'light'}{'-phone' if phone else ''}"


def looks(page, lang: str):
    """The page light and dark, at 1280 px and on a 390 px phone, in one session (its theme follows the system's,
    its layout the window's): yields each look's name."""
    for phone in (False, True):  # the wide window first: a phone's width folds the navigation away
        for dark in (False, True):
            page.emulate_media(color_scheme="dark" if dark else "light")
            page.set_viewport_size(PHONE if phone else {"width": 1280, "height": 800})
            page.wait_for_timeout(200)  # the theme's and the layout's listeners have run
            toggle = page.get_by_test_id("nav-toggle")
            if phone and toggle.get_attribute("aria-expanded") == "true":  # folded, as a phone opens the app
                page.get_by_test_id("nav-close").click()  # the open navigation lies over its own toggle on a phone
                page.wait_for_function("document.querySelector('[data-testid=nav-toggle]').getAttribute('aria-expanded') === 'false'")
            yield phone, _suffix(lang, dark, phone)


@contextmanager
def heartbeat(server: Server, **row):
    """A worker's heartbeat row written where the server reads it (its SQLite database), fresh for an hour,
    removed afterwards: what a Celery worker's beat writes (``runtime/workers.py``)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    values = {
        "kind": "external",
        "hostname": "host-b",
        "pid": 4242,
        "broker": "postgresql",
        "concurrency": 2,
        "started_at": str(now),
        "last_seen": str(now + timedelta(hours=1)),
        "state": "healthy",
        "problem": None,
        "live_processes": 2,
        "pool_pids": None,
        "targets": None,
        "problem_codes": None,
        **row,
    }
    for key in ("targets", "problem_codes"):
        if values[key] is not None:
            values[key] = json.dumps(values[key])
    db = sqlite3.connect(server.workdir / "windflow.db", timeout=30)
    try:
        with db:
            db.execute(
                f"INSERT INTO worker_heartbeats ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                list(values.values()),
            )
        yield
    finally:
        with db:
            db.execute("DELETE FROM worker_heartbeats WHERE name = ?", (values["name"],))
        db.close()


def test_the_system_page_says_why_in_the_users_language(chromium_browser, server: Server, admin_token) -> None:
    problem = "the pool has 0/2 live processes and has not refilled for 12s"
    codes = [{"code": "pool_not_refilled", "params": {"live": 0, "concurrency": 2, "seconds": 12}}]
    expected = {
        "en": ("Celery is turned off (CELERY_ENABLED=false).", "Its pool has 0/2 live processes and has not refilled for 12 s."),
        "fr": ("Celery est désactivé (CELERY_ENABLED=false).", "Son pool a 0/2 processus vivants et ne s’est pas regarni depuis 12 s."),
    }
    with heartbeat(server, name="stuck@host-b", state="degraded", problem=problem, live_processes=0, problem_codes=codes):
        for locale, lang in LOCALES:
            page = new_page(chromium_browser, locale=locale)
            ui_login(page, server)
            navigate(page, "/system")
            reason = page.get_by_test_id("execution-reason")
            reason.wait_for()
            page.get_by_test_id("worker-degraded").wait_for()
            assert reason.inner_text().strip() == expected[lang][0]
            degraded = page.get_by_test_id("worker-degraded").inner_text()
            assert expected[lang][1] in degraded and problem not in degraded, degraded
            page.wait_for_load_state("networkidle")
            for phone, suffix in looks(page, lang):
                if phone:  # the workers come last on a phone, in a table that scrolls rather than squeezes
                    page.get_by_test_id("worker-degraded").scroll_into_view_if_needed()
                    widths = page.evaluate(
                        "() => [...document.querySelectorAll('.n-data-table-th')].map((c) => c.getBoundingClientRect().width)"
                    )
                    assert widths and min(widths) >= 60, widths
                screenshot(page, f"system-words-{suffix}")
            assert page_errors(page) == [], page.errors
            page.context.close()


#: Every member card lies within the window, no card is narrower than 300 px, no email is cut, and the page
#: needs no sideways scroll.
CARDS_READABLE = """
() => {
  const cards = [...document.querySelectorAll('[data-testid=member-cards] [data-testid=member-row]')];
  const problems = [];
  for (const c of cards) {
    const r = c.getBoundingClientRect();
    if (r.width < 300) problems.push(`${c.dataset.email}: card ${r.width}px wide`);
    if (r.left < 0 || r.right > window.innerWidth + 1) problems.push(`${c.dataset.email}: card outside the window`);
    const email = c.querySelector('.member-email');
    if (!email || email.scrollWidth > email.clientWidth + 1) problems.push(`${c.dataset.email}: email cut`);
  }
  const page = document.scrollingElement;
  if (page.scrollWidth > window.innerWidth + 1) problems.push(`page ${page.scrollWidth}px wide in ${window.innerWidth}px`);
  return { cards: cards.length, problems, tables: document.querySelectorAll('.n-data-table').length };
}
"""


def test_members_on_a_phone_are_readable_cards(chromium_browser, server: Server, admin_token, org_id) -> None:
    email = f"a.rather.long.address.{uuid.uuid4().hex[:8]}@subdomain.example.com"
    user = server.api("POST", "/users", {"email": email, "password": "member-password-1", "full_name": "Ada Lovelace"}, token=admin_token)
    server.api("POST", f"/organizations/{org_id}/members", {"user_id": user["id"], "role": "operator"}, token=admin_token)
    for locale, lang in LOCALES:
        page = new_page(chromium_browser, locale=locale)
        ui_login(page, server)
        navigate(page, "/organization")
        for phone, suffix in looks(page, lang):
            card = page.locator(f"[data-testid=member-row][data-email='{email}']")
            if phone:
                page.locator(f"[data-testid=member-cards] [data-testid=member-row][data-email='{email}']").wait_for()
                layout = page.evaluate(CARDS_READABLE)
                assert layout["cards"] >= 2 and layout["problems"] == [] and layout["tables"] == 0, layout
                assert "Ada Lovelace" in card.inner_text()
                assert card.locator(".n-base-selection").count() == 1  # its role, changeable
                if lang == "en" and "light" in suffix:  # the navigation opens over the page, and a tap beside it closes it
                    toggle = page.get_by_test_id("nav-toggle")
                    toggle.click()
                    page.get_by_test_id("nav-close").wait_for()
                    screenshot(page, "navigation-open-en-light-phone")
                    page.mouse.click(360, 600)
                    page.wait_for_function("document.querySelector('[data-testid=nav-toggle]').getAttribute('aria-expanded') === 'false'")
            else:  # the wide window keeps the table
                page.locator(f".n-data-table [data-testid=member-row][data-email='{email}']").wait_for()
            screenshot(page, f"organization-{suffix}")
        assert page_errors(page) == [], page.errors
        page.context.close()


def test_the_targets_page_says_where_each_targets_work_runs(chromium_browser, server: Server, admin_token, org_id, local_target) -> None:
    placed = server.api(
        "POST",
        "/targets",
        {
            "name": f"placed-{uuid.uuid4().hex[:6]}",
            "type": "docker",
            "endpoint": "tcp://10.255.255.1:2376",
            "placed": True,
            "organization_id": org_id,
        },
        token=admin_token,
    )
    assert placed["placed"] and not placed["served"] and placed["workers"] == 0, placed
    unserved = {"en": "no worker serves it", "fr": "aucun worker ne la sert"}
    server_runs = {"en": "the server itself", "fr": "le serveur lui-même"}
    try:
        for locale, lang in LOCALES:
            page = new_page(chromium_browser, locale=locale)
            ui_login(page, server)
            navigate(page, "/targets")
            row = page.locator(f"[data-testid=target-row][data-id='{placed['id']}']")
            row.wait_for()
            for phone, suffix in looks(page, lang):
                cell = row.get_by_test_id("target-placement")
                assert cell.get_attribute("data-unserved") == "true" and cell.get_attribute("data-kind") == "placed"
                assert unserved[lang] in cell.inner_text()
                local = page.locator(f"[data-testid=target-row][data-id='{local_target['id']}'] [data-testid=target-placement]")
                assert local.get_attribute("data-unserved") == "false" and server_runs[lang] in local.inner_text()
                if phone:
                    cell.scroll_into_view_if_needed()
                screenshot(page, f"targets-placement-{suffix}")
                if not phone:  # the wider table still needs no sideways scroll, its actions whole
                    layout = page.evaluate(ACTIONS_VISIBLE)
                    assert layout["buttons"] >= 3 and layout["problems"] == [], layout
            assert page_errors(page) == [], page.errors
            page.context.close()
        # a worker of host-b declares it: served, by that worker (its name shown to a superuser)
        with heartbeat(server, name="placed-worker@host-b", targets=[placed["id"]]):
            assert server.api("GET", f"/targets/{placed['id']}", token=admin_token)["served"] is True
            page = new_page(chromium_browser, locale="fr-FR")
            ui_login(page, server)
            navigate(page, "/targets")
            cell = page.locator(f"[data-testid=target-row][data-id='{placed['id']}'] [data-testid=target-placement]")
            cell.wait_for()
            page.wait_for_function(
                "(id) => document.querySelector(`[data-id='${id}'] [data-testid=target-placement]`).innerText.includes('placed-worker@host-b')",
                arg=placed["id"],
            )
            assert cell.get_attribute("data-unserved") == "false"
            assert "ses propres workers : 1" in cell.inner_text() and "aucun worker" not in cell.inner_text()
            screenshot(page, "targets-placement-served-fr-light")
            page.context.close()
    finally:
        server.api("DELETE", f"/targets/{placed['id']}", token=admin_token)


def test_a_template_refusal_reads_in_french_at_its_line(chromium_browser, server: Server, admin_token) -> None:
    template = 'services:\n  web:\n    image: nginx:1.27-alpine\n    ports:\n      - "{{ port }}:80"\n    hostname: {{ nope }}\n'
    for locale, lang in LOCALES:
        page = new_page(chromium_browser, locale=locale)
        ui_login(page, server)
        navigate(page, "/stacks/new")
        editor = page.get_by_test_id("template-editor")
        editor.wait_for()
        page.fill("input[name=stack-name]", f"refused-{uuid.uuid4().hex[:6]}")
        editor.locator(".cm-content").click()
        page.keyboard.press("Control+a")
        page.keyboard.press("Delete")
        page.keyboard.insert_text(template)
        page.get_by_test_id("stack-save").click()
        errors = page.locator("[data-testid=template-editor] + [data-testid=editor-errors]")
        errors.wait_for()
        alert = page.get_by_test_id("form-error").inner_text()
        if lang == "fr":
            assert "« nope » n’est pas défini" in errors.inner_text(), errors.inner_text()
            assert "Le modèle ne se rend pas avec les valeurs par défaut, ligne 6" in alert, alert
            assert "is undefined" not in alert and "is undefined" not in errors.inner_text()
        else:
            assert "'nope' is undefined" in errors.inner_text() and "template line 6" in alert, alert
        assert "L6" in errors.inner_text(), errors.inner_text()  # at its line
        marked = page.evaluate(
            """() => { const lines = [...document.querySelectorAll('[data-testid=template-editor] .cm-line')];
                       return lines.findIndex((l) => l.querySelector('.cm-lintRange-error')) + 1 }"""
        )
        assert marked == 6, marked
        for _phone, suffix in looks(page, lang):
            errors.scroll_into_view_if_needed()
            screenshot(page, f"stack-editor-refusal-{suffix}")
        assert page_errors(page) == [], page.errors
        page.context.close()


def test_a_variable_schema_problem_reads_in_french_at_its_line(chromium_browser, server: Server, admin_token) -> None:
    """Not a value's problem but the schema's own (min above max, a duplicate name): in French, at its line."""
    variables = "- name: size\n  type: integer\n- name: size\n  type: string\n- name: count\n  type: integer\n  min: 5\n  max: 1\n"
    page = new_page(chromium_browser, locale="fr-FR")
    ui_login(page, server)
    navigate(page, "/stacks/new")
    editor = page.get_by_test_id("variables-editor")
    editor.wait_for()
    page.fill("input[name=stack-name]", f"schema-{uuid.uuid4().hex[:6]}")
    editor.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(variables)
    page.get_by_test_id("stack-save").click()
    errors = page.locator("[data-testid=variables-editor] + [data-testid=editor-errors]")
    errors.wait_for()
    said = errors.inner_text() + "\n" + page.get_by_test_id("form-error").inner_text()
    assert "dépasse max (1)" in said and "nom de variable en double : size" in said, said
    assert "greater than" not in said and "duplicate variable name" not in said, said
    assert "L3" in errors.inner_text() and "L7" in errors.inner_text(), errors.inner_text()  # the second name's line, min's
    for _phone, suffix in looks(page, "fr"):
        errors.scroll_into_view_if_needed()
        screenshot(page, f"stack-editor-schema-{suffix}")
    assert page_errors(page) == [], page.errors
    page.context.close()
