"""``MemoryLedger``: the delivery ledger in a dict, for fast tests of the batch loop. See
``worker.sending.ledger.DeliveryLedger`` for the contract; every change is checked against
``worker.states`` (``check``), as the SQL ledger's ``WHERE state IN (…)`` is."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from worker.models import Subscriber
from worker.sending.ledger import RETRYABLE, Accepted, DueBatch, DueDelivery, LeaseSweep
from worker.sending.policy import SendPolicy, judge
from worker.sending.ports import SmtpOutcome
from worker.states import (
    UNFINISHED_STATES,
    DeliveryState,
    SendStatus,
    SubscriberStatus,
    allowed,
    check,
)
from worker.states import DeliveryState as D
from worker.subscriptions.addresses import recipient_domain


@dataclass
class MemoryDelivery:
    """One ledger row."""

    id: int
    send_id: int
    subscriber: Subscriber
    language: str
    domain: str
    state: DeliveryState = D.QUEUED
    attempts: int = 0
    lease_until: datetime | None = None
    next_attempt_at: datetime | None = None
    first_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    reply_code: int | None = None
    reply_text: str | None = None


@dataclass
class MemoryLedger:
    """Sends (id → status) and deliveries (id → row); ``feedback`` lists the (delivery id, reply
    code) of every 5xx recorded as a feedback event."""

    sends: dict[int, SendStatus] = field(default_factory=dict)
    deliveries: dict[int, MemoryDelivery] = field(default_factory=dict)
    feedback: list[tuple[int, int]] = field(default_factory=list)

    def plan(self, send_id: int, subscribers: list[Subscriber], language: str = "en") -> list[int]:
        """A ``sending`` send with one queued delivery per subscriber; returns their ids."""
        self.sends[send_id] = SendStatus.SENDING
        ids = []
        for subscriber in subscribers:
            d_id = len(self.deliveries) + 1
            self.deliveries[d_id] = MemoryDelivery(
                d_id, send_id, subscriber, language, subscriber.domain
            )
            ids.append(d_id)
        return ids

    def _move(self, row: MemoryDelivery, target: DeliveryState) -> None:
        """Move ``row`` to ``target`` along the table (``IllegalTransition`` otherwise); a final
        or queued state drops the lease."""
        row.state = check(row.state, target)
        if target not in (D.SENDING, D.SUBMITTING):
            row.lease_until = None

    def send_status(self, send_id: int) -> SendStatus | None:
        """See ``DeliveryLedger.send_status``."""
        return self.sends.get(send_id)

    def due(self, send_id: int, first_id: int, last_id: int, now: datetime) -> DueBatch:
        """See ``DeliveryLedger.due``."""
        due, skipped, later = [], 0, []
        for row in self._range(send_id, first_id, last_id):
            if row.state not in RETRYABLE:
                continue
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                later.append(row.next_attempt_at)
            elif row.subscriber.status != SubscriberStatus.CONFIRMED:
                self._move(row, D.SKIPPED)
                skipped += 1
            else:
                domain = recipient_domain(row.subscriber.ascii_email, row.subscriber.email)
                due.append(DueDelivery(row.id, row.language, domain, row.subscriber))
        return DueBatch(due, skipped, min(later, default=None))

    def _range(self, send_id: int, first_id: int, last_id: int) -> list[MemoryDelivery]:
        rows = self.deliveries.values()
        return [r for r in rows if r.send_id == send_id and first_id <= r.id <= last_id]

    def claim(
        self, send_id: int, ids: list[int], now: datetime, lease_seconds: float
    ) -> dict[int, int]:
        """See ``DeliveryLedger.claim``."""
        if self.sends.get(send_id) != SendStatus.SENDING:
            return {}
        claims = {}
        for d_id in ids:
            row = self.deliveries[d_id]
            if row.state not in RETRYABLE or (row.next_attempt_at or now) > now:
                continue
            self._move(row, D.SENDING)
            row.lease_until = now + timedelta(seconds=lease_seconds)
            row.attempts += 1
            row.first_attempt_at = row.first_attempt_at or now
            claims[d_id] = row.attempts
        return claims

    def submit(self, delivery_id: int, attempt: int, now: datetime, lease_seconds: float) -> bool:
        """See ``DeliveryLedger.submit``."""
        row = self.deliveries[delivery_id]
        if row.state != D.SENDING or row.attempts != attempt:
            return False
        self._move(row, D.SUBMITTING)
        row.lease_until = now + timedelta(seconds=lease_seconds)
        return True

    def record_accepted(
        self, send_id: int, delivery_id: int, attempt: int, outcome: SmtpOutcome, now: datetime
    ) -> Accepted:
        """See ``DeliveryLedger.record_accepted``."""
        row = self.deliveries[delivery_id]
        written = row.attempts == attempt and allowed(row.state, D.SENT)
        if written:
            self._move(row, D.SENT)
            row.sent_at, row.reply_code, row.reply_text = now, outcome.code, outcome.text
        return Accepted(written, self.sends.get(send_id))

    def record_outcome(
        self,
        delivery_id: int,
        subscriber: Subscriber,
        outcome: SmtpOutcome,
        now: datetime,
        policy: SendPolicy,
        attempt: int | None = None,
    ) -> DeliveryState:
        """See ``DeliveryLedger.record_outcome``."""
        row = self.deliveries[delivery_id]
        verdict = judge(outcome, row.first_attempt_at, row.attempts, now, policy)
        lost = attempt is not None and row.attempts != attempt
        if lost or not allowed(row.state, verdict.state):
            return row.state
        self._move(row, verdict.state)
        row.reply_code, row.reply_text = outcome.code or None, outcome.text
        row.next_attempt_at = verdict.next_attempt_at or row.next_attempt_at
        row.sent_at = now if verdict.state == D.SENT else row.sent_at
        if verdict.state == D.FAILED and not outcome.local:
            self.feedback.append((delivery_id, outcome.code))
        return verdict.state

    def release(self, claims: list[tuple[int, int]], now: datetime) -> None:
        """See ``DeliveryLedger.release``."""
        for d_id, attempt in claims:
            row = self.deliveries[d_id]
            if row.state == D.SENDING and row.attempts == attempt:
                self._move(row, D.QUEUED)

    def next_retry_at(self, send_id: int, first_id: int, last_id: int) -> datetime | None:
        """See ``DeliveryLedger.next_retry_at``."""
        rows = self._range(send_id, first_id, last_id)
        retries = [r.next_attempt_at for r in rows if r.state == D.DEFERRED and r.next_attempt_at]
        return min(retries, default=None)

    def finish_send_if_done(self, send_id: int, now: datetime) -> bool:
        """See ``DeliveryLedger.finish_send_if_done``."""
        rows = [r for r in self.deliveries.values() if r.send_id == send_id]
        if self.sends.get(send_id) != SendStatus.SENDING:
            return False
        if any(r.state in UNFINISHED_STATES for r in rows):
            return False
        self.sends[send_id] = check(self.sends[send_id], SendStatus.FINISHED)
        return True

    def expire_leases(self, now: datetime) -> LeaseSweep:
        """See ``DeliveryLedger.expire_leases``."""
        released = unknown = 0
        for row in self.deliveries.values():
            if row.lease_until is None or row.lease_until >= now:
                continue
            if row.state == D.SENDING:
                self._move(row, D.QUEUED)
                released += 1
            elif row.state == D.SUBMITTING:
                self._move(row, D.UNKNOWN)
                unknown += 1
        return LeaseSweep(released, unknown)

    def counts(self, send_id: int) -> dict[str, int]:
        """See ``DeliveryLedger.counts``."""
        counts: dict[str, int] = {}
        for row in self.deliveries.values():
            if row.send_id == send_id:
                counts[row.state.value] = counts.get(row.state.value, 0) + 1
        return counts

    def progress(
        self, send_id: int, since: datetime
    ) -> tuple[dict[str, int], int, datetime | None]:
        """See ``DeliveryLedger.progress``."""
        times = [
            r.sent_at
            for r in self.deliveries.values()
            if r.send_id == send_id and r.sent_at and r.sent_at >= since
        ]
        return self.counts(send_id), len(times), min(times, default=None)


__all__ = ["MemoryDelivery", "MemoryLedger"]
