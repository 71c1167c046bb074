"""Forged feedback, as an attacker sends it: through the real inbound SMTP receiver.

The attacker knows a reader's address and subscribes himself, so he holds one real copy of an
edition (his own: its VERP sender, Message-ID and ``X-Newsletter-Delivery``). From it he forges
DSNs (RFC 3464) and ARF complaints (RFC 5965) about the reader with guessed and neighbouring ids in
every place we read one. None may change the reader; the same reports with the reader's genuine
tagged ids must.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from tests.sendkit import run_batch, seed, start_send
from worker.devtools.outbox import OutboxServer, free_port
from worker.feedback.policy import Effect
from worker.feedback.smtp_receiver import InboundServer
from worker.models import Delivery, FeedbackEvent, Subscriber
from worker.runtime import Runtime

READER = "reader@example.com"
ATTACKER = "attacker@example.net"
EDITION = "2024-W28"


@dataclass(frozen=True)
class Ids:
    """What one copy of a mail says about its delivery."""

    verp: str  # envelope sender
    message_id: str
    delivery: str  # X-Newsletter-Delivery

    @property
    def sealed(self) -> str:
        return self.message_id.strip("<>").split(".", 1)[0]


@dataclass(frozen=True)
class Sent:
    copies: dict[str, Ids]  # recipient → ids of its copy
    subscriber: dict[str, int]


@pytest.fixture
def receiver(rt: Runtime) -> Iterator[InboundServer]:
    with InboundServer(rt.settings, port=free_port()) as server:
        yield server


def send_edition(rt: Runtime, smtp: OutboxServer, readers: list[str]) -> Sent:
    """Send the sample edition for real to ``readers`` and read every copy's identifiers."""
    seed(rt, readers)
    run_batch(rt, start_send(rt))
    copies = {}
    for received in smtp.handler.received:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        [recipient] = received.recipients
        copies[recipient] = Ids(
            received.envelope_from,
            str(message["Message-ID"]),
            str(message["X-Newsletter-Delivery"]),
        )
    with rt.session() as session:
        subscriber = dict(session.execute(select(Subscriber.email, Subscriber.id)).all())
    assert set(copies) == set(readers)
    return Sent(copies, subscriber)


def returned_headers(ids: Ids, to: str) -> str:
    return (
        f"Return-Path: <{ids.verp}>\n"
        "From: Weekly <news@news.example.org>\n"
        f"To: {to}\n"
        "Subject: Weekly news\n"
        f"Message-ID: {ids.message_id}\n"
        f"X-Newsletter-Delivery: {ids.delivery}\n"
    )


USER_UNKNOWN = ("5.1.1", "550 5.1.1 <x>: Recipient address rejected: User unknown")


def dsn(ids: Ids, final_recipient: str, n: int, status: tuple[str, str] = USER_UNKNOWN) -> bytes:
    """A Postfix-style DSN (a hard bounce unless ``status`` says otherwise) with the original's
    headers returned."""
    return (
        "From: MAILER-DAEMON@mx.example.com\n"
        f"To: {ids.verp}\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        f"Message-ID: <dsn-{n}@mx.example.com>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
        "--B\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mx.example.com\n\n"
        f"Final-Recipient: rfc822; {final_recipient}\n"
        f"Action: failed\nStatus: {status[0]}\n"
        f"Diagnostic-Code: smtp; {status[1]}\n\n"
        "--B\nContent-Type: text/rfc822-headers\n\n"
        f"{returned_headers(ids, final_recipient)}\n--B--\n"
    ).encode()


def arf(ids: Ids, recipient: str | None, n: int) -> bytes:
    """An RFC 5965 abuse report; ``recipient`` None: redacted by the provider (RFC 6590)."""
    rcpt = f"Original-Rcpt-To: <{recipient}>\n" if recipient else ""
    to = recipient or "redacted@example.com"
    return (
        "From: Feedback Loop <fbl@mail.example.com>\n"
        "To: fbl@news.example.org\n"
        "Subject: FW: Weekly news\n"
        f"Message-ID: <arf-{n}@mail.example.com>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nA user marked this message as spam.\n\n"
        "--B\nContent-Type: message/feedback-report\n\n"
        f"Feedback-Type: abuse\nUser-Agent: FBL/1.0\nVersion: 1\n{rcpt}\n"
        "--B\nContent-Type: message/rfc822\n\n"
        f"{returned_headers(ids, to)}\nHello.\n\n--B--\n"
    ).encode()


def deliver(server: InboundServer, raw: bytes, to: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=120) as client:
        client.sendmail("", [to], raw.replace(b"\n", b"\r\n"))


def forgeries(own: Ids, rt: Runtime) -> list[Ids]:
    """Every id an attacker can make from his own copy: guessed decimal ids in the old forms,
    and his own sealed id with one character changed (neighbouring values)."""
    domain = rt.settings.sending_domain
    bounce = rt.settings.bounce_domain
    guessed = [
        Ids(f"bounces+{n}-{'0' * 10}@{bounce}", f"<d{n}.{EDITION}@{domain}>", str(n))
        for n in range(1, 7)
    ]
    neighbours = []
    for position in (0, 12, 25):
        char = own.sealed[position]
        other = "a" if char != "a" else "b"
        forged = own.sealed[:position] + other + own.sealed[position + 1 :]
        neighbours.append(
            Ids(f"bounces+{forged}@{bounce}", f"<{forged}.{EDITION}@{domain}>", forged)
        )
    return guessed + neighbours


def events(rt: Runtime) -> list[FeedbackEvent]:
    with rt.session() as session:
        return list(session.scalars(select(FeedbackEvent).order_by(FeedbackEvent.id)))


def status(rt: Runtime, subscriber_id: int) -> str:
    with rt.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        return subscriber.status


def test_forged_dsns_and_arfs_with_guessed_ids_change_no_reader(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer
) -> None:
    # Given a reader and an attacker who received his own copy of the same edition
    sent = send_edition(rt, smtp, [READER, ATTACKER])
    own = sent.copies[ATTACKER]
    assert own.sealed == own.delivery and own.verp.endswith(f"+{own.sealed}@news.example.org")
    reader_id = sent.subscriber[READER]

    # When he forges DSNs and ARFs about the reader with every id he can make
    n = 0
    for ids in forgeries(own, rt):
        for raw in (dsn(ids, READER, n), arf(ids, READER, n)):
            deliver(receiver, raw, to=ids.verp)
            n += 1

    # Then every report was recorded, and none changed the reader
    recorded = events(rt)
    assert len(recorded) == n
    assert {e.effect for e in recorded} == {Effect.NOT_TRUSTED}
    assert status(rt, reader_id) == "confirmed"
    assert status(rt, sent.subscriber[ATTACKER]) == "confirmed"


def test_reports_with_the_genuine_tagged_ids_change_the_reader(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer
) -> None:
    # Given four readers of one edition
    readers = [f"{name}@example.com" for name in ("bounced", "verp", "message.id", "header")]
    sent = send_edition(rt, smtp, readers)
    copies = sent.copies
    bounced, verp, message_id, header = (copies[r] for r in readers)

    # When a DSN comes back to the first reader's VERP address,
    deliver(receiver, dsn(bounced, readers[0], 1), to=bounced.verp)
    # and ARF complaints with the recipient redacted name the others by one tagged id each:
    # the VERP Return-Path, the Message-ID, the X-Newsletter-Delivery header of the copy
    untagged = "<other@example.com>"
    for n, ids in enumerate(
        (
            Ids(verp.verp, untagged, "-"),
            Ids("news@news.example.org", message_id.message_id, "-"),
            Ids("news@news.example.org", untagged, header.delivery),
        ),
        start=2,
    ):
        deliver(receiver, arf(ids, None, n), to="fbl@news.example.org")

    # Then each reader is changed by its own report
    effects = {e.subscriber_id: (e.effect, e.attribution) for e in events(rt)}
    complained = Effect.UNSUBSCRIBED_AND_SUPPRESSED
    assert effects == {
        sent.subscriber[readers[0]]: (Effect.SUPPRESSED, "verp"),
        sent.subscriber[readers[1]]: (complained, "verp"),
        sent.subscriber[readers[2]]: (complained, "message_id"),
        sent.subscriber[readers[3]]: (complained, "delivery_header"),
    }
    assert [status(rt, sent.subscriber[r]) for r in readers] == ["suppressed"] * 4


def test_the_verp_tag_wins_over_a_forwarding_final_recipient(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer
) -> None:
    # Given a reader whose mailbox forwards to another address, which then bounces
    sent = send_edition(rt, smtp, [READER, "forward.target@example.com"])
    ids = sent.copies[READER]

    # When the forwarding host's DSN names its own address as Final-Recipient
    deliver(receiver, dsn(ids, "old.forward@elsewhere.example", 1), to=ids.verp)

    # Then the reader our tag names is the one the bounce is about
    [event] = events(rt)
    assert (event.subscriber_id, event.delivery_id is not None) == (sent.subscriber[READER], True)
    assert (event.effect, event.attribution) == (Effect.SUPPRESSED, "verp")
    assert status(rt, sent.subscriber[READER]) == "suppressed"
    assert status(rt, sent.subscriber["forward.target@example.com"]) == "confirmed"


def test_refusals_about_our_sender_never_count_against_the_reader(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer
) -> None:
    # Given a reader's genuine delivery
    sent = send_edition(rt, smtp, [READER])
    ids = sent.copies[READER]
    refusals = [
        ("5.1.1", "550 5.1.1 <bounces@news.example.org>: Sender address rejected: User unknown"),
        ("5.1.0", "550 5.1.0 Sender domain news.example.org fails DMARC policy"),
        ("5.6.0", "554 5.6.0 Message refused under our acceptable use policy"),
        ("5.2.0", "550 5.2.0 Envelope sender is blocked"),
    ]
    # When the receiving side refuses it, about our sender, with four different codes
    for n, refusal in enumerate(refusals):
        deliver(receiver, dsn(ids, READER, n, refusal), to=ids.verp)

    # Then each is a policy block for the operator, none a bounce of the reader
    assert [(e.kind, e.effect) for e in events(rt)] == [("policy_block", Effect.POLICY_ALERTED)] * 4
    assert status(rt, sent.subscriber[READER]) == "confirmed"


def test_a_bounce_to_an_old_tagged_verp_address_still_counts(
    rt: Runtime, smtp: OutboxServer, receiver: InboundServer
) -> None:
    # Given mail sent before sealed ids, whose envelope sender was bounces+<id>-<10 hex HMAC>
    sent = send_edition(rt, smtp, [READER])
    with rt.session() as session:
        delivery_id = session.scalars(select(Delivery.id)).one()
    key = rt.settings.secret_key.encode()
    tag = hmac.new(key, f"verp:{delivery_id}".encode(), hashlib.sha256).hexdigest()[:10]
    old = Ids(f"bounces+{delivery_id}-{tag}@news.example.org", "<x@relay.example>", "-")
    forged = Ids(f"bounces+{delivery_id}-{'0' * 10}@news.example.org", "<y@relay.example>", "-")

    # When a forged and then a genuine bounce arrive at the old addresses
    deliver(receiver, dsn(forged, READER, 1), to=forged.verp)
    assert status(rt, sent.subscriber[READER]) == "confirmed"
    deliver(receiver, dsn(old, READER, 2), to=old.verp)

    # Then only the genuine one, HMAC-checked, suppresses
    assert [(e.effect, e.attribution) for e in events(rt)] == [
        (Effect.NOT_TRUSTED, "recipient"),
        (Effect.SUPPRESSED, "verp"),
    ]
    assert status(rt, sent.subscriber[READER]) == "suppressed"
