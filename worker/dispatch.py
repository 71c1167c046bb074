"""The weekly send: planning deliveries, sending batches, recording every outcome in the ledger.

Exactly-once rests on the ledger, not on the queue (dramatiq delivers at least once): a delivery is
claimed (state ``sending`` with a lease, committed) before its SMTP transaction and its outcome is
committed right after. A redelivered batch skips what is no longer ``queued``/``deferred``; a claim
whose lease ran out with no outcome becomes ``unknown`` and is resent only by an operator.
Queue messages are hints: ``reconcile`` re-creates them from the ledger.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from worker.classification import FeedbackKind, classify_smtp_reply
from worker.composer import Composer
from worker.models import (
    UNFINISHED_STATES,
    Delivery,
    DeliveryState,
    FeedbackEvent,
    Send,
    SendStatus,
    Subscriber,
    SubscriberStatus,
)
from worker.ports import Clock, Mailer, SmtpOutcome, Throttle
from worker.suppressions import suppress

RETRYABLE = (DeliveryState.QUEUED, DeliveryState.DEFERRED)


@dataclass(frozen=True)
class SendPolicy:
    """How a batch behaves. Units: seconds."""

    lease_seconds: float = 600.0  # longer than one SMTP transaction can take (socket timeout 60 s)
    retry_base_seconds: float = 60.0  # first retry after a 4xx; doubles each attempt (+0–25 % jitter)
    retry_cap_seconds: float = 3600.0
    max_age_seconds: float = 3 * 24 * 3600.0  # then a deferred delivery expires
    max_throttle_wait: float = 2.0  # wait in-process up to this long for a send slot, else re-enqueue
    status_check_every: int = 20  # re-read pause/cancel every N messages
    hash_key: str = ""  # for suppressions (see worker.suppressions)


@dataclass
class BatchReport:
    """What one run of a batch did. ``retry_after`` (seconds): run the batch again then."""

    counts: dict[str, int] = field(default_factory=dict)
    retry_after: float | None = None
    stopped: str | None = None  # the send's status when the batch stopped early (paused, cancelled)

    def add(self, state: str) -> None:
        self.counts[state] = self.counts.get(state, 0) + 1

    def later(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.retry_after = seconds if self.retry_after is None else min(self.retry_after, seconds)


# --- planning -------------------------------------------------------------------------------------


def plan_deliveries(
    session: Session,
    send: Send,
    *,
    newsletter_id: int,
    languages: tuple[str, ...],
    default_language: str,
    page_size: int = 10_000,
) -> int:
    """Insert one ``queued`` delivery per confirmed subscriber, in keyset pages of ``page_size``.

    Each page is one ``INSERT … SELECT`` inside the database (subscribers are never loaded into
    memory); the unique (send, subscriber) constraint with ``ON CONFLICT DO NOTHING`` makes
    planning twice a no-op. Subscribers whose language the edition lacks get ``default_language``.
    Commits after each page; returns the number of deliveries the send has.
    """
    lang_expr = (
        case((Subscriber.language.in_(languages), Subscriber.language), else_=literal(default_language))
        if languages
        else literal(default_language)
    )
    eligible = (
        Subscriber.newsletter_id == newsletter_id,
        Subscriber.status == SubscriberStatus.CONFIRMED,
    )
    insert_fn = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    after = 0
    while True:
        page = select(Subscriber.id).where(*eligible, Subscriber.id > after).order_by(Subscriber.id)
        last = session.scalar(select(func.max(page.limit(page_size).subquery().c.id)))
        if last is None:
            break
        rows = select(
            literal(send.id),
            Subscriber.id,
            lang_expr,
            Subscriber.domain,
            literal(DeliveryState.QUEUED.value),
            literal(0),
        ).where(*eligible, Subscriber.id > after, Subscriber.id <= last)
        stmt = insert_fn(Delivery).from_select(
            ["send_id", "subscriber_id", "language", "domain", "state", "attempts"], rows
        )
        session.execute(stmt.on_conflict_do_nothing())
        session.commit()
        after = last
    total = session.scalar(select(func.count()).select_from(Delivery).where(Delivery.send_id == send.id))
    return int(total or 0)


def batch_ranges(session: Session, send_id: int, size: int) -> Iterator[tuple[int, int]]:
    """(first id, last id) of consecutive runs of ``size`` deliveries, by keyset pagination."""
    after = 0
    while True:
        ids = session.scalars(
            select(Delivery.id)
            .where(Delivery.send_id == send_id, Delivery.id > after)
            .order_by(Delivery.id)
            .limit(size)
        ).all()
        if not ids:
            return
        yield ids[0], ids[-1]
        after = ids[-1]


# --- sending ---------------------------------------------------------------------------------------


def send_batch(
    session: Session,
    send_id: int,
    first_id: int,
    last_id: int,
    *,
    composer: Composer,
    mailer: Mailer,
    throttle: Throttle,
    clock: Clock,
    policy: SendPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchReport:
    """Send the due deliveries of ``send_id`` with ids in [first_id, last_id]; commits as it goes.

    Safe to run twice or concurrently for the same range: each delivery is claimed atomically.
    Returns a ``BatchReport``; never raises for SMTP errors (they are outcomes).
    """
    report = BatchReport()
    status = _send_status(session, send_id)
    if status != SendStatus.SENDING:
        report.stopped = status
        return report
    rows = session.execute(
        select(Delivery.id, Delivery.subscriber_id, Delivery.language, Delivery.domain, Delivery.next_attempt_at)
        .where(
            Delivery.send_id == send_id,
            Delivery.id.between(first_id, last_id),
            Delivery.state.in_(RETRYABLE),
        )
        .order_by(Delivery.id)
    ).all()
    session.commit()
    for index, (delivery_id, subscriber_id, language, domain, next_attempt_at) in enumerate(rows):
        now = clock.now()
        if next_attempt_at is not None and next_attempt_at > now:
            report.later((next_attempt_at - now).total_seconds())
            continue
        if index and index % policy.status_check_every == 0:
            status = _send_status(session, send_id)
            if status != SendStatus.SENDING:
                report.stopped = status
                return report
        subscriber = session.get(Subscriber, subscriber_id, populate_existing=True)
        if subscriber is None or subscriber.status != SubscriberStatus.CONFIRMED:
            _finish(session, delivery_id, DeliveryState.SKIPPED, clock.now(), from_states=RETRYABLE)
            report.add(DeliveryState.SKIPPED)
            continue
        reservation = throttle.reserve(domain, policy.max_throttle_wait)
        if not reservation.granted:
            report.later(reservation.wait)
            break
        if reservation.wait > 0:
            sleep(reservation.wait)
        if not _claim(session, delivery_id, clock.now(), policy.lease_seconds):
            continue
        envelope_from, message = composer.compose(delivery_id, subscriber, language)
        recipient = subscriber.ascii_email or subscriber.email
        outcome = mailer.send(envelope_from, recipient, message, smtputf8=subscriber.ascii_email is None)
        state = record_outcome(session, delivery_id, subscriber, outcome, clock.now(), policy)
        report.add(state)
        if state == DeliveryState.DEFERRED:
            report.later(_backoff(1, policy))
            if outcome.code in (421, 451):
                throttle.slow_down(domain)
    _schedule_deferred(session, send_id, first_id, last_id, clock.now(), report)
    finish_send_if_done(session, send_id, clock.now())
    return report


def _send_status(session: Session, send_id: int) -> str | None:
    status = session.scalar(select(Send.status).where(Send.id == send_id))
    session.commit()
    return status


def _claim(session: Session, delivery_id: int, now: datetime, lease_seconds: float) -> bool:
    """Atomically move a due delivery to ``sending`` with a lease; False if another worker has it."""
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.state.in_(RETRYABLE),
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        )
        .values(
            state=DeliveryState.SENDING,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=Delivery.attempts + 1,
            first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _finish(
    session: Session, delivery_id: int, state: str, now: datetime, *, from_states: tuple[str, ...]
) -> None:
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.state.in_(from_states))
        .values(state=state, lease_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _backoff(attempts: int, policy: SendPolicy) -> float:
    base = min(policy.retry_base_seconds * 2 ** max(attempts - 1, 0), policy.retry_cap_seconds)
    return base * (1 + random.random() * 0.25)  # jitter spreads retries of a greylisting domain


def record_outcome(
    session: Session,
    delivery_id: int,
    subscriber: Subscriber,
    outcome: SmtpOutcome,
    now: datetime,
    policy: SendPolicy,
) -> str:
    """Write a claimed delivery's outcome to the ledger (and commit); returns the new state.

    2xx → sent; dropped after the end of DATA → unknown; 4xx or no reply → deferred with
    exponential backoff, or expired past ``max_age_seconds``; 5xx → failed, plus a feedback event
    classified by its RFC 3463 status (a 550 5.1.1 is a hard bounce and suppresses the address).
    """
    delivery = session.get(Delivery, delivery_id, populate_existing=True)
    assert delivery is not None
    delivery.reply_code = outcome.code or None
    delivery.reply_text = outcome.text[:1000]
    delivery.lease_until = None
    delivery.updated_at = now
    if outcome.accepted:
        delivery.state = DeliveryState.SENT
        delivery.sent_at = now
    elif outcome.uncertain:
        delivery.state = DeliveryState.UNKNOWN
    elif outcome.permanent:
        delivery.state = DeliveryState.FAILED
        _record_smtp_feedback(session, delivery, subscriber, outcome, now, policy)
    else:
        first = delivery.first_attempt_at or now
        if (now - first).total_seconds() >= policy.max_age_seconds:
            delivery.state = DeliveryState.EXPIRED
        else:
            delivery.state = DeliveryState.DEFERRED
            delivery.next_attempt_at = now + timedelta(seconds=_backoff(delivery.attempts, policy))
    session.commit()
    return delivery.state


def _record_smtp_feedback(
    session: Session,
    delivery: Delivery,
    subscriber: Subscriber,
    outcome: SmtpOutcome,
    now: datetime,
    policy: SendPolicy,
) -> None:
    classification = classify_smtp_reply(outcome.code, outcome.text)
    event = FeedbackEvent(
        source_event_id=f"smtp:{delivery.id}:{delivery.attempts}",
        kind=classification.kind.value,
        source="smtp",
        subscriber_id=subscriber.id,
        delivery_id=delivery.id,
        recipient=subscriber.email,
        status_code=_status_of(outcome.text),
        reason=classification.reason,
        detail=f"{outcome.code} {outcome.text}"[:2000],
        occurred_at=now,
        recorded_at=now,
    )
    session.add(event)
    session.flush()
    if classification.kind == FeedbackKind.HARD_BOUNCE and policy.hash_key:
        suppress(
            session,
            dedupe_key=subscriber.email_key,
            hash_key=policy.hash_key,
            reason="hard_bounce",
            now=now,
            source_event_id=event.id,
        )


def _status_of(text: str) -> str | None:
    match = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", text)
    return match.group(1) if match else None


def _schedule_deferred(
    session: Session, send_id: int, first_id: int, last_id: int, now: datetime, report: BatchReport
) -> None:
    nxt = session.scalar(
        select(func.min(Delivery.next_attempt_at)).where(
            Delivery.send_id == send_id,
            Delivery.id.between(first_id, last_id),
            Delivery.state == DeliveryState.DEFERRED,
        )
    )
    session.commit()
    if nxt is not None:
        report.later((nxt - now).total_seconds())


def finish_send_if_done(session: Session, send_id: int, now: datetime) -> bool:
    """Mark the send finished when no delivery is queued, sending or deferred. Returns True if so."""
    unfinished = session.scalar(
        select(Delivery.id)
        .where(Delivery.send_id == send_id, Delivery.state.in_(UNFINISHED_STATES))
        .limit(1)
    )
    if unfinished is not None:
        session.commit()
        return False
    result = session.execute(
        update(Send)
        .where(Send.id == send_id, Send.status == SendStatus.SENDING)
        .values(status=SendStatus.FINISHED, finished_at=now)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- recovery --------------------------------------------------------------------------------------


def expire_leases(session: Session, now: datetime) -> int:
    """Claims whose lease ran out with no outcome become ``unknown``; returns how many."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.state == DeliveryState.SENDING, Delivery.lease_until < now)
        .values(state=DeliveryState.UNKNOWN, lease_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def pending_batches(session: Session, send_id: int, size: int, now: datetime) -> list[tuple[int, int, float]]:
    """Batches of a sending send that still have due or deferred deliveries: (first, last, delay s)."""
    out: list[tuple[int, int, float]] = []
    for first, last in batch_ranges(session, send_id, size):
        due = session.scalar(
            select(func.min(func.coalesce(Delivery.next_attempt_at, now))).where(
                Delivery.send_id == send_id,
                Delivery.id.between(first, last),
                Delivery.state.in_(RETRYABLE),
            )
        )
        if due is not None:
            out.append((first, last, max((due - now).total_seconds(), 0.0)))
    session.commit()
    return out


def retry_unknown(session: Session, send_id: int, now: datetime) -> int:
    """Operator command: put a send's ``unknown`` deliveries back in the queue. Returns how many."""
    result = session.execute(
        update(Delivery)
        .where(Delivery.send_id == send_id, Delivery.state == DeliveryState.UNKNOWN)
        .values(state=DeliveryState.QUEUED, next_attempt_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(Send)
        .where(Send.id == send_id, Send.status == SendStatus.FINISHED)
        .values(status=SendStatus.SENDING, finished_at=None)
    )
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def delivery_counts(session: Session, send_id: int) -> dict[str, int]:
    """Number of deliveries of ``send_id`` per state."""
    rows = session.execute(
        select(Delivery.state, func.count()).where(Delivery.send_id == send_id).group_by(Delivery.state)
    ).all()
    return {state: int(count) for state, count in rows}


__all__ = [
    "BatchReport",
    "SendPolicy",
    "batch_ranges",
    "delivery_counts",
    "expire_leases",
    "finish_send_if_done",
    "pending_batches",
    "plan_deliveries",
    "record_outcome",
    "retry_unknown",
    "send_batch",
]
