"""The inbound SMTP receiver, over real SMTP (smtplib → aiosmtpd) into SQLite and PostgreSQL.

Hostile input (20 MB, broken MIME, undeclared charset, deep nesting, thousands of recipient
blocks) must be stored byte for byte and must not take the receiver down; a storage failure
must answer 451 so the sender keeps the message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.test_feedback import CASES, load_world, product_shape
from worker.devtools.outbox import free_port
from worker.feedback.policy import Effect
from worker.feedback.smtp_receiver import InboundServer, parse_listen
from worker.models import FeedbackEvent, InboundMessage, Subscriber
from worker.runtime import Runtime
from worker.sending.identity import unsubscribe_mailto
from worker.settings import Settings
from worker.subscriptions.tokens import unsubscribe_token

BOUNCE_TO = "bounces+1-0000000000@news.example.org"


@pytest.fixture
def receiver(rt: Runtime) -> Iterator[InboundServer]:
    # 25 MiB, not the 10 MiB default: the hostile 20 MB bounce must be stored, not only refused
    roomy = dataclasses.replace(rt.settings, inbound_max_bytes=25 * 1024 * 1024)
    with InboundServer(roomy, port=free_port()) as server:
        yield server


def crlf(raw: bytes) -> bytes:
    """The bytes as an MTA sends them over SMTP: CRLF line ends (RFC 5321 §2.3.8)."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return text if text.endswith(b"\r\n") else text + b"\r\n"


def deliver(server: InboundServer, raw: bytes, to: str = BOUNCE_TO, sender: str = "") -> None:
    with smtplib.SMTP(server.host, server.port, timeout=120) as client:
        client.sendmail(sender, [to], crlf(raw))


def stored(rt: Runtime) -> list[InboundMessage]:
    with rt.session() as session:
        return list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))


def test_a_bounce_is_stored_then_recorded_and_applied(rt: Runtime, receiver: InboundServer) -> None:
    with rt.session() as session:
        world = load_world(session)
    raw = product_shape(
        (CASES / "bounces" / "b05_office365_550_5_1_10.eml").read_bytes(),
        world,
        rt.settings.secret_key,
    )

    deliver(receiver, raw, to="bounces+9-abc@news.example.org")

    [message] = stored(rt)
    assert message.raw == crlf(raw)
    assert message.digest == hashlib.sha256(crlf(raw)).hexdigest()
    assert (message.source, message.envelope_to, message.parsed_at is not None) == (
        "smtp",
        "bounces+9-abc@news.example.org",
        True,
    )
    with rt.session() as session:
        event = session.scalar(select(FeedbackEvent))
        assert event is not None
        assert (event.kind, event.effect, event.inbound_message_id) == (
            "hard_bounce",
            Effect.SUPPRESSED,
            message.id,
        )
        subscriber = session.get(Subscriber, world.subscriber["s41811"])
        assert subscriber is not None and subscriber.status == "suppressed"


def test_the_same_message_twice_is_stored_and_recorded_once(
    rt: Runtime, receiver: InboundServer
) -> None:
    raw = (CASES / "bounces" / "b04_dsn_action_delayed_4_4_7.eml").read_bytes()
    deliver(receiver, raw)
    deliver(receiver, raw)
    assert len(stored(rt)) == 1
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(FeedbackEvent)) == 1


def test_mailto_unsubscribe_through_the_receiver(rt: Runtime, receiver: InboundServer) -> None:
    with rt.session() as session:
        world = load_world(session)
    subscriber_id = world.subscriber["s41823"]
    mailto = unsubscribe_mailto(unsubscribe_token(rt.tokens, subscriber_id), "news.example.org")
    to = mailto.removeprefix("mailto:").split("?")[0]
    raw = (
        f"From: office.worker@example.com\nTo: {to}\nSubject: unsubscribe\n"
        "Message-ID: <u1@mail.example.com>\n\nunsubscribe\n"
    ).encode()

    deliver(receiver, raw, to=to, sender="office.worker@example.com")

    with rt.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        assert subscriber is not None and subscriber.status == "unsubscribed"


def test_other_domains_are_refused(receiver: InboundServer) -> None:
    with smtplib.SMTP(receiver.host, receiver.port) as client:
        client.ehlo()
        client.mail("")
        code, _ = client.rcpt("someone@example.com")
    assert code == 550


def test_storage_failure_answers_451_and_never_250(settings: Settings, tmp_path: Path) -> None:
    # A database without the schema: every INSERT fails, as with a full disk or a lost server.
    broken = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with (
        InboundServer(broken, port=free_port()) as server,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        deliver(server, b"Subject: x\r\n\r\nbody\r\n")
    assert refused.value.smtp_code == 451
    assert b"4.3.0" in refused.value.smtp_error


def test_over_the_size_cap_is_refused_with_552(settings: Settings) -> None:
    small = dataclasses.replace(settings, inbound_max_bytes=10_000)
    with (
        InboundServer(small, port=free_port()) as server,
        pytest.raises(smtplib.SMTPException) as refused,
    ):
        deliver(server, b"Subject: x\r\n\r\n" + (b"y" * 76 + b"\r\n") * 200)
    assert "552" in str(refused.value)


def _nested(depth: int) -> bytes:
    head = b"From: MAILER-DAEMON@example.com\nMIME-Version: 1.0\n"
    head += b"Content-Type: multipart/mixed; boundary=b0\n\n"
    levels = b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i - 1, i)
        for i in range(1, depth)
    )
    return head + levels + b"--b%d\nContent-Type: text/plain\n\n550 5.1.1 unknown\n" % (depth - 1)


def _recipient_blocks(count: int) -> bytes:
    blocks = b"".join(
        b"Final-Recipient: rfc822; u%d@example.com\nAction: failed\nStatus: 5.1.1\n\n" % i
        for i in range(count)
    )
    return (
        b"MIME-Version: 1.0\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\n\n"
        b"--XX\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\n"
        + blocks
        + b"--XX--\n"
    )


KOI8R_BOUNCE = "Subject: Недоставлено\n\n550 Пользователь не найден: x@example.com\n"
HOSTILE = {
    "twenty_megabytes": (CASES / "bounces" / "b02_gmail_552_5_2_2_over_quota.eml").read_bytes()[
        :-30
    ]
    + (b"A" * 76 + b"\n") * (20 * 1024 * 1024 // 77),
    "broken_mime": b"Content-Type: multipart/report; boundary=\nMIME-Version: 1.0\n\n--\x00\xff\n"
    b"Content-Type: message/delivery-status\n\nStatus: 5.\nFinal-Recipient: ;;;\n",
    "undeclared_koi8r": KOI8R_BOUNCE.encode("koi8-r"),
    "deeply_nested": _nested(500),
    "recipient_blocks": _recipient_blocks(5000),
    "long_line": b"Subject: x\n\n" + b"z" * 500_000 + b"\n",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_mail_is_stored_raw_and_never_crashes(
    rt: Runtime, receiver: InboundServer, name: str
) -> None:
    raw = HOSTILE[name]

    deliver(receiver, raw)
    deliver(receiver, b"Subject: still alive\n\nhello\n")  # the receiver is still serving

    first, second = stored(rt)
    assert first.raw == crlf(raw)
    assert (first.size, first.truncated) == (len(crlf(raw)), False)
    assert first.parsed_at is not None and first.parse_error is None
    assert second.parsed_at is not None
    with rt.session() as session:
        events = session.scalar(
            select(func.count())
            .select_from(FeedbackEvent)
            .where(FeedbackEvent.inbound_message_id == first.id)
        )
    assert events is not None and 1 <= events <= 100  # the parser caps recipient blocks at 100


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert parse_listen("[::1]:25") == ("::1", 25)
    assert parse_listen(":25") == ("0.0.0.0", 25)
    with pytest.raises(ValueError):
        parse_listen("localhost")
