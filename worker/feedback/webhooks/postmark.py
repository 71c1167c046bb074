"""Postmark bounce, spam-complaint and subscription-change webhooks.

Postmark does not sign webhooks: it sends the HTTP Basic credentials put in the webhook URL
(``https://user:password@host/…``), and publishes its sender IPs. ``verify`` checks those
credentials in constant time; restricting source IPs is left to the proxy.

Bounce ``Type`` values are Postmark's own (HardBounce, SoftBounce, Transient, SpamNotification,
AutoResponder, DnsError, …); the SMTP text in ``Details`` is classified first, the type only when
the text says nothing specific.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any

from worker.feedback.classification import (
    Classification,
    FeedbackKind,
    Reason,
    classify_feedback_type,
    classify_status,
    enhanced_status,
)
from worker.feedback.mail.delivery_status import diagnostic_text
from worker.feedback.webhooks import (
    WebhookEvent,
    WebhookRejected,
    header,
    iso_time,
    json_body,
    report,
)

SOURCE = "webhook:postmark"

_BY_TYPE: dict[str, Classification] = {
    "HardBounce": Classification(FeedbackKind.HARD_BOUNCE, Reason.USER_UNKNOWN, True),
    "BadEmailAddress": Classification(FeedbackKind.HARD_BOUNCE, Reason.BAD_ADDRESS_SYNTAX, True),
    "ManuallyDeactivated": Classification(
        FeedbackKind.HARD_BOUNCE, Reason.SUPPRESSED_BY_PROVIDER, True
    ),
    "DnsError": Classification(FeedbackKind.SOFT_BOUNCE, Reason.NETWORK_ERROR, False),
    "SoftBounce": Classification(FeedbackKind.SOFT_BOUNCE, Reason.TEMPORARY_FAILURE, False),
    "Transient": Classification(FeedbackKind.DELAYED, Reason.TEMPORARY_FAILURE, False),
    "Blocked": Classification(FeedbackKind.POLICY_BLOCK, Reason.SENDER_BLOCKED, False),
    "SpamNotification": Classification(FeedbackKind.POLICY_BLOCK, Reason.CONTENT_REJECTED, False),
    "VirusNotification": Classification(FeedbackKind.POLICY_BLOCK, Reason.CONTENT_REJECTED, False),
    "DMARCPolicy": Classification(FeedbackKind.POLICY_BLOCK, Reason.AUTHENTICATION_FAILED, False),
    "AutoResponder": Classification(FeedbackKind.AUTO_REPLY, Reason.AUTO_REPLIED, False),
    "Unsubscribe": Classification(FeedbackKind.UNSUBSCRIBE, Reason.LIST_UNSUBSCRIBE, False),
    "SpamComplaint": classify_feedback_type("abuse"),
}
_OTHER = Classification(FeedbackKind.UNKNOWN, Reason.UNCLASSIFIED, False)
_VAGUE = frozenset({Reason.UNCLASSIFIED, Reason.MAILBOX_UNAVAILABLE})


def verify(headers: Mapping[str, str], body: bytes, credentials: str) -> None:
    """Raise :class:`WebhookRejected` unless Basic auth carries ``credentials`` (user:password)."""
    value = header(headers, "Authorization") or ""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise WebhookRejected("Postmark webhook without Basic credentials")
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRejected("Postmark Authorization is not base64") from None
    if not hmac.compare_digest(given, credentials.encode()):
        raise WebhookRejected("Postmark webhook credentials do not match")


def parse(body: bytes) -> list[WebhookEvent]:
    """(Postmark ID, report) of a Bounce, SpamComplaint or SubscriptionChange record; else []."""
    record = json_body(body)
    if not isinstance(record, dict):
        return []
    kind = record.get("RecordType")
    if not isinstance(kind, str):  # a list or object here is not a Postmark record
        return []
    if kind in {"Bounce", "SpamComplaint"}:
        return [_bounce(record)]
    if kind == "SubscriptionChange":
        return _subscription_change(record)
    return []


def _bounce(record: dict[str, Any]) -> WebhookEvent:
    details = diagnostic_text(str(record.get("Details") or "")) or None
    by_type = _BY_TYPE.get(str(record.get("Type")), _OTHER)
    classification = by_type
    if by_type.kind in {
        FeedbackKind.HARD_BOUNCE,
        FeedbackKind.SOFT_BOUNCE,
        FeedbackKind.POLICY_BLOCK,
    }:
        from_text = classify_status(None, details, action="failed")
        if (
            details
            and from_text.reason not in _VAGUE
            and by_type.reason != Reason.SUPPRESSED_BY_PROVIDER
        ):
            classification = from_text
    event_key = f"{record.get('RecordType')}:{record.get('ID')}"
    return event_key, report(
        classification,
        source=SOURCE,
        event_key=event_key,
        recipient=_text(record.get("Email")),
        status=enhanced_status(details),
        diagnostic=details or _text(record.get("Description")),
        action="failed" if classification.is_bounce else None,
        feedback_type="abuse" if classification.kind == FeedbackKind.COMPLAINT else None,
        refs=_metadata(record),
        occurred_at=iso_time(record.get("BouncedAt")),
    )


def _subscription_change(record: dict[str, Any]) -> list[WebhookEvent]:
    """Only a reader's own unsubscribe matters: bounce and complaint suppressions arrive as their
    own records, and suppressions we (Customer) or Postmark staff (Admin) made are echoes."""
    manual = (
        record.get("SuppressionReason") == "ManualSuppression"
        and record.get("Origin") == "Recipient"
    )
    if record.get("SuppressSending") is not True or not manual:
        return []
    classification = Classification(FeedbackKind.UNSUBSCRIBE, Reason.LIST_UNSUBSCRIBE, False)
    recipient = _text(record.get("Recipient"))
    event_key = f"SubscriptionChange:{record.get('MessageID')}:{record.get('ChangedAt')}"
    return [
        (
            event_key,
            report(
                classification,
                source=SOURCE,
                event_key=event_key,
                recipient=recipient,
                refs=_metadata(record),
                occurred_at=iso_time(record.get("ChangedAt")),
            ),
        )
    ]


def _metadata(record: dict[str, Any]) -> dict[str, object]:
    metadata = record.get("Metadata")
    return metadata if isinstance(metadata, dict) else {}


def _text(value: object) -> str | None:
    return str(value) if isinstance(value, str) and value else None
