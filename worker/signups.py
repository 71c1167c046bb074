"""Signup events and double opt-in: validate, record consent, confirm, unsubscribe.

The signup event (version 1) is the JSON a website sends, through the queue or the HTTP endpoint;
both validate it with ``parse_signup_event``. The workflow never sends mail itself: it returns
what should happen next (``SignupOutcome.send_confirmation``) and the caller enqueues the mail.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.addresses import Address, AddressError, parse_address
from worker.editions import NewsletterProfile
from worker.models import Consent, FeedbackEvent, SignupRefusal, Subscriber, SubscriberStatus
from worker.suppressions import email_hash, is_suppressed
from worker.tokens import Purpose, TokenClaims, TokenError, Tokens

SingleLine = Annotated[str, StringConstraints(max_length=512, pattern=r"^[^\r\n\x00]*$")]


class SignupEvent(BaseModel):
    """A signup event, version 1. Unknown fields are refused so that typos surface."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1] = 1
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$")]
    email: Annotated[str, StringConstraints(min_length=3, max_length=320)]
    language: Annotated[str, StringConstraints(min_length=2, max_length=16)]
    newsletter: Annotated[str, StringConstraints(max_length=100)] = "weekly"
    source: SingleLine | None = None
    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    user_agent: SingleLine | None = None
    consent_version: SingleLine | None = None
    occurred_at: datetime | None = Field(default=None, strict=False)


class SignupRefused(ValueError):
    """A refused signup event: ``reason`` is a stable code, ``detail`` says what is wrong where."""

    def __init__(self, reason: str, detail: str, event_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.event_id = event_id


def parse_signup_event(data: Any) -> SignupEvent:
    """Validate a decoded JSON value as a signup event.

    Raises ``SignupRefused`` with reason ``malformed`` (not an object, missing or unknown fields,
    wrong types; the detail names each field) — the address itself is checked later.
    """
    event_id = data.get("event_id") if isinstance(data, dict) else None
    event_id = event_id if isinstance(event_id, str) else None
    if not isinstance(data, dict):
        raise SignupRefused("malformed", f"expected a JSON object, got {type(data).__name__}")
    try:
        return SignupEvent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in exc.errors()
        )
        raise SignupRefused("malformed", problems, event_id[:100] if event_id else None) from None


def record_refusal(session: Session, refusal: SignupRefused, payload: Any, now: datetime) -> SignupRefusal:
    """Keep a refused event with its reason (never lost silently); the payload is cut at 8 KB."""
    try:
        text = json.dumps(payload, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(payload)
    row = SignupRefusal(
        event_id=refusal.event_id,
        received_at=now,
        reason=refusal.reason,
        detail=refusal.detail[:2000],
        payload=text[:8192],
    )
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class SignupOutcome:
    """What a signup leads to. The same HTTP answer is given for every outcome (no enumeration)."""

    subscriber_id: int | None
    send_confirmation: bool
    status: str  # "pending", "already_confirmed", "suppressed", "duplicate_event"


def sign_up(
    session: Session,
    event: SignupEvent,
    *,
    newsletter_id: int,
    profile: NewsletterProfile,
    now: datetime,
    allow_smtputf8: bool = True,
    check_deliverability: bool = False,
    blocked_domains: frozenset[str] = frozenset(),
    hash_key: str,
) -> SignupOutcome:
    """Record a validated signup: create or refresh a pending subscriber and its consent.

    Raises ``SignupRefused`` (reason ``invalid_address``/``unsupported_language``/…) for content that
    cannot be accepted. A repeated event id is a no-op (at-least-once delivery of queue messages).
    """
    if session.scalar(select(Consent.id).where(Consent.event_id == event.event_id)) is not None:
        return SignupOutcome(None, False, "duplicate_event")
    if event.language not in profile.languages:
        raise SignupRefused(
            "unsupported_language",
            f"language: {event.language!r} is not one of {', '.join(profile.languages)}",
            event.event_id,
        )
    address = _address(event, allow_smtputf8, check_deliverability, blocked_domains)
    if is_suppressed(session, email_hash(address.dedupe_key, hash_key)):
        return SignupOutcome(None, False, "suppressed")
    subscriber = session.scalar(
        select(Subscriber).where(
            Subscriber.newsletter_id == newsletter_id, Subscriber.email_key == address.dedupe_key
        )
    )
    if subscriber is None:
        subscriber = _new_subscriber(newsletter_id, address, event.language, now)
        session.add(subscriber)
    subscriber.language = event.language  # a new signup changes the language
    subscriber.updated_at = now
    _add_consent(session, subscriber, event, now)
    if subscriber.status == SubscriberStatus.SUPPRESSED:
        session.flush()
        return SignupOutcome(subscriber.id, False, "suppressed")
    if subscriber.status == SubscriberStatus.CONFIRMED:
        session.flush()
        return SignupOutcome(subscriber.id, False, "already_confirmed")
    # New, pending or unsubscribed: (again) through double opt-in.
    subscriber.status = SubscriberStatus.PENDING
    if subscriber.confirm_nonce is None:
        subscriber.confirm_nonce = secrets.token_urlsafe(9)
    session.flush()
    return SignupOutcome(subscriber.id, True, "pending")


def _address(
    event: SignupEvent, allow_smtputf8: bool, check_deliverability: bool, blocked: frozenset[str]
) -> Address:
    try:
        return parse_address(
            event.email,
            allow_smtputf8=allow_smtputf8,
            check_deliverability=check_deliverability,
            blocked_domains=blocked,
        )
    except AddressError as exc:
        raise SignupRefused("invalid_address", f"email: {exc.message} ({exc.code})", event.event_id) from None


def _new_subscriber(newsletter_id: int, address: Address, language: str, now: datetime) -> Subscriber:
    return Subscriber(
        newsletter_id=newsletter_id,
        email=address.normalized,
        email_key=address.dedupe_key,
        ascii_email=address.ascii_email,
        domain=address.ascii_domain,
        language=language,
        status=SubscriberStatus.PENDING,
        created_at=now,
        updated_at=now,
    )


def _add_consent(session: Session, subscriber: Subscriber, event: SignupEvent, now: datetime) -> None:
    session.add(
        Consent(
            subscriber=subscriber,
            event_id=event.event_id,
            signed_up_at=event.occurred_at or now,
            ip=event.ip,
            user_agent=event.user_agent,
            source=event.source,
            consent_version=event.consent_version,
            language=event.language,
            method="double_opt_in",
        )
    )


def confirmation_token(tokens: Tokens, subscriber: Subscriber) -> str:
    """The token for ``subscriber``'s confirmation link; raises ``ValueError`` if not pending."""
    if subscriber.status != SubscriberStatus.PENDING or not subscriber.confirm_nonce:
        raise ValueError("only a pending subscriber has a confirmation link")
    return tokens.issue(Purpose.CONFIRM, subscriber.id, subscriber.confirm_nonce)


def check_confirmation(
    session: Session, tokens: Tokens, token: str, max_age_seconds: float
) -> tuple[Subscriber, TokenClaims]:
    """The subscriber a confirmation token is for, without changing anything (for the GET page).

    Raises ``TokenError``: ``forged``, ``expired``, or ``used`` (already confirmed, or superseded).
    """
    claims = tokens.check(Purpose.CONFIRM, token, max_age_seconds)
    subscriber = session.get(Subscriber, claims.subscriber_id)
    if subscriber is None:
        raise TokenError("forged", "this link is not valid")
    if subscriber.status != SubscriberStatus.PENDING or subscriber.confirm_nonce != claims.nonce:
        raise TokenError("used", "this link has already been used")
    return subscriber, claims


def confirm(
    session: Session,
    tokens: Tokens,
    token: str,
    *,
    max_age_seconds: float,
    now: datetime,
    ip: str | None,
    user_agent: str | None,
) -> Subscriber:
    """Confirm the subscription (the POST from the confirmation page): single use.

    Raises ``TokenError`` as ``check_confirmation`` does.
    """
    subscriber, _ = check_confirmation(session, tokens, token, max_age_seconds)
    subscriber.status = SubscriberStatus.CONFIRMED
    subscriber.confirm_nonce = None  # the token stops working
    subscriber.confirmed_at = subscriber.updated_at = now
    consent = session.scalar(
        select(Consent)
        .where(Consent.subscriber_id == subscriber.id, Consent.confirmed_at.is_(None))
        .order_by(Consent.signed_up_at.desc(), Consent.id.desc())
    )
    if consent is not None:
        consent.confirmed_at = now
        consent.confirm_ip = ip
        consent.confirm_user_agent = (user_agent or "")[:512] or None
    session.flush()
    return subscriber


def unsubscribe_token(tokens: Tokens, subscriber_id: int) -> str:
    return tokens.issue(Purpose.UNSUBSCRIBE, subscriber_id)


def unsubscribe(
    session: Session,
    tokens: Tokens,
    token: str,
    *,
    source: str,
    now: datetime,
    request_id: str | None = None,
) -> Subscriber:
    """Unsubscribe the subscriber named by an unsubscribe token and record the feedback event.

    ``source`` is ``one_click`` (RFC 8058), ``page`` or ``mailto``. Idempotent: unsubscribing twice
    records one event per ``request_id`` and leaves the status as it is. Transactional mail (a new
    double opt-in) stays possible: this is not a suppression. Raises ``TokenError`` (``forged``).
    """
    claims = tokens.check(Purpose.UNSUBSCRIBE, token)
    subscriber = session.get(Subscriber, claims.subscriber_id)
    if subscriber is None:
        raise TokenError("forged", "this link is not valid")
    if subscriber.status in (SubscriberStatus.CONFIRMED, SubscriberStatus.PENDING):
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = subscriber.updated_at = now
        event_id = request_id or f"unsubscribe:{subscriber.id}:{now.isoformat()}"
        session.add(
            FeedbackEvent(
                source_event_id=event_id,
                kind="unsubscribe",
                source=source,
                subscriber_id=subscriber.id,
                recipient=None,
                occurred_at=now,
                recorded_at=now,
            )
        )
    session.flush()
    return subscriber
