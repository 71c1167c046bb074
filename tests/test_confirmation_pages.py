"""The confirmation link: scanners never confirm, the POST does once, expired and used links get
a clear localised 410 page with a way to a new mail; tokens are signed, bound and expiring."""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.outbox import OutboxServer
from worker.editions.localisation import translations
from worker.models import Consent, Subscriber
from worker.runtime import Runtime
from worker.settings import Settings
from worker.subscriptions.signups import confirmation_token
from worker.subscriptions.tokens import Purpose, TokenError, Tokens, unsubscribe_token
from worker.web.app import create_app

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def signed_up(rt: Runtime, address: str, language: str, n: int = 1) -> tuple[int, str]:
    """A pending subscriber (through the signup actor, run inline) and its confirmation path."""
    actors.handle_signup(
        {
            "version": 1,
            "event_id": f"page-{n}",
            "email": address,
            "language": language,
            "ip": "203.0.113.5",
            "user_agent": BROWSER,
            "source": "footer-form",
            "consent_version": "2026-01",
        }
    )
    with rt.session() as session:
        subscriber = session.scalars(
            select(Subscriber).where(Subscriber.email_key == address)
        ).one()
        return subscriber.id, f"/confirm/{confirmation_token(rt.tokens, subscriber)}"


def status_of(rt: Runtime, subscriber_id: int) -> str:
    with rt.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        return subscriber.status


def _(language: str, text: str) -> str:
    translated = translations(language).gettext(text)
    assert translated != text or language == "en"  # the catalogue has it
    return translated


@pytest.mark.parametrize("language", ["be", "ru", "en"])
def test_get_and_head_never_confirm_post_confirms_in_the_subscribers_language(
    rt: Runtime, language: str
) -> None:
    sid, path = signed_up(rt, f"reader.{language}@example.org", language)
    client = TestClient(create_app(rt))

    # A scanner GETs (several times) and HEADs the link: a page with a button, nothing changes
    for _n in range(3):
        page = client.get(path, headers={"User-Agent": "BingPreview/1.0b"})
        assert page.status_code == 200
        assert re.search(r'<form method="post" action="/confirm/[^"]+">', page.text)
        assert _(language, "Confirm your subscription") in page.text
        assert f'<html lang="{language}">' in page.text
        assert page.headers["cache-control"] == "no-store"
    assert client.head(path).status_code in (200, 405)
    assert status_of(rt, sid) == "pending"

    # The human presses the button: confirmed, with when and from where
    done = client.post(path, data={"confirm": "1"}, headers={"User-Agent": BROWSER})
    assert done.status_code == 200
    assert _(language, "Subscription confirmed") in done.text
    assert status_of(rt, sid) == "confirmed"
    with rt.session() as session:
        consent = session.scalars(select(Consent).where(Consent.subscriber_id == sid)).one()
        assert (consent.ip, consent.user_agent, consent.source, consent.consent_version) == (
            "203.0.113.0/24",  # the network and the family only (subscriptions/evidence.py)
            "Firefox",
            "footer-form",
            "2026-01",
        )
        assert consent.method == "double_opt_in" and consent.language == language
        # TestClient's peer "testclient" is no IP address: nothing is kept
        assert consent.confirmed_at is not None and consent.confirm_ip is None
        assert consent.confirm_user_agent == "Firefox"


@pytest.mark.parametrize("language", ["be", "ru"])
def test_a_used_link_shows_a_localised_410(rt: Runtime, language: str) -> None:
    _sid, path = signed_up(rt, "twice@example.org", language)
    client = TestClient(create_app(rt))
    assert client.post(path).status_code == 200

    for again in (client.post(path), client.get(path)):
        assert again.status_code == 410
        assert _(language, "This link has already been used") in again.text
        assert f'<html lang="{language}">' in again.text
        assert "/resend" not in again.text  # nothing to re-send for a confirmed subscriber


def test_forged_and_wrong_purpose_tokens_are_404(rt: Runtime) -> None:
    sid, path = signed_up(rt, "bound@example.org", "en")
    client = TestClient(create_app(rt))
    token = path.rsplit("/", 1)[1]

    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert client.get(f"/confirm/{tampered}").status_code == 404
    assert client.post(f"/confirm/{tampered}").status_code == 404
    # An unsubscribe token does not confirm, a confirmation token does not unsubscribe
    assert client.post(f"/confirm/{unsubscribe_token(rt.tokens, sid)}").status_code == 404
    assert client.get(f"/u/{token}").status_code == 404
    # A token signed with another key is forged
    other = Tokens("another-key").issue(Purpose.CONFIRM, sid, "nonce")
    assert client.post(f"/confirm/{other}").status_code == 404
    assert status_of(rt, sid) == "pending"


def test_tokens_are_bound_to_subscriber_and_purpose_and_expire() -> None:
    tokens = Tokens("k")
    token = tokens.issue(Purpose.CONFIRM, 41824, "n1")

    claims = tokens.check(Purpose.CONFIRM, token, 72 * 3600)
    assert (claims.subscriber_id, claims.nonce) == (41824, "n1")
    with pytest.raises(TokenError) as wrong_purpose:
        tokens.check(Purpose.UNSUBSCRIBE, token)
    assert wrong_purpose.value.code == "forged"
    time.sleep(1.1)
    with pytest.raises(TokenError) as expired:
        tokens.check(Purpose.CONFIRM, token, 0.5)
    assert expired.value.code == "expired"
    assert tokens.check(Purpose.CONFIRM, token, None).subscriber_id == 41824  # for the resend form


def plain_text(message: EmailMessage) -> str:
    """The text/plain body of ``message``; AssertionError when it has none."""
    body = message.get_body(("plain",))
    assert body is not None, "no text/plain part"
    text: str = body.get_content()
    return text


def confirm_paths(smtp: OutboxServer) -> list[str]:
    paths = []
    for received in smtp.handler.received:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        text = plain_text(message)
        paths += re.findall(r"http://testserver(/confirm/\S+)", text)
    return paths


@pytest.fixture
def short_rt(settings: Settings, stub_worker: StubWorker) -> Iterator[Runtime]:
    """Links that expire after one second and a five-second resend window."""
    rt = Runtime(
        replace(settings, confirmation_expiry_hours=1 / 3600, confirmation_resend_minutes=5 / 60)
    )
    actors.use_runtime(rt)
    yield rt
    actors.use_runtime(None)


def test_an_expired_link_offers_a_new_mail_which_is_rate_limited(
    short_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    rt = short_rt
    client = TestClient(create_app(rt))
    actors.handle_signup.send(
        {"version": 1, "event_id": "late-1", "email": "late@example.org", "language": "ru"}
    )
    stub_worker.join()
    [path] = confirm_paths(smtp)
    time.sleep(5.2)  # the link expired and the resend window is over

    # The old link: 410 in Russian, with a button that asks for a new mail; it confirms nothing
    page = client.get(path)
    assert page.status_code == 410
    assert _("ru", "This link has expired") in page.text
    assert _("ru", "Send me a new confirmation mail") in page.text
    assert f'action="{path}/resend"' in page.text
    assert client.post(path).status_code == 410

    # Pressing it sends one new mail whose link works; pressing again at once sends nothing
    first = client.post(f"{path}/resend")
    second = client.post(f"{path}/resend")
    stub_worker.join()
    assert first.status_code == second.status_code == 200
    assert first.text == second.text and _("ru", "Check your mailbox") in first.text
    paths = confirm_paths(smtp)
    assert len(paths) == 2 and paths[1] != path
    patient = TestClient(create_app(Runtime(replace(rt.settings, confirmation_expiry_hours=1))))
    assert patient.post(paths[1]).status_code == 200  # (here the new link expires in 1 s too)
    with rt.session() as session:
        assert session.scalars(select(Subscriber)).one().status == "confirmed"

    # A confirmed subscriber's old link offers nothing to re-send, and re-sending sends nothing
    assert client.post(f"{path}/resend").status_code == 200
    stub_worker.join()
    assert len(smtp.handler.received) == 2


def test_welcome_mail_after_confirmation_when_enabled(
    settings: Settings, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    rt = Runtime(replace(settings, welcome_mail=True))
    actors.use_runtime(rt)
    client = TestClient(create_app(rt))
    actors.handle_signup.send(
        {"version": 1, "event_id": "w-1", "email": "new@example.org", "language": "be"}
    )
    stub_worker.join()
    [path] = confirm_paths(smtp)

    assert client.post(path).status_code == 200
    stub_worker.join()

    welcome = email.message_from_bytes(smtp.handler.received[1].data, policy=email.policy.default)
    assert smtp.handler.received[1].recipients == ["new@example.org"]
    assert welcome["List-Unsubscribe"].startswith("<http://testserver/u/")
    text = plain_text(welcome)
    assert _("be", "Your subscription is confirmed.") in text
    assert "http://testserver/u/" in text
