"""A PROTOTYPE of ``worker.sending.batch.send_batch`` that writes the ledger per chunk, not per
message,
to measure what batching would buy. Not used by the product: ``bench/batched_actors.py`` swaps it
in for the benchmark's worker processes only (``e2e_throughput.py --actors bench.batched_actors``,
``per_message.py --prototype``).

Same ledger states and fencing as ``worker.sending.batch`` (claim with the attempt number as
fencing
token, only while the send is ``sending``; ``submitting`` before DATA; outcomes written only while
the claim holds), but per chunk of ``CHUNK`` deliveries:
- one SELECT of the deliveries joined with their subscribers (instead of one ``session.get`` each);
- one pipelined Redis round trip for the chunk's throttle reservations (same Lua script);
- one ``UPDATE … WHERE id IN (…) RETURNING id, attempts`` that claims the chunk straight into
  ``submitting`` (the reservations are already granted, so nothing waits between claim and DATA),
  one commit;
- one executemany ``UPDATE`` for the accepted outcomes, one commit. Other outcomes go through
  ``record_outcome`` one by one as now (rare; they write feedback).
Trade-off: a crash mid-chunk leaves up to ``CHUNK`` deliveries ``submitting`` (→ ``unknown`` when
the lease runs out, not resent by default) instead of one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, func, or_, select, update

from worker.models import Delivery, Send, Subscriber
from worker.operators import metrics
from worker.sending.batch import BatchReport
from worker.sending.composer import Composer
from worker.sending.connection import ConnectionSlot
from worker.sending.ledger import RETRYABLE, DeliveryLedger
from worker.sending.policy import SendPolicy, backoff_seconds
from worker.sending.ports import Clock, Mailer, Reservation, Throttle
from worker.sending.sql_ledger import SqlLedger
from worker.states import DeliveryState, SendStatus, SubscriberStatus

CHUNK = 50
# (delivery id, language, recipient domain, subscriber) of a delivery ready to send
Due = tuple[int, str, str, Subscriber]
CLAIMED = (DeliveryState.SENDING, DeliveryState.SUBMITTING, DeliveryState.UNKNOWN)


def _schedule_deferred(
    ledger: SqlLedger, send_id: int, first_id: int, last_id: int, now: datetime, report: BatchReport
) -> None:
    retry_at = ledger.next_retry_at(send_id, first_id, last_id)
    if retry_at is not None:
        report.later((retry_at - now).total_seconds())


def quote_periods(data: bytes) -> bytes:
    """``(?m)^\\.`` → ``..`` (RFC 5321 §4.5.2), as ``smtplib._quote_periods`` does, without its
    multiline regex (0.45 ms for a 48 KB message, most of smtplib's CPU per message)."""
    data = data.replace(b"\n.", b"\n..")
    return b"." + data if data[:1] == b"." else data


def _reserve_many(throttle: Throttle, domains: list[str], max_wait: float) -> list[Reservation]:
    """The chunk's reservations in one Redis round trip (``RedisThrottle.reserve_many``)."""
    many = getattr(throttle, "reserve_many", None)
    if many is None:
        return [throttle.reserve(d, max_wait) for d in domains]
    reservations: list[Reservation] = many(domains, max_wait)
    return reservations


def send_batch(
    ledger: DeliveryLedger,
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
    heartbeat: Callable[[], None] = lambda: None,
    slot: ConnectionSlot | None = None,
) -> BatchReport:
    """``worker.sending.batch.send_batch`` per chunk (same arguments, same report); raises
    TypeError unless ``ledger`` is a ``SqlLedger``, as the chunks are written in SQL directly.
    ``slot`` is not used: the prototype closes its connection after each batch."""
    if not isinstance(ledger, SqlLedger):
        raise TypeError(f"the chunked prototype writes SQL: needs a SqlLedger, not {ledger!r}")
    session = ledger.session
    report = BatchReport()
    status = ledger.send_status(send_id)
    if status != SendStatus.SENDING:
        report.stopped = status
        return report
    rows = session.execute(
        select(
            Delivery.id, Delivery.language, Delivery.domain, Delivery.next_attempt_at, Subscriber
        )
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(
            Delivery.send_id == send_id,
            Delivery.id.between(first_id, last_id),
            Delivery.state.in_(RETRYABLE),
        )
        .order_by(Delivery.id)
    ).all()
    session.commit()
    now = clock.now()
    due: list[Due] = []
    skipped: list[int] = []
    for delivery_id, language, domain, next_attempt_at, subscriber in rows:
        if next_attempt_at is not None and next_attempt_at > now:
            report.later((next_attempt_at - now).total_seconds())
        elif subscriber.status != SubscriberStatus.CONFIRMED:
            skipped.append(delivery_id)
        else:
            due.append((delivery_id, language, domain, subscriber))
    if skipped:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(skipped), Delivery.state.in_(RETRYABLE))
            .values(state=DeliveryState.SKIPPED, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        for _ in skipped:
            report.add(DeliveryState.SKIPPED)
    if not due:
        _schedule_deferred(ledger, send_id, first_id, last_id, clock.now(), report)
        ledger.finish_send_if_done(send_id, clock.now())
        return report
    holder = uuid.uuid4().hex
    if not throttle.acquire_connection(holder, policy.connection_ttl_seconds):
        report.later(0.5)
        return report
    try:
        _send_chunks(
            ledger,
            send_id,
            due,
            composer,
            mailer,
            throttle,
            clock,
            policy,
            sleep,
            heartbeat,
            holder,
            report,
        )
    finally:
        mailer.close()
        throttle.release_connection(holder)
    if report.stopped is None:
        _schedule_deferred(ledger, send_id, first_id, last_id, clock.now(), report)
        ledger.finish_send_if_done(send_id, clock.now())
    return report


def _send_chunks(
    ledger: SqlLedger,
    send_id: int,
    due: list[Due],
    composer: Composer,
    mailer: Mailer,
    throttle: Throttle,
    clock: Clock,
    policy: SendPolicy,
    sleep: Callable[[float], None],
    heartbeat: Callable[[], None],
    holder: str,
    report: BatchReport,
) -> None:
    session = ledger.session
    for start in range(0, len(due), CHUNK):
        heartbeat()
        chunk = due[start : start + CHUNK]
        reservations = _reserve_many(
            throttle, [d for _, _, d, _ in chunk], policy.max_throttle_wait
        )
        granted = []
        for item, reservation in zip(chunk, reservations, strict=True):
            if not reservation.granted:
                report.later(reservation.wait)
                break
            granted.append((item, reservation))
        if not granted:
            return
        throttle.acquire_connection(holder, policy.connection_ttl_seconds)  # extend
        now = clock.now()
        sending = exists().where(Send.id == send_id, Send.status == SendStatus.SENDING)
        claimed = dict(
            session.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_([item[0] for item, _ in granted]),
                    Delivery.state.in_(RETRYABLE),
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                    sending,
                )
                .values(
                    state=DeliveryState.SUBMITTING,
                    lease_until=now + timedelta(seconds=policy.lease_seconds),
                    attempts=Delivery.attempts + 1,
                    first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
                    updated_at=now,
                )
                .returning(Delivery.id, Delivery.attempts)
                .execution_options(synchronize_session=False)
            ).all()
        )
        session.commit()
        if not claimed and ledger.send_status(send_id) != SendStatus.SENDING:
            report.stopped = ledger.send_status(send_id)
            return
        accepted: list[dict[str, Any]] = []
        started = time.monotonic()
        for (delivery_id, language, domain, subscriber), reservation in granted:
            if delivery_id not in claimed:
                throttle.sent(reservation.token)  # not sent: out of the rate window
                continue  # another worker has it
            delay = reservation.wait - (time.monotonic() - started)
            if delay > 0:
                sleep(delay)  # the reserved slot's time
            envelope_from, message = composer.compose(delivery_id, subscriber, language)
            recipient = subscriber.ascii_email or subscriber.email
            outcome = mailer.send(
                envelope_from, recipient, message, smtputf8=subscriber.ascii_email is None
            )
            throttle.sent(reservation.token)
            if outcome.accepted:
                accepted.append(
                    {
                        "d_id": delivery_id,
                        "attempt": claimed[delivery_id],
                        "code": outcome.code or None,
                        "text": outcome.text[:1000],
                        "now": clock.now(),
                    }
                )
                continue
            state = ledger.record_outcome(
                delivery_id, subscriber, outcome, clock.now(), policy, claimed[delivery_id]
            )
            report.add(state)
            if state == DeliveryState.DEFERRED:
                report.later(backoff_seconds(1, policy))
                if outcome.code in (421, 451):
                    throttle.slow_down(domain)
        if accepted:
            table = cast(Table, Delivery.__table__)
            result = session.connection().execute(
                update(table)
                .where(
                    table.c.id == bindparam("d_id"),
                    table.c.attempts == bindparam("attempt"),
                    or_(*(table.c.state == state for state in CLAIMED)),
                )  # no IN: executemany
                .values(
                    state=DeliveryState.SENT,
                    sent_at=bindparam("now"),
                    updated_at=bindparam("now"),
                    reply_code=bindparam("code"),
                    reply_text=bindparam("text"),
                    lease_until=None,
                ),
                accepted,
            )
            session.commit()
            for _ in range(result.rowcount if result.rowcount >= 0 else len(accepted)):
                report.add(DeliveryState.SENT)
                metrics.delivery_recorded(DeliveryState.SENT)
        if len(granted) < len(chunk):
            return
