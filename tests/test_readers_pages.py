"""Readers' own pages over HTTP: the preferences page (GET changes nothing, POST needs a form
token bound to the link, every refusal is a clear 4xx page), the hosted signup page (same
validation and refusal codes as /signup), and the footer every mail carries (preferences link,
publisher line). The browser-driven journeys are in tests/test_readers_pages_browser.py."""

from __future__ import annotations

import email
import email.policy
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select

from tests.message_parts import body_text
from tests.samples import SAMPLE_EDITION
from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.outbox import OutboxServer
from worker.editions.files import read_edition
from worker.editions.localisation import translations
from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
from worker.editions.rendering import render_edition
from worker.models import SignupRefusal, Subscriber
from worker.runtime import Runtime
from worker.subscriptions.signups import confirmation_token
from worker.subscriptions.tokens import Purpose, preferences_token, unsubscribe_token
from worker.web.app import create_app

SOURCE = read_edition(SAMPLE_EDITION)
PUBLISHER = "Example Media Foundation, 1 Example Street, 01001 Vilnius, Lithuania"


def _(language: str, text: str) -> str:
    translated = translations(language).gettext(text)
    assert translated != text or language == "en"
    return translated


def confirmed_reader(rt: Runtime, client: TestClient, address: str, language: str) -> int:
    """A reader who signed up (actor run inline) and pressed the confirmation button."""
    actors.handle_signup(
        {"version": 1, "event_id": f"e-{address}", "email": address, "language": language}
    )
    with rt.session() as session:
        reader = session.scalars(select(Subscriber).where(Subscriber.email_key == address)).one()
        path = f"/confirm/{confirmation_token(rt.tokens, reader)}"
        reader_id = reader.id
    assert client.post(path).status_code == 200
    return reader_id


def reader(rt: Runtime, reader_id: int) -> Subscriber:
    with rt.session() as session:
        found = session.get(Subscriber, reader_id)
        assert found is not None
        session.expunge(found)
        return found


def form_token(page: str) -> str:
    match = re.search(r'name="form_token" value="([0-9a-f]{64})"', page)
    assert match, "no form token on the page"
    return match.group(1)


@pytest.mark.parametrize("language", ["be", "ru", "en"])
def test_get_shows_the_page_in_the_readers_language_and_changes_nothing(
    rt: Runtime, language: str
) -> None:
    client = TestClient(create_app(rt))
    reader_id = confirmed_reader(rt, client, f"p.{language}@example.org", language)
    path = f"/p/{preferences_token(rt.tokens, reader_id)}"
    before = reader(rt, reader_id)

    for agent in ("BingPreview/1.0b", "Mozilla/5.0"):  # a link scanner, then the reader
        page = client.get(path, headers={"User-Agent": agent})
        assert page.status_code == 200
        assert f'<html lang="{language}">' in page.text
        assert _(language, "Your subscription") in page.text
        assert f"p.{language}@example.org" in page.text
        assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text
    after = reader(rt, reader_id)
    assert (after.status, after.language, after.updated_at) == (
        before.status,
        before.language,
        before.updated_at,
    )


def test_forged_and_other_purpose_tokens_get_a_clear_404_page(rt: Runtime) -> None:
    client = TestClient(create_app(rt))
    reader_id = confirmed_reader(rt, client, "forged@example.org", "be")
    good = preferences_token(rt.tokens, reader_id)
    forged = [
        "not-a-token",
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),  # signature broken
        unsubscribe_token(rt.tokens, reader_id),  # a valid token of another purpose
        rt.tokens.issue(Purpose.PREFERENCES, reader_id + 1000),  # nobody
        # an old-style token (the id in clear) beyond a 64-bit id: signed, but not ours
        URLSafeTimedSerializer(
            rt.settings.secret_key, salt=f"newsletter.{Purpose.PREFERENCES}"
        ).dumps([2**70]),
    ]
    for token in forged:
        shown = client.get(f"/p/{token}")
        assert shown.status_code == 404, token
        assert "This link is not valid" in shown.text
        posted = client.post(f"/p/{token}", data={"action": "unsubscribe", "form_token": "0" * 64})
        assert posted.status_code == 404
    assert reader(rt, reader_id).status == "confirmed"


def test_posts_without_the_form_token_of_this_link_are_refused_403(rt: Runtime) -> None:
    client = TestClient(create_app(rt))
    victim = confirmed_reader(rt, client, "victim@example.org", "ru")
    attacker = confirmed_reader(rt, client, "attacker@example.org", "en")
    path = f"/p/{preferences_token(rt.tokens, victim)}"
    own_form = form_token(client.get(f"/p/{preferences_token(rt.tokens, attacker)}").text)

    for fields in (
        {"action": "unsubscribe"},  # a cross-site form that cannot read the page
        {"action": "unsubscribe", "form_token": own_form},  # the attacker's own page's token
        {"action": "unsubscribe", "form_token": "f" * 64},
        {"action": "unsubscribe", "form_token": "é" * 64},  # not ASCII
    ):
        refused = client.post(path, data=fields)
        assert refused.status_code == 403
        assert '<html lang="ru">' in refused.text
        assert _("ru", "This form has expired") in refused.text
    assert reader(rt, victim).status == "confirmed"


def test_unknown_action_or_language_is_400_and_a_huge_body_413(rt: Runtime) -> None:
    client = TestClient(create_app(rt))
    reader_id = confirmed_reader(rt, client, "choice@example.org", "en")
    path = f"/p/{preferences_token(rt.tokens, reader_id)}"
    token = form_token(client.get(path).text)

    assert client.post(path, data={"form_token": token, "action": "erase"}).status_code == 400
    wrong = client.post(path, data={"form_token": token, "action": "language", "language": "de"})
    assert wrong.status_code == 400 and "This change is not possible" in wrong.text
    huge = client.post(
        path,
        content=b"form_token=" + token.encode() + b"&action=language&x=" + b"a" * 100_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    assert reader(rt, reader_id).language == "en"


def test_language_change_and_unsubscribe_then_resubscribe_by_double_opt_in(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    client = TestClient(create_app(rt))
    reader_id = confirmed_reader(rt, client, "back@example.org", "en")
    path = f"/p/{preferences_token(rt.tokens, reader_id)}"
    token = form_token(client.get(path).text)

    changed = client.post(path, data={"form_token": token, "action": "language", "language": "be"})
    assert changed.status_code == 200 and '<html lang="be">' in changed.text
    assert _("be", "Saved: the next mails come in this language.") in changed.text
    assert reader(rt, reader_id).language == "be"

    left = client.post(path, data={"form_token": token, "action": "unsubscribe"})
    assert left.status_code == 200 and reader(rt, reader_id).status == "unsubscribed"
    assert _("be", "Subscribe again") in left.text

    stub_worker.join()  # the first confirmation mail is out before the outbox is emptied
    smtp.handler.received.clear()
    back = client.post(path, data={"form_token": token, "action": "resubscribe"})
    assert back.status_code == 200
    stub_worker.join()
    # Still unsubscribed until the reader confirms from the mail, which comes in Belarusian
    assert reader(rt, reader_id).status == "pending"
    [mail] = smtp.handler.received
    assert mail.recipients == ["back@example.org"]
    message = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert message["Content-Language"] == "be"
    confirm = re.search(r"http://testserver(/confirm/\S+)", body_text(message, "plain"))
    assert confirm is not None
    confirmed = client.post(confirm.group(1))
    assert confirmed.status_code == 200, (body_text(message, "plain"), confirmed.text)
    assert reader(rt, reader_id).status == "confirmed"
    # A second press on a subscribed reader's page sends nothing
    stub_worker.join()
    smtp.handler.received.clear()
    again = client.post(path, data={"form_token": token, "action": "resubscribe"})
    stub_worker.join()
    assert again.status_code == 200 and smtp.handler.received == []


# --- the hosted signup page ---------------------------------------------------------------------


@pytest.mark.parametrize("language", ["be", "ru", "en"])
def test_signup_page_shows_the_consent_text_of_its_language_and_nothing_third_party(
    rt: Runtime, language: str
) -> None:
    page = TestClient(create_app(rt)).get(f"/subscribe?lang={language}")
    assert page.status_code == 200
    assert f'<html lang="{language}">' in page.text
    name = SOURCE.newsletter.name[language]
    consent = _(
        language,
        "I want to receive %(name)s by email. I can unsubscribe at any time with the link in "
        "every mail; my address is used for nothing else.",
    ) % {"name": name}
    assert consent.replace("«", "&laquo;") in page.text or consent in page.text
    assert '<label for="email">' in page.text and '<label class="check" for="consent">' in page.text
    assert (
        "<script" not in page.text and "@import" not in page.text and "@font-face" not in page.text
    )
    # The only absolute URL on the page is the newsletter's own site: nothing loads from elsewhere
    assert set(re.findall(r'(?:src|href|action)="(https?://[^"]+)"', page.text)) <= {
        "https://example.org"
    }


def test_unknown_language_falls_back_and_unknown_newsletter_is_404(rt: Runtime) -> None:
    client = TestClient(create_app(rt))
    assert '<html lang="be">' in client.get("/subscribe?lang=be-BY").text
    assert '<html lang="en">' in client.get("/subscribe?lang=xx").text
    assert client.get("/subscribe?newsletter=nope").status_code == 404


def test_signup_page_refuses_as_signup_does_and_keeps_the_address(
    rt: Runtime, stub_worker: StubWorker, smtp: OutboxServer
) -> None:
    client = TestClient(create_app(rt))
    bad = "reader@@example.org"
    api = client.post(
        "/signup",
        content=json.dumps({"version": 1, "event_id": "x1", "email": bad, "language": "be"}),
        headers={"Content-Type": "application/json"},
    )
    page = client.post("/subscribe", data={"email": bad, "lang": "be", "consent": "yes"})

    assert page.status_code == 400 and api.status_code == 400
    assert '<html lang="be">' in page.text
    assert _("be", "This address cannot receive mail. Please check it.") in page.text
    assert 'value="reader@@example.org"' in page.text  # what was typed is kept
    with rt.session() as session:
        reasons = [r.reason for r in session.scalars(select(SignupRefusal))]
    assert reasons == [api.json()["reason"], "invalid_address"] == ["invalid_address"] * 2

    long = client.post(
        "/subscribe", data={"email": "a" * 400 + "@example.org", "lang": "ru", "consent": "yes"}
    )
    assert (
        long.status_code == 400
        and _("ru", "This address is too long or contains characters that are not allowed.")
        in long.text
    )

    no_consent = client.post("/subscribe", data={"email": "fine@example.org", "lang": "en"})
    assert no_consent.status_code == 400 and "Please tick the box to agree." in no_consent.text
    huge = client.post(
        "/subscribe",
        content=b"email=" + b"a" * 100_000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    stub_worker.join()
    assert smtp.handler.received == []  # nothing refused was enqueued


def test_signup_page_is_double_opt_in_with_its_consent_version(
    rt: Runtime, stub_worker: StubWorker, smtp: OutboxServer
) -> None:
    client = TestClient(create_app(rt))
    sent = client.post(
        "/subscribe", data={"email": "new@example.org", "lang": "ru", "consent": "yes"}
    )
    assert sent.status_code == 200 and _("ru", "Check your mailbox") in sent.text
    stub_worker.join()
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        assert (subscriber.status, subscriber.language) == ("pending", "ru")
        [consent] = subscriber.consents
        assert consent.source == "subscribe page"
        assert re.fullmatch(r"page-ru-[0-9a-f]{12}", consent.consent_version or "")
    assert [m.recipients for m in smtp.handler.received] == [["new@example.org"]]
    # A second post of a known address gets the same page (no enumeration)
    again = client.post(
        "/subscribe", data={"email": "new@example.org", "lang": "ru", "consent": "yes"}
    )
    assert again.text == sent.text


# --- the footer of every mail -------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "be", "ru"])
def test_every_edition_footer_has_preferences_link_and_publisher_line(language: str) -> None:
    rendered = render_edition(
        SOURCE.newsletter, SOURCE.contents[language], public_url="https://n.example.org"
    )
    for part in (rendered.html, rendered.text):
        assert part.count(PREFERENCES_URL) == 1 and part.count(UNSUBSCRIBE_URL) >= 1
        assert PUBLISHER in " ".join(part.split())
    assert _(language, "Preferences") in rendered.html
    assert _(language, "Preferences (language, unsubscribe)") in rendered.text
    assert not any("publisher" in warning for warning in rendered.warnings)


def test_edition_check_warns_when_the_publisher_line_is_missing() -> None:
    profile = replace(SOURCE.newsletter, publisher=None)
    rendered = render_edition(profile, SOURCE.contents["en"], public_url="https://n.example.org")
    assert PUBLISHER not in rendered.html
    assert [w for w in rendered.warnings if "publisher" in w] == [
        "newsletter.yaml has no 'publisher' (postal address / publisher line): "
        "the footer shows none"
    ]


def test_the_embeddable_form_in_the_docs_signs_up_through_the_hosted_page(
    rt: Runtime, stub_worker: StubWorker, smtp: OutboxServer
) -> None:
    # Given the form a newsroom pastes from docs/website.md
    docs = (Path(__file__).parent.parent / "docs" / "website.md").read_text("utf-8")
    form = re.search(r"```html\n(<form .*?</form>)\n```", docs, re.S)
    assert form is not None
    html = form.group(1)
    action = re.search(r'action="https://news\.example\.org(/[^"]*)"', html)
    assert action is not None and 'method="post"' in html
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
    names = set(re.findall(r'name="(\w+)"', html))
    assert names == {"lang", "newsletter", "email", "consent"}
    # When a reader fills it in and submits
    client = TestClient(create_app(rt))
    answer = client.post(
        action.group(1), data={**fields, "email": "site.reader@example.org", "consent": "yes"}
    )
    # Then the hosted page answers in the form's language and a confirmation mail goes out
    assert answer.status_code == 200 and _("be", "Check your mailbox") in answer.text
    stub_worker.join()
    assert [m.recipients for m in smtp.handler.received] == [["site.reader@example.org"]]


def test_reader_pages_send_no_referrer_and_cannot_be_framed(rt: Runtime) -> None:
    client = TestClient(create_app(rt))
    reader_id = confirmed_reader(rt, client, "framed@example.org", "en")
    path = f"/p/{preferences_token(rt.tokens, reader_id)}"
    answers = [
        client.get(path),
        client.post(path, data={"action": "unsubscribe"}),  # a 403 page
        client.get("/p/forged"),  # a 404 page
        client.get("/subscribe?lang=ru"),
        client.post("/subscribe", data={"email": "x@", "lang": "ru", "consent": "yes"}),
    ]
    for answer in answers:
        assert answer.headers["referrer-policy"] == "no-referrer"
        policy = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
        assert "form-action 'self'" in policy
    assert reader(rt, reader_id).status == "confirmed"
