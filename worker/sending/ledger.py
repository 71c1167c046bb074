"""The delivery ledger: the contract the batch loop (``worker.sending.batch``) records through.

Exactly-once rests on the ledger, not on the queue (dramatiq delivers at least once). A delivery is
claimed before its SMTP transaction (``sending``, with a lease and a new attempt number, the
claim's fencing token); once the relay has accepted the recipient and just before DATA it is
fenced to ``submitting`` (only if the claim is still ours); its outcome is recorded right after
the reply. Every write is durable when the method returns. If the process dies, ``expire_leases``
turns an expired ``sending`` claim back into ``queued`` (DATA never started) and an expired
``submitting`` claim into ``unknown`` (the relay may have it): resent only by an operator.

Implementations: ``worker.sending.driver_ledger.DriverLedger`` (production: the per-message
statements on the database driver, psycopg or sqlite3), ``worker.sending.sql_ledger.SqlLedger``
(SQLAlchemy, the reference the contract tests run against too) and
``worker.sending.memory_ledger.MemoryLedger`` (fast tests of the batch loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from worker.models import Subscriber
from worker.sending.policy import SendPolicy
from worker.sending.ports import SmtpOutcome
from worker.states import DeliveryState, SendStatus

RETRYABLE = (DeliveryState.QUEUED, DeliveryState.DEFERRED)
"""States a batch takes deliveries from (when due)."""


@dataclass(frozen=True)
class DueDelivery:
    """A delivery due now, with its (confirmed) subscriber."""

    id: int
    language: str
    domain: str
    subscriber: Subscriber


@dataclass(frozen=True)
class DueBatch:
    """A batch's deliveries as read at its start: ``due`` now (in id order), how many were
    ``skipped`` (subscriber no longer confirmed), and the earliest later retry, if any."""

    due: list[DueDelivery]
    skipped: int
    next_retry_at: datetime | None


@dataclass(frozen=True)
class Accepted:
    """What recording a ``sent`` outcome did: ``written`` is False when the claim was lost;
    ``send_status`` is the send's status read with the write."""

    written: bool
    send_status: SendStatus | None


@dataclass(frozen=True)
class LeaseSweep:
    """What ``expire_leases`` did: claims given back to the queue, and claims now ``unknown``."""

    released: int
    unknown: int


class DeliveryLedger(Protocol):
    """The deliveries of sends and their states, written only along ``worker.states``' arrows."""

    def send_status(self, send_id: int) -> SendStatus | None:
        """The send's status; None if there is no such send."""

    def due(self, send_id: int, first_id: int, last_id: int, now: datetime) -> DueBatch:
        """Queued or deferred deliveries of ``send_id`` with ids in [first_id, last_id]; those
        whose subscriber is no longer confirmed become ``skipped``."""

    def claim(
        self, send_id: int, ids: list[int], now: datetime, lease_seconds: float
    ) -> dict[int, int]:
        """Claim the due ones of ``ids`` (→ ``sending``, lease ``lease_seconds``) while the send is
        ``sending``; returns {delivery id: attempt number} of those claimed."""

    def submit(self, delivery_id: int, attempt: int, now: datetime, lease_seconds: float) -> bool:
        """The fence before DATA: ``sending`` → ``submitting`` if claim ``attempt`` still holds."""

    def record_accepted(
        self, send_id: int, delivery_id: int, attempt: int, outcome: SmtpOutcome, now: datetime
    ) -> Accepted:
        """Record a 2xx reply (→ ``sent``) if claim ``attempt`` still holds the delivery."""

    def record_outcome(
        self,
        delivery_id: int,
        subscriber: Subscriber,
        outcome: SmtpOutcome,
        now: datetime,
        policy: SendPolicy,
        attempt: int | None = None,
    ) -> DeliveryState:
        """Record any outcome as ``worker.sending.policy.judge`` rules (a 5xx also records a
        feedback event unless ``outcome.local``); with ``attempt``, only if that claim still holds.
        Returns the delivery's state afterwards."""

    def release(self, claims: list[tuple[int, int]], now: datetime) -> None:
        """Give back unused claims (id, attempt): ``sending`` → ``queued``."""

    def next_retry_at(self, send_id: int, first_id: int, last_id: int) -> datetime | None:
        """The earliest ``next_attempt_at`` of the range's ``deferred`` deliveries."""

    def finish_send_if_done(self, send_id: int, now: datetime) -> bool:
        """``sending`` → ``finished`` once no delivery is unfinished; True if it changed."""

    def expire_leases(self, now: datetime) -> LeaseSweep:
        """Settle claims whose lease ran out before ``now``."""

    def counts(self, send_id: int) -> dict[str, int]:
        """Number of deliveries of ``send_id`` per state."""

    def progress(
        self, send_id: int, since: datetime
    ) -> tuple[dict[str, int], int, datetime | None]:
        """(deliveries per state, deliveries sent at or after ``since``, the earliest of their
        ``sent_at`` or None when there are none)."""


__all__ = ["RETRYABLE", "Accepted", "DeliveryLedger", "DueBatch", "DueDelivery", "LeaseSweep"]
