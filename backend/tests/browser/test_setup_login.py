"""First-run setup, log out, log in again, and French labels for a French browser."""

from __future__ import annotations

import re

from backend.tests.browser.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Server, new_page, screenshot, start_server


def test_first_run_setup_then_login(chromium_browser, tmp_path_factory) -> None:
    server: Server = start_server(tmp_path_factory, "setup-server")
    try:
        page = new_page(chromium_browser)
        page.goto(server.url + "/")
        page.wait_for_url("**/setup")
        screenshot(page, "setup-en-light")
        page.fill("input[name=email]", ADMIN_EMAIL)
        page.fill("input[name=full_name]", "Ada Admin")
        page.fill("input[name=organization_name]", "Acme")
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.fill("input[name=confirm]", "something-else")
        page.click("[data-testid=setup-submit]")
        assert page.get_by_text("The passwords differ").is_visible()  # checked before anything is sent
        page.fill("input[name=confirm]", ADMIN_PASSWORD)
        page.click("[data-testid=setup-submit]")
        page.wait_for_url("**/deployments")
        page.get_by_role("heading", name="Deployments").wait_for()
        assert page.get_by_test_id("user-menu").inner_text().strip() == ADMIN_EMAIL
        assert page.get_by_test_id("org-switcher").inner_text().startswith("Acme")

        # Setup is one-time: the page now sends you to the login page.
        page.goto(server.url + "/setup")
        page.wait_for_url("**/login")

        # Log out from the user menu, then log in again; a wrong password shows the API's detail.
        page.goto(server.url + "/deployments")
        page.get_by_test_id("user-menu").click()
        page.get_by_text("Log out").click()
        page.wait_for_url("**/login")
        screenshot(page, "login-en-light")
        page.fill("input[name=email]", ADMIN_EMAIL)
        page.fill("input[name=password]", "wrong-password")
        page.click("[data-testid=login-submit]")
        error = page.get_by_test_id("form-error")
        error.wait_for()
        assert re.search(r"(?i)incorrect|invalid|wrong", error.inner_text())
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.click("[data-testid=login-submit]")
        page.wait_for_url("**/deployments")

        # A reload keeps the session (tokens survive; an expired access token is refreshed silently).
        page.evaluate("localStorage.setItem('windflow.access', 'expired.or.garbage')")
        page.reload()
        page.get_by_role("heading", name="Deployments").wait_for()
        assert page.evaluate("localStorage.getItem('windflow.access')") != "expired.or.garbage"
        assert page.errors == []
        page.context.close()
    finally:
        server.stop()


def test_french_browser_gets_french_labels(chromium_browser, server: Server) -> None:
    page = new_page(chromium_browser, locale="fr-FR")
    page.goto(server.url + "/login")
    page.get_by_text("Connexion à WindFlow").wait_for()
    assert page.get_by_role("button", name="Se connecter").is_visible()
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("[data-testid=login-submit]")
    page.wait_for_url("**/deployments**")
    page.get_by_role("heading", name="Déploiements").wait_for()
    assert page.get_by_test_id("new-deployment").inner_text().strip() == "Nouveau déploiement"
    nav = page.get_by_role("navigation")
    for label in ("Déploiements", "Stacks", "Cibles", "Organisation", "Jetons d’API", "Système"):
        assert nav.get_by_text(label, exact=True).is_visible(), label
    assert page.evaluate("document.documentElement.lang") == "fr"
    page.context.close()
