"""Transactional mail rendered once per language and personalised per reader (issue 16)."""

from __future__ import annotations

import email
import email.policy
import os
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from tests.samples import SAMPLE_EDITION
from tests.sendkit import ScriptedRelay
from worker.editions.files import read_edition
from worker.editions.localisation import TEMPLATE_ROOT
from worker.editions.rendering import TemplateProblem, render_message
from worker.models import Subscriber
from worker.sending import identity
from worker.sending.transactional import TEMPLATES, send_transactional

PROFILE = read_edition(SAMPLE_EDITION).newsletter
PUBLIC = "https://news.example.org"
NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def send(relay: ScriptedRelay, address: str, language: str, context: dict[str, object]) -> None:
    send_transactional(
        relay,
        name="confirmation",
        subscriber=Subscriber(email=address, ascii_email=address, language=language),
        profile=PROFILE,
        context=context,
        public_url=PUBLIC,
        bounce_address=identity.bounce_address("news.example.org"),
        message_id_domain="news.example.org",
        now=NOW,
        slug="weekly",
    )


def parts(data: bytes) -> tuple[str, str, str]:
    """(subject, text, html) of a sent message, decoded."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(message["Subject"]), text.get_content(), html.get_content()


@pytest.mark.parametrize("language", ["en", "be", "ru"])
@pytest.mark.parametrize("repermission", [False, True])
def test_a_personalised_mail_reads_exactly_as_one_rendered_for_the_reader(
    language: str, repermission: bool
) -> None:
    # Given a confirmation link with characters HTML must escape
    url = f"{PUBLIC}/confirm/tok-{language}_x?a=1&b=2"
    context = {"confirm_url": url, "expires_hours": 48, "repermission": repermission}
    relay = ScriptedRelay()

    # When the mail is sent from the prepared (placeholder) rendition
    send(relay, f"reader@{language}.example.net", language, context)

    # Then subject, text and HTML are what rendering with the reader's own link gives
    rendered = render_message("confirmation", language, context, profile=PROFILE, public_url=PUBLIC)
    subject, text, html = parts(relay.sent[0][2])
    assert subject == rendered.subject
    assert text.replace("\r\n", "\n") == rendered.text
    assert html.replace("\r\n", "\n") == rendered.html.replace("\r\n", "\n")
    assert 'href="https://news.example.org/confirm/tok-' in html and "a=1&amp;b=2" in html
    assert url in text and "%%" not in text + html


def test_each_language_is_rendered_once_and_each_reader_gets_only_their_link() -> None:
    # Given an empty cache and readers in three languages
    TEMPLATES.clear()
    before = TEMPLATES.renders
    relay = ScriptedRelay()
    readers = [(f"reader{n}@d{n}.example.net", ("en", "be", "ru")[n % 3]) for n in range(9)]

    # When each gets a confirmation mail
    for n, (address, language) in enumerate(readers):
        send(
            relay,
            address,
            language,
            {"confirm_url": f"{PUBLIC}/confirm/T{n}Z", "expires_hours": 48},
        )

    # Then three renderings served nine mails, each with its own link and no other
    assert TEMPLATES.renders - before == 3
    for n, (_, recipient, data) in enumerate(relay.sent):
        assert recipient == readers[n][0]
        _, text, html = parts(data)
        links = {f"/confirm/T{m}Z" for m in range(9)}
        assert {link for link in links if link in text + html} == {f"/confirm/T{n}Z"}


def test_a_changed_shared_value_or_template_file_renders_again() -> None:
    TEMPLATES.clear()
    before = TEMPLATES.renders
    relay = ScriptedRelay()
    context = {"confirm_url": f"{PUBLIC}/confirm/a", "expires_hours": 48}
    send(relay, "a@example.net", "en", context)
    send(relay, "b@example.net", "en", {**context, "expires_hours": 1})
    assert TEMPLATES.renders - before == 2
    assert "1 hour." in parts(relay.sent[1][2])[1]

    # When a template file is edited (its modification time moves)
    path = TEMPLATE_ROOT / "confirmation" / "subject.txt.j2"
    stat = path.stat()
    try:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        send(relay, "c@example.net", "en", context)
    finally:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # Then the message is rendered again
    assert TEMPLATES.renders - before == 3


def test_a_confirmation_without_its_link_is_still_refused() -> None:
    with pytest.raises(TemplateProblem, match="confirm_url"):
        send(ScriptedRelay(), "a@example.net", "en", {"expires_hours": 48})
