"""Provider webhooks (SES via SNS, Postmark, SendGrid, Mailgun) read into feedback reports.

Every provider module has the same two functions:

``verify(headers, body, secret_or_key, ...) -> None``
    Raise :class:`WebhookRejected` unless the request is authentic and fresh. ``headers`` is any
    mapping (names are matched case-insensitively), ``body`` the raw request bytes exactly as
    received (signatures cover bytes, not re-serialised JSON).
``parse(body) -> list[tuple[str, FeedbackReport]]``
    The provider's event id and the normalised report for each event that is feedback; events
    that are not (sent, delivered, opened, clicked) are left out. Call only after ``verify``.

Recording is idempotent on ``FeedbackReport.source_event_id``, so a provider's retry is a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.feedback.classification import Classification
from worker.feedback.report import (
    METADATA_DELIVERY_KEY,
    METADATA_SUBSCRIBER_KEY,
    FeedbackReport,
    event_id,
)
from worker.safety import json_documents

__all__ = ["WebhookEvent", "WebhookRejected", "header", "json_body", "report", "require_fresh"]

WebhookEvent = tuple[str, FeedbackReport]


class WebhookRejected(Exception):
    """A webhook request that must not be processed; ``reason`` says why (safe to log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` in ``headers``, matched case-insensitively; None if absent."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def require_fresh(timestamp: datetime, *, now: datetime | None, tolerance: timedelta) -> None:
    """Raise :class:`WebhookRejected` if ``timestamp`` is over ``tolerance`` from ``now`` (UTC)."""
    current = now or datetime.now(UTC)
    if abs(current - timestamp) > tolerance:
        raise WebhookRejected(f"stale timestamp {timestamp.isoformat()} (tolerance {tolerance})")


def unix_time(value: str | int | float | None) -> datetime:
    """Unix seconds as an aware UTC datetime; :class:`WebhookRejected` if unreadable."""
    try:
        return datetime.fromtimestamp(float(value), UTC)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        raise WebhookRejected(f"unreadable timestamp {value!r}") from None


def json_body(body: bytes) -> Any:
    """The JSON document in ``body``; :class:`WebhookRejected` if it is not UTF-8 JSON or nests
    deeper than :data:`worker.safety.json_documents.MAX_DEPTH` (no provider's event does)."""
    try:
        return json_documents.loads(body)
    except json_documents.TooDeep as exc:
        raise WebhookRejected(f"body is not acceptable JSON: {exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("body is not JSON") from None


def iso_time(value: object) -> datetime | None:
    """An ISO 8601 time (``2016-01-27T14:59:38.237Z``) as an aware datetime; None if unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def report(
    classification: Classification,
    *,
    source: str,
    event_key: str,
    recipient: str | None,
    status: str | None = None,
    diagnostic: str | None = None,
    action: str | None = None,
    feedback_type: str | None = None,
    original_message_id: str | None = None,
    verp_local: str | None = None,
    refs: Mapping[str, object] | None = None,
    occurred_at: datetime | None = None,
) -> FeedbackReport:
    """A provider event as a report; ``source_event_id`` is ``<source>:<event_key>:<recipient>``.

    ``refs`` is the provider's per-message metadata; our ids are read from it under
    :data:`~worker.feedback.report.METADATA_DELIVERY_KEY` and ``METADATA_SUBSCRIBER_KEY``.
    """
    metadata = refs or {}
    return FeedbackReport(
        kind=classification.kind,
        classification=classification,
        recipient=recipient,
        status=status,
        diagnostic=diagnostic[:2000] if diagnostic else None,
        original_message_id=original_message_id,
        verp_local=verp_local,
        feedback_type=feedback_type,
        source_event_id=event_id(source, event_key, (recipient or "").lower()),
        action=action,
        subscriber_ref=_scalar(metadata.get(METADATA_SUBSCRIBER_KEY)),
        delivery_ref=_scalar(metadata.get(METADATA_DELIVERY_KEY)),
        occurred_at=occurred_at,
        source=source,
    )


def _scalar(value: object) -> str | None:
    """A metadata value as text; SES tags are lists of strings, others plain values."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)[:100] or None
    return None
