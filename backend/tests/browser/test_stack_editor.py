"""The stack editor behaves like a code editor: Tab indents, Escape then Tab leaves it (the keyboard is never
trapped), a focus ring shows it, errors are marked at their line; the variables come back as written, and
saving shows the saved stack."""

from __future__ import annotations

import uuid

from backend.tests.browser.conftest import Server, new_page, page_errors, screenshot, ui_login

VARIABLES = """# the port nginx listens on, on the host
- name: port
  type: integer
  default: 8080   # a free one
  min: 1
  max: 65535
- {name: mode, type: nope}
"""


def focused_testid(page) -> str | None:
    """The data-testid of the editor holding the focus (or None when the focus is elsewhere)."""
    return page.evaluate("document.activeElement?.closest('[data-testid$=-editor]')?.dataset.testid ?? null")


def test_the_editor_is_left_by_keyboard_marks_errors_at_their_line_and_keeps_the_text(
    chromium_browser, server: Server, admin_token
) -> None:
    page = new_page(chromium_browser)
    ui_login(page, server)
    page.goto(f"{server.url}/stacks/new")
    template = page.get_by_test_id("template-editor")
    template.wait_for()
    name = f"edited-{uuid.uuid4().hex[:6]}"
    page.fill("input[name=stack-name]", name)

    # Tab indents inside the editor; the focus ring shows where the keyboard is.
    template.locator(".cm-content").click()
    page.keyboard.press("Control+End")
    page.keyboard.press("Tab")
    assert focused_testid(page) == "template-editor"
    assert page.evaluate("getComputedStyle(document.querySelector('[data-testid=template-editor]')).outlineStyle") == "solid"
    screenshot(page, "stack-editor-focus-en-light")
    # Escape then Tab leaves it, to the next field (the variables' editor), and Shift+Tab comes back.
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    assert focused_testid(page) == "variables-editor", page.evaluate("document.activeElement.outerHTML.slice(0, 200)")
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Tab")
    assert focused_testid(page) == "template-editor"
    page.keyboard.press("Control+z")  # the indentation typed above

    # The variables as written, with a mistake on line 7: marked at that line.
    variables = page.get_by_test_id("variables-editor")
    variables.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(VARIABLES)
    page.get_by_test_id("stack-save").click()
    errors = page.get_by_test_id("editor-errors")
    errors.wait_for()
    assert "L7" in errors.inner_text() and "variables[1].type" in errors.inner_text()
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid=variables-editor] .cm-gutter-lint .cm-gutterElement')]
                 .some((e) => e.querySelector('.cm-lint-marker-error') && e.textContent !== null)"""
    )
    marked = page.evaluate(
        """() => { const view = document.querySelector('[data-testid=variables-editor] .cm-content');
                   const lines = [...view.querySelectorAll('.cm-line')];
                   return lines.findIndex((l) => l.querySelector('.cm-lintRange-error')) + 1 }"""
    )
    assert marked == 7, marked
    screenshot(page, "stack-editor-error-en-light")

    # Fixed, saved: the saved stack is shown in its list, highlighted.
    page.keyboard.press("Control+End")
    fixed = VARIABLES.replace("{name: mode, type: nope}", "{name: mode, type: enum, options: [fast, safe], default: safe}")
    variables.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(fixed)
    page.get_by_test_id("stack-save").click()
    page.wait_for_url("**/stacks?*saved=*")
    card = page.locator("[data-testid=stack-card].saved")
    card.wait_for()
    assert name in card.inner_text()
    stack_id = page.url.split("saved=")[1].split("&")[0]
    screenshot(page, "stacks-saved-en-light")

    # Reopened: the variables exactly as written (comments, order, flow style).
    assert server.api("GET", f"/stacks/{stack_id}", token=admin_token)["variables_source"] == fixed
    page.goto(f"{server.url}/stacks/{stack_id}")
    page.get_by_test_id("variables-editor").locator(".cm-content").wait_for()
    page.wait_for_function("document.querySelector('[data-testid=variables-editor] .cm-content').innerText.includes('a free one')")
    shown = page.evaluate("[...document.querySelectorAll('[data-testid=variables-editor] .cm-line')].map((l) => l.textContent).join('\\n')")
    assert shown.strip() == fixed.strip()
    assert page_errors(page) == [], page.errors
    page.context.close()
