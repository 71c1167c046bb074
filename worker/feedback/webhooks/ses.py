"""Amazon SES bounce, complaint and delay notifications delivered by Amazon SNS over HTTPS.

SNS signs every message with the key of a certificate it serves from
``https://sns.<region>.amazonaws.com/…pem``; ``verify`` rebuilds the canonical string (SNS
developer guide, "Verifying the signatures of Amazon SNS messages"), checks it with that
certificate (SignatureVersion 1: RSA-SHA1, 2: RSA-SHA256), and accepts only the configured topics:
anyone can publish signed SNS messages from their own AWS account, so a valid signature alone
proves nothing. Raw message delivery must be off (it drops the signature).

A new subscription first receives a ``SubscriptionConfirmation``: after ``verify``, visit
:func:`subscription_url` (or call :func:`confirm_subscription`).

The SES payload is either a notification (``notificationType``) or an event-publishing record
(``eventType``); both carry a ``mail`` object whose ``headers`` hold our Message-ID and
X-Newsletter-* headers when "include original headers" is on.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from worker.feedback.classification import (
    Classification,
    FeedbackKind,
    Reason,
    classify_feedback_type,
    classify_status,
    enhanced_status,
)
from worker.feedback.mail.delivery_status import diagnostic_text
from worker.feedback.mail.original_message import message_id, verp_local
from worker.feedback.webhooks import (
    WebhookEvent,
    WebhookRejected,
    header,
    iso_time,
    json_body,
    report,
    require_fresh,
)
from worker.safety import json_documents
from worker.sending.identity import BOUNCE_PREFIX, DELIVERY_HEADER, SUBSCRIBER_HEADER

SOURCE = "webhook:ses"
MAX_CERTIFICATE_BYTES = 64 * 1024
_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?$")
# The fields SNS signs, in the order it signs them (absent optional fields are skipped).
_SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_OPTIONAL_FIELDS = frozenset({"Subject"})
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could lead off the SNS host: refuse it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _https_get(url: str) -> bytes:
    opener = urllib.request.build_opener(
        _NoRedirect, urllib.request.HTTPSHandler(context=ssl.create_default_context())
    )
    with opener.open(url, timeout=10) as response:
        data: bytes = response.read(MAX_CERTIFICATE_BYTES + 1)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise ValueError("certificate too large")
    return data


@lru_cache(maxsize=32)
def fetch_signing_certificate(url: str) -> bytes:
    """The PEM certificate at ``url`` (an SNS host only, no redirects), cached per URL."""
    require_sns_url(url, what="SigningCertURL", path_suffix=".pem")
    return _https_get(url)


def require_sns_url(url: object, *, what: str, path_suffix: str = "") -> str:
    """``url`` if it is ``https://sns.<region>.amazonaws.com/…``, else :class:`WebhookRejected`."""
    if not isinstance(url, str):
        raise WebhookRejected(f"{what} missing")
    parts = urlsplit(url)
    host_ok = parts.hostname is not None and _SNS_HOST.match(parts.hostname) is not None
    plain = parts.port is None and parts.username is None and parts.password is None
    if parts.scheme != "https" or not host_ok or not plain or not parts.path.endswith(path_suffix):
        raise WebhookRejected(f"{what} is not an Amazon SNS URL: {url[:200]}")
    return url


@dataclass(frozen=True)
class SnsTrust:
    """What ``verify`` trusts: the subscribed topic ARNs and how to get a signing certificate.

    ``fetch_certificate`` maps a SigningCertURL to PEM bytes (tests inject their own);
    ``max_age`` bounds the message Timestamp (SNS retries an HTTP delivery for up to an hour
    with the default delivery policy).
    """

    topic_arns: Collection[str]
    fetch_certificate: Callable[[str], bytes] = fetch_signing_certificate
    max_age: timedelta = field(default=timedelta(hours=2))


def verify(
    headers: Mapping[str, str], body: bytes, trust: SnsTrust, *, now: datetime | None = None
) -> None:
    """Raise :class:`WebhookRejected` unless ``body`` is signed by SNS for a trusted topic.

    Checks, in order: JSON, message type (and the ``x-amz-sns-message-type`` header if sent),
    topic, signature version, certificate URL, signature over the canonical string, certificate
    validity, Timestamp within ``trust.max_age`` of ``now``.
    """
    document = json_body(body)
    if not isinstance(document, dict):
        raise WebhookRejected("SNS body is not a JSON object")
    kind = document.get("Type")
    if not isinstance(kind, str) or kind not in _SIGNED_FIELDS:
        raise WebhookRejected(f"unknown SNS message type {kind!r}")
    declared = header(headers, "x-amz-sns-message-type")
    if declared is not None and declared != kind:
        raise WebhookRejected("x-amz-sns-message-type header does not match the body")
    topic = document.get("TopicArn")
    if not isinstance(topic, str) or topic not in set(trust.topic_arns):
        raise WebhookRejected(f"topic {str(document.get('TopicArn'))[:200]!r} is not trusted")
    algorithm = _HASHES.get(str(document.get("SignatureVersion")))
    if algorithm is None:
        raise WebhookRejected(f"unsupported SignatureVersion {document.get('SignatureVersion')!r}")
    url = require_sns_url(document.get("SigningCertURL"), what="SigningCertURL", path_suffix=".pem")
    certificate = _certificate(trust, url)
    _check_signature(certificate, document, algorithm())
    current = now or datetime.now(UTC)
    if not certificate.not_valid_before_utc <= current <= certificate.not_valid_after_utc:
        raise WebhookRejected("SNS signing certificate is not valid now")
    timestamp = iso_time(document.get("Timestamp"))
    if timestamp is None:
        raise WebhookRejected("SNS Timestamp missing or unreadable")
    require_fresh(timestamp, now=current, tolerance=trust.max_age)


def string_to_sign(document: Mapping[str, Any]) -> bytes:
    """The canonical ``name\\nvalue\\n`` string SNS signs for ``document``'s Type."""
    fields = _SIGNED_FIELDS.get(str(document.get("Type")), ())
    lines = []
    for name in fields:
        value = document.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise WebhookRejected(f"SNS field {name} missing")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode()


def _certificate(trust: SnsTrust, url: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(trust.fetch_certificate(url))
    except WebhookRejected:
        raise
    except Exception as error:  # network, TLS or PEM errors: all mean "cannot verify"
        raise WebhookRejected(
            f"SNS signing certificate unavailable: {type(error).__name__}"
        ) from None


def _check_signature(
    certificate: x509.Certificate, document: Mapping[str, Any], algorithm: hashes.HashAlgorithm
) -> None:
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise WebhookRejected("SNS signing certificate does not hold an RSA key")
    encoded = document.get("Signature")
    if not isinstance(encoded, str) or not encoded:
        raise WebhookRejected("SNS Signature missing")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRejected("SNS Signature is not base64") from None
    try:
        key.verify(signature, string_to_sign(document), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise WebhookRejected("SNS signature does not match") from None


def subscription_url(body: bytes) -> str | None:
    """The SubscribeURL of a verified ``SubscriptionConfirmation`` (an SNS URL), else None."""
    document = json_body(body)
    if not isinstance(document, dict) or document.get("Type") != "SubscriptionConfirmation":
        return None
    return require_sns_url(document.get("SubscribeURL"), what="SubscribeURL")


def confirm_subscription(url: str, *, get: Callable[[str], bytes] = _https_get) -> None:
    """Visit a SubscribeURL (one :func:`subscription_url` accepted) to confirm the subscription."""
    get(require_sns_url(url, what="SubscribeURL"))


def parse(body: bytes, *, verp_prefix: str = BOUNCE_PREFIX) -> list[WebhookEvent]:
    """Reports for the recipients of an SES Bounce, Complaint or DeliveryDelay notification.

    Returns (feedbackId or SNS MessageId, report) pairs; other SNS types and SES events
    (Send, Delivery, Open, Click, …) give [].
    """
    envelope = json_body(body)
    if not isinstance(envelope, dict) or envelope.get("Type") != "Notification":
        return []
    try:
        notification = json_documents.loads(envelope.get("Message") or "")
    except (TypeError, ValueError):
        return []
    if not isinstance(notification, dict):
        return []
    kind = notification.get("notificationType") or notification.get("eventType")
    reader = _READERS.get(str(kind))
    if reader is None:
        return []
    mail = _MailObject(_as_dict(notification.get("mail")), verp_prefix)
    return reader(_as_dict(notification.get(str(kind)[0].lower() + str(kind)[1:])), mail, envelope)


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _as_list(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


@dataclass(frozen=True)
class _MailObject:
    """The SES ``mail`` object: our references to the original message."""

    data: dict[str, Any]
    verp_prefix: str

    def header(self, name: str) -> str | None:
        for item in _as_list(self.data.get("headers")):
            if str(item.get("name", "")).lower() == name.lower():
                return str(item.get("value"))
        return None

    @property
    def message_id(self) -> str | None:
        common = _as_dict(self.data.get("commonHeaders"))
        return message_id(self.header("Message-ID") or common.get("messageId"))

    @property
    def verp_local(self) -> str | None:
        return verp_local(self.header("Return-Path"), self.verp_prefix) or verp_local(
            self.data.get("source"), self.verp_prefix
        )

    @property
    def refs(self) -> dict[str, object]:
        tags = _as_dict(self.data.get("tags"))
        refs: dict[str, object] = dict(tags)
        for name, key in (
            (DELIVERY_HEADER, "delivery_id"),
            (SUBSCRIBER_HEADER, "subscriber_id"),
        ):
            value = self.header(name)
            if value:
                refs[key] = value.strip()
        return refs


# SES bounce types (SES developer guide, "Bounce types"), used when the recipient's own status
# and diagnostic say nothing specific.
_BY_BOUNCE_TYPE: dict[tuple[str, str], Classification] = {
    ("Permanent", "General"): Classification(FeedbackKind.HARD_BOUNCE, Reason.USER_UNKNOWN, True),
    ("Permanent", "NoEmail"): Classification(FeedbackKind.HARD_BOUNCE, Reason.USER_UNKNOWN, True),
    ("Permanent", "Suppressed"): Classification(
        FeedbackKind.HARD_BOUNCE, Reason.SUPPRESSED_BY_PROVIDER, True
    ),
    ("Permanent", "OnAccountSuppressionList"): Classification(
        FeedbackKind.HARD_BOUNCE, Reason.SUPPRESSED_BY_PROVIDER, True
    ),
    ("Transient", "MailboxFull"): Classification(
        FeedbackKind.SOFT_BOUNCE, Reason.MAILBOX_FULL, False
    ),
    ("Transient", "MessageTooLarge"): Classification(
        FeedbackKind.POLICY_BLOCK, Reason.MESSAGE_TOO_LARGE, False
    ),
    ("Transient", "ContentRejected"): Classification(
        FeedbackKind.POLICY_BLOCK, Reason.CONTENT_REJECTED, False
    ),
    ("Transient", "AttachmentRejected"): Classification(
        FeedbackKind.POLICY_BLOCK, Reason.CONTENT_REJECTED, False
    ),
    ("Transient", "General"): Classification(
        FeedbackKind.SOFT_BOUNCE, Reason.TEMPORARY_FAILURE, False
    ),
}
_UNDETERMINED = Classification(FeedbackKind.SOFT_BOUNCE, Reason.UNCLASSIFIED, False)
_VAGUE = frozenset({Reason.UNCLASSIFIED, Reason.MAILBOX_UNAVAILABLE})


def _bounces(
    bounce: dict[str, Any], mail: _MailObject, envelope: dict[str, Any]
) -> list[WebhookEvent]:
    event_key = str(bounce.get("feedbackId") or envelope.get("MessageId"))
    by_type = _BY_BOUNCE_TYPE.get(
        (str(bounce.get("bounceType")), str(bounce.get("bounceSubType"))), _UNDETERMINED
    )
    events = []
    for recipient in _as_list(bounce.get("bouncedRecipients")):
        status = recipient.get("status")
        diagnostic = diagnostic_text(recipient.get("diagnosticCode"))
        classification = classify_status(
            status, diagnostic, action=recipient.get("action") or "failed"
        )
        if by_type.reason == Reason.SUPPRESSED_BY_PROVIDER or classification.reason in _VAGUE:
            classification = by_type
        events.append(
            _event(
                classification,
                event_key,
                recipient,
                mail,
                status=enhanced_status(status) or enhanced_status(diagnostic),
                diagnostic=diagnostic,
                action="failed",
                occurred_at=iso_time(bounce.get("timestamp")),
            )
        )
    return events


def _complaints(
    complaint: dict[str, Any], mail: _MailObject, envelope: dict[str, Any]
) -> list[WebhookEvent]:
    event_key = str(complaint.get("feedbackId") or envelope.get("MessageId"))
    feedback_type = complaint.get("complaintFeedbackType")
    classification = classify_feedback_type(feedback_type, missing_means_abuse=True)
    if complaint.get("complaintSubType") == "OnAccountSuppressionList":
        # Not sent: the address is on the account suppression list after an earlier complaint.
        classification = Classification(
            FeedbackKind.UNSUBSCRIBE, Reason.SUPPRESSED_BY_PROVIDER, False
        )
    occurred = iso_time(complaint.get("arrivalDate")) or iso_time(complaint.get("timestamp"))
    return [
        _event(
            classification,
            event_key,
            recipient,
            mail,
            feedback_type=feedback_type or "abuse",
            occurred_at=occurred,
        )
        for recipient in _as_list(complaint.get("complainedRecipients"))
    ]


def _delays(
    delay: dict[str, Any], mail: _MailObject, envelope: dict[str, Any]
) -> list[WebhookEvent]:
    event_key = f"{envelope.get('MessageId')}"
    events = []
    for recipient in _as_list(delay.get("delayedRecipients")):
        diagnostic = diagnostic_text(recipient.get("diagnosticCode"))
        classification = classify_status(recipient.get("status"), diagnostic, action="delayed")
        status = enhanced_status(recipient.get("status"))
        events.append(
            _event(
                classification,
                event_key,
                recipient,
                mail,
                status=status,
                diagnostic=diagnostic or delay.get("delayType"),
                action="delayed",
                occurred_at=iso_time(delay.get("timestamp")),
            )
        )
    return events


def _event(
    classification: Classification,
    event_key: str,
    recipient: dict[str, Any],
    mail: _MailObject,
    **fields: Any,
) -> WebhookEvent:
    address = recipient.get("emailAddress")
    return event_key, report(
        classification,
        source=SOURCE,
        event_key=event_key,
        recipient=str(address) if address else None,
        original_message_id=mail.message_id,
        verp_local=mail.verp_local,
        refs=mail.refs,
        **fields,
    )


_READERS: dict[str, Callable[[dict[str, Any], _MailObject, dict[str, Any]], list[WebhookEvent]]] = {
    "Bounce": _bounces,
    "Complaint": _complaints,
    "DeliveryDelay": _delays,
}
