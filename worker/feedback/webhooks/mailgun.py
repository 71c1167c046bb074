"""Mailgun webhooks (JSON, "webhooks v3"): failed, complained and unsubscribed events.

The body is ``{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}``; the
signature is the hex HMAC-SHA256 of ``timestamp + token`` under the domain's HTTP webhook signing
key. ``event-data.id`` is the event id; ``user-variables`` holds what we set with
X-Mailgun-Variables at send time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from worker.feedback.classification import (
    Classification,
    FeedbackKind,
    Reason,
    classify_feedback_type,
    classify_status,
    enhanced_status,
)
from worker.feedback.mail.original_message import message_id, verp_local
from worker.feedback.webhooks import (
    WebhookEvent,
    WebhookRejected,
    json_body,
    report,
    require_fresh,
    unix_time,
)
from worker.sending.identity import BOUNCE_PREFIX

SOURCE = "webhook:mailgun"
DEFAULT_TOLERANCE = timedelta(minutes=10)

# delivery-status / reason values Mailgun sets when it did not even try the recipient's server.
_BY_REASON: dict[str, Classification] = {
    "suppress-bounce": Classification(
        FeedbackKind.HARD_BOUNCE, Reason.SUPPRESSED_BY_PROVIDER, True
    ),
    "suppress-unsubscribe": Classification(
        FeedbackKind.UNSUBSCRIBE, Reason.SUPPRESSED_BY_PROVIDER, False
    ),
    "suppress-complaint": Classification(
        FeedbackKind.UNSUBSCRIBE, Reason.SUPPRESSED_BY_PROVIDER, False
    ),
    "espblock": Classification(FeedbackKind.POLICY_BLOCK, Reason.SENDER_BLOCKED, False),
}
_UNSUBSCRIBE = Classification(FeedbackKind.UNSUBSCRIBE, Reason.LIST_UNSUBSCRIBE, False)


def verify(
    headers: Mapping[str, str],
    body: bytes,
    signing_key: str,
    *,
    now: datetime | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    """Raise :class:`WebhookRejected` unless ``body``'s signature block is valid and fresh."""
    document = json_body(body)
    signature = document.get("signature") if isinstance(document, dict) else None
    if not isinstance(signature, dict):
        raise WebhookRejected("Mailgun signature block missing")
    timestamp, token, given = (
        str(signature.get(k, "")) for k in ("timestamp", "token", "signature")
    )
    if not timestamp or not token or not given:
        raise WebhookRejected("Mailgun signature block incomplete")
    expected = hmac.new(
        signing_key.encode(), (timestamp + token).encode("utf-8", "replace"), hashlib.sha256
    ).hexdigest()
    # Bytes, not str: compare_digest raises TypeError on non-ASCII text (it was an answer 500).
    if not hmac.compare_digest(expected.encode(), given.lower().encode("utf-8", "replace")):
        raise WebhookRejected("Mailgun signature does not match")
    require_fresh(unix_time(timestamp), now=now, tolerance=tolerance)


def signature_token(body: bytes) -> str:
    """The ``signature.token`` of a body that :func:`verify` accepted.

    Mailgun signs only ``timestamp + token``, not the event: the same signature block pasted
    onto another event verifies. The caller remembers each token for the accepted window (see
    :mod:`worker.feedback.replays`) and refuses a token that comes back with another body.
    """
    document = json_body(body)
    signature = document.get("signature") if isinstance(document, dict) else None
    token = signature.get("token") if isinstance(signature, dict) else None
    return str(token or "")


def parse(body: bytes, *, verp_prefix: str = BOUNCE_PREFIX) -> list[WebhookEvent]:
    """The (event id, report) of a failed, complained or unsubscribed event; [] for other events."""
    document = json_body(body)
    data = document.get("event-data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        return []
    classification, status, diagnostic = _classify(data)
    if classification is None:
        return []
    event_key = str(data.get("id"))
    message = _as_dict(data.get("message"))
    headers = _as_dict(message.get("headers"))
    envelope = _as_dict(data.get("envelope"))
    return [
        (
            event_key,
            report(
                classification,
                source=SOURCE,
                event_key=event_key,
                recipient=_text(data.get("recipient")),
                status=status,
                diagnostic=diagnostic,
                action={"failed": "failed"}.get(str(data.get("event")))
                if classification.is_bounce
                else None,
                feedback_type="abuse" if classification.kind == FeedbackKind.COMPLAINT else None,
                original_message_id=message_id(_text(headers.get("message-id"))),
                verp_local=verp_local(_text(envelope.get("sender")), verp_prefix),
                refs=_as_dict(data.get("user-variables")),
                occurred_at=_when(data.get("timestamp")),
            ),
        )
    ]


def _classify(data: dict[str, Any]) -> tuple[Classification | None, str | None, str | None]:
    event = data.get("event")
    if event == "complained":
        return classify_feedback_type("abuse"), None, None
    if event == "unsubscribed":
        return _UNSUBSCRIBE, None, None
    if event != "failed":
        return None, None, None
    delivery = _as_dict(data.get("delivery-status"))
    code = delivery.get("code")
    text = " ".join(
        t for t in (_text(delivery.get("message")), _text(delivery.get("description"))) if t
    )
    prefixed = code is not None and not text.startswith(str(code))
    diagnostic = (f"{code} {text}".strip() if prefixed else text) or None
    status = enhanced_status(_text(delivery.get("enhanced-code"))) or enhanced_status(diagnostic)
    by_reason = _BY_REASON.get(str(data.get("reason")))
    if by_reason is not None:
        return by_reason, status, diagnostic
    action = "delayed" if data.get("severity") == "temporary" else "failed"
    return classify_status(status, diagnostic, action=action), status, diagnostic


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _when(value: object) -> datetime | None:
    try:
        return unix_time(value) if isinstance(value, int | float | str) else None
    except WebhookRejected:
        return None
