"""One normalised piece of feedback about one recipient, whatever its source.

Inbound mail (DSN, ARF, auto-reply, mailto unsubscribe) and every provider webhook produce the
same :class:`FeedbackReport`; recording it as a feedback event and attributing it to a delivery is
the caller's work, which uses ``verp_local``, then ``original_message_id``, then ``recipient``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from worker.feedback.classification import Classification, FeedbackKind

MAX_EVENT_ID_LENGTH = 200  # FeedbackEvent.source_event_id is String(200)

# Keys under which a sending adapter puts our ids into a provider's per-message metadata
# (SES message tags, Postmark Metadata, SendGrid custom_args, Mailgun X-Mailgun-Variables);
# the webhook parsers read them back as delivery_ref / subscriber_ref.
METADATA_DELIVERY_KEY = "delivery_id"
METADATA_SUBSCRIBER_KEY = "subscriber_id"


@dataclass(frozen=True)
class FeedbackReport:
    """What came back about one recipient of one message, normalised.

    ``kind`` equals ``classification.kind``. ``status`` is the RFC 3463 code as found,
    ``verp_local`` what follows ``bounces+`` in our envelope sender, ``feedback_type`` the ARF
    Feedback-Type (RFC 5965 §3.1), ``source_event_id`` a stable id, the same when the same
    report arrives twice (recording is idempotent on it). ``subscriber_ref``/``delivery_ref``
    are the values of X-Newsletter-Subscriber/X-Newsletter-Delivery (or provider metadata) if
    present; ``unsubscribe_token`` is set for mailto unsubscribes; ``source`` names where it
    came from (dsn, bounce_text, arf, auto_reply, mailto, dmarc, mail, webhook:ses, …).
    """

    kind: FeedbackKind
    classification: Classification
    recipient: str | None
    status: str | None
    diagnostic: str | None
    original_message_id: str | None
    verp_local: str | None
    feedback_type: str | None
    source_event_id: str
    action: str | None = None
    subscriber_ref: str | None = None
    delivery_ref: str | None = None
    unsubscribe_token: str | None = None
    occurred_at: datetime | None = None
    source: str = "mail"

    def __post_init__(self) -> None:
        if self.kind != self.classification.kind:
            raise ValueError(
                f"kind {self.kind} differs from classification {self.classification.kind}"
            )
        if not self.source_event_id or len(self.source_event_id) > MAX_EVENT_ID_LENGTH:
            raise ValueError("source_event_id must be 1-200 characters")


def hashed_event_id(source: str, *parts: str | None) -> str:
    """``source:<40 hex>``: a SHA-256 of the parts, for ids built from untrusted text."""
    digest = hashlib.sha256("\x1f".join(p or "" for p in parts).encode("utf-8", "replace"))
    return f"{source}:{digest.hexdigest()[:40]}"


def event_id(source: str, *parts: str | None) -> str:
    """``source:part:part``, readable in logs; hashed when too long or not printable ASCII."""
    readable = ":".join([source, *(p or "" for p in parts)])
    if len(readable) <= MAX_EVENT_ID_LENGTH and readable.isascii() and readable.isprintable():
        return readable
    return hashed_event_id(source, *parts)
