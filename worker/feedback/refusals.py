"""Refusals at send time: a relay's 5xx reply to one of our deliveries becomes a feedback event.

Implements ``worker.sending.ports.RefusalRecorder``; the runtime hands it to the SQL ledger, which
calls it inside the transaction that writes the ``failed`` delivery.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from worker.feedback.policy import Attribution, FeedbackPolicy, record_feedback, smtp_reply_report
from worker.models import Delivery, Subscriber
from worker.sending.ports import Refusal


class RefusalFeedback:
    """Records refusals through the feedback policy. See ``RefusalRecorder``."""

    def __init__(self, policy: FeedbackPolicy) -> None:
        self.policy = policy

    def record(self, session: Session, refusal: Refusal) -> None:
        """One feedback event (``smtp:<delivery>:<attempt>``) and its effect, flushed in
        ``session``'s open transaction, not committed. Raises ``LookupError`` if the delivery or
        its subscriber does not exist."""
        # Both rows are in the session's identity map on the send path (read by the ledger):
        # these gets cost no query.
        delivery = session.get(Delivery, refusal.delivery_id)
        subscriber = session.get(Subscriber, refusal.subscriber_id)
        if delivery is None or subscriber is None:
            raise LookupError(f"no delivery {refusal.delivery_id} or its subscriber")
        outcome = refusal.outcome
        report = smtp_reply_report(
            delivery.id, refusal.attempt, subscriber.email, outcome.code, outcome.text
        )
        # The SMTP session itself names the delivery: first-hand, so trusted
        # (worker.feedback.policy).
        record_feedback(
            session,
            report,
            policy=self.policy,
            now=refusal.at,
            attribution=Attribution("smtp", True, delivery, subscriber),
        )


__all__ = ["RefusalFeedback"]
