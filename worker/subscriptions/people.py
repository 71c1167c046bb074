"""What is held about one person, by address: show, export (GDPR Art. 15/20), erase (Art. 17).

An address is found through its de-duplication key in every newsletter. Erasure removes the
personal data (address, consents with IP and user agent, the address in feedback events and in
refused signup events) and keeps only a keyed hash as a suppression (reason ``erasure``), so a
re-import or a new signup cannot add the person again. Delivery ledger rows stay for the send
statistics (their state, language and provider bucket unchanged, so a send's counts do not
move), attached to an anonymised subscriber row that holds no address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.models import (
    Consent,
    Delivery,
    FeedbackEvent,
    Newsletter,
    SignupRefusal,
    Subscriber,
    Suppression,
)
from worker.subscriptions import lifecycle
from worker.subscriptions.addresses import dedupe_key_of
from worker.subscriptions.suppressions import email_hash, suppress

ERASED_DOMAIN = "erased.invalid"  # RFC 2606: .invalid can never be a real mail domain


def person_record(session: Session, address: str, hash_key: str) -> dict[str, Any]:
    """Everything held about ``address`` as JSON-ready data (ISO 8601 times, UTC).

    Keys: ``address``, ``subscribers`` (each with ``consents``, ``deliveries``,
    ``feedback_events``), ``suppressions``, ``refused_signups``.
    """
    key = dedupe_key_of(address)
    subscribers = session.scalars(select(Subscriber).where(Subscriber.email_key == key)).all()
    return {
        "address": address,
        "subscribers": [_subscriber(session, s) for s in subscribers],
        "suppressions": [
            _row(s, "reason", "created_at", "removed_at", "removed_reason")
            for s in session.scalars(
                select(Suppression).where(Suppression.email_hash == email_hash(key, hash_key))
            )
        ],
        "refused_signups": [
            _row(r, "event_id", "received_at", "reason", "detail", "payload")
            for r in _refusals(session, address, key)
        ],
    }


def _subscriber(session: Session, subscriber: Subscriber) -> dict[str, Any]:
    newsletter = session.get(Newsletter, subscriber.newsletter_id)
    data = _row(
        subscriber,
        "id", "email", "ascii_email", "language", "status", "created_at", "updated_at",
        "confirmed_at", "unsubscribed_at", "confirmation_sent_at", "confirmation_error",
        "confirmation_failed_at",
    )  # fmt: skip
    data["newsletter"] = newsletter.slug if newsletter else None
    data["consents"] = [
        _row(
            c,
            "event_id",
            "signed_up_at",
            "ip",
            "user_agent",
            "source",
            "consent_version",
            "language",
            "method",
            "confirmed_at",
            "confirm_ip",
            "confirm_user_agent",
        )
        for c in session.scalars(
            select(Consent).where(Consent.subscriber_id == subscriber.id).order_by(Consent.id)
        )
    ]
    data["deliveries"] = [
        _row(d, "send_id", "language", "state", "sent_at", "reply_code", "reply_text")
        for d in session.scalars(
            select(Delivery).where(Delivery.subscriber_id == subscriber.id).order_by(Delivery.id)
        )
    ]
    data["feedback_events"] = [
        _row(f, "kind", "source", "status_code", "reason", "occurred_at", "detail")
        for f in session.scalars(
            select(FeedbackEvent)
            .where(FeedbackEvent.subscriber_id == subscriber.id)
            .order_by(FeedbackEvent.id)
        )
    ]
    return data


def _row(obj: object, *names: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(obj, name)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _refusals(session: Session, address: str, key: str) -> list[SignupRefusal]:
    """Refused events whose payload holds the address as typed or as its key (case-insensitive
    on PostgreSQL and, for ASCII, on SQLite)."""
    # The payloads are sealed (worker.models.EncryptedText), so SQL cannot search them: each is
    # opened and searched here. Refusals are few (capped per hour, purged after
    # refusal_retention_days), so one pass over them is cheap.
    needles = {address.strip().casefold(), key.casefold()}
    found = []
    for refusal in session.scalars(select(SignupRefusal).order_by(SignupRefusal.id)):
        text = refusal.payload.casefold()
        if any(n in text for n in needles):
            found.append(refusal)
    return found


@dataclass(frozen=True)
class Erasure:
    """What ``erase`` removed: counts per kind."""

    subscribers: int
    consents: int
    feedback_events: int
    refused_signups: int
    suppression_id: int


def erase(session: Session, address: str, *, hash_key: str, now: datetime) -> Erasure:
    """Remove the personal data held about ``address`` and keep a keyed-hash suppression.

    Subscriber rows are anonymised (address replaced by ``erased-<id>@erased.invalid``, status
    ``suppressed``) so that delivery rows keep their send statistics; consents and refused
    signup events are deleted; feedback events lose recipient and detail. Idempotent.
    """
    key = dedupe_key_of(address)
    refusals = _refusals(session, address, key)
    subscribers = session.scalars(select(Subscriber).where(Subscriber.email_key == key)).all()
    consents = feedback = 0
    for subscriber in subscribers:
        for consent in session.scalars(
            select(Consent).where(Consent.subscriber_id == subscriber.id)
        ):
            session.delete(consent)
            consents += 1
        feedback += session.execute(
            update(FeedbackEvent)
            .where(FeedbackEvent.subscriber_id == subscriber.id)
            .values(recipient=None, detail=None)
        ).rowcount  # type: ignore[attr-defined]
        # The deliveries keep their ``domain``: it is a provider bucket ("gmail.com" or "other",
        # ``addresses.provider_bucket``), which names no one. Rewriting it moved the delivery out
        # of the bucket a final send's stored tally (``SendTally``) counts it in, leaving that
        # bucket one delivery higher than the ledger.
        _anonymise(subscriber, email_hash(key, hash_key), now)
    for refusal in refusals:
        session.delete(refusal)
    # earlier suppressions (bounces) keep their reason but lose the address; ``email`` is sealed,
    # so they are found by their keyed hash
    session.execute(
        update(Suppression)
        .where(Suppression.email_hash == email_hash(key, hash_key))
        .values(email=None)
    )
    session.flush()
    row = suppress(
        session, dedupe_key=key, hash_key=hash_key, reason="erasure", now=now, keep_address=False
    )
    return Erasure(len(subscribers), consents, feedback, len(refusals), row.id)


def _anonymise(subscriber: Subscriber, hashed: str, now: datetime) -> None:
    placeholder = f"erased-{subscriber.id}@{ERASED_DOMAIN}"
    subscriber.email = subscriber.ascii_email = placeholder
    subscriber.email_key = f"erased:{hashed[:40]}:{subscriber.id}"
    subscriber.domain = ERASED_DOMAIN
    lifecycle.erase(subscriber, now)


EXPORT_NOTICE = (
    "this output names readers: exports (subscribers export/list, suppressions export) are the "
    "only way addresses leave the newsletter; keep the file encrypted and delete it when done"
)
"""Said on standard error by every command that writes readers' addresses out (issue 17)."""
