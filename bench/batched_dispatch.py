"""A PROTOTYPE of ``worker.dispatch.send_batch`` with the ledger written in chunks, for measuring
what batching would buy. Not used by the product; ``bench/batched_actors.py`` swaps it in for the
benchmark workers only (``bench/e2e_throughput.py --actors bench.batched_actors``).

Per chunk of ``CHUNK`` deliveries instead of per delivery:
- one SELECT of the deliveries joined with their subscribers (instead of one ``session.get`` each);
- one pipelined round trip of throttle reservations (the same Lua script, one call per message);
- one ``UPDATE … WHERE id IN (…) AND state IN (queued, deferred) RETURNING id`` claim, one commit;
- one executemany ``UPDATE`` for the accepted outcomes, one commit (other outcomes go through
  ``record_outcome`` one by one, as now: they are rare and write feedback).
The trade-off: a crash between claim and outcome leaves up to ``CHUNK`` deliveries ``sending``
(they become ``unknown`` when the lease runs out) instead of one.
Written against the dispatch module of the first commit (HEAD); the ledger semantics are the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from worker.composer import Composer
from worker.dispatch import (
    RETRYABLE,
    BatchReport,
    SendPolicy,
    _backoff,
    _schedule_deferred,
    _send_status,
    finish_send_if_done,
    record_outcome,
)
from worker.models import Delivery, DeliveryState, SendStatus, Subscriber, SubscriberStatus
from worker.ports import Clock, Mailer, Reservation, Throttle

CHUNK = 50


def _reserve_many(throttle: Throttle, domains: list[str], max_wait: float) -> list[Reservation]:
    """One Redis round trip for the chunk's reservations (same script, pipelined)."""
    script = getattr(throttle, "_script", None)
    client = getattr(throttle, "client", None)
    if script is None or client is None:
        return [throttle.reserve(d, max_wait) for d in domains]
    pipe = client.pipeline(transaction=False)
    t: Any = throttle
    for domain in domains:
        domain = domain.lower()
        keys = [f"{t.prefix}:rates", f"{t.prefix}:next:global", f"{t.prefix}:next:domain:{domain}",
                f"{t.prefix}:penalty:{domain}"]
        args = [t.global_rate, t.domain_rates.get(domain, 0.0), domain, int(max_wait * 1000)]
        script(keys=keys, args=args, client=pipe)
    return [Reservation(granted=bool(g), wait=int(w) / 1000.0) for g, w in pipe.execute()]


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
    report = BatchReport()
    status = _send_status(session, send_id)
    if status != SendStatus.SENDING:
        report.stopped = status
        return report
    rows = session.execute(
        select(Delivery.id, Delivery.language, Delivery.domain, Delivery.next_attempt_at, Subscriber)
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.send_id == send_id, Delivery.id.between(first_id, last_id),
               Delivery.state.in_(RETRYABLE))
        .order_by(Delivery.id)
    ).all()
    session.commit()
    now = clock.now()
    due, skipped = [], []
    for delivery_id, language, domain, next_attempt_at, subscriber in rows:
        if next_attempt_at is not None and next_attempt_at > now:
            report.later((next_attempt_at - now).total_seconds())
        elif subscriber.status != SubscriberStatus.CONFIRMED:
            skipped.append(delivery_id)
        else:
            due.append((delivery_id, language, domain, subscriber))
    if skipped:
        session.execute(
            update(Delivery).where(Delivery.id.in_(skipped), Delivery.state.in_(RETRYABLE))
            .values(state=DeliveryState.SKIPPED, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        for _ in skipped:
            report.add(DeliveryState.SKIPPED)
    for start in range(0, len(due), CHUNK):
        if start and _send_status(session, send_id) != SendStatus.SENDING:
            report.stopped = _send_status(session, send_id)
            return report
        chunk = due[start : start + CHUNK]
        reservations = _reserve_many(throttle, [d for _, _, d, _ in chunk], policy.max_throttle_wait)
        granted = []
        for item, reservation in zip(chunk, reservations, strict=True):
            if not reservation.granted:
                report.later(reservation.wait)
                break
            granted.append((item, reservation.wait))
        if not granted:
            break
        now = clock.now()
        claimed = set(session.scalars(
            update(Delivery)
            .where(Delivery.id.in_([item[0] for item, _ in granted]), Delivery.state.in_(RETRYABLE),
                   or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
            .values(state=DeliveryState.SENDING, lease_until=now + timedelta(seconds=policy.lease_seconds),
                    attempts=Delivery.attempts + 1, first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
                    updated_at=now)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        ).all())
        session.commit()
        accepted: list[dict[str, Any]] = []
        started = time.monotonic()
        for (delivery_id, language, domain, subscriber), wait in granted:
            if delivery_id not in claimed:
                continue
            delay = wait - (time.monotonic() - started)
            if delay > 0:
                sleep(delay)  # keep the reserved slot's time
            envelope_from, message = composer.compose(delivery_id, subscriber, language)
            recipient = subscriber.ascii_email or subscriber.email
            outcome = mailer.send(envelope_from, recipient, message, smtputf8=subscriber.ascii_email is None)
            if outcome.accepted:
                stamp = clock.now()
                accepted.append({"d_id": delivery_id, "code": outcome.code or None, "text": outcome.text[:1000],
                                 "now": stamp})
                report.add(DeliveryState.SENT)
                continue
            state = record_outcome(session, delivery_id, subscriber, outcome, clock.now(), policy)
            report.add(state)
            if state == DeliveryState.DEFERRED:
                report.later(_backoff(1, policy))
                if outcome.code in (421, 451):
                    throttle.slow_down(domain)
        if accepted:
            session.connection().execute(
                update(Delivery.__table__)
                .where(Delivery.__table__.c.id == bindparam("d_id"),
                       Delivery.__table__.c.state == DeliveryState.SENDING)
                .values(state=DeliveryState.SENT, sent_at=bindparam("now"), updated_at=bindparam("now"),
                        reply_code=bindparam("code"), reply_text=bindparam("text"), lease_until=None),
                accepted,
            )
            session.commit()
        if len(granted) < len(chunk):
            break
    _schedule_deferred(session, send_id, first_id, last_id, clock.now(), report)
    finish_send_if_done(session, send_id, clock.now())
    return report
