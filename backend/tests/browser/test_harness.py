"""The browser harness itself: a load Chromium aborted because the host's network changed is loaded again,
any other failure is the test's (pure logic: a stand-in page)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Error as PlaywrightError

from backend.tests.browser.conftest import NAVIGATION_ATTEMPTS, _retry_network_changes


class StandInPage:
    def __init__(self, failures: list[str]) -> None:
        self.failures = failures
        self.loads: list[str] = []
        self.waited: list[float] = []

    def goto(self, url: str, **_kwargs):
        self.loads.append(url)
        if self.failures:
            raise PlaywrightError(f"Page.goto: {self.failures.pop(0)} at {url}")
        return "response"

    def reload(self, **_kwargs):
        return self.goto("(reload)")

    def wait_for_timeout(self, ms: float) -> None:
        self.waited.append(ms)


def test_a_load_aborted_by_a_network_change_is_loaded_again() -> None:
    page = StandInPage(["net::ERR_NETWORK_CHANGED", "net::ERR_NETWORK_CHANGED"])
    _retry_network_changes(page)
    assert page.goto("http://x/a") == "response"
    assert page.loads == ["http://x/a"] * 3 and len(page.waited) == 2
    page.failures = ["net::ERR_NETWORK_CHANGED"]
    assert page.reload() == "response" and page.loads[-2:] == ["(reload)", "(reload)"]


def test_other_failures_and_a_network_that_keeps_changing_are_the_tests() -> None:
    page = StandInPage(["net::ERR_CONNECTION_REFUSED"])
    _retry_network_changes(page)
    with pytest.raises(PlaywrightError, match="CONNECTION_REFUSED"):
        page.goto("http://x/a")
    assert page.loads == ["http://x/a"]  # never retried
    page = StandInPage(["net::ERR_NETWORK_CHANGED"] * NAVIGATION_ATTEMPTS)
    _retry_network_changes(page)
    with pytest.raises(PlaywrightError, match="NETWORK_CHANGED"):
        page.goto("http://x/b")
    assert len(page.loads) == NAVIGATION_ATTEMPTS
