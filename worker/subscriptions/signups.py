"""Signup events and double opt-in: validate, limit, record consent, confirm.

The signup event (version 1, docs/signup-event.md) is the JSON a website sends, through the queue
or the HTTP endpoint; both validate it with ``validate_signup``. ``process_signup`` is what the
signup actor does: every refusal is recorded with its reason (``SignupRefusal``), never raised.
The workflow never sends mail itself: it returns what should happen next
(``SignupOutcome.send_confirmation``; for a new reader also the mail's pacing slot and what the
mail needs) and the caller sends or enqueues the mail. Abuse limits come in
through the ``worker.subscriptions.limits.SignupLimiter`` port. Status changes go through
:mod:`worker.subscriptions.lifecycle` (also unsubscribing and the purge of unconfirmed signups).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from ipaddress import ip_address
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from worker.editions.files import NewsletterProfile
from worker.logs import mask_ip
from worker.models import Consent, Newsletter, SignupRefusal, Subscriber
from worker.states import SubscriberStatus
from worker.subscriptions import lifecycle
from worker.subscriptions.addresses import (
    Address,
    AddressError,
    load_blocked_domains,
    parse_address,
    recipient_domain,
)
from worker.subscriptions.driver import AWAITING, INSERT_CONSENT, INSERT_PENDING, LOOK_UP, driver
from worker.subscriptions.evidence import agent_family, network_of, scrub_payload
from worker.subscriptions.limits import ALLOWED, SignupLimiter, Verdict
from worker.subscriptions.suppressions import email_hash, is_suppressed
from worker.subscriptions.tokens import (
    Purpose,
    TokenClaims,
    TokenError,
    Tokens,
)

SCHEMA_VERSION = 1

log = logging.getLogger(__name__)


def _one_line(text: str) -> str:
    """No control characters (CR/LF header injection, NUL that PostgreSQL refuses)."""
    if _CONTROL.search(text):
        raise ValueError("must be one line without control characters")
    return text


# Unicode's category Cc exactly (C0, DEL, C1): one regex search instead of a category look-up
# per character (issue 16: 1.5 % of a signup's CPU)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[
        str,
        StringConstraints(min_length=min_length, max_length=max_length),
        AfterValidator(_one_line),
    ]


class SignupEvent(BaseModel):
    """A signup event, version 1 (docs/signup-event.md). Unknown fields are refused so that typos
    surface; lengths match the columns of ``Consent`` they are stored in."""

    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1] = 1
    event_id: Annotated[
        str, StringConstraints(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$")
    ]
    # No maximum here: the address check refuses an overlong one naming the rule (too_long)
    email: _text(1_000_000, 3)  # type: ignore[valid-type]
    language: Annotated[
        str,
        StringConstraints(
            min_length=2, max_length=16, pattern=r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$"
        ),
    ]
    newsletter: Annotated[
        str, StringConstraints(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    ] = "weekly"
    source: _text(200) | None = None  # type: ignore[valid-type]
    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    user_agent: _text(512) | None = None  # type: ignore[valid-type]
    consent_version: _text(100) | None = None  # type: ignore[valid-type]
    occurred_at: datetime | None = Field(default=None, strict=False)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        return None if value is None else str(ip_address(value))

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if not 2000 <= value.year <= 2100:
            raise ValueError("must be a time between the years 2000 and 2100")
        return value


class SignupRefused(ValueError):
    """A refused signup event: ``reason`` is a stable code, ``detail`` says what is wrong where.

    Reasons: ``malformed``, ``invalid_address``, ``unsupported_language``, ``unknown_newsletter``,
    ``ip_limit``, ``suppressed``; for a recorded signup that got no confirmation mail:
    ``resend_window``, ``address_limit``. ``code`` names the broken rule of an
    ``invalid_address`` (``too_long``, ``no_domain``, … see ``addresses.parse_address``).
    """

    def __init__(
        self, reason: str, detail: str, event_id: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.event_id = event_id
        self.code = code


@dataclass(frozen=True)
class AddressRules:
    """How addresses are checked at signup (from settings; see
    ``worker.subscriptions.addresses``)."""

    allow_smtputf8: bool = True
    check_deliverability: bool = False
    dns_timeout: float = 5.0
    blocked_domains: frozenset[str] = field(default_factory=frozenset)

    @staticmethod
    @cache
    def from_settings(settings: Any) -> AddressRules:
        """From ``worker.settings.Settings``; reads ``blocked_domains_path`` once per process."""
        return AddressRules(
            allow_smtputf8=settings.smtputf8_relay,
            check_deliverability=settings.check_deliverability,
            dns_timeout=settings.dns_timeout_seconds,
            blocked_domains=load_blocked_domains(settings.blocked_domains_path),
        )


@dataclass(frozen=True)
class ValidSignup:
    """A signup event that passed the schema and the address check."""

    event: SignupEvent
    address: Address


def parse_signup_event(data: Any) -> SignupEvent:
    """Validate a decoded JSON value as a signup event (a JSON string holding the object, as
    some PHP sites send, is decoded first).

    Raises ``SignupRefused`` with reason ``malformed`` (not an object, missing or unknown fields,
    wrong types; the detail names each field) — the address itself is checked later.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise SignupRefused("malformed", f"event: not JSON ({exc})") from None
    event_id = data.get("event_id") if isinstance(data, dict) else None
    event_id = _clean(event_id)[:100] if isinstance(event_id, str) and event_id else None
    if not isinstance(data, dict):
        raise SignupRefused("malformed", f"expected a JSON object, got {type(data).__name__}")
    try:
        return SignupEvent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SignupRefused("malformed", problems, event_id) from None


def validate_signup(
    data: Any, rules: AddressRules, languages: Sequence[str] | None = None
) -> ValidSignup:
    """The one validation of both entry points: schema, address, and (if ``languages`` is
    given) the language. Raises ``SignupRefused``."""
    event = parse_signup_event(data)
    if languages is not None:
        event = event.model_copy(update={"language": _language(event, languages)})
    try:
        address = parse_address(
            event.email,
            allow_smtputf8=rules.allow_smtputf8,
            check_deliverability=rules.check_deliverability,
            dns_timeout=rules.dns_timeout,
            blocked_domains=rules.blocked_domains,
        )
    except AddressError as exc:
        raise SignupRefused(
            "invalid_address", f"email: {exc.message} ({exc.code})", event.event_id, exc.code
        ) from None
    return ValidSignup(event, address)


def _language(event: SignupEvent, languages: Sequence[str]) -> str:
    """The exact language tag, or its base language (``be-BY`` -> ``be``); else refused."""
    tag = event.language.replace("_", "-").lower()
    for candidate in (tag, tag.split("-")[0]):
        if candidate in languages:
            return candidate
    raise SignupRefused(
        "unsupported_language",
        f"language: {event.language!r} is not one of {', '.join(languages)}",
        event.event_id,
    )


def _clean(text: str) -> str:
    """Text that any database stores: lone surrogates replaced, NUL removed."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


MAX_REFUSAL_PAYLOAD = 1024
"""Characters of a refused event kept to debug the website's integration (finding 8 of issue 13:
8 KB per refusal let a flood fill the database)."""

MAX_REFUSAL_DETAIL = 500

LIMIT_REASONS = frozenset(
    {"ip_limit", "resend_window", "address_limit", "suppressed", "record_limit"}
)
"""Refusals of a valid event: stored without the event, so without the address (the docs promise
that a limited or suppressed signup stores nothing about the person)."""


def record_refusal(
    session: Session,
    refusal: SignupRefused,
    payload: Any,
    now: datetime,
    *,
    limiter: SignupLimiter | None = None,
    source: str | None = None,
) -> SignupRefusal | None:
    """Keep a refused event with its reason; returns the row, or None when ``limiter`` refuses to
    store one more from ``source`` (an IP; the refusal is then only answered and counted).

    A refusal in :data:`LIMIT_REASONS` keeps no payload (``"{}"``); any other keeps the event as
    received, cut at :data:`MAX_REFUSAL_PAYLOAD` characters; the detail at
    :data:`MAX_REFUSAL_DETAIL`. Purged after ``refusal_retention_days`` (:func:`purge_refusals`).
    """
    if limiter is not None and not limiter.allow_record(source).allowed:
        log.info("signup refusal not stored (record limit): %s", refusal.reason)
        return None
    # the event's own ip and user_agent are cut like consent evidence; IPs in free text masked
    kept = "{}" if refusal.reason in LIMIT_REASONS else _payload_text(scrub_payload(payload))
    text = mask_ip(kept)
    row = SignupRefusal(
        event_id=_clean(refusal.event_id)[:100] if refusal.event_id else None,
        received_at=now,
        reason=refusal.reason[:64],
        detail=_clean(refusal.detail)[:MAX_REFUSAL_DETAIL],
        payload=_clean(text[:MAX_REFUSAL_PAYLOAD]),
    )
    session.add(row)
    session.flush()
    return row


def _payload_text(payload: Any) -> str:
    if isinstance(payload, str):
        return payload[:MAX_REFUSAL_PAYLOAD]
    if isinstance(payload, bytes):
        return payload[:MAX_REFUSAL_PAYLOAD].decode("utf-8", "replace")
    try:
        return json.dumps(payload, ensure_ascii=False, default=str)[:MAX_REFUSAL_PAYLOAD]
    except (TypeError, ValueError, RecursionError):
        return repr(payload)[:MAX_REFUSAL_PAYLOAD]


def purge_refusals(session: Session, *, now: datetime, older_than: timedelta) -> int:
    """Delete the signup refusals received longer ago than ``older_than``; returns how many."""
    result = session.execute(
        delete(SignupRefusal).where(SignupRefusal.received_at < now - older_than)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class SignupOutcome:
    """What a signup leads to. The same HTTP answer is given for every outcome (no enumeration).

    ``status``: ``pending`` (a confirmation mail is due), ``change_pending`` (a confirmed reader
    asked for a change, e.g. of language: a confirmation mail is due, nothing changes until the
    reader confirms), ``already_confirmed``, ``suppressed``, ``duplicate_event``, ``refused`` or
    ``limited`` (recorded, no mail: see ``reason``).
    """

    subscriber_id: int | None
    send_confirmation: bool
    status: str
    reason: str | None = None
    # Checked against the mailbox's resend window: a new subscriber or one already pending (only
    # an unsubscribed reader signing up again, or a first change, starts a window afresh)
    repeat: bool = False
    # A new reader's confirmation mail: the recipient domain's pacing slot, taken with the limits
    # (None when not taken: the mail then takes its own), and a transient copy of the reader
    # holding what the mail needs (as ``awaiting_confirmation`` reads it; None otherwise)
    slot: Verdict | None = None
    reader: Subscriber | None = None


def process_signup(
    session: Session,
    data: Any,
    *,
    newsletter: Newsletter,
    profile: NewsletterProfile,
    rules: AddressRules,
    limiter: SignupLimiter,
    hash_key: str,
    now: datetime,
) -> SignupOutcome:
    """Everything the signup actor does with one event, as received (any JSON value).

    Validates, applies the per-IP limit, records the signup (``sign_up``) and the per-address
    confirmation limits; for a new reader also takes the confirmation mail's domain slot
    (``SignupOutcome.slot``, with the limits in one call) and returns the reader's copy the mail
    needs (``SignupOutcome.reader``). Never raises ``SignupRefused``: a refusal is recorded
    and returned as status ``refused`` or ``limited`` with its reason. ``newsletter`` is the
    default one; an event naming another slug uses that one.
    """
    try:
        valid = validate_signup(data, rules, profile.languages)
        event = valid.event
        known: _Known | None = None
        if event.newsletter == newsletter.slug:
            # the usual case: the event, the suppression list and the subscriber in one query
            known = _look_up(session, valid, newsletter.id, hash_key)
            seen = known.seen
        else:
            seen = _seen(session, event.event_id)
        if seen:  # before the IP limit: a redelivery is not counted
            return SignupOutcome(None, False, "duplicate_event")
        newsletter = _newsletter(session, newsletter, event)
        mailbox: Verdict | None = None  # the mailbox's verdict, when taken with the IP's
        slot: Verdict | None = None  # the recipient domain's, taken with them
        verdict = ALLOWED
        if known is not None and known.new_reader:
            # A new reader is mailed unless a limit refuses: the IP's limit, the mailbox's and
            # the mail's domain slot in one Redis call, each counted only if the one before
            # allowed (as separate calls would). The mailbox is then counted before the writes
            # rather than after them: a signup whose transaction fails is retried within the
            # resend window and limited.
            address = valid.address
            domain = recipient_domain(address.ascii_email, address.normalized)
            verdict, mailbox, slot = limiter.allow_new_reader(event.ip, address.mailbox_key, domain)
        elif event.ip:
            verdict = limiter.allow_signup(event.ip)
        if not verdict.allowed:  # ALLOWED without an IP
            detail = "too many signups from this network in the last hour"  # no IP stored
            raise SignupRefused("ip_limit", detail, event.event_id)
        outcome = sign_up(
            session,
            valid,
            newsletter_id=newsletter.id,
            now=now,
            hash_key=hash_key,
            new_event=True,
            known=known,
        )
    except SignupRefused as refusal:
        record_refusal(session, refusal, data, now, limiter=limiter, source=_source(data))
        return SignupOutcome(None, False, "refused", refusal.reason)
    if outcome.status == "suppressed":
        # Recorded without the payload: it would hold the address of an erased person again.
        detail = "the address is on the suppression list (by keyed hash); nothing stored or sent"
        kept = SignupRefused("suppressed", detail, event.event_id)
        record_refusal(session, kept, {}, now, limiter=limiter, source=event.ip)
        return replace(outcome, reason="suppressed")
    if not outcome.send_confirmation:
        return outcome
    # Keyed on the mailbox: target+1@, target+2@ … are new subscribers but one inbox, so a new
    # subscriber counts as a repeat and waits for the mailbox's resend window (empty for a
    # mailbox never mailed, so a first signup is never held back).
    if mailbox is None:  # taken with the IP's for a new reader (then ``outcome.repeat``)
        mailbox = limiter.allow_confirmation(valid.address.mailbox_key, repeat=outcome.repeat)
    verdict = mailbox
    if verdict.allowed:
        return outcome if slot is None else replace(outcome, slot=slot)
    detail = (
        f"signup recorded, no confirmation mail: {verdict.reason} "
        f"(next one possible in {verdict.retry_after:.0f} s)"
    )
    kept = SignupRefused(verdict.reason or "limited", detail, event.event_id)
    record_refusal(session, kept, {}, now, limiter=limiter, source=event.ip)
    return replace(outcome, send_confirmation=False, status="limited", reason=verdict.reason)


def _source(data: Any) -> str | None:
    """The ``ip`` of an event as received (it may be refused as a whole), for the record limit."""
    ip = data.get("ip") if isinstance(data, dict) else None
    return ip if isinstance(ip, str) and len(ip) <= 64 else None


def _newsletter(session: Session, default: Newsletter, event: SignupEvent) -> Newsletter:
    if event.newsletter == default.slug:
        return default
    other = session.scalar(select(Newsletter).where(Newsletter.slug == event.newsletter))
    if other is None:
        raise SignupRefused(
            "unknown_newsletter", f"newsletter: no newsletter {event.newsletter!r}", event.event_id
        )
    return other


def _seen(session: Session, event_id: str) -> bool:
    """Whether a consent already records the event ``event_id`` (a queue message redelivered)."""
    return session.scalar(select(Consent.id).where(Consent.event_id == event_id)) is not None


@dataclass(frozen=True)
class _Known:
    """What the database holds about a signup before it is recorded (:func:`_look_up`)."""

    seen: bool  # a consent records the event already (a queue message redelivered)
    suppressed: bool  # an active suppression holds the address's keyed hash
    subscriber_id: int | None  # the subscriber of this address on this newsletter, if any

    @property
    def new_reader(self) -> bool:
        """A first signup of this address (nearly every signup): it will be written as a new
        pending reader and, limits allowing, mailed (``SignupOutcome.repeat`` True)."""
        return not (self.seen or self.suppressed) and self.subscriber_id is None


def _look_up(session: Session, valid: ValidSignup, newsletter_id: int, hash_key: str) -> _Known:
    """The duplicate-event check, the suppression check and the subscriber lookup of one signup
    in ONE statement (three scalar subqueries, ``driver.LOOK_UP``, on the session's DBAPI
    connection). Read-only: the checks still act in the order :func:`process_signup` gives."""
    db = driver(session)
    seen, suppressed, subscriber_id = db.rows(
        LOOK_UP,
        {
            "event_id": valid.event.event_id,
            "hashed": email_hash(valid.address.dedupe_key, hash_key),
            "newsletter_id": newsletter_id,
            "email_key": db.seal("email_key", valid.address.dedupe_key),
        },
    )[0]
    return _Known(seen is not None, suppressed is not None, subscriber_id)


def _insert_new(
    session: Session, valid: ValidSignup, newsletter_id: int, now: datetime
) -> SignupOutcome | None:
    """A new reader's pending subscriber and consent, in two statements on the session's DBAPI
    connection (``driver.INSERT_PENDING``, ``driver.INSERT_CONSENT``; no unit of work:
    nothing in the session tracks them). The outcome carries a transient copy of the reader
    (``SignupOutcome.reader``) for the confirmation mail, so that ``handle_signup`` need not
    read the row back. None when a concurrent signup of the same address inserted the
    subscriber first (the caller goes the general way)."""
    db = driver(session)
    values = lifecycle.pending_values(newsletter_id, valid.address, valid.event.language, now)
    plain = {column: values[column] for column in _MAILED_COLUMNS}
    for column in ("email", "email_key", "ascii_email"):
        values[column] = db.seal(column, values[column])
    inserted = db.rows(INSERT_PENDING, values)
    if not inserted:
        return None
    subscriber_id = int(inserted[0][0])
    db.rows(INSERT_CONSENT, _consent_values(subscriber_id, valid.event, now))
    plain["status"] = SubscriberStatus.PENDING
    reader = Subscriber(id=subscriber_id, **plain)  # a copy, not added to the session
    return SignupOutcome(subscriber_id, True, "pending", repeat=True, reader=reader)


# A new reader's columns its confirmation mail needs (with ``id`` and ``status``; as
# ``AWAITING_COLUMNS``)
_MAILED_COLUMNS = ("language", "email", "ascii_email", "confirm_nonce")


def sign_up(
    session: Session,
    valid: ValidSignup,
    *,
    newsletter_id: int,
    now: datetime,
    hash_key: str,
    new_event: bool = False,
    known: _Known | None = None,
) -> SignupOutcome:
    """Record a validated signup: create or refresh a pending subscriber and its consent.

    A suppressed address (also an erased person, by keyed hash) is not stored and gets nothing.
    A new signup sets the subscriber's language. New, pending and unsubscribed subscribers go
    (again) through double opt-in. A confirmed subscriber stays as it is: a signup asking for
    another language is a change that takes the reader's confirmation (status
    ``change_pending``: the consent records the asked language, the reader gets a confirmation
    mail, and only :func:`confirm` applies it). A repeated event id is a no-op (at-least-once
    delivery of queue messages); ``new_event`` says the caller has just checked that in this
    transaction (one query less per signup); ``known`` is what :func:`_look_up` found in this
    transaction (then a new reader is written without the ORM's unit of work).
    """
    event, address = valid.event, valid.address
    if known is not None:
        if known.seen:
            return SignupOutcome(None, False, "duplicate_event")
        if known.suppressed:
            return SignupOutcome(None, False, "suppressed")
        if known.subscriber_id is None:
            fresh = _insert_new(session, valid, newsletter_id, now)
            if fresh is not None:
                return fresh
    elif not new_event and _seen(session, event.event_id):
        return SignupOutcome(None, False, "duplicate_event")
    if known is None and is_suppressed(session, email_hash(address.dedupe_key, hash_key)):
        return SignupOutcome(None, False, "suppressed")
    subscriber = session.scalar(
        select(Subscriber).where(
            Subscriber.newsletter_id == newsletter_id, Subscriber.email_key == address.dedupe_key
        )
    )
    if subscriber is None:
        subscriber, _ = lifecycle.insert_pending(
            session, newsletter_id, address, event.language, now
        )
    repeat = subscriber.status == SubscriberStatus.PENDING  # new (inserted) or still pending
    if subscriber.status == SubscriberStatus.SUPPRESSED:
        return SignupOutcome(subscriber.id, False, "suppressed")
    _add_consent(session, subscriber, event, now)
    if subscriber.status == SubscriberStatus.CONFIRMED:
        # Anyone may type a reader's address: a change to a confirmed reader waits for them.
        if event.language == subscriber.language:
            session.flush()
            return SignupOutcome(subscriber.id, False, "already_confirmed")
        changing = subscriber.confirm_nonce is not None
        lifecycle.request_change(subscriber, now)
        session.flush()
        return SignupOutcome(subscriber.id, True, "change_pending", repeat=changing)
    subscriber.language = event.language  # a new signup (not yet confirmed) sets the language
    subscriber.updated_at = now
    lifecycle.enrol(subscriber, now)
    session.flush()
    return SignupOutcome(subscriber.id, True, "pending", repeat=repeat)


def _add_consent(
    session: Session, subscriber: Subscriber, event: SignupEvent, now: datetime
) -> None:
    values = _consent_values(subscriber.id, event, now)
    del values["subscriber_id"]
    session.add(Consent(subscriber=subscriber, **values))


def _consent_values(subscriber_id: int, event: SignupEvent, now: datetime) -> dict[str, Any]:
    """The consent row a signup event records (evidence cut to a network and a browser family)."""
    return {
        "subscriber_id": subscriber_id,
        "event_id": event.event_id,
        "signed_up_at": event.occurred_at or now,
        "ip": network_of(event.ip),
        "user_agent": agent_family(event.user_agent),
        "source": event.source,
        "consent_version": event.consent_version,
        "language": event.language,
        "method": "double_opt_in",
        "confirmed_at": None,
        "confirm_ip": None,
        "confirm_user_agent": None,
    }


def awaiting_confirmation(session: Session, subscriber_id: int) -> tuple[Subscriber | None, bool]:
    """(the subscriber, whether their confirmation is a re-permission) in one query; the
    subscriber is None unless it :func:`awaits_confirmation`.

    The subscriber is a transient copy holding only what a confirmation mail needs (``id``,
    ``language``, ``email``, ``ascii_email``, ``status``, ``confirm_nonce``), read with one
    statement on the session's DBAPI connection (``driver.AWAITING``; no ORM loading, only the
    two address columns opened) and NOT attached to
    ``session``: changes to it are not written (see ``actors.record_confirmation_outcome``).

    A re-permission: a reader imported from another list without consent evidence, asked to
    confirm before any edition (``worker.subscriptions.imports``); their mail says so."""
    db = driver(session)
    rows = db.rows(AWAITING, {"subscriber_id": subscriber_id})
    if not rows:
        return None, False
    *columns, reasked = rows[0]
    values = dict(zip(AWAITING_COLUMNS, columns, strict=True))  # a copy as read, not a write
    values["email"] = db.open("email", values["email"])
    values["ascii_email"] = db.open("ascii_email", values["ascii_email"])
    values["status"] = SubscriberStatus(values["status"])
    subscriber = Subscriber(**values)
    if not awaits_confirmation(subscriber):
        return None, False
    return subscriber, bool(reasked)


AWAITING_COLUMNS = ("id", "language", "email", "ascii_email", "status", "confirm_nonce")
"""The subscriber's columns :func:`awaiting_confirmation` reads (``driver.AWAITING``)."""


def awaits_confirmation(subscriber: Subscriber) -> bool:
    """True for a pending subscriber, and for a confirmed one with a change waiting for its
    confirmation (``confirm_nonce`` set by ``lifecycle.request_change``)."""
    return bool(subscriber.confirm_nonce) and subscriber.status in (
        SubscriberStatus.PENDING,
        SubscriberStatus.CONFIRMED,
    )


def confirmation_token(tokens: Tokens, subscriber: Subscriber) -> str:
    """The token for ``subscriber``'s confirmation link; raises ``ValueError`` unless the
    subscriber :func:`awaits_confirmation`."""
    if not awaits_confirmation(subscriber) or not subscriber.confirm_nonce:
        raise ValueError("only a pending subscriber or a pending change has a confirmation link")
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
    if not awaits_confirmation(subscriber) or subscriber.confirm_nonce != claims.nonce:
        raise TokenError("used", "this link has already been used")
    return subscriber, claims


def subscriber_of_link(session: Session, tokens: Tokens, token: str) -> Subscriber | None:
    """The subscriber a correctly signed confirmation link names, however old the link is
    (for the language of an error page and the "send me a new mail" form); None if forged."""
    try:
        claims = tokens.check(Purpose.CONFIRM, token, None)
    except TokenError:
        return None
    return session.get(Subscriber, claims.subscriber_id)


def resend_target(session: Session, tokens: Tokens, token: str) -> Subscriber | None:
    """The still-pending subscriber an expired (or current) confirmation link was for, who may
    get a new confirmation mail; None for forged links, used links and anyone not pending."""
    subscriber = subscriber_of_link(session, tokens, token)
    if subscriber is None or subscriber.status != SubscriberStatus.PENDING:
        return None
    claims = tokens.check(Purpose.CONFIRM, token, None)
    return subscriber if claims.nonce == subscriber.confirm_nonce else None


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

    Records when and from where (the IP's network and the user agent's family,
    ``worker.subscriptions.evidence``) on the latest unconfirmed consent. For a
    confirmed reader's pending change, applies the language that consent asked for. Raises
    ``TokenError`` as ``check_confirmation`` does.
    """
    subscriber, _ = check_confirmation(session, tokens, token, max_age_seconds)
    consent = session.scalar(
        select(Consent)
        .where(Consent.subscriber_id == subscriber.id, Consent.confirmed_at.is_(None))
        .order_by(Consent.id.desc())
    )
    if subscriber.status == SubscriberStatus.CONFIRMED:
        language = consent.language if consent is not None else None
        lifecycle.confirm_change(subscriber, language or subscriber.language, now)
    else:
        lifecycle.confirm(subscriber, now)  # the token stops working
    if consent is not None:
        consent.confirmed_at = now
        consent.confirm_ip = network_of(ip)
        consent.confirm_user_agent = agent_family(_clean(user_agent or ""))
    session.flush()
    return subscriber
