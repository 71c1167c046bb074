"""Twilio SendGrid Event Webhook, signed (ECDSA P-256 over SHA-256).

SendGrid signs ``timestamp + raw body`` and sends the signature (base64 DER) in
``X-Twilio-Email-Event-Webhook-Signature`` and the Unix timestamp in
``X-Twilio-Email-Event-Webhook-Timestamp``; the verification key is shown in the mail settings as
base64 DER (SubjectPublicKeyInfo). A body is a JSON array of events; custom args we set at send
time come back as top-level event fields.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from worker.feedback.classification import (
    Classification,
    FeedbackKind,
    Reason,
    classify_feedback_type,
    classify_status,
    enhanced_status,
)
from worker.feedback.mail.original_message import message_id
from worker.feedback.webhooks import (
    WebhookEvent,
    WebhookRejected,
    header,
    json_body,
    report,
    require_fresh,
    unix_time,
)

SOURCE = "webhook:sendgrid"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
DEFAULT_TOLERANCE = timedelta(minutes=10)
MAX_EVENTS = 1000  # SendGrid batches up to a few hundred events a request

# SendGrid's bounce_classification, used when the SMTP response says nothing specific.
_BY_CLASSIFICATION: dict[str, Classification] = {
    "Invalid Address": Classification(FeedbackKind.HARD_BOUNCE, Reason.USER_UNKNOWN, True),
    "Mailbox Unavailable": Classification(
        FeedbackKind.SOFT_BOUNCE, Reason.MAILBOX_UNAVAILABLE, False
    ),
    "Technical": Classification(FeedbackKind.SOFT_BOUNCE, Reason.MAIL_SYSTEM_ERROR, False),
    "Content": Classification(FeedbackKind.POLICY_BLOCK, Reason.CONTENT_REJECTED, False),
    "Reputation": Classification(FeedbackKind.POLICY_BLOCK, Reason.SENDER_BLOCKED, False),
    "Frequency or Volume": Classification(FeedbackKind.POLICY_BLOCK, Reason.RATE_LIMITED, False),
}
_UNCLASSIFIED = Classification(FeedbackKind.SOFT_BOUNCE, Reason.UNCLASSIFIED, False)
_VAGUE = frozenset({Reason.UNCLASSIFIED, Reason.MAILBOX_UNAVAILABLE})
# "dropped": SendGrid did not send because of its own suppression lists.
_DROPPED: dict[str, Classification] = {
    "Bounced Address": Classification(
        FeedbackKind.HARD_BOUNCE, Reason.SUPPRESSED_BY_PROVIDER, True
    ),
    "Unsubscribed Address": Classification(
        FeedbackKind.UNSUBSCRIBE, Reason.SUPPRESSED_BY_PROVIDER, False
    ),
    "Unsubscribed Group": Classification(
        FeedbackKind.UNSUBSCRIBE, Reason.SUPPRESSED_BY_PROVIDER, False
    ),
    "Spam Reporting Address": Classification(
        FeedbackKind.UNSUBSCRIBE, Reason.SUPPRESSED_BY_PROVIDER, False
    ),
}
_UNSUBSCRIBE = Classification(FeedbackKind.UNSUBSCRIBE, Reason.LIST_UNSUBSCRIBE, False)


def load_public_key(key: str) -> ec.EllipticCurvePublicKey:
    """The verification key, given as SendGrid shows it (base64 DER) or as PEM."""
    try:
        if "-----BEGIN" in key:
            loaded = serialization.load_pem_public_key(key.encode())
        else:
            loaded = serialization.load_der_public_key(base64.b64decode("".join(key.split())))
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        raise WebhookRejected("SendGrid verification key is unreadable") from None
    if not isinstance(loaded, ec.EllipticCurvePublicKey):
        raise WebhookRejected("SendGrid verification key is not an EC key")
    return loaded


def verify(
    headers: Mapping[str, str],
    body: bytes,
    public_key: str,
    *,
    now: datetime | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    """Raise :class:`WebhookRejected` unless ``body`` is signed by ``public_key``, freshly."""
    signature_b64 = header(headers, SIGNATURE_HEADER)
    timestamp = header(headers, TIMESTAMP_HEADER)
    if not signature_b64 or not timestamp:
        raise WebhookRejected("SendGrid signature or timestamp header missing")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRejected("SendGrid signature is not base64") from None
    key = load_public_key(public_key)
    try:
        key.verify(signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise WebhookRejected("SendGrid signature does not match") from None
    require_fresh(unix_time(timestamp), now=now, tolerance=tolerance)


def parse(body: bytes) -> list[WebhookEvent]:
    """(sg_event_id, report) for bounce, deferred, dropped, spamreport, unsubscribe events."""
    events = json_body(body)
    if not isinstance(events, list):
        return []
    parsed = (_event(event) for event in events[:MAX_EVENTS] if isinstance(event, dict))
    return [event for event in parsed if event is not None]


def _event(event: dict[str, Any]) -> WebhookEvent | None:
    classification, diagnostic = _classify(event)
    if classification is None:
        return None
    event_key = str(
        event.get("sg_event_id") or f"{event.get('sg_message_id')}:{event.get('event')}"
    )
    status = enhanced_status(_text(event.get("status"))) if classification.is_bounce else None
    return event_key, report(
        classification,
        source=SOURCE,
        event_key=event_key,
        recipient=_text(event.get("email")),
        status=status or enhanced_status(diagnostic),
        diagnostic=diagnostic,
        action={"bounce": "failed", "deferred": "delayed"}.get(str(event.get("event"))),
        feedback_type="abuse" if classification.kind == FeedbackKind.COMPLAINT else None,
        original_message_id=message_id(_text(event.get("smtp-id"))),
        refs=event,
        occurred_at=_when(event.get("timestamp")),
    )


def _when(value: object) -> datetime | None:
    try:
        return unix_time(value) if isinstance(value, int | float | str) else None
    except WebhookRejected:
        return None


def _classify(event: dict[str, Any]) -> tuple[Classification | None, str | None]:
    name = event.get("event")
    if name == "bounce":
        reason = _text(event.get("reason"))
        classification = classify_status(_text(event.get("status")), reason, action="failed")
        if classification.reason in _VAGUE:
            fallback = _BY_CLASSIFICATION.get(
                str(event.get("bounce_classification")), _UNCLASSIFIED
            )
            classification = fallback
        return classification, reason
    if name == "deferred":
        response = _text(event.get("response"))
        return classify_status(None, response or "4", action="delayed"), response
    if name == "dropped":
        reason = _text(event.get("reason"))
        return _DROPPED.get(reason or ""), reason
    if name == "spamreport":
        return classify_feedback_type("abuse"), None
    if name in ("unsubscribe", "group_unsubscribe"):  # a tuple: an unhashable value just misses
        return _UNSUBSCRIBE, None
    return None, None


def _text(value: object) -> str | None:
    return (
        str(value)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value)
        else None
    )
