"""One parsed inbound message and the facts every reader of it needs, computed once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.utils import parsedate_to_datetime
from functools import cached_property

from worker.feedback.classification import Classification, FeedbackKind, Reason
from worker.feedback.mail import original_message
from worker.feedback.mail import parts as mime
from worker.feedback.mail.original_message import OriginalReferences
from worker.feedback.report import FeedbackReport, hashed_event_id

MAX_HUMAN_TEXT_CHARS = 128 * 1024
# Headers a receiving MTA adds with the envelope recipient: more trustworthy than To.
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")


@dataclass
class InboundMail:
    """A message that reached the bounce (or unsubscribe) mailbox, with lazily computed facts."""

    message: Message
    raw_digest: str
    verp_prefix: str
    envelope_recipient: str | None

    @classmethod
    def parse(cls, raw: bytes, *, verp_prefix: str, envelope_recipient: str | None) -> InboundMail:
        """Parse ``raw`` within the limits of :mod:`worker.feedback.mail.parts`."""
        digest = hashlib.sha256(raw).hexdigest()
        return cls(mime.parse(raw), digest, verp_prefix, envelope_recipient)

    def header(self, name: str) -> str | None:
        """The first ``name`` header of the inbound message, decoded; None if absent."""
        return mime.header_text(self.message, name)

    @cached_property
    def parts(self) -> list[mime.Part]:
        return list(mime.walk(self.message))

    @cached_property
    def content_type(self) -> str:
        return mime.content_type(self.message)

    @cached_property
    def identity(self) -> str:
        """The Message-ID, else the raw bytes' digest: a report arriving twice keeps it."""
        return original_message.message_id(self.header("Message-ID")) or self.raw_digest

    @cached_property
    def sender(self) -> str | None:
        """The From address (for auto-replies and mailto unsubscribes: the reader)."""
        found = mime.addresses(self.header("From"))
        return found[0] if found else None

    @cached_property
    def recipients(self) -> list[str | None]:
        """Where this message was addressed: envelope first, then Delivered-To & co, then To/Cc."""
        values: list[str | None] = [self.envelope_recipient]
        for name in (*_ENVELOPE_HEADERS, "To", "Cc"):
            values.extend(mime.header_texts(self.message, name))
        return values

    @cached_property
    def human_text(self) -> str:
        """The text parts written by the reporting system (not the returned original), joined."""
        texts: list[str] = []
        size = 0
        for part in self.parts:
            if part.returned or part.content_type != "text/plain" or part.message.is_multipart():
                continue
            text = mime.part_text(part.message)
            texts.append(text)
            size += len(text)
            if size > MAX_HUMAN_TEXT_CHARS:
                break
        return "\n".join(texts)[:MAX_HUMAN_TEXT_CHARS]

    @cached_property
    def original(self) -> OriginalReferences:
        """What the returned original (if any) says about the message we sent."""
        headers = original_message.returned_headers(self.parts, self.human_text)
        return original_message.references(headers, self.verp_prefix)

    @cached_property
    def own_verp(self) -> str | None:
        """The VERP token of the address this report was sent to (our envelope sender)."""
        return original_message.first_verp(self.recipients, self.verp_prefix)

    @cached_property
    def in_reply_to(self) -> str | None:
        """The Message-ID this message answers (In-Reply-To, else the last References entry)."""
        found = original_message.message_id(self.header("In-Reply-To"))
        if found:
            return found
        references = (self.header("References") or "").split()
        return original_message.message_id(references[-1]) if references else None

    @cached_property
    def date(self) -> datetime | None:
        return parse_date(self.header("Date"))

    def report(
        self,
        classification: Classification,
        *,
        source: str,
        recipient: str | None,
        status: str | None = None,
        diagnostic: str | None = None,
        action: str | None = None,
        feedback_type: str | None = None,
        verp_hint: str | None = None,
        message_id_hint: str | None = None,
        occurred_at: datetime | None = None,
        unsubscribe_token: str | None = None,
    ) -> FeedbackReport:
        """A report for one recipient, with the references found anywhere in the message."""
        original = self.original
        recipient = recipient or original.recipient
        return FeedbackReport(
            kind=classification.kind,
            classification=classification,
            recipient=recipient,
            status=status,
            diagnostic=diagnostic[:2000] if diagnostic else None,
            original_message_id=original.message_id or message_id_hint or self.in_reply_to,
            verp_local=self.own_verp or original.verp_local or verp_hint,
            feedback_type=feedback_type,
            source_event_id=hashed_event_id(
                source, self.identity, (recipient or "").lower(), classification.kind
            ),
            action=action,
            subscriber_ref=original.subscriber_ref,
            delivery_ref=original.delivery_ref,
            unsubscribe_token=unsubscribe_token,
            occurred_at=occurred_at or self.date,
            source=source,
        )

    def unknown(
        self, reason: Reason = Reason.UNCLASSIFIED, *, source: str = "mail"
    ) -> FeedbackReport:
        """A report that says "nothing to act on", kept for the record."""
        classification = Classification(FeedbackKind.UNKNOWN, reason, False)
        return self.report(classification, source=source, recipient=self.sender)


def parse_date(value: str | None) -> datetime | None:
    """An RFC 5322 date as an aware datetime; None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo is not None else None
