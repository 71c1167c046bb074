"""How a send behaves (``SendPolicy``) and how an SMTP outcome is judged into a delivery state.

Pure: no database, no I/O. The ledgers (``worker.sending.ledger``) write what is judged here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.sending.ports import SmtpOutcome
from worker.states import DeliveryState


@dataclass(frozen=True)
class SendPolicy:
    """How a batch behaves. Units: seconds."""

    lease_seconds: float = 600.0  # longer than one SMTP transaction can take (socket timeout 60 s)
    # first retry after a 4xx; doubles each attempt (+0–25 % jitter)
    retry_base_seconds: float = 60.0
    retry_cap_seconds: float = 3600.0
    max_age_seconds: float = 3 * 24 * 3600.0  # then a deferred delivery expires
    max_throttle_wait: float = (
        2.0  # wait in-process up to this long for a send slot, else re-enqueue
    )
    connection_ttl_seconds: float = 130.0  # a dead process's SMTP connection slot frees after this
    # a batch waits in-process this long for a connection slot (a re-enqueued batch would leave
    # the slot idle until its delay ran out), else re-enqueues itself
    connection_wait_seconds: float = 30.0
    claim_chunk: int = 50  # deliveries claimed per UPDATE (unsent claims are given back at once)
    hash_key: str = ""  # for suppressions (see worker.subscriptions.suppressions)


@dataclass(frozen=True)
class Verdict:
    """A judged outcome: the delivery's new state and, for ``deferred``, when to try again."""

    state: DeliveryState
    next_attempt_at: datetime | None = None


def backoff_seconds(attempts: int, policy: SendPolicy) -> float:
    """Seconds before attempt ``attempts + 1``: ``retry_base × 2^(attempts−1)``, capped at
    ``retry_cap``, plus 0–25 % jitter so the retries of a greylisting domain spread out."""
    base = min(policy.retry_base_seconds * 2.0 ** max(attempts - 1, 0), policy.retry_cap_seconds)
    return float(base * (1 + random.random() * 0.25))


def judge(
    outcome: SmtpOutcome,
    first_attempt_at: datetime | None,
    attempts: int,
    now: datetime,
    policy: SendPolicy,
) -> Verdict:
    """The state an SMTP outcome puts a delivery in (RFC 5321 §4.2.1 reply classes).

    2xx → sent; dropped after the end of DATA → unknown; 5xx → failed; 4xx or no reply →
    deferred with ``backoff_seconds``, or expired once ``max_age_seconds`` have passed since the
    first attempt.
    """
    if outcome.accepted:
        return Verdict(DeliveryState.SENT)
    if outcome.uncertain:
        return Verdict(DeliveryState.UNKNOWN)
    if outcome.permanent:
        return Verdict(DeliveryState.FAILED)
    if (now - (first_attempt_at or now)).total_seconds() >= policy.max_age_seconds:
        return Verdict(DeliveryState.EXPIRED)
    retry_at = now + timedelta(seconds=backoff_seconds(attempts, policy))
    return Verdict(DeliveryState.DEFERRED, retry_at)
