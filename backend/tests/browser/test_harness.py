"""The browser harness itself: a load Chromium aborted because the host's network changed is loaded again (a
navigation, or the whole login when its page was dropped), any other failure is the test's (pure logic: stand-in
pages)."""

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


class StandInWatch:
    network_changed = 0


class LoginPage:
    """A login page whose first load Chromium drops (``dropped`` loads fail with ERR_NETWORK_CHANGED)."""

    def __init__(self, dropped: int, url: str = "http://x/login") -> None:
        self.dropped = dropped
        self.url = url
        self.errors: list[str] = []
        self.watch = StandInWatch()
        self.loads = 0
        self.submitted = 0

    def goto(self, url: str, **_kwargs) -> None:
        self.loads += 1

    def wait_for_selector(self, selector: str, timeout: float = 0) -> None:
        if self.dropped:
            self.dropped -= 1
            self.watch.network_changed += 1
            raise TimeoutError(selector)

    def fill(self, *_args) -> None:
        pass

    def click(self, *_args) -> None:
        self.submitted += 1

    def wait_for_url(self, *_args, **_kwargs) -> None:
        pass

    def get_by_test_id(self, _id: str):
        return self

    def wait_for(self, **_kwargs) -> None:
        pass

    def screenshot(self, **_kwargs) -> None:
        raise RuntimeError("Unable to capture screenshot")  # Chromium's error page: the harness goes on


def test_a_login_page_dropped_by_a_network_change_is_loaded_again_once() -> None:
    from backend.tests.browser.conftest import ui_login

    page = LoginPage(dropped=1)
    ui_login(page, server=type("S", (), {"url": "http://x"})())
    assert (page.loads, page.submitted) == (2, 1)
    page = LoginPage(dropped=2)  # dropped again: the test's failure
    with pytest.raises(AssertionError, match="no login form"):
        ui_login(page, server=type("S", (), {"url": "http://x"})())
    assert page.loads == 2


def test_a_login_page_that_fails_otherwise_is_not_loaded_again() -> None:
    from backend.tests.browser.conftest import ui_login

    page = LoginPage(dropped=1)
    page.watch.network_changed = 0

    def never(selector: str, timeout: float = 0) -> None:
        raise TimeoutError(selector)  # no load dropped: the UI itself is broken

    page.wait_for_selector = never  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="no login form"):
        ui_login(page, server=type("S", (), {"url": "http://x"})())
    assert page.loads == 1
