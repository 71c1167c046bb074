"""Feedback through the database: every handed bounce and complaint case, attribution, trust,
the soft-bounce rule, mailto and provider unsubscribes, the send-time path and a running send.

The cases use the corpus's VERP (``bounces+local=domain@``) and Message-ID shapes; here they are
rewritten to the product's (``bounces+<sealed>@``, ``<<sealed>.<edition>@…>``, the delivery id
sealed under the secret key) after the fixture subscribers and their deliveries are loaded.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.sendkit import ScriptedRelay, run_batch, seed, start_send, states
from worker.devtools.outbox import OutboxServer
from worker.feedback.classification import FeedbackKind
from worker.feedback.mail import parse_inbound
from worker.feedback.policy import (
    Effect,
    FeedbackOutcome,
    FeedbackPolicy,
    attribute,
    record_feedback,
    soft_bounce_count,
)
from worker.feedback.report import FeedbackReport
from worker.models import (
    Delivery,
    Edition,
    FeedbackEvent,
    Newsletter,
    Send,
    Subscriber,
    Suppression,
)
from worker.runtime import Runtime
from worker.sending.identity import seal_delivery, verp_address
from worker.states import DeliveryState
from worker.subscriptions.tokens import unsubscribe_token

if TYPE_CHECKING:
    # What pytest.param returns; pytest exports no public name for it.
    from _pytest.mark import ParameterSet

CASES = Path(__file__).parent / "cases"
FIXTURES = json.loads((CASES / "fixtures.json").read_text())
SENT_AT = datetime(2026, 11, 27, 6, 0, 11, tzinfo=UTC)
NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
DOMAIN = "news.example.org"

# The corpus's words for classification → the product's feedback kinds.
KIND_OF_CASE = {
    "b01": FeedbackKind.HARD_BOUNCE,
    "b02": FeedbackKind.SOFT_BOUNCE,
    "b04": FeedbackKind.DELAYED,
    "b05": FeedbackKind.HARD_BOUNCE,
    "b06": FeedbackKind.POLICY_BLOCK,
    "b07": FeedbackKind.AUTO_REPLY,
    "b08": FeedbackKind.HARD_BOUNCE,
    "c01": FeedbackKind.COMPLAINT,
    "c04": FeedbackKind.DMARC_REPORT,
}
# The corpus's "action" → the effect recorded on the event, the subscriber status after, the
# suppression reason (None: no suppression).
ACTION = {
    "suppress_recipient": (Effect.SUPPRESSED, "suppressed", "hard_bounce"),
    "increment_soft_bounce_count": (Effect.SOFT_COUNTED, "confirmed", None),
    "record_policy_block_and_alert_operator": (Effect.POLICY_ALERTED, "confirmed", None),
    "none": (Effect.NONE, "confirmed", None),
    "unsubscribe_all_lists_and_suppress": (
        Effect.UNSUBSCRIBED_AND_SUPPRESSED,
        "suppressed",
        "complaint",
    ),
    "route_to_dmarc_reports": (Effect.NONE, "confirmed", None),
}
# Bounce counts: only hard bounces and counted soft bounces increment (never policy blocks).
INCREMENT = {"suppress_recipient": 1, "increment_soft_bounce_count": 1}


@dataclass
class World:
    """The fixture subscribers, one delivery each in a send of ``2026w48-en``."""

    subscriber: dict[str, int]  # fixture id (s41809) → subscriber.id
    delivery: dict[str, int]  # fixture id → delivery.id
    email: dict[str, str]  # address → fixture id


def load_world(session: Session) -> World:
    newsletter = Newsletter(slug="weekly", default_language="en", profile={}, created_at=SENT_AT)
    session.add(newsletter)
    session.flush()
    edition = Edition(
        newsletter_id=newsletter.id, key="2026w48-en", created_at=SENT_AT, updated_at=SENT_AT
    )
    session.add(edition)
    session.flush()
    send = Send(edition_id=edition.id, status="finished", created_at=SENT_AT)
    session.add(send)
    session.flush()
    world = World({}, {}, {})
    for row in FIXTURES["subscribers"]:
        confirmed = row["state"] == "subscribed"
        subscriber = Subscriber(
            newsletter_id=newsletter.id,
            email=row["email"],
            email_key=row["email"].casefold(),
            ascii_email=row["email"],
            domain=row["email"].rsplit("@", 1)[1],
            language=row["language"],
            status="confirmed" if confirmed else "pending",
            created_at=SENT_AT - timedelta(days=60),
            updated_at=SENT_AT - timedelta(days=60),
            confirmed_at=SENT_AT - timedelta(days=60) if confirmed else None,
        )
        session.add(subscriber)
        session.flush()
        delivery = Delivery(
            send_id=send.id,
            subscriber_id=subscriber.id,
            language=row["language"],
            domain=subscriber.domain,
            state=DeliveryState.SENT,
            attempts=1,
            sent_at=SENT_AT,
        )
        session.add(delivery)
        session.flush()
        world.subscriber[row["id"]] = subscriber.id
        world.delivery[row["id"]] = delivery.id
        world.email[row["email"]] = row["id"]
    session.commit()
    return world


def product_shape(raw: bytes, world: World, key: str) -> bytes:
    """The corpus's VERP and Message-ID rewritten to the ones the product sends."""

    def verp(match: re.Match[bytes]) -> bytes:
        address = f"{match[1].decode()}@{match[2].decode()}"
        delivery = world.delivery[world.email[address]]
        return verp_address(delivery, key=key, domain=DOMAIN).encode()

    def message_id(match: re.Match[bytes]) -> bytes:
        sealed = seal_delivery(world.delivery[match[2].decode()], key=key)
        return f"<{sealed}.{match[1].decode()}@".encode()

    raw = re.sub(rb"bounces\+([\w.]+)=([\w.-]+)@news\.example\.org", verp, raw)
    return re.sub(rb"<ed-([\w-]+)\.(s\d+)@", message_id, raw)


def case_entries() -> list[ParameterSet]:
    entries = []
    for folder in ("bounces", "complaints"):
        for case in json.loads((CASES / folder / "cases.json").read_text()):
            entries.append(pytest.param(folder, case, id=case["id"]))
    return entries


@pytest.fixture
def policy(rt: Runtime) -> FeedbackPolicy:
    return FeedbackPolicy.from_settings(rt.settings)


def record_mail(
    rt: Runtime, raw: bytes, policy: FeedbackPolicy, now: datetime = NOW
) -> list[tuple[FeedbackReport, FeedbackOutcome]]:
    results = []
    with rt.session() as session:
        for report in parse_inbound(raw):
            outcome = record_feedback(session, report, policy=policy, now=now, tokens=rt.tokens)
            results.append((report, outcome))
    return results


def subscriber_row(rt: Runtime, subscriber_id: int) -> Subscriber:
    with rt.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        return subscriber


def suppressions(rt: Runtime) -> list[Suppression]:
    with rt.session() as session:
        return list(session.scalars(select(Suppression).order_by(Suppression.id)))


@pytest.mark.parametrize(("folder", "case"), case_entries())
def test_case_end_to_end(
    rt: Runtime,
    policy: FeedbackPolicy,
    folder: str,
    case: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with rt.session() as session:
        world = load_world(session)
    expected = case["expected"]
    raw = product_shape((CASES / folder / case["file"]).read_bytes(), world, policy.hash_key)
    fixture_id = expected.get("subscriber_id") or expected["subscriber_id_must_remain_subscribed"]

    with caplog.at_level(logging.WARNING, logger="worker.feedback.policy"):
        [(report, outcome)] = record_mail(rt, raw, policy)

    effect, status_after, suppression_reason = ACTION[expected["action"]]
    assert report.kind == KIND_OF_CASE[case["id"]]
    assert report.classification.counts_toward_invalid_address is bool(
        expected.get("counts_toward_invalid_address", False)
    )
    if "status" in expected:
        assert report.status == expected["status"]
    assert outcome.effect == effect
    assert subscriber_row(rt, world.subscriber[fixture_id]).status == status_after
    assert [s.reason for s in suppressions(rt)] == (
        [suppression_reason] if suppression_reason else []
    )
    increment = expected.get("bounce_count_increment", INCREMENT.get(expected["action"], 0))
    assert outcome.bounce_count_increment == increment
    with rt.session() as session:
        event = session.get(FeedbackEvent, outcome.event_id)
        assert event is not None
        assert (event.kind, event.effect) == (report.kind.value, effect)
        if report.kind == FeedbackKind.DMARC_REPORT:  # about the domain, never a subscriber
            assert (event.subscriber_id, event.attribution) == (None, "none")
        else:
            assert event.subscriber_id == world.subscriber[fixture_id]
            assert (event.attribution, event.delivery_id) == ("verp", world.delivery[fixture_id])
        for suppression in session.scalars(select(Suppression)):  # the audit trail
            assert suppression.source_event_id == event.id
    alerts = [
        r for r in caplog.records if r.levelno == logging.WARNING and "policy block" in r.message
    ]
    assert len(alerts) == (1 if effect == Effect.POLICY_ALERTED else 0)
    if case["id"] == "c01":
        assert subscriber_row(rt, world.subscriber[fixture_id]).unsubscribed_at is not None


def test_the_same_report_twice_is_recorded_once(rt: Runtime, policy: FeedbackPolicy) -> None:
    with rt.session() as session:
        world = load_world(session)
    raw = product_shape(
        (CASES / "bounces" / "b01_postfix_5_1_1_headers_only.eml").read_bytes(),
        world,
        policy.hash_key,
    )
    [(_, first)] = record_mail(rt, raw, policy)
    [(_, second)] = record_mail(rt, raw, policy)

    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.event_id == first.event_id and second.effect == Effect.SUPPRESSED
    with rt.session() as session:
        assert session.scalar(select(func.count()).select_from(FeedbackEvent)) == 1
    assert len(suppressions(rt)) == 1


def test_forged_bounce_naming_only_the_recipient_changes_nothing(
    rt: Runtime, policy: FeedbackPolicy
) -> None:
    # The corpus's own shape has no VERP token of ours: anyone could have written it.
    with rt.session() as session:
        world = load_world(session)
    raw = (CASES / "bounces" / "b01_postfix_5_1_1_headers_only.eml").read_bytes()

    [(report, outcome)] = record_mail(rt, raw, policy)

    assert report.kind == FeedbackKind.HARD_BOUNCE
    assert (outcome.effect, outcome.attribution) == (Effect.NOT_TRUSTED, "recipient")
    assert outcome.subscriber_id == world.subscriber["s41809"]
    assert subscriber_row(rt, world.subscriber["s41809"]).status == "confirmed"
    assert suppressions(rt) == []


def test_forged_verp_tag_is_not_trusted(rt: Runtime, policy: FeedbackPolicy) -> None:
    with rt.session() as session:
        world = load_world(session)
    raw = product_shape(
        (CASES / "bounces" / "b05_office365_550_5_1_10.eml").read_bytes(), world, "another-key"
    )
    raw = re.sub(rb"<[a-z2-7]{26}\.", b"<ed-", raw)  # and no Message-ID of ours either
    [(_, outcome)] = record_mail(rt, raw, policy)
    assert outcome.effect == Effect.NOT_TRUSTED
    assert subscriber_row(rt, world.subscriber["s41811"]).status == "confirmed"


def test_message_id_is_trusted_only_when_sealed(rt: Runtime, policy: FeedbackPolicy) -> None:
    # Given a bounce naming the reader's own delivery by the old, untagged Message-ID form
    with rt.session() as session:
        world = load_world(session)
    raw = (CASES / "bounces" / "b01_postfix_5_1_1_headers_only.eml").read_bytes()
    delivery = world.delivery["s41809"]
    untagged = raw.replace(b"<ed-2026w48-en.s41809@", f"<d{delivery}.2026w48-en@".encode())
    sealed = raw.replace(
        b"<ed-2026w48-en.s41809@",
        f"<{seal_delivery(delivery, key=policy.hash_key)}.2026w48-en@".encode(),
    )

    # Then the untagged id names the delivery but changes nothing, even with the right recipient
    [(_, forged)] = record_mail(rt, untagged, policy)
    assert (forged.effect, forged.attribution) == (Effect.NOT_TRUSTED, "message_id")
    assert forged.delivery_id == delivery
    assert subscriber_row(rt, world.subscriber["s41809"]).status == "confirmed"

    # And the sealed one is trusted
    [(_, genuine)] = record_mail(
        rt, sealed.replace(b"5D1E2A0C44@relay", b"5D1E2A0C45@relay"), policy
    )
    assert (genuine.effect, genuine.attribution) == (Effect.SUPPRESSED, "message_id")
    assert subscriber_row(rt, world.subscriber["s41809"]).status == "suppressed"


def _soft(delivery_id: int, recipient: str, n: int) -> FeedbackReport:
    from worker.feedback.classification import Classification, Reason

    classification = Classification(FeedbackKind.SOFT_BOUNCE, Reason.MAILBOX_FULL, False)
    return FeedbackReport(
        kind=classification.kind,
        classification=classification,
        recipient=recipient,
        status="5.2.2",
        diagnostic="552 5.2.2 mailbox full",
        original_message_id=None,
        verp_local=None,
        feedback_type=None,
        source_event_id=f"test:soft:{n}",
        delivery_ref=str(delivery_id),
        source="webhook:test",
    )


def _extra_delivery(rt: Runtime, subscriber_id: int, sent_at: datetime) -> int:
    with rt.session() as session:
        send = Send(edition_id=1, status="finished", created_at=sent_at)
        session.add(send)
        session.flush()
        subscriber = session.get(Subscriber, subscriber_id)
        assert subscriber is not None
        delivery = Delivery(
            send_id=send.id,
            subscriber_id=subscriber_id,
            language="ru",
            domain=subscriber.domain,
            state=DeliveryState.SENT,
            attempts=1,
            sent_at=sent_at,
        )
        session.add(delivery)
        session.flush()
        return int(delivery.id)


def test_third_soft_bounce_within_thirty_days_suppresses(
    rt: Runtime, policy: FeedbackPolicy
) -> None:
    with rt.session() as session:
        world = load_world(session)
    subscriber_id = world.subscriber["s41808"]
    effects = []
    for n, day in enumerate((1, 8, 15)):
        at = NOW + timedelta(days=day)
        delivery = _extra_delivery(rt, subscriber_id, at - timedelta(minutes=5))
        with rt.session() as session:
            outcome = record_feedback(
                session,
                _soft(delivery, "full.box@example.com", n),
                policy=policy,
                now=at,
                verified_provider=True,
            )
            effects.append(outcome.effect)
    assert effects == [Effect.SOFT_COUNTED, Effect.SOFT_COUNTED, Effect.SOFT_LIMIT_SUPPRESSED]
    assert subscriber_row(rt, subscriber_id).status == "suppressed"
    assert [s.reason for s in suppressions(rt)] == ["soft_bounce_limit"]


def test_soft_bounces_outside_the_window_do_not_add_up(rt: Runtime, policy: FeedbackPolicy) -> None:
    with rt.session() as session:
        world = load_world(session)
    subscriber_id = world.subscriber["s41808"]
    for n, day in enumerate((0, 31, 62)):
        at = NOW + timedelta(days=day)
        delivery = _extra_delivery(rt, subscriber_id, at - timedelta(minutes=5))
        with rt.session() as session:
            outcome = record_feedback(
                session,
                _soft(delivery, "full.box@example.com", n),
                policy=policy,
                now=at,
                verified_provider=True,
            )
        assert outcome.effect == Effect.SOFT_COUNTED
    with rt.session() as session:
        assert (
            soft_bounce_count(session, subscriber_id, policy=policy, now=NOW + timedelta(days=62))
            == 1
        )


def test_a_settled_delivery_without_bounce_resets_the_count(
    rt: Runtime, policy: FeedbackPolicy
) -> None:
    with rt.session() as session:
        world = load_world(session)
    subscriber_id = world.subscriber["s41808"]
    for n, day in enumerate((1, 2)):
        at = NOW + timedelta(days=day)
        delivery = _extra_delivery(rt, subscriber_id, at - timedelta(minutes=5))
        with rt.session() as session:
            record_feedback(
                session,
                _soft(delivery, "full.box@example.com", n),
                policy=policy,
                now=at,
                verified_provider=True,
            )
    clean = NOW + timedelta(days=3)
    _extra_delivery(rt, subscriber_id, clean)  # accepted, and no bounce came back
    with rt.session() as session:
        # Not yet settled two days later: a DSN may still come, the count stands.
        assert (
            soft_bounce_count(session, subscriber_id, policy=policy, now=clean + timedelta(days=2))
            == 2
        )
        assert (
            soft_bounce_count(session, subscriber_id, policy=policy, now=clean + timedelta(days=4))
            == 0
        )
    later = clean + timedelta(days=5)
    delivery = _extra_delivery(rt, subscriber_id, later - timedelta(minutes=5))
    with rt.session() as session:
        outcome = record_feedback(
            session,
            _soft(delivery, "full.box@example.com", 9),
            policy=policy,
            now=later,
            verified_provider=True,
        )
    assert outcome.effect == Effect.SOFT_COUNTED
    assert subscriber_row(rt, subscriber_id).status == "confirmed"


def _mailto(token: str) -> bytes:
    return (
        "From: Office Worker <office.worker@example.com>\n"
        f"To: unsubscribe+{token}@news.example.org\n"
        "Subject: unsubscribe\nMessage-ID: <CAJ0unsub0001@mail.example.com>\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\n\nunsubscribe\n"
    ).encode()


def test_mailto_unsubscribe_with_a_signed_token(rt: Runtime, policy: FeedbackPolicy) -> None:
    with rt.session() as session:
        world = load_world(session)
    subscriber_id = world.subscriber["s41823"]
    token = unsubscribe_token(rt.tokens, subscriber_id)

    [(report, outcome)] = record_mail(rt, _mailto(token), policy)
    [(_, again)] = record_mail(rt, _mailto(token), policy)

    assert report.kind == FeedbackKind.UNSUBSCRIBE
    assert (outcome.effect, outcome.attribution) == (Effect.UNSUBSCRIBED, "token")
    assert again.duplicate
    assert subscriber_row(rt, subscriber_id).status == "unsubscribed"
    assert suppressions(rt) == []  # transactional mail stays possible


def test_mailto_unsubscribe_with_a_forged_token_changes_nothing(
    rt: Runtime, policy: FeedbackPolicy
) -> None:
    with rt.session() as session:
        world = load_world(session)
    [(_, outcome)] = record_mail(rt, _mailto("tU2iO5pA8sDf"), policy)  # the corpus's fake token
    assert outcome.effect == Effect.BAD_TOKEN
    assert subscriber_row(rt, world.subscriber["s41823"]).status == "confirmed"


def test_send_time_5xx_goes_through_the_policy(rt: Runtime, smtp: OutboxServer) -> None:
    from worker.sending.ports import SmtpOutcome

    seed(rt, ["full@example.com", "gone@example.com", "blocked@example.com", "ok@example.com"])
    send_id = start_send(rt)
    replies = {
        "full@example.com": SmtpOutcome(552, "5.2.2 mailbox full"),
        "gone@example.com": SmtpOutcome(550, "5.1.1 no such user"),
        "blocked@example.com": SmtpOutcome(
            550, "5.7.1 Service unavailable, Client host [10.4.4.7] blocked"
        ),
    }

    run_batch(rt, send_id, mailer=ScriptedRelay(replies))

    with rt.session() as session:
        events = {
            e.recipient: (e.kind, e.status_code, e.effect, e.attribution)
            for e in session.scalars(select(FeedbackEvent))
        }
        status = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
    assert events == {
        "full@example.com": ("soft_bounce", "5.2.2", Effect.SOFT_COUNTED, "smtp"),
        "gone@example.com": ("hard_bounce", "5.1.1", Effect.SUPPRESSED, "smtp"),
        "blocked@example.com": ("policy_block", "5.7.1", Effect.POLICY_ALERTED, "smtp"),
    }
    assert status == {
        "full@example.com": "confirmed",
        "gone@example.com": "suppressed",
        "blocked@example.com": "confirmed",
        "ok@example.com": "confirmed",
    }


def test_unsubscribe_takes_effect_within_the_running_send(rt: Runtime, smtp: OutboxServer) -> None:
    addresses = [f"reader{n:02d}@example.com" for n in range(20)]
    seed(rt, addresses)
    send_id = start_send(rt, batch_size=10)
    with rt.session() as session:
        ids = dict(session.execute(select(Subscriber.email, Subscriber.id)).all())
    policy = FeedbackPolicy.from_settings(rt.settings)
    run_batch(rt, send_id, 0, ids["reader09@example.com"])  # the first batch went out
    # reader15 mails the mailto unsubscribe address of the first mail; reader16 complains.
    token = unsubscribe_token(rt.tokens, ids["reader15@example.com"])
    record_mail(rt, _mailto(token), policy)
    with rt.session() as session:
        from worker.feedback.classification import classify_feedback_type

        complaint = classify_feedback_type("abuse")
        record_feedback(
            session,
            FeedbackReport(
                kind=complaint.kind,
                classification=complaint,
                recipient="reader16@example.com",
                status=None,
                diagnostic=None,
                original_message_id=None,
                verp_local=None,
                feedback_type="abuse",
                source_event_id="webhook:test:c16",
                source="webhook:test",
            ),
            policy=policy,
            now=rt.clock.now(),
            verified_provider=True,
        )
    run_batch(rt, send_id)

    result = states(rt, send_id)
    assert result["reader15@example.com"] == DeliveryState.SKIPPED
    assert result["reader16@example.com"] == DeliveryState.SKIPPED
    assert sum(1 for s in result.values() if s == DeliveryState.SENT) == 18
    received = {r for m in smtp.handler.received for r in m.recipients}
    assert "reader15@example.com" not in received and "reader16@example.com" not in received


def test_delivery_header_attributes_only_when_sealed(rt: Runtime, policy: FeedbackPolicy) -> None:
    with rt.session() as session:
        world = load_world(session)
    raw = (CASES / "bounces" / "b08_mailru_style_russian_user_unknown.eml").read_bytes()
    delivery = world.delivery["s41814"]

    def with_header(value: str) -> bytes:
        header = f"X-Newsletter-Delivery: {value}\nX-Newsletter-Edition:".encode()
        own_id = f"Message-ID: <{value}@mx.mail.example.com>\n".encode()  # two reports, not one
        return own_id + raw.replace(b"X-Newsletter-Edition:", header)

    [(_, untagged)] = record_mail(rt, with_header(str(delivery)), policy)
    assert (untagged.effect, untagged.attribution) == (Effect.NOT_TRUSTED, "delivery_header")
    assert subscriber_row(rt, world.subscriber["s41814"]).status == "confirmed"

    sealed = seal_delivery(delivery, key=policy.hash_key)
    [(report, outcome)] = record_mail(rt, with_header(sealed), policy)
    assert report.delivery_ref == sealed
    assert (outcome.effect, outcome.attribution) == (Effect.SUPPRESSED, "delivery_header")
    assert outcome.delivery_id == delivery
    assert subscriber_row(rt, world.subscriber["s41814"]).status == "suppressed"


@pytest.mark.parametrize("delivery_ref", ["²", "٤", "1²"])
def test_non_ascii_digits_in_the_delivery_header_name_no_delivery(
    rt: Runtime, policy: FeedbackPolicy, delivery_ref: str
) -> None:
    # Given a report whose delivery header holds digits str.isdigit() accepts but int() refuses
    report = replace(_soft(1, "nobody@example.net", 0), delivery_ref=delivery_ref)
    # When it is attributed (it used to raise ValueError from int("²"))
    with rt.session() as session:
        found = attribute(session, report, policy)
    # Then nothing is attributed through the header
    assert (found.how, found.trusted, found.delivery) == ("none", False, None)


def test_a_verified_provider_names_the_delivery_by_our_sealed_header(
    rt: Runtime, policy: FeedbackPolicy
) -> None:
    # SES returns our X-Newsletter-Delivery header (sealed now) inside its signed notification;
    # metadata set by a sending adapter may still hold the plain id. Both are its word.
    with rt.session() as session:
        world = load_world(session)
    delivery = world.delivery["s41809"]
    for ref in (seal_delivery(delivery, key=policy.hash_key), str(delivery)):
        report = replace(_soft(0, "someone.else@example.net", 0), delivery_ref=ref)
        with rt.session() as session:
            found = attribute(session, report, policy, verified_provider=True)
            assert (found.how, found.trusted) == ("provider", True)
            assert found.delivery is not None and found.delivery.id == delivery
