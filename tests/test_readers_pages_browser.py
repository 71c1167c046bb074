"""Readers' pages driven in headless Chromium against the app served by uvicorn: the hosted
signup page filled with the keyboard at 375 px, the confirmation mail followed; the preferences
link of a real edition mail, a language change that the next mail uses, an unsubscribe and a
resubscribe through the confirmation mail."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.browser_kit import served_app
from tests.message_parts import body_text
from tests.samples import SAMPLE_EDITION
from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.chromium import HeadlessChromium
from worker.devtools.outbox import OutboxServer
from worker.editions.files import read_edition
from worker.editions.store import save_edition
from worker.models import Consent, Subscriber
from worker.runtime import Runtime
from worker.sending.sends import create_send

PUBLISHER = "Example Media Foundation, 1 Example Street, 01001 Vilnius, Lithuania"


@pytest.fixture
def base(rt: Runtime, request: pytest.FixtureRequest) -> Iterator[str]:
    """The app on a free loopback port (one database is enough for a browser journey)."""
    yield from served_app(rt, request)


class Page:
    """One Chromium tab: open, read, type, press keys, click."""

    def __init__(self, browser: HeadlessChromium) -> None:
        self.browser = browser

    def open(self, url: str, width: int = 375) -> None:
        self.browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": True},
            session=True,
        )
        self.browser.call("Page.navigate", {"url": url}, session=True)
        self.browser.wait_for("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        reply = self.browser.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True
        )
        return reply["result"].get("value")

    def text(self) -> str:
        return str(self.js("document.body.innerText"))

    def key(self, key: str, code: str, keycode: int, text: str = "") -> None:
        for kind in ("keyDown", "keyUp"):
            params: dict[str, Any] = {
                "type": kind,
                "key": key,
                "code": code,
                "windowsVirtualKeyCode": keycode,
            }
            if text and kind == "keyDown":
                params["text"] = text
            self.browser.call("Input.dispatchKeyEvent", params, session=True)

    def type(self, text: str) -> None:
        self.browser.call("Input.insertText", {"text": text}, session=True)

    def submit_with(self, action: str) -> None:
        """Press the submit button of the form whose ``action`` field is ``action`` and wait
        for the next page."""
        self.js(
            f"document.querySelector('input[name=action][value={action}]')"
            ".form.querySelector('button').click()"
        )
        self.browser.wait_for("Page.loadEventFired")


def mails_to(smtp: OutboxServer, address: str) -> list[email.message.EmailMessage]:
    found = []
    for received in smtp.handler.received:
        if received.recipients == [address]:
            message = email.message_from_bytes(received.data, policy=email.policy.default)
            assert isinstance(message, email.message.EmailMessage)
            found.append(message)
    return found


def confirm_link(message: email.message.EmailMessage, base: str) -> str:
    match = re.search(r"http://testserver(/confirm/\S+)", body_text(message, "plain"))
    assert match, "no confirmation link"
    return base + match.group(1)


def test_signup_page_by_keyboard_at_375_px_then_the_confirmation_mail(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker, base: str
) -> None:
    with HeadlessChromium(offline=False) as browser:
        page = Page(browser)
        page.open(f"{base}/subscribe?lang=be")
        # Accessible: fits 375 px, every field has a label, no script, nothing from elsewhere
        assert page.js("document.documentElement.scrollWidth") <= 375
        assert page.js(
            "[...document.querySelectorAll('input:not([type=hidden]),select')]"
            ".every(e => e.labels.length === 1)"
        )
        assert page.js("document.scripts.length") == 0
        assert (
            page.js(
                "performance.getEntriesByType('resource').filter(r => !r.name.startsWith("
                f"'{base}')).length"
            )
            == 0
        )
        assert "Падпіска на" in page.text()

        # The reader types the address, tabs to the consent box, ticks it with Space, tabs to
        # the button and presses Enter
        page.js("document.getElementById('email').focus()")
        page.type("lesia@example.org")
        page.key("Tab", "Tab", 9)
        assert page.js("document.activeElement.id") == "consent"
        page.key(" ", "Space", 32, " ")
        assert page.js("document.getElementById('consent').checked") is True
        page.key("Tab", "Tab", 9)
        assert page.js("document.activeElement.type") == "submit"
        page.key("Enter", "Enter", 13, "\r")
        browser.wait_for("Page.loadEventFired")
        assert "Праверце паштовую скрыню" in page.text()

        stub_worker.join()
        [mail] = mails_to(smtp, "lesia@example.org")
        assert mail["Content-Language"] == "be"
        page.open(confirm_link(mail, base))
        page.js("document.querySelector('form button').click()")
        browser.wait_for("Page.loadEventFired")

    with rt.session() as session:
        reader = session.scalars(
            select(Subscriber).where(Subscriber.email_key == "lesia@example.org")
        ).one()
        assert (reader.status, reader.language) == ("confirmed", "be")
        consent = session.scalars(select(Consent).where(Consent.subscriber_id == reader.id)).one()
        assert consent.ip == "127.0.0.0/24" and consent.confirm_ip == "127.0.0.0/24"
        assert consent.user_agent == consent.confirm_user_agent == "HeadlessChrome"
        assert (consent.consent_version or "").startswith("page-be-")
        assert consent.confirmed_at is not None


def sent_edition_mail(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker, address: str, base: str
) -> email.message.EmailMessage:
    """A confirmed English reader and the sample edition sent to them; their copy."""
    actors.handle_signup({"version": 1, "event_id": "b1", "email": address, "language": "en"})
    stub_worker.join()
    [confirmation] = mails_to(smtp, address)
    assert httpx.post(confirm_link(confirmation, base)).status_code == 200
    with rt.session() as session:
        edition = save_edition(session, read_edition(SAMPLE_EDITION), rt.clock.now())
        send_id = create_send(session, edition, rt.clock.now(), 10).id
    stub_worker.join()
    smtp.handler.received.clear()
    actors.plan_send.send(send_id)
    stub_worker.join()
    [mail] = mails_to(smtp, address)
    return mail


def test_preferences_from_the_mail_change_language_unsubscribe_and_resubscribe(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker, base: str
) -> None:
    mail = sent_edition_mail(rt, smtp, stub_worker, "anton@example.org", base)
    # The footer carries the reader's own preferences link (HTML and text) and the publisher line
    text, html = body_text(mail, "plain"), body_text(mail, "html")
    link = re.search(r"Preferences \(language, unsubscribe\): http://testserver(/p/\S+)", text)
    assert link is not None
    assert f'href="http://testserver{link.group(1)}"' in html
    assert PUBLISHER in " ".join(text.split()) and PUBLISHER in html

    with HeadlessChromium(offline=False) as browser:
        page = Page(browser)
        page.open(base + link.group(1))
        assert page.js("document.documentElement.scrollWidth") <= 375
        assert "You are subscribed." in page.text()
        # The reader picks Russian
        page.js("document.getElementById('language').value = 'ru'")
        page.submit_with("language")
        assert "Сохранено: следующие письма придут на этом языке." in page.text()
        assert page.js("document.documentElement.lang") == "ru"
        # ... leaves ...
        page.submit_with("unsubscribe")
        assert "Вы отписались" in page.text()
        # ... and, having left by mistake, comes back
        smtp.handler.received.clear()
        page.submit_with("resubscribe")
        assert "Мы отправили вам письмо" in page.text()
        stub_worker.join()
        [confirmation] = mails_to(smtp, "anton@example.org")
        # The next mail uses the language chosen on the page
        assert confirmation["Content-Language"] == "ru"
        assert "Подтвердите" in str(confirmation["Subject"])
        page.open(confirm_link(confirmation, base))
        page.js("document.querySelector('form button').click()")
        browser.wait_for("Page.loadEventFired")

    with rt.session() as session:
        reader = session.scalars(select(Subscriber)).one()
        assert (reader.status, reader.language) == ("confirmed", "ru")
        sources = [c.source for c in session.scalars(select(Consent).order_by(Consent.id))]
        assert sources == [None, "preferences"]
