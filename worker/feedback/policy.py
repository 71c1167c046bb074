"""Recording feedback events and applying the feedback policy to subscribers.

Every :class:`~worker.feedback.report.FeedbackReport` (from inbound mail, a provider webhook or a
5xx reply at send time) becomes exactly one ``FeedbackEvent`` (idempotent on its
``source_event_id``), attributed to a delivery and subscriber, and the policy decides what it does:

=================  ==========================================================================
hard bounce        suppress the address (reason ``hard_bounce``)
complaint          unsubscribe and suppress (reason ``complaint``)
soft bounce        count; suppress (``soft_bounce_limit``) at N trusted soft bounces within D
                   days since the last *settled* delivery (see :func:`soft_bounce_count`)
policy block       never suppress: a WARNING log line for the operator (5.7.x is about us)
unsubscribe        mailto: the signed token names the subscriber; verified provider: the
                   attributed subscriber; both through
                   :func:`worker.subscriptions.lifecycle.unsubscribe` (one event per request)
auto-reply,        recorded only
delayed, unknown
DMARC report       recorded only, never attributed to a subscriber (it is about the domain)
=================  ==========================================================================

Attribution, first that applies: the VERP token of our envelope sender
(:func:`worker.sending.identity.parse_verp`), a verified provider's metadata or recipient, the
sealed delivery id of our Message-ID, then of the ``X-Newsletter-Delivery`` header
(:func:`worker.sending.identity.seal_delivery`), the old untagged forms of both, the recipient
address. Only a tag (a sealed id or the HMAC of an old VERP address), a verified provider or the
SMTP session itself are *trusted*: anyone can mail a DSN or an ARF report naming any recipient and
any old-style id, so a hard bounce, complaint or soft bounce attributed through an untagged id or
the recipient address alone is recorded with effect ``not_trusted`` and changes nothing. A tag
needs no recipient: an ARF report whose recipient the provider redacted, or a DSN about a
forwarding address, is about the delivery the tag names.

The event's ``effect`` says what was done; a suppression points to its event (audit trail).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.feedback.classification import (
    BOUNCE_KINDS,
    FeedbackKind,
    classify_smtp_reply,
    enhanced_status,
)
from worker.feedback.report import FeedbackReport
from worker.models import Delivery, FeedbackEvent, Subscriber
from worker.sending.identity import (
    BOUNCE_PREFIX,
    Untagged,
    open_delivery,
    parse_delivery_header,
    parse_edition_message_id,
    parse_id,
    parse_verp,
)
from worker.settings import Settings
from worker.states import DeliveryState
from worker.subscriptions import lifecycle
from worker.subscriptions.addresses import dedupe_key_of
from worker.subscriptions.suppressions import suppress
from worker.subscriptions.tokens import Purpose, TokenError, Tokens

log = logging.getLogger(__name__)

_NEEDS_TRUST = (FeedbackKind.HARD_BOUNCE, FeedbackKind.SOFT_BOUNCE, FeedbackKind.COMPLAINT)
SOFT_COUNTED = ("soft_counted", "soft_limit_suppressed")


class Effect:
    """The values of ``FeedbackEvent.effect``."""

    SUPPRESSED = "suppressed"
    UNSUBSCRIBED_AND_SUPPRESSED = "unsubscribed_and_suppressed"
    SOFT_COUNTED = "soft_counted"
    SOFT_LIMIT_SUPPRESSED = "soft_limit_suppressed"
    POLICY_ALERTED = "policy_alerted"
    UNSUBSCRIBED = "unsubscribed"
    NONE = "none"
    NOT_TRUSTED = "not_trusted"
    NO_SUBSCRIBER = "no_subscriber"
    BAD_TOKEN = "bad_token"
    FORWARDED = "forwarded"  # human mail sent on to the replies inbox (worker.feedback.replies)


@dataclass(frozen=True)
class FeedbackPolicy:
    """What the policy needs. ``hash_key``: suppression hashing and VERP tags (the secret key);
    ``soft_bounce_limit`` soft bounces within ``soft_bounce_window`` suppress; a delivery sent at
    least ``settle`` ago that drew no bounce resets the count (a relay's 250 is not delivery:
    DSNs come back minutes to days later); ``message_id_domain`` is the right-hand side of our
    Message-IDs (others are not ours); ``verp_prefix`` the local-part prefix of the VERP sender."""

    hash_key: str
    soft_bounce_limit: int = 3
    soft_bounce_window: timedelta = timedelta(days=30)
    settle: timedelta = timedelta(days=3)
    message_id_domain: str = ""
    verp_prefix: str = BOUNCE_PREFIX

    @classmethod
    def from_settings(cls, settings: Settings) -> FeedbackPolicy:
        """The policy of the configured settings (``NEWSLETTER_SOFT_BOUNCE_*``, secret key)."""
        return cls(
            hash_key=settings.secret_key,
            soft_bounce_limit=settings.soft_bounce_limit,
            soft_bounce_window=timedelta(days=settings.soft_bounce_window_days),
            message_id_domain=settings.sending_domain,
        )


@dataclass(frozen=True)
class Attribution:
    """Who a report is about. ``how``: verp, provider, smtp, message_id, delivery_header,
    recipient, token or none; ``trusted``: whether it may change the subscriber."""

    how: str
    trusted: bool
    delivery: Delivery | None = None
    subscriber: Subscriber | None = None


@dataclass(frozen=True)
class FeedbackOutcome:
    """What recording one report did. ``duplicate``: the event was recorded before (nothing
    done now); ``bounce_count_increment``: 1 if the report counted toward the soft-bounce or
    invalid-address tally, else 0."""

    event_id: int
    effect: str
    attribution: str
    subscriber_id: int | None
    delivery_id: int | None
    duplicate: bool = False
    bounce_count_increment: int = 0


def record_feedback(
    session: Session,
    report: FeedbackReport,
    *,
    policy: FeedbackPolicy,
    now: datetime,
    tokens: Tokens | None = None,
    verified_provider: bool = False,
    inbound_message_id: int | None = None,
    attribution: Attribution | None = None,
) -> FeedbackOutcome:
    """Record ``report`` once and apply the policy; flushes, the caller commits.

    ``verified_provider``: the report came from a webhook whose signature was verified, so its
    recipient and metadata are trusted. ``tokens`` checks mailto unsubscribe tokens (without it
    they are recorded only). ``attribution`` skips the look-up (the send-time SMTP path knows its
    delivery). A second report with the same ``source_event_id`` returns the first outcome with
    ``duplicate=True`` and changes nothing.
    """
    existing = session.scalar(
        select(FeedbackEvent).where(FeedbackEvent.source_event_id == report.source_event_id)
    )
    if existing is not None:
        return _outcome(existing, duplicate=True)
    if report.kind == FeedbackKind.UNSUBSCRIBE and report.unsubscribe_token:
        return _mailto_unsubscribe(session, report, tokens, now, inbound_message_id)
    found = attribution or attribute(session, report, policy, verified_provider=verified_provider)
    event = _new_event(session, report, found, now, inbound_message_id)
    effect, increment = _apply(session, report, found, event, policy, now)
    event.effect = effect
    session.flush()
    return _outcome(event, increment=increment)


def attribute(
    session: Session,
    report: FeedbackReport,
    policy: FeedbackPolicy,
    *,
    verified_provider: bool = False,
) -> Attribution:
    """The delivery and subscriber ``report`` is about, and whether that is trusted."""
    if report.kind == FeedbackKind.DMARC_REPORT:
        return Attribution("none", False)
    if report.verp_local:
        delivery_id = parse_verp(f"{policy.verp_prefix}+{report.verp_local}", key=policy.hash_key)
        delivery = session.get(Delivery, delivery_id) if delivery_id is not None else None
        if delivery is not None:
            return Attribution(
                "verp", True, delivery, session.get(Subscriber, delivery.subscriber_id)
            )
    if verified_provider:
        return _by_provider(session, report, policy)
    key = policy.hash_key
    candidates = (
        (
            "message_id",
            parse_edition_message_id(report.original_message_id, policy.message_id_domain, key=key),
        ),
        ("delivery_header", parse_delivery_header(report.delivery_ref, key=key)),
    )
    for how, found in candidates:  # a tag wins over everything the report says
        if isinstance(found, int) and (tagged := _delivery_attribution(session, how, found, True)):
            return tagged
    for how, found in candidates:  # named, not proven: recorded, never acted on
        if isinstance(found, Untagged) and (
            untagged := _delivery_attribution(session, how, found.delivery_id, False)
        ):
            return untagged
    subscriber = _subscriber_of_address(session, report.recipient)
    if subscriber is not None:
        return Attribution("recipient", False, None, subscriber)
    return Attribution("none", False)


def _delivery_attribution(
    session: Session, how: str, delivery_id: int, trusted: bool
) -> Attribution | None:
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        return None
    return Attribution(how, trusted, delivery, session.get(Subscriber, delivery.subscriber_id))


def soft_bounce_count(
    session: Session, subscriber_id: int, *, policy: FeedbackPolicy, now: datetime
) -> int:
    """Trusted soft bounces of ``subscriber_id`` that count toward the limit at ``now``.

    Counted: soft-bounce events within ``policy.soft_bounce_window`` before ``now`` and after the
    *reset point*, one per delivery (two DSNs about one message are one bounce). The reset point
    is the newest ``sent_at`` of a delivery to the subscriber that the relay accepted, that is
    older than ``policy.settle`` (time for its DSN to come back) and that drew no bounce event.
    """
    since = now - policy.soft_bounce_window
    reset = _reset_point(session, subscriber_id, now - policy.settle)
    if reset is not None and reset > since:
        since = reset
    rows = session.execute(
        select(FeedbackEvent.id, FeedbackEvent.delivery_id).where(
            FeedbackEvent.subscriber_id == subscriber_id,
            FeedbackEvent.kind == FeedbackKind.SOFT_BOUNCE,
            FeedbackEvent.effect.in_(SOFT_COUNTED),
            FeedbackEvent.occurred_at > since,
            FeedbackEvent.occurred_at <= now,
        )
    ).all()
    return len({("d", d) if d is not None else ("e", i) for i, d in rows})


def _reset_point(session: Session, subscriber_id: int, settled_before: datetime) -> datetime | None:
    bounced = select(FeedbackEvent.id).where(
        FeedbackEvent.delivery_id == Delivery.id,
        FeedbackEvent.kind.in_([k.value for k in BOUNCE_KINDS]),
        # a forged report naming the delivery must not keep its reader's count from resetting
        FeedbackEvent.effect != Effect.NOT_TRUSTED,
    )
    return session.scalar(
        select(func.max(Delivery.sent_at)).where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.state == DeliveryState.SENT,
            Delivery.sent_at <= settled_before,
            ~bounced.exists(),
        )
    )


def _apply(
    session: Session,
    report: FeedbackReport,
    found: Attribution,
    event: FeedbackEvent,
    policy: FeedbackPolicy,
    now: datetime,
) -> tuple[str, int]:
    """(effect, bounce_count_increment) of the policy for one new event."""
    kind = report.kind
    subscriber = found.subscriber
    if kind == FeedbackKind.POLICY_BLOCK:
        log.warning(
            "policy block: %s refused our mail (%s %s; %s): check IP/domain reputation, "
            "authentication and content; the address is not suppressed",
            _domain(report.recipient),
            report.status or "-",
            report.classification.reason,
            (report.diagnostic or "")[:200],
        )
        return Effect.POLICY_ALERTED, 0
    if kind not in (*_NEEDS_TRUST, FeedbackKind.UNSUBSCRIBE):
        return Effect.NONE, 0
    if subscriber is None:
        return Effect.NO_SUBSCRIBER, 0
    if not found.trusted:
        return Effect.NOT_TRUSTED, 0
    if kind == FeedbackKind.HARD_BOUNCE:
        _suppress(session, subscriber, "hard_bounce", event, policy, now)
        return Effect.SUPPRESSED, 1
    if kind == FeedbackKind.COMPLAINT:
        _unsubscribe(session, subscriber, event, now)  # flushes before suppress()'s bulk UPDATE
        _suppress(session, subscriber, "complaint", event, policy, now)
        return Effect.UNSUBSCRIBED_AND_SUPPRESSED, 0
    if kind == FeedbackKind.UNSUBSCRIBE:
        return _unsubscribe(session, subscriber, event, now), 0
    return _soft_bounce(session, subscriber, event, policy, now), 1


def _soft_bounce(
    session: Session,
    subscriber: Subscriber,
    event: FeedbackEvent,
    policy: FeedbackPolicy,
    now: datetime,
) -> str:
    event.effect = Effect.SOFT_COUNTED  # counted by the query below
    session.flush()
    count = soft_bounce_count(session, subscriber.id, policy=policy, now=now)
    if count < policy.soft_bounce_limit:
        return Effect.SOFT_COUNTED
    _suppress(session, subscriber, "soft_bounce_limit", event, policy, now)
    return Effect.SOFT_LIMIT_SUPPRESSED


def _suppress(
    session: Session,
    subscriber: Subscriber,
    reason: str,
    event: FeedbackEvent,
    policy: FeedbackPolicy,
    now: datetime,
) -> None:
    suppress(
        session,
        dedupe_key=dedupe_key_of(subscriber.email),  # email_key is only its blind index
        hash_key=policy.hash_key,
        reason=reason,
        now=now,
        source_event_id=event.id,
    )


def _unsubscribe(
    session: Session, subscriber: Subscriber, event: FeedbackEvent, now: datetime
) -> str:
    """Leave the newsletter through the one unsubscribe path; ``event`` is the request's record.

    Not a suppression: transactional mail stays possible. Returns the effect.
    """
    left = lifecycle.unsubscribe(session, subscriber, source=event.source, now=now, event=event)
    return Effect.UNSUBSCRIBED if left else Effect.NONE


def _mailto_unsubscribe(
    session: Session,
    report: FeedbackReport,
    tokens: Tokens | None,
    now: datetime,
    inbound_message_id: int | None,
) -> FeedbackOutcome:
    """RFC 2369 mailto unsubscribe: the signed token names the subscriber (RFC 8058 spirit).

    One event per message whatever the token says: ``bad_token``, ``none`` (already gone) or
    ``unsubscribed``.
    """
    subscriber = _subscriber_of_token(session, tokens, report.unsubscribe_token)
    found = Attribution("token", subscriber is not None, None, subscriber)
    event = _new_event(session, report, found, now, inbound_message_id)
    event.effect = Effect.BAD_TOKEN
    if subscriber is not None:
        event.effect = _unsubscribe(session, subscriber, event, now)
    session.flush()
    return _outcome(event)


def _subscriber_of_token(
    session: Session, tokens: Tokens | None, token: str | None
) -> Subscriber | None:
    """The subscriber a correctly signed unsubscribe token names; None if forged or unknown."""
    if tokens is None or not token:
        return None
    try:
        claims = tokens.check(Purpose.UNSUBSCRIBE, token)
    except TokenError:
        return None
    return session.get(Subscriber, claims.subscriber_id)


def smtp_reply_report(
    delivery_id: int, attempt: int, recipient: str, code: int, text: str
) -> FeedbackReport:
    """A 5xx reply received while sending (RFC 5321 §4.2) as a report, classified by its
    RFC 3463 status; ``source_event_id`` is ``smtp:<delivery>:<attempt>``."""
    classification = classify_smtp_reply(code, text)
    return FeedbackReport(
        kind=classification.kind,
        classification=classification,
        recipient=recipient,
        status=enhanced_status(text),
        diagnostic=f"{code} {text}"[:2000],
        original_message_id=None,
        verp_local=None,
        feedback_type=None,
        source_event_id=f"smtp:{delivery_id}:{attempt}",
        source="smtp",
    )


def _new_event(
    session: Session,
    report: FeedbackReport,
    found: Attribution,
    now: datetime,
    inbound_message_id: int | None,
) -> FeedbackEvent:
    subscriber = found.subscriber
    event = FeedbackEvent(
        source_event_id=report.source_event_id,
        kind=report.kind.value,
        source=report.source[:32],
        subscriber_id=subscriber.id if subscriber is not None else None,
        delivery_id=found.delivery.id if found.delivery is not None else None,
        recipient=report.recipient[:320] if report.recipient else None,
        status_code=report.status[:16] if report.status else None,
        reason=report.classification.reason,
        detail=_detail(report),
        occurred_at=report.occurred_at or now,
        recorded_at=now,
        inbound_message_id=inbound_message_id,
        attribution=found.how,
    )
    session.add(event)
    session.flush()
    return event


def _detail(report: FeedbackReport) -> str | None:
    parts = [
        p
        for p in (
            report.diagnostic,
            report.feedback_type and f"feedback-type {report.feedback_type}",
        )
        if p
    ]
    return "; ".join(parts)[:2000] or None


def _outcome(
    event: FeedbackEvent, *, duplicate: bool = False, increment: int = 0
) -> FeedbackOutcome:
    return FeedbackOutcome(
        event_id=event.id,
        effect=event.effect or Effect.NONE,
        attribution=event.attribution or "none",
        subscriber_id=event.subscriber_id,
        delivery_id=event.delivery_id,
        duplicate=duplicate,
        bounce_count_increment=increment,
    )


def _by_provider(session: Session, report: FeedbackReport, policy: FeedbackPolicy) -> Attribution:
    """A verified webhook: its signature vouches for the payload, so our header (sealed or, from
    metadata a sending adapter set, decimal), the subscriber id or the recipient are trusted."""
    delivery_id = open_delivery(report.delivery_ref, key=policy.hash_key)
    if delivery_id is None:
        delivery_id = parse_id(report.delivery_ref)
    if delivery_id is None:
        found = parse_edition_message_id(
            report.original_message_id, policy.message_id_domain, key=policy.hash_key
        )
        delivery_id = found if isinstance(found, int) else None
    delivery = session.get(Delivery, delivery_id) if delivery_id is not None else None
    if delivery is not None:
        return Attribution(
            "provider", True, delivery, session.get(Subscriber, delivery.subscriber_id)
        )
    subscriber_id = parse_id(report.subscriber_ref)
    subscriber = session.get(Subscriber, subscriber_id) if subscriber_id is not None else None
    if subscriber is None or not _same_address(subscriber, report.recipient):
        subscriber = _subscriber_of_address(session, report.recipient)
    return Attribution("provider", subscriber is not None, None, subscriber)


def _subscriber_of_address(session: Session, address: str | None) -> Subscriber | None:
    """The subscriber with this address that was mailed last (newest id on a tie)."""
    if not address:
        return None
    key = dedupe_key_of(address)
    return session.scalar(
        select(Subscriber)
        .where(Subscriber.email_key == key)
        .order_by(Subscriber.updated_at.desc(), Subscriber.id.desc())
        .limit(1)
    )


def _same_address(subscriber: Subscriber | None, recipient: str | None) -> bool:
    return bool(
        subscriber and recipient and dedupe_key_of(recipient) == dedupe_key_of(subscriber.email)
    )


def _domain(address: str | None) -> str:
    return (address or "?").rpartition("@")[2] or "?"
