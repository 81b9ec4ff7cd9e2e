"""A failed deployment's error and the lines WindFlow writes into its log, in the user's language (issue 19).

The server keeps its English text (``error_message``, the log lines) and gives, next to it, the code of the
sentence and the values it quotes; a French page words them in French, and the failed service's own output (its
last log lines) is shown apart, as it wrote it, never translated. Screenshots at 1280 and 390 px."""

from __future__ import annotations

import pytest

from backend.tests.browser.conftest import TEST_IMAGE, Server, navigate, new_page, page_errors, screenshot, ui_login
from backend.tests.browser.test_live_deployment import wait_status

CRASH_STACK = {
    "name": "crash-words",
    "description": "a service that says why and exits with 3",
    "template": (
        f'services:\n  app:\n    image: {TEST_IMAGE}\n    command: ["sh", "-c", "echo \'boom: bad configuration\' >&2; exit 3"]\n'
    ),
    "variables": [],
}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def crash_stack(server: Server, admin_token, org_id) -> dict:
    return server.api("POST", "/stacks", {**CRASH_STACK, "organization_id": org_id}, token=admin_token)


def test_a_failed_deployments_error_reads_in_the_users_language(
    chromium_browser, server: Server, admin_token, crash_stack, local_target, cleanup_deployments
) -> None:
    deployment = server.api(
        "POST", "/deployments", {"stack_id": crash_stack["id"], "target_id": local_target["id"], "name": "crash-words"}, token=admin_token
    )
    cleanup_deployments.append(deployment["id"])
    failed = wait_status(server, admin_token, deployment["id"], {"failed", "running"})
    assert failed["status"] == "failed", failed
    # The API keeps the English text and gives its sentence's code and the values it quotes.
    assert failed["error_message"].startswith("service app exited with code 3"), failed["error_message"]
    assert "boom: bad configuration" in failed["error_message"]
    assert failed["error_code"] == "service_exited" and failed["error_params"] == {"service": "app", "exit_code": "3"}
    lines = server.api("GET", f"/deployments/{deployment['id']}/logs?since_seq=0&limit=1000", token=admin_token)["items"]
    coded = {line["code"]: line for line in lines if line["code"]}
    assert coded["started"]["message"].startswith("Deployment started (revision 1, attempt 1/")
    assert "step" in coded and "service_exited" in coded, sorted(coded)
    assert any(line["code"] is None and "boom: bad configuration" in line["message"] for line in lines)

    expected = {
        "en": ("service app exited with code 3", "Deployment started (revision 1, attempt 1/"),
        "fr": ("le service app s’est arrêté avec le code 3", "Déploiement commencé (révision 1, tentative 1/"),
    }
    for locale, lang in (("en-US", "en"), ("fr-FR", "fr")):
        page = new_page(chromium_browser, locale=locale)
        ui_login(page, server)
        navigate(page, f"/deployments/{deployment['id']}")
        text = page.get_by_test_id("detail-error-text")
        text.wait_for()
        assert text.inner_text().strip() == expected[lang][0]
        output = page.get_by_test_id("detail-error-output").inner_text()
        assert "boom: bad configuration" in output, output  # the service's own words, as it wrote them
        for phone in (False, True):
            page.set_viewport_size(PHONE if phone else {"width": 1280, "height": 800})
            page.wait_for_timeout(200)
            if phone and page.get_by_test_id("nav-toggle").get_attribute("aria-expanded") == "true":
                page.get_by_test_id("nav-close").click()  # folded, as a phone opens the app
                page.wait_for_function("document.querySelector('[data-testid=nav-toggle]').getAttribute('aria-expanded') === 'false'")
            page.get_by_test_id("detail-error").scroll_into_view_if_needed()
            box = page.get_by_test_id("detail-error").bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= (390 if phone else 1280) + 1, box
            screenshot(page, f"deployment-error-words-{lang}-light{'-phone' if phone else ''}")
        page.set_viewport_size({"width": 1280, "height": 800})

        # The list's row says it in one line, the same words.
        navigate(page, "/deployments")
        row = page.locator("[data-testid=row-error]", has_text=expected[lang][0])
        row.first.wait_for()

        # The drawer: WindFlow's lines in the user's language, the container's output as it wrote it.
        page.goto(f"{server.url}/deployments?logs={deployment['id']}")
        started = page.locator("[data-testid=log-line]", has_text=expected[lang][1])
        started.first.wait_for()
        page.locator("[data-testid=log-line]", has_text="boom: bad configuration").first.wait_for()
        if lang == "fr":
            rows = page.locator("[data-testid=log-line]").all_inner_texts()
            assert not any("Deployment started" in r for r in rows), rows
            assert any("le service app s’est arrêté avec le code 3" in r for r in rows), rows
        screenshot(page, f"deployment-log-words-{lang}-light")
        assert page_errors(page) == [], page.errors
        page.context.close()
