"""Human mail at the bounce address goes to the replies inbox, over real SMTP both ways.

smtplib → the inbound receiver (aiosmtpd) → the project's SMTP mailer → the outbox (aiosmtpd).
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from worker.devtools.outbox import OutboxServer, free_port
from worker.feedback.policy import Effect
from worker.feedback.smtp_receiver import InboundServer
from worker.models import FeedbackEvent
from worker.runtime import Runtime
from worker.settings import Settings

INBOX = "editor@newsroom.example"
READER = "reader@example.com"


def human(n: int, **headers: str) -> bytes:
    body = (
        f"From: A Reader <{READER}>\r\nTo: news@news.example.org\r\n"
        f"Subject: Re: Weekly news {n}\r\nMessage-ID: <reply-{n}@example.com>\r\n"
    )
    body += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (body + f"\r\nThank you for issue {n}!\r\n").encode()


def deliver(server: InboundServer, raw: bytes, sender: str = READER) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=120) as client:
        client.sendmail(sender, ["bounces@news.example.org"], raw)


def effects(rt: Runtime) -> list[str | None]:
    with rt.session() as session:
        return list(session.scalars(select(FeedbackEvent.effect).order_by(FeedbackEvent.id)))


@pytest.fixture
def receiver(settings: Settings, rt: Runtime) -> Iterator[InboundServer]:
    forwarding = dataclasses.replace(settings, replies_to=INBOX, replies_per_hour=3)
    with InboundServer(forwarding, port=free_port()) as server:
        yield server


def test_a_human_reply_is_forwarded_to_the_replies_inbox_only(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer
) -> None:
    # When a reader answers to the bounce address
    deliver(receiver, human(1))

    # Then exactly one message leaves, to the replies inbox, from the plain bounce address
    [forward] = smtp.handler.received
    assert (forward.envelope_from, forward.recipients) == ("bounces@news.example.org", [INBOX])
    message = email.message_from_bytes(forward.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Auto-Submitted"] == "auto-forwarded"
    assert message["Subject"] == "Fwd: Re: Weekly news 1"
    assert message["Reply-To"] == READER  # the operator answers the person, by hand
    [attached] = [p for p in message.iter_attachments() if p.get_content_type() == "message/rfc822"]
    original = attached.get_content()
    assert original["Message-ID"] == "<reply-1@example.com>"
    assert "Thank you for issue 1!" in original.get_content()
    assert effects(rt) == [Effect.FORWARDED]


@pytest.mark.parametrize(
    ("raw", "sender"),
    [
        (human(1), ""),  # null reverse-path: DSNs and auto-replies
        (human(2, **{"Auto-Submitted": "auto-replied"}), READER),
        (human(3, Precedence="bulk"), READER),
        (human(4, **{"List-Id": "Other list <other.example.com>"}), READER),
        (human(5, **{"X-Autoreply": "yes"}), READER),
        (human(6), INBOX),  # the replies inbox writing back
        (human(7), "bounces@news.example.org"),  # ourselves
        (human(8, **{"X-Newsletter-Forwarded": "12"}), "someone@example.net"),  # our forward
    ],
)
def test_automatic_mail_is_never_forwarded(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer, raw: bytes, sender: str
) -> None:
    deliver(receiver, raw, sender=sender)
    assert smtp.handler.received == []
    assert Effect.FORWARDED not in effects(rt)


def test_a_forward_that_comes_back_is_not_forwarded_again(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer
) -> None:
    # Given one forward made
    deliver(receiver, human(1))
    [forward] = smtp.handler.received
    # When the inbox's server sends it straight back to the bounce address
    deliver(receiver, forward.data, sender=forward.envelope_from)
    # Then nothing more leaves
    assert len(smtp.handler.received) == 1
    assert effects(rt) == [Effect.FORWARDED, Effect.NONE]


def test_forwards_are_limited_per_hour(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer
) -> None:
    for n in range(5):
        deliver(receiver, human(n))
    assert len(smtp.handler.received) == 3  # replies_per_hour
    assert effects(rt) == [Effect.FORWARDED] * 3 + [Effect.NONE] * 2


def test_without_a_replies_inbox_human_mail_is_kept_only(
    rt: Runtime, smtp: OutboxServer, settings: Settings
) -> None:
    with InboundServer(settings, port=free_port()) as plain:
        deliver(plain, human(1))
    assert smtp.handler.received == []
    assert effects(rt) == [Effect.NONE]
