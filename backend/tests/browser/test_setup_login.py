"""First-run setup, log out, log in again, French labels for a French browser (the server's own fixed words
too), and changing one's password."""

from __future__ import annotations

import re
import uuid

from backend.tests.browser.conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Server,
    navigate,
    new_page,
    page_errors,
    screenshot,
    start_server,
    ui_login,
)


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
    # The hamburger's label is French too.
    assert page.get_by_test_id("nav-toggle").get_attribute("aria-label") in ("Ouvrir la navigation", "Fermer la navigation")

    # A 422 of the server (a name over 100 characters, checked only by the API) reads in French beside its field.
    page.goto(server.url + "/tokens")
    page.get_by_test_id("token-new").click()
    page.fill("input[name=token-name]", "x" * 101)
    page.get_by_test_id("token-create").click()
    field = page.get_by_test_id("field-token-name")
    field.get_by_text("Au plus 100 caractères").wait_for()
    assert "String should have" not in field.inner_text()
    page.wait_for_timeout(400)  # the message fades in
    screenshot(page, "token-422-fr-light")
    page.keyboard.press("Escape")
    page.get_by_test_id("token-create").wait_for(state="hidden")

    # A server refusal with a code reads in French as well: a wrong password on the login page.
    page.get_by_test_id("user-menu").click()
    page.get_by_text("Se déconnecter").click()
    page.wait_for_url("**/login")
    page.fill("input[name=email]", ADMIN_EMAIL)
    page.fill("input[name=password]", "not-the-password")
    page.click("[data-testid=login-submit]")
    page.get_by_test_id("form-error").get_by_text("E-mail ou mot de passe incorrect").wait_for()
    assert page_errors(page) == [], page.errors
    page.context.close()


#: The runner's steps as a French page says them (i18n/fr.ts, steps).
FRENCH_STEPS = (
    "Vérification de la configuration",
    "Préparation du répertoire du projet",
    "Vérification des images",
    "Création des réseaux et volumes",
    "Démarrage des services",
    "Attente des services en marche et sains",
)


def test_french_pages_word_the_servers_fixed_words(
    realtime, chromium_browser, server: Server, admin_token, org_id, local_target, demo_stack, cleanup_deployments
) -> None:
    """What the server says in English with a fixed vocabulary reads in French: a connection test's failure (by
    its category) and a deployment's current step (by its title)."""
    name = f"nowhere-{uuid.uuid4().hex[:6]}"
    target = server.api("POST", "/targets", {"name": name, "endpoint": "tcp://127.0.0.1:1", "organization_id": org_id}, token=admin_token)
    try:
        page = new_page(chromium_browser, locale="fr-FR")
        ui_login(page, server)
        navigate(page, "/targets")
        found = page.locator(f"[data-testid=target-row][data-name='{name}']")
        found.get_by_test_id("test-target").click()
        result = found.get_by_test_id("test-result")
        result.wait_for()
        assert result.inner_text().startswith("Échec de la connexion : aucun moteur Docker n’a répondu"), result.inner_text()
        assert "could be reached" not in result.inner_text()

        deployment = server.api(
            "POST",
            "/deployments",
            {"stack_id": demo_stack["id"], "target_id": local_target["id"], "name": "steps-fr", "variables": {"delay": 6}},
            token=admin_token,
        )
        cleanup_deployments.append(deployment["id"])
        navigate(page, f"/deployments?logs={deployment['id']}")
        step = page.get_by_test_id("log-step")
        step.wait_for(timeout=30_000)
        assert step.inner_text() in FRENCH_STEPS, step.inner_text()
        screenshot(page, "logs-drawer-step-fr-light")
        assert page_errors(page) == [], page.errors
        page.context.close()
    finally:
        server.api("DELETE", f"/targets/{target['id']}", token=admin_token)


def test_change_own_password_from_the_user_menu_then_log_in_with_it(chromium_browser, server: Server, admin_token, org_id) -> None:
    email = f"member-{uuid.uuid4().hex[:8]}@example.com"
    old, new = "old-password-1", "new-password-2"
    user = server.api("POST", "/users", {"email": email, "password": old}, token=admin_token)
    server.api("POST", f"/organizations/{org_id}/members", {"user_id": user["id"], "role": "viewer"}, token=admin_token)
    page = new_page(chromium_browser)
    ui_login(page, server, email, old)
    page.get_by_test_id("user-menu").click()
    page.get_by_text("Change password").click()
    page.wait_for_url("**/profile#password")
    page.get_by_test_id("password-card").wait_for()

    # Checked in the page first: each problem beside its field.
    page.fill("input[name=current_password]", old)
    page.fill("input[name=new_password]", "short")
    page.fill("input[name=confirm_password]", "other")
    page.get_by_test_id("password-submit").click()
    assert "At least 8 characters" in page.get_by_test_id("field-new-password").inner_text()
    assert "The passwords differ" in page.get_by_test_id("field-confirm-password").inner_text()
    # The API's refusal of a wrong current password, beside that field.
    page.fill("input[name=current_password]", "not-my-password")
    page.fill("input[name=new_password]", new)
    page.fill("input[name=confirm_password]", new)
    page.get_by_test_id("password-submit").click()
    page.get_by_test_id("field-current-password").get_by_text("the current password is incorrect").wait_for()
    page.wait_for_timeout(500)  # the replaced messages fade out
    screenshot(page, "profile-password-error-en-light")

    page.fill("input[name=current_password]", old)
    page.get_by_test_id("password-submit").click()
    page.get_by_text("Password changed").wait_for()
    assert page.locator("input[name=current_password]").input_value() == ""
    # This session goes on with the new token pair.
    page.goto(server.url + "/deployments")
    page.get_by_role("heading", name="Deployments").wait_for()

    page.get_by_test_id("user-menu").click()
    page.get_by_text("Log out").click()
    page.wait_for_url("**/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", old)
    page.click("[data-testid=login-submit]")
    page.get_by_test_id("form-error").wait_for()  # the old password no longer works
    page.fill("input[name=password]", new)
    page.click("[data-testid=login-submit]")
    page.wait_for_url("**/deployments")
    assert page.get_by_test_id("user-menu").inner_text().strip() == email
    assert page.errors == [], page.errors
    page.context.close()
