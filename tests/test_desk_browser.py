"""The desk's done-when, driven in headless Chromium (the project's DevTools driver) against the
app served by uvicorn on PostgreSQL: an editor logs in, starts the week's edition from the
website's feeds (three languages, served by a local HTTP server), fixes the errors the desk
reports, previews, sends a test to their own address, schedules the send and confirms; the
scheduler then starts it and the workers send it. The outbox holds exactly one copy per confirmed
reader, in the reader's language, and the three proofs.

Every screen is photographed at desktop (1280 px) and phone (375 px) width into
``docs/images/desk-*.png`` when ``DESK_SCREENSHOTS`` names a folder (``docs/images`` to refresh
the documentation's pictures).
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from PIL import Image
from sqlalchemy import select, update

from tests.browser_kit import served_app
from tests.desk_kit import add_user
from tests.feed_server import feed_server
from tests.samples import SAMPLE_EDITION
from tests.sendkit import seed
from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.chromium import HeadlessChromium
from worker.devtools.outbox import OutboxServer
from worker.editions.files import read_newsletter_profile
from worker.editions.store import save_newsletter
from worker.models import Send
from worker.runtime import Runtime
from worker.states import SendStatus

KEY = "2026-W49"
PASSWORD = "correct horse battery"
EDITOR = "ales@example.org"
READERS = {
    "be": [f"be{n}@example.org" for n in range(4)],
    "ru": [f"ru{n}@example.org" for n in range(3)],
    "en": [f"en{n}@example.org" for n in range(2)],
}


@pytest.fixture
def base(rt: Runtime, request: pytest.FixtureRequest) -> Iterator[str]:
    """The app on a free loopback port (one database is enough for a browser journey)."""
    yield from served_app(rt, request)


class Tab:
    """One Chromium tab: open a page, run an expression, wait for the next page, photograph."""

    def __init__(self, browser: HeadlessChromium, shots: Path | None) -> None:
        self.browser = browser
        self.shots = shots

    def size(self, width: int, height: int = 900) -> None:
        self.browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
            session=True,
        )

    def open(self, url: str, width: int = 1280) -> None:
        self.size(width)
        self.browser.call("Page.navigate", {"url": url}, session=True)
        self.browser.wait_for("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        reply = self.browser.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        return reply["result"].get("value")

    def text(self) -> str:
        return str(self.js("document.body.innerText"))

    def then_load(self, expression: str) -> None:
        """Run ``expression`` (a click) and wait for the page it loads."""
        self.js(expression)
        self.browser.wait_for("Page.loadEventFired")

    def press_enter_in(self, selector: str) -> None:
        """Focus ``selector`` and press Enter, as a keyboard user submits a form."""
        self.js(f"document.querySelector({selector!r}).focus()")
        for kind in ("keyDown", "keyUp"):
            params: dict[str, Any] = {
                "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13,
            }  # fmt: skip
            if kind == "keyDown":
                params["text"] = "\r"
            self.browser.call("Input.dispatchKeyEvent", params, session=True)
        self.browser.wait_for("Page.loadEventFired")

    def shoot(self, name: str) -> None:
        """Photograph the page as it is at 1280 and 375 px (``desk-<name>[-phone].png``); at
        375 px nothing may be wider than the screen, except inside a scroll box."""
        for width, suffix in ((1280, ""), (375, "-phone")):
            self.size(width, 1)
            if width == 375:
                assert self.js("document.documentElement.scrollWidth") <= 375, name
            if self.shots is None:
                continue
            metrics = self.browser.call("Page.getLayoutMetrics", session=True)
            height = min(math.ceil(metrics["cssContentSize"]["height"]), 16384)
            self.size(width, height)
            time.sleep(0.3)  # frames (the preview) lay out again at the new size
            shot = self.browser.call("Page.captureScreenshot", {"format": "png"}, session=True)
            # 128 colours: a third of the bytes, no visible change for pages of text
            image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
            image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
                self.shots / f"desk-{name}{suffix}.png", optimize=True
            )
        self.size(1280)


def copies(smtp: OutboxServer) -> list[tuple[str, str]]:
    """(recipient, Content-Language) of every message the relay took, in arrival order."""
    out = []
    for received in smtp.handler.received:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        [recipient] = received.recipients
        out.append((recipient, str(message["Content-Language"])))
    return out


def test_an_editor_starts_from_the_feeds_fixes_previews_tests_schedules_and_it_goes_out_once(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker, base: str
) -> None:
    # Given readers in three languages (and some who must get nothing), the website's feeds in
    # three languages on a local HTTP server named in newsletter.yaml (Minsk time), and an
    # editor with their own address
    for language, addresses in READERS.items():
        seed(rt, addresses, language=language)
    seed(rt, ["pending@example.org"], language="be", status="pending")
    seed(rt, ["gone@example.org"], language="ru", status="unsubscribed")
    add_user(rt, "ales", PASSWORD, "editor", EDITOR)
    shots_dir = os.environ.get("DESK_SCREENSHOTS")
    shots = Path(shots_dir) if shots_dir else None
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)

    with feed_server() as site, HeadlessChromium(offline=False) as browser:
        with rt.session() as session:
            profile = replace(
                read_newsletter_profile(SAMPLE_EDITION / "newsletter.yaml"),
                timezone="Europe/Minsk",
                feeds={"en": f"{site}/feed.json", "be": f"{site}/be/feed/atom/",
                       "ru": f"{site}/ru/feed/"},
            )  # fmt: skip
            save_newsletter(session, profile, rt.clock.now())
        tab = Tab(browser, shots)
        # When the editor logs in with the keyboard
        tab.open(f"{base}/desk/editions/new", width=375)
        assert "/desk/login" in tab.js("location.href")
        tab.shoot("login")
        tab.js("document.getElementById('name').value = 'ales'")
        tab.js(f"document.getElementById('password').value = {PASSWORD!r}")
        tab.press_enter_in("#password")
        # and starts the week's edition from the feeds
        assert tab.js("location.pathname") == "/desk/editions/new"
        tab.shoot("start")
        tab.js(f"document.getElementById('feeds-key').value = '{KEY}'")
        tab.js("document.getElementById('feeds-start').value = '2026-11-30'")
        tab.js("document.getElementById('feeds-end').value = '2026-12-06'")
        tab.press_enter_in("#feeds-key")
        # Then they land on the edition, which says what is wrong and where: a photo without
        # its description in Belarusian, and an article the Russian feed alone has
        assert tab.js("location.pathname") == f"/desk/editions/{KEY}"
        assert "5 problems: the edition is saved but cannot be sent" in tab.text()
        # worded as the screen names things, not as files
        assert (
            "Russian has 3 articles, English 2 — mark the extra one as not in English, or add it"
            in tab.text()
        )
        assert "differs from" not in tab.text()
        alt = "f-be-items-1-image-alt"
        assert tab.js(f"document.getElementById('{alt}').getAttribute('aria-invalid')") == "true"
        assert tab.js(f"document.getElementById('{alt}-error-1').textContent") == (
            "image without alt text"
        )
        assert tab.js("document.querySelectorAll('.cell.missing').length") == 2  # en, be
        assert tab.js(
            "[...document.querySelectorAll('input:not([type=hidden]),textarea,select')]"
            ".every(e => e.labels.length === 1)"
        )
        tab.shoot("edition-problem")
        # When they describe the photo and press Enter in the field (the first button is Save)
        tab.js(f"document.getElementById('{alt}').value = 'Вайскоўцы на памежным пасту'")
        tab.press_enter_in(f"#{alt}")
        assert "4 problems" in tab.text() and "image without alt text" not in tab.text()
        # and keep the Russian-only article for Russian readers: tick "Not in English" and
        # "Not in Belarusian" (labelled checkboxes), then Enter in a field saves
        for language in ("en", "be"):
            tab.js(f"document.getElementById('f-{language}-items-2-absent').click()")
        tab.press_enter_in("#f-en-subject")
        assert "Saved. No problems: the edition can be sent." in tab.text()
        assert tab.js("document.querySelectorAll('.cell.absent').length") == 2
        tab.shoot("edition")
        # The preview: each language in frames at desktop and phone width, size, text part
        tab.open(f"{base}/desk/editions/{KEY}/preview")
        assert tab.js("document.querySelectorAll('iframe').length") == 6
        # sandboxed without same-origin: the desk's script cannot reach into a frame
        assert tab.js("document.querySelector('iframe').contentDocument") is None
        framed = tab.js("[...document.querySelectorAll('iframe')].map(f => f.src.split('/').pop())")
        assert sorted(framed) == ["be.html", "be.html", "en.html", "en.html", "ru.html", "ru.html"]
        assert "of the 102 KB at which Gmail clips" in tab.text()
        tab.shoot("preview")
        # A test to their own address, in every language
        tab.open(f"{base}/desk/editions/{KEY}/test")
        assert EDITOR in tab.text()
        tab.then_load("document.querySelector('form[action$=\"/test\"] button').click()")
        assert tab.text().count(": 250") == 3
        tab.shoot("test")
        # Schedule: tomorrow 09:00 in Minsk, the newsletter's time zone
        tab.open(f"{base}/desk/editions/{KEY}/send")
        assert "9 readers: 4 be, 3 ru, 2 en," in tab.text()
        assert tab.js("document.getElementById('when-later').checked") is True
        assert tab.js("document.getElementById('when-now').checked") is False
        assert "Weekly slot: off." in tab.text()
        tab.shoot("send")
        minsk = ZoneInfo("Europe/Minsk")
        day = (rt.clock.now().astimezone(minsk) + timedelta(days=1)).date()
        tab.js("document.getElementById('when-later').checked = true")
        tab.js(f"document.getElementById('date').value = '{day}'")
        tab.js("document.getElementById('time').value = '09:00'")
        tab.then_load("document.querySelector('input[name=step][value=review]').form.submit()")
        sentence = tab.js("document.getElementById('plan').textContent")
        weekday = f"{datetime(day.year, day.month, day.day):%A} {day.day} {day:%B}"
        assert sentence == f"9 readers: 4 be, 3 ru, 2 en, {weekday} 09:00 Minsk time (06:00 UTC)"
        tab.shoot("send-confirm")
        tab.then_load("document.querySelector('input[name=step][value=confirm]').form.submit()")
        assert tab.js("location.pathname").startswith("/desk/sends/")
        assert "scheduled" in tab.text()
        assert tab.js("document.getElementById('scheduled').textContent") == (
            f"Scheduled: {weekday} 09:00 Minsk time (06:00 UTC)"
        )
        assert "9 readers would receive it now; the list is taken when the send starts." in (
            tab.text()
        )
        tab.shoot("progress-scheduled")

        # When the time comes, the scheduler starts it and the workers send it
        with rt.session() as session:
            [send] = session.scalars(select(Send)).all()
            assert send.scheduled_for == datetime(day.year, day.month, day.day, 9, tzinfo=minsk)
            session.execute(
                update(Send).values(scheduled_for=rt.clock.now() - timedelta(seconds=1))
            )
        actors.start_scheduled(rt)
        stub_worker.join()
        with rt.session() as session:
            assert session.get(Send, send.id).status == SendStatus.FINISHED  # type: ignore[union-attr]
        tab.open(f"{base}/desk/sends/{send.id}")
        assert "finished" in tab.text() and "9 of 9 done" in tab.text()
        tab.shoot("progress")
        tab.open(f"{base}/desk/sends")
        tab.shoot("sends")
        tab.open(f"{base}/desk/")
        assert KEY in tab.text()
        tab.shoot("home")
        # Every step is in the action log, under the editor's name
        tab.open(f"{base}/desk/log")
        logged = tab.text()
        for action in ("login", "edition.start", "edition.save", "edition.test", "send.schedule"):
            assert action in logged, action
        tab.shoot("log")

    # Then the outbox holds the three proofs, then exactly one copy per confirmed reader, each
    # in the reader's language; the pending and the unsubscribed reader got nothing
    got = copies(smtp)
    assert got[:3] == [(EDITOR, "en"), (EDITOR, "be"), (EDITOR, "ru")]
    readers = sorted(got[3:])
    wanted = sorted((a, lang) for lang, addresses in READERS.items() for a in addresses)
    assert readers == wanted
