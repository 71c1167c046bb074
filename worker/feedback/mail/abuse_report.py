"""RFC 5965 feedback reports (ARF): complaints, and the DMARC failure reports that share the format.

Only ``Feedback-Type: abuse`` and ``fraud`` are a reader's complaint. ``auth-failure`` (RFC 6591,
DMARC forensic reports) says that someone sent mail in our name that failed authentication: it is
often a spoof that reuses a real subscriber's id, so it must never unsubscribe anyone (else a
spoofer could unsubscribe people at will). ``not-spam`` undoes nothing we track; ``virus`` and
``other`` are recorded without action.
"""

from __future__ import annotations

from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from worker.feedback.classification import classify_feedback_type
from worker.feedback.mail.mail import InboundMail, parse_date
from worker.feedback.mail.original_message import first_verp
from worker.feedback.mail.parts import addresses, header_text, header_texts, part_text
from worker.feedback.report import FeedbackReport

MAX_COMPLAINT_RECIPIENTS = 10


def read(mail: InboundMail) -> list[FeedbackReport]:
    """One report per complained-about recipient; [] if ``mail`` is not a feedback report."""
    fields = _feedback_fields(mail)
    if fields is None:
        return []
    feedback_type = (header_text(fields, "Feedback-Type") or "").strip().lower() or None
    classification = classify_feedback_type(feedback_type)
    # Original-Rcpt-To is optional and many providers redact it; the returned To or our VERP
    # token then identify the reader.
    recipients: list[str | None] = [
        address
        for value in header_texts(fields, "Original-Rcpt-To", limit=MAX_COMPLAINT_RECIPIENTS)
        for address in addresses(value) or [value.strip("<> ")]
        if "@" in address
    ] or [None]
    auth_failure = header_text(fields, "Auth-Failure")
    verp_hint = first_verp([header_text(fields, "Original-Mail-From")], mail.verp_prefix)
    return [
        mail.report(
            classification,
            source="arf",
            recipient=recipient,
            feedback_type=feedback_type,
            diagnostic=f"Auth-Failure: {auth_failure}" if auth_failure else None,
            verp_hint=verp_hint,
            occurred_at=parse_date(header_text(fields, "Arrival-Date")),
        )
        for recipient in recipients[:MAX_COMPLAINT_RECIPIENTS]
    ]


def _feedback_fields(mail: InboundMail) -> Message | None:
    for part in mail.parts:
        if part.content_type != "message/feedback-report":
            continue
        payload = part.message.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        return HeaderParser(policy=compat32).parsestr(part_text(part.message).lstrip("\r\n"))
    if mail.content_type == "multipart/report" and _report_type(mail.message) == "feedback-report":
        return Message()  # declared a feedback report but lost its fields: record as "other"
    return None


def _report_type(message: Message) -> str:
    try:
        value = message.get_param("report-type")
    except Exception:
        return ""
    return value.strip().lower() if isinstance(value, str) else ""
