"""The desk's login in headless Chromium: at 375 px wide, with the keyboard alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser_kit import served_app
from tests.desk_kit import add_user
from tests.test_readers_pages_browser import Page
from worker.devtools.chromium import HeadlessChromium
from worker.runtime import Runtime


@pytest.fixture
def base(rt: Runtime, request: pytest.FixtureRequest) -> Iterator[str]:
    """The app on a free loopback port (one database is enough for a browser journey)."""
    yield from served_app(rt, request)


def test_an_editor_logs_in_with_the_keyboard_at_375_px(rt: Runtime, base: str) -> None:
    add_user(rt, "ales", "correct horse battery", "editor")
    with HeadlessChromium(offline=False) as browser:
        page = Page(browser)
        # An unknown visitor asking for the log is sent to the login page, in Belarusian
        page.open(f"{base}/desk/log?lang=be")
        assert page.js("location.pathname") == "/desk/login"
        assert "Увайсці" in page.text()
        assert page.js("document.documentElement.scrollWidth") <= 375
        assert page.js(
            "[...document.querySelectorAll('input:not([type=hidden]),select')]"
            ".every(e => e.labels.length === 1)"
        )
        assert page.js("document.scripts.length") == 0
        # The name field has the focus; type, Tab, type the password, Enter
        assert page.js("document.activeElement.id") == "name"
        page.type("ales")
        page.key("Tab", "Tab", 9)
        assert page.js("document.activeElement.id") == "password"
        page.type("correct horse battery")
        page.key("Enter", "Enter", 13, "\r")
        browser.wait_for("Page.loadEventFired")
        # …and lands on the page first asked for, logged in, still 375 px wide
        assert page.js("location.pathname") == "/desk/log"
        assert "ales (рэдактар)" in page.text()
        assert "Журнал дзеянняў" in page.text()
        assert page.js("document.documentElement.scrollWidth") <= 375
        assert page.js("document.cookie") == ""  # HttpOnly: no script reads the session
        # Home: every link and button is reachable with Tab
        page.open(f"{base}/desk/")
        focusable = page.js(
            "[...document.querySelectorAll('a[href],button')].every(e => e.tabIndex >= 0)"
        )
        assert focusable and "Новы выпуск" in page.text()
