"""The Notifications page in French says why a delivery failed in French (issue 19): a webhook channel at a
local port nothing listens on, "Send test" sent by the server's real sender, and the delivery log's error
worded from the code the API gives (``last_error_code``), the exception's name quoted, no English left."""

from __future__ import annotations

import socket
import time
import uuid

from backend.tests.browser.conftest import Server, new_page, page_errors, screenshot, ui_login


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_delivery_reads_in_french(chromium_browser, server: Server, admin_token, org_id) -> None:
    name = f"down-{uuid.uuid4().hex[:6]}"
    channel = server.api(
        "POST",
        "/notification-channels",
        {
            "organization_id": org_id,
            "name": name,
            "kind": "webhook",
            "url": f"http://127.0.0.1:{_closed_port()}/hook",
            "events": ["deployment.failed"],
        },
        token=admin_token,
    )
    server.api("POST", f"/notification-channels/{channel['id']}/test", token=admin_token)
    deadline = time.monotonic() + 30
    while True:
        (item,) = server.api("GET", f"/notification-channels/{channel['id']}/deliveries", token=admin_token)["items"]
        if item["last_error"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert item["last_error"] == "ClientConnectorError: could not reach the receiver", item
    assert (item["last_error_code"], item["last_error_params"]) == ("unreachable", {"error": "ClientConnectorError"})

    for width in (1280, 390):
        french = new_page(chromium_browser, locale="fr-FR", width=width)
        try:
            ui_login(french, server)
            french.goto(f"{server.url}/notifications")
            french.locator(f"[data-testid=channel-row][data-name='{name}']").get_by_test_id("channel-log").click()
            row = french.locator("[data-testid=delivery-row]").first
            row.wait_for()
            said = row.inner_text()
            assert "destinataire injoignable (« ClientConnectorError »)" in said, said
            assert "could not reach" not in said
            if width == 1280:  # the column is cut with an ellipsis: its tooltip shows the whole sentence
                row.locator("td").last.hover()
                french.locator(".n-popover", has_text="destinataire injoignable").wait_for()
            else:  # a phone: the log is full-screen, a card per delivery, its error written out whole
                french.wait_for_function(  # once it has slid in, the drawer is the screen, no wider
                    "() => { const r = document.querySelector('.n-drawer').getBoundingClientRect();"
                    " return Math.abs(r.left) < 1 && r.right <= window.innerWidth + 1 }",
                    timeout=5000,
                )
                assert french.get_by_text(f"Envois de {name}").is_visible()
                error = row.get_by_test_id("delivery-error")
                assert error.evaluate("e => e.scrollWidth <= e.clientWidth"), "the error is cut"
                assert french.evaluate("document.documentElement.scrollWidth") <= width
            screenshot(french, f"notifications-log-error-fr-{width}")
            assert page_errors(french) == []
        finally:
            french.context.close()
