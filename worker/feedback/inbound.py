"""Inbound messages at the bounce and unsubscribe addresses: stored raw first, then processed.

A receiver (:mod:`worker.feedback.smtp_receiver`, :mod:`worker.feedback.imap_poller`) calls
:func:`store_inbound`
and commits before it acknowledges the message, so nothing is lost when parsing or recording
fails; :func:`process_inbound` then parses the stored bytes into feedback reports and records
them (:func:`worker.feedback.policy.record_feedback`). Both are idempotent: the same bytes are
stored
once (SHA-256 ``digest``), and recording is idempotent on each report's source event id.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from worker.feedback.mail import parse_inbound
from worker.feedback.policy import FeedbackOutcome, FeedbackPolicy, record_feedback
from worker.feedback.replies import ReplyForwarder
from worker.models import FeedbackEvent, InboundMessage
from worker.sending.identity import BOUNCE_PREFIX, UNSUBSCRIBE_PREFIX
from worker.settings import Settings
from worker.subscriptions.tokens import Tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundContext:
    """What processing needs: the feedback ``policy``, ``tokens`` (mailto unsubscribe), the VERP
    and unsubscribe local-part prefixes, and ``replies`` (forwards human mail; None: kept only)."""

    policy: FeedbackPolicy
    tokens: Tokens
    verp_prefix: str = BOUNCE_PREFIX
    unsubscribe_prefix: str = UNSUBSCRIBE_PREFIX
    replies: ReplyForwarder | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> InboundContext:
        """The context of the configured settings (secret key, ``NEWSLETTER_REPLIES_TO``)."""
        return cls(
            policy=FeedbackPolicy.from_settings(settings),
            tokens=Tokens(settings.require_secret_key()),
            replies=ReplyForwarder.from_settings(settings),
        )


def store_inbound(
    session: Session,
    raw: bytes,
    *,
    source: str,
    now: datetime,
    max_bytes: int,
    envelope_from: str | None = None,
    envelope_to: list[str] | None = None,
    total_size: int | None = None,
) -> InboundMessage:
    """Store ``raw`` (RFC 5322 bytes) and flush; returns the new row, or the row already holding
    the same bytes. Over ``max_bytes`` the first ``max_bytes`` are kept and ``truncated`` is set
    (the SMTP receiver refuses such messages before this; IMAP cannot refuse); ``total_size``
    is the size of the whole message when ``raw`` is already a fetched prefix. ``source``:
    ``smtp`` or ``imap``. Database errors propagate: the caller must not acknowledge then."""
    digest = hashlib.sha256(raw).hexdigest()
    existing = session.scalar(select(InboundMessage).where(InboundMessage.digest == digest))
    if existing is not None:
        return existing
    message = InboundMessage(
        received_at=now,
        source=source[:32],
        envelope_from=envelope_from[:320] if envelope_from else None,
        envelope_to=", ".join(envelope_to or []) or None,
        digest=digest,
        raw=raw[:max_bytes],
        size=max(len(raw), total_size or 0),
        truncated=max(len(raw), total_size or 0) > max_bytes,
    )
    session.add(message)
    session.flush()
    return message


def process_inbound(
    session: Session, message: InboundMessage, ctx: InboundContext, *, now: datetime
) -> list[FeedbackOutcome]:
    """Parse a stored message and record its reports; sets ``parsed_at`` and flushes.

    Never raises for hostile content (:func:`worker.feedback.mail.parse_inbound` does not);
    database errors propagate (the raw message is already committed).
    """
    reports = parse_inbound(
        message.raw,
        verp_prefix=ctx.verp_prefix,
        envelope_recipient=_our_recipient(message.envelope_to, ctx),
        unsubscribe_prefix=ctx.unsubscribe_prefix,
    )
    outcomes = []
    for report in reports:
        outcome = record_feedback(
            session,
            report,
            policy=ctx.policy,
            now=now,
            tokens=ctx.tokens,
            inbound_message_id=message.id,
        )
        if ctx.replies is not None and not outcome.duplicate:
            ctx.replies.handle(session, message, report, outcome.event_id, now)
        outcomes.append(outcome)
    message.parsed_at = now
    message.parse_error = None
    session.flush()
    return outcomes


def purge_inbound(session: Session, *, now: datetime, older_than: timedelta) -> int:
    """Delete stored inbound messages received before ``now - older_than``; returns how many.

    A stored bounce or complaint holds a reader's address and often the whole mail they got:
    once recorded, the feedback event keeps what counts (its reference to the message is
    cleared, as ``ON DELETE SET NULL`` says, also on SQLite without foreign keys). Messages
    never processed go too: after the retention period nobody will reprocess them.
    """
    old = select(InboundMessage.id).where(InboundMessage.received_at < now - older_than)
    session.execute(
        update(FeedbackEvent)
        .where(FeedbackEvent.inbound_message_id.in_(old))
        .values(inbound_message_id=None)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(
        delete(InboundMessage)
        .where(InboundMessage.received_at < now - older_than)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


def pending_ids(session: Session, limit: int = 1000) -> list[int]:
    """Ids of stored messages not yet processed (after a crash or a failed recording)."""
    return list(
        session.scalars(
            select(InboundMessage.id)
            .where(InboundMessage.parsed_at.is_(None))
            .order_by(InboundMessage.id)
            .limit(limit)
        )
    )


def _our_recipient(envelope_to: str | None, ctx: InboundContext) -> str | None:
    """The RCPT TO that is one of our VERP or unsubscribe addresses (the first one otherwise)."""
    recipients = [r.strip() for r in (envelope_to or "").split(",") if r.strip()]
    for recipient in recipients:
        local = recipient.rsplit("@", 1)[0].lower()
        if local.startswith((f"{ctx.verp_prefix}+", f"{ctx.unsubscribe_prefix}+")):
            return recipient
    return recipients[0] if recipients else None
