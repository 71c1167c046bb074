"""The weekly send: planning deliveries, sending batches, recording every outcome in the ledger.

Exactly-once rests on the ledger, not on the queue (dramatiq delivers at least once). A delivery is
claimed before its SMTP transaction (``sending``, with a lease and a new attempt number, committed);
once the relay has accepted the recipient and just before DATA it is fenced to ``submitting``
(committed, only if the claim is still ours); its outcome is committed right after the reply.
If the process dies, the reconciler turns an expired ``sending`` claim back into ``queued`` (the
relay cannot have the message: DATA never started) and an expired ``submitting`` claim into
``unknown`` (the relay may have it): counted, listed, resent only by ``retry_unknown``.
A slow worker whose claim was taken back finds the fence closed and resets the SMTP transaction, so
a message is never handed over twice. Queue messages are hints: ``pending_batches`` re-creates
them from the ledger.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    Table,
    bindparam,
    case,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from worker.feedback.policy import Attribution, FeedbackPolicy, record_feedback, smtp_reply_report
from worker.models import Delivery, Send, Subscriber
from worker.operators import metrics
from worker.sending.composer import Composer
from worker.sending.ports import Clock, Mailer, SmtpOutcome, Throttle
from worker.states import UNFINISHED_STATES, DeliveryState, SendStatus, SubscriberStatus

RETRYABLE = (DeliveryState.QUEUED, DeliveryState.DEFERRED)
LATE_WAKEUP_SECONDS = 0.05  # a slot missed by more than this is given up and another one taken
CLAIMED = (DeliveryState.SENDING, DeliveryState.SUBMITTING, DeliveryState.UNKNOWN)

# The two statements every message runs, built once on the Core table with bound parameters:
# building an UPDATE costs more CPU than executing it (0.3–0.5 ms each, measured), and a prebuilt
# Core statement keeps its cache key and compiled form (the ORM layer would rebuild them).
_LEDGER = cast(Table, Delivery.__table__)
_FENCE = (
    update(_LEDGER)
    .where(
        _LEDGER.c.id == bindparam("d_id"),
        _LEDGER.c.state == DeliveryState.SENDING,
        _LEDGER.c.attempts == bindparam("attempt"),
    )
    .values(
        state=DeliveryState.SUBMITTING, lease_until=bindparam("lease"), updated_at=bindparam("now")
    )
)
_ACCEPTED = (
    update(_LEDGER)
    .where(
        _LEDGER.c.id == bindparam("d_id"),
        _LEDGER.c.attempts == bindparam("attempt"),
        _LEDGER.c.state.in_(CLAIMED),
    )
    .values(
        state=DeliveryState.SENT,
        sent_at=bindparam("now"),
        reply_code=bindparam("code"),
        reply_text=bindparam("text"),
        lease_until=None,
        updated_at=bindparam("now"),
    )
    # the send's status comes back with the write: a pause or cancel needs no query of its own
    .returning(select(Send.status).where(Send.id == bindparam("of_send")).scalar_subquery())
)


@dataclass(frozen=True)
class SendPolicy:
    """How a batch behaves. Units: seconds."""

    lease_seconds: float = 600.0  # longer than one SMTP transaction can take (socket timeout 60 s)
    retry_base_seconds: float = (
        60.0  # first retry after a 4xx; doubles each attempt (+0–25 % jitter)
    )
    retry_cap_seconds: float = 3600.0
    max_age_seconds: float = 3 * 24 * 3600.0  # then a deferred delivery expires
    max_throttle_wait: float = (
        2.0  # wait in-process up to this long for a send slot, else re-enqueue
    )
    connection_ttl_seconds: float = 130.0  # a dead process's SMTP connection slot frees after this
    claim_chunk: int = 50  # deliveries claimed per UPDATE (unsent claims are given back at once)
    hash_key: str = ""  # for suppressions (see worker.feedback.suppressions)


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
        case(
            (Subscriber.language.in_(languages), Subscriber.language),
            else_=literal(default_language),
        )
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
    total = session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.send_id == send.id)
    )
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


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchContext:
    """The ports and policy one batch runs with."""

    composer: Composer
    mailer: Mailer
    throttle: Throttle
    clock: Clock
    policy: SendPolicy
    sleep: Callable[[float], None] = time.sleep
    heartbeat: Callable[[], None] = lambda: None  # "this batch is alive" (at most once a second)


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
    heartbeat: Callable[[], None] = lambda: None,
) -> BatchReport:
    """Send the due deliveries of ``send_id`` with ids in [first_id, last_id]; commits as it goes.

    Safe to run twice or concurrently for the same range: deliveries are claimed atomically (a
    chunk of ``policy.claim_chunk`` at a time), and only while the send is ``sending``; a pause or
    cancel stops the batch after the message in flight (its outcome write reads the send's
    status). Holds one shared SMTP connection slot while it runs and closes the connection at the
    end. Returns a ``BatchReport``; never raises for SMTP errors (they are outcomes).
    """
    ctx = BatchContext(composer, mailer, throttle, clock, policy, sleep, _every_second(heartbeat))
    report = BatchReport()
    status = _send_status(session, send_id)
    if status != SendStatus.SENDING:
        report.stopped = status
        return report
    rows = _due_rows(session, send_id, first_id, last_id, clock.now(), report)
    if rows:
        holder = uuid.uuid4().hex
        if not _take_connection(ctx, holder):
            report.later(0.5 + random.random())  # every slot busy: try again soon
            return report
        try:
            _send_chunks(session, send_id, rows, ctx, holder, report)
        finally:
            mailer.close()  # QUIT first: the slot is free only once the session is over
            throttle.release_connection(holder)
    if report.stopped is None:
        _schedule_deferred(session, send_id, first_id, last_id, clock.now(), report)
        finish_send_if_done(session, send_id, clock.now())
    return report


def _every_second(heartbeat: Callable[[], None]) -> Callable[[], None]:
    """``heartbeat`` at most once a second: it is a Redis write, and the batch's grace period
    (minutes) needs no finer news than that."""
    last = [-1.0]

    def beat() -> None:
        if time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            heartbeat()

    return beat


@dataclass(frozen=True)
class _Due:
    """A delivery due now, with its subscriber (read in the same query)."""

    id: int
    language: str
    domain: str
    subscriber: Subscriber


def _due_rows(
    session: Session, send_id: int, first_id: int, last_id: int, now: datetime, report: BatchReport
) -> list[_Due]:
    """The batch's due deliveries and their subscribers in one query; deliveries whose
    subscriber is no longer confirmed are ``skipped`` here, in one UPDATE."""
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
        .execution_options(populate_existing=True)
    ).all()
    due, ineligible = [], []
    for delivery_id, language, domain, next_attempt_at, subscriber in rows:
        if next_attempt_at is not None and next_attempt_at > now:
            report.later((next_attempt_at - now).total_seconds())
        elif subscriber.status != SubscriberStatus.CONFIRMED:
            ineligible.append(delivery_id)
        else:
            due.append(_Due(delivery_id, language, domain, subscriber))
    if ineligible:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ineligible), Delivery.state.in_(RETRYABLE))
            .values(state=DeliveryState.SKIPPED, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        for _ in ineligible:
            report.add(DeliveryState.SKIPPED)
            metrics.delivery_recorded(DeliveryState.SKIPPED)
    session.commit()
    return due


def _take_connection(ctx: BatchContext, holder: str) -> bool:
    """Wait up to ``max_throttle_wait`` for a shared SMTP connection slot."""
    deadline = time.monotonic() + ctx.policy.max_throttle_wait
    while not ctx.throttle.acquire_connection(holder, ctx.policy.connection_ttl_seconds):
        if time.monotonic() >= deadline:
            return False
        ctx.sleep(0.05 + random.random() * 0.1)
    return True


def _send_chunks(
    session: Session,
    send_id: int,
    rows: list[_Due],
    ctx: BatchContext,
    holder: str,
    report: BatchReport,
) -> None:
    """Claim the rows a chunk at a time and send each claimed one; stops early when the send
    is no longer ``sending`` or the throttle asks to come back later."""
    size = max(ctx.policy.claim_chunk, 1)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        ctx.heartbeat()
        ctx.throttle.acquire_connection(holder, ctx.policy.connection_ttl_seconds)  # extend
        claims = _claim_chunk(
            session, send_id, [row.id for row in chunk], ctx.clock.now(), ctx.policy.lease_seconds
        )
        if not claims:
            status = _send_status(session, send_id)
            if status != SendStatus.SENDING:
                report.stopped = status
                return
            continue  # other workers have them
        todo = [row for row in chunk if row.id in claims]
        try:
            if not _send_claimed(session, send_id, todo, claims, ctx, report):
                return
        finally:
            # Claims not sent (stopped, throttled, an error) go straight back to the queue
            # instead of waiting for their lease: they are ``sending``, so DATA never started.
            _release(session, [(row.id, claims[row.id]) for row in todo], ctx.clock.now())


def _send_claimed(
    session: Session,
    send_id: int,
    todo: list[_Due],
    claims: dict[int, int],
    ctx: BatchContext,
    report: BatchReport,
) -> bool:
    """Send the claimed rows in order, removing each from ``todo`` once it has an outcome (or its
    claim was lost). Returns False when the batch must stop (``report`` says why)."""
    while todo:
        row = todo[0]
        ctx.heartbeat()
        envelope_from, message = ctx.composer.compose(row.id, row.subscriber, row.language)
        # The send slot is taken last, right before the SMTP transaction: whatever ran before
        # (composing) must not shift the message past its slot into the next one.
        wait = _reserve(ctx, row.domain)
        if wait is not None:
            report.later(wait)  # the batch comes back when the slot is near
            return False
        status = _deliver(
            session, send_id, row, claims[row.id], (envelope_from, message), ctx, report
        )
        todo.pop(0)
        if status != SendStatus.SENDING:
            report.stopped = status
            return False
    return True


def _reserve(ctx: BatchContext, domain: str) -> float | None:
    """Take a send slot for ``domain`` at most ``max_throttle_wait`` ahead and sleep until it;
    while the slot is further away, wait (up to ``max_throttle_wait`` in all) for it to come in
    reach. Returns None once the slot has come, else the seconds after which to try again."""
    horizon = ctx.policy.max_throttle_wait
    deadline = time.monotonic() + horizon
    while True:
        reservation = ctx.throttle.reserve(domain, horizon)
        if reservation.granted:
            due = time.monotonic() + reservation.wait
            ctx.sleep(reservation.wait)
            if time.monotonic() - due <= LATE_WAKEUP_SECONDS or time.monotonic() > deadline:
                return None
            continue  # woke up too late (a busy machine): sending now would crowd the next slot
        in_reach = reservation.wait - horizon  # seconds until the slot is within the horizon
        if in_reach > deadline - time.monotonic():
            return max(in_reach, 0.01)
        ctx.sleep(max(in_reach, 0.005))


def _release(session: Session, claims: list[tuple[int, int]], now: datetime) -> None:
    """Give back unused claims (id, attempt): ``sending`` → ``queued``, each only while that
    claim still holds it (one executemany UPDATE, one commit)."""
    if not claims:
        return
    session.connection().execute(  # Core: an ORM UPDATE refuses executemany with a WHERE
        update(_LEDGER)
        .where(
            _LEDGER.c.id == bindparam("d_id"),
            _LEDGER.c.attempts == bindparam("attempt"),
            _LEDGER.c.state == DeliveryState.SENDING,
        )
        .values(state=DeliveryState.QUEUED, lease_until=None, updated_at=now),
        [{"d_id": d_id, "attempt": attempt} for d_id, attempt in claims],
    )
    session.commit()


def _deliver(
    session: Session,
    send_id: int,
    row: _Due,
    attempt: int,
    composed: tuple[str, bytes],
    ctx: BatchContext,
    report: BatchReport,
) -> str | None:
    """One SMTP transaction for a claimed delivery; records its outcome. Returns the send's
    status read after the outcome (the batch goes on only while it is ``sending``)."""
    envelope_from, message = composed
    subscriber = row.subscriber
    fence: list[bool] = []

    def before_data() -> bool:
        fence.append(_submit(session, row.id, attempt, ctx.clock.now(), ctx.policy.lease_seconds))
        return fence[-1]

    recipient = subscriber.ascii_email or subscriber.email
    outcome = ctx.mailer.send(
        envelope_from,
        recipient,
        message,
        smtputf8=subscriber.ascii_email is None,
        before_data=before_data,
    )
    if fence and not fence[-1]:
        return _send_status(session, send_id)  # taken back; whoever holds it now sends
    if outcome.accepted:
        return _record_accepted(session, send_id, row.id, attempt, outcome, ctx.clock.now(), report)
    state = record_outcome(
        session, row.id, subscriber, outcome, ctx.clock.now(), ctx.policy, attempt
    )
    report.add(state)
    if state == DeliveryState.DEFERRED and outcome.code in (421, 451):
        ctx.throttle.slow_down(subscriber.domain)
    return _send_status(session, send_id)


def _record_accepted(
    session: Session,
    send_id: int,
    delivery_id: int,
    attempt: int,
    outcome: SmtpOutcome,
    now: datetime,
    report: BatchReport,
) -> str | None:
    """Write an accepted outcome (``sent``) if claim ``attempt`` still holds the delivery, in one
    statement that also returns the send's status (so a pause needs no query of its own); one
    commit. An accepted outcome needs nothing from the row, so it is not read first."""
    params = {
        "d_id": delivery_id,
        "attempt": attempt,
        "of_send": send_id,
        "now": now,
        "code": outcome.code or None,
        "text": outcome.text[:1000],
    }
    written = session.connection().execute(_ACCEPTED, params).scalar()
    session.commit()
    if written is None:
        return _send_status(session, send_id)  # the claim was taken back meanwhile
    report.add(DeliveryState.SENT)
    metrics.delivery_recorded(DeliveryState.SENT)
    return str(written)


def _send_status(session: Session, send_id: int) -> str | None:
    status = session.scalar(select(Send.status).where(Send.id == send_id))
    session.commit()
    return status


def _claim(
    session: Session, send_id: int, delivery_id: int, now: datetime, lease_seconds: float
) -> int | None:
    """Atomically move a due delivery to ``sending`` with a lease, only while its send is
    ``sending``. Returns the new attempt number (the claim's fencing token), None if not claimed."""
    sending = exists().where(Send.id == send_id, Send.status == SendStatus.SENDING)
    attempt = session.scalar(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.state.in_(RETRYABLE),
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            sending,
        )
        .values(
            state=DeliveryState.SENDING,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=Delivery.attempts + 1,
            first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
            updated_at=now,
        )
        .returning(Delivery.attempts)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return None if attempt is None else int(attempt)


def _claim_chunk(
    session: Session, send_id: int, ids: list[int], now: datetime, lease_seconds: float
) -> dict[int, int]:
    """``_claim`` for many deliveries in one UPDATE and one commit; returns {id: attempt} for
    those claimed. Claiming ahead is safe: a ``sending`` claim whose lease runs out goes back to
    ``queued`` (DATA never started), and each message is still fenced before its DATA."""
    sending = exists().where(Send.id == send_id, Send.status == SendStatus.SENDING)
    rows = session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(ids),
            Delivery.state.in_(RETRYABLE),
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            sending,
        )
        .values(
            state=DeliveryState.SENDING,
            lease_until=now + timedelta(seconds=lease_seconds),
            attempts=Delivery.attempts + 1,
            first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
            updated_at=now,
        )
        .returning(Delivery.id, Delivery.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    session.commit()
    return {int(d_id): int(attempt) for d_id, attempt in rows}


def _submit(
    session: Session, delivery_id: int, attempt: int, now: datetime, lease_seconds: float
) -> bool:
    """The fence before DATA: ``sending`` → ``submitting`` if claim ``attempt`` is still ours."""
    lease = now + timedelta(seconds=lease_seconds)
    params = {"d_id": delivery_id, "attempt": attempt, "lease": lease, "now": now}
    result = session.connection().execute(_FENCE, params)
    session.commit()
    return bool(result.rowcount == 1)


def backoff_seconds(attempts: int, policy: SendPolicy) -> float:
    """Seconds before attempt ``attempts + 1``: ``retry_base × 2^(attempts−1)``, capped at
    ``retry_cap``, plus 0–25 % jitter so the retries of a greylisting domain spread out."""
    base = min(policy.retry_base_seconds * 2.0 ** max(attempts - 1, 0), policy.retry_cap_seconds)
    return float(base * (1 + random.random() * 0.25))


def _outcome_values(
    outcome: SmtpOutcome,
    first_attempt_at: datetime | None,
    attempts: int,
    now: datetime,
    policy: SendPolicy,
) -> dict[str, object]:
    values: dict[str, object] = {
        "reply_code": outcome.code or None,
        "reply_text": outcome.text[:1000],
        "lease_until": None,
        "updated_at": now,
    }
    if outcome.accepted:
        values.update(state=DeliveryState.SENT, sent_at=now)
    elif outcome.uncertain:
        values["state"] = DeliveryState.UNKNOWN
    elif outcome.permanent:
        values["state"] = DeliveryState.FAILED
    elif (now - (first_attempt_at or now)).total_seconds() >= policy.max_age_seconds:
        values["state"] = DeliveryState.EXPIRED
    else:
        values["state"] = DeliveryState.DEFERRED
        values["next_attempt_at"] = now + timedelta(seconds=backoff_seconds(attempts, policy))
    return values


def record_outcome(
    session: Session,
    delivery_id: int,
    subscriber: Subscriber,
    outcome: SmtpOutcome,
    now: datetime,
    policy: SendPolicy,
    attempt: int | None = None,
) -> str:
    """Write a claimed delivery's outcome to the ledger (and commit); returns the new state.

    2xx → sent; dropped after the end of DATA → unknown; 4xx or no reply → deferred with
    exponential backoff (``backoff_seconds``), or expired past ``max_age_seconds``; 5xx → failed,
    plus a feedback event classified by its RFC 3463 status (a 550 5.1.1 is a hard bounce and
    suppresses the address) unless the refusal was local (``outcome.local``). With ``attempt``,
    the outcome is written only if that claim still holds the delivery (else its current state
    is returned and nothing changes).
    """
    delivery = session.get(Delivery, delivery_id, populate_existing=True)
    assert delivery is not None
    if attempt is not None and (delivery.attempts != attempt or delivery.state not in CLAIMED):
        state = delivery.state
        session.commit()
        return state
    values = _outcome_values(outcome, delivery.first_attempt_at, delivery.attempts, now, policy)
    conditions = [Delivery.id == delivery_id]
    if attempt is not None:
        conditions += [Delivery.attempts == attempt, Delivery.state.in_(CLAIMED)]
    result = session.execute(
        update(Delivery)
        .where(*conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1 and values["state"] == DeliveryState.FAILED and not outcome.local:  # type: ignore[attr-defined]
        _record_smtp_feedback(session, delivery, subscriber, outcome, now, policy)
    session.commit()
    if result.rowcount == 1:  # type: ignore[attr-defined]
        metrics.delivery_recorded(str(values["state"]))
    return str(values["state"])


def _record_smtp_feedback(
    session: Session,
    delivery: Delivery,
    subscriber: Subscriber,
    outcome: SmtpOutcome,
    now: datetime,
    policy: SendPolicy,
) -> None:
    # The SMTP session itself names the delivery: first-hand, so trusted (worker.feedback.policy).
    report = smtp_reply_report(
        delivery.id, delivery.attempts, subscriber.email, outcome.code, outcome.text
    )
    record_feedback(
        session,
        report,
        policy=FeedbackPolicy(hash_key=policy.hash_key),
        now=now,
        attribution=Attribution("smtp", True, delivery, subscriber),
    )


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
    """Mark the send finished when no delivery is unfinished (queued, claimed, deferred).
    Returns True if it changed the status."""
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


# --- recovery ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseSweep:
    """What ``expire_leases`` did: claims given back to the queue, and claims now ``unknown``."""

    released: int
    unknown: int


def expire_leases(session: Session, now: datetime) -> LeaseSweep:
    """Settle claims whose lease ran out (their process died or hung); commits.

    ``sending`` → ``queued``: DATA had not started, so the relay cannot have the message.
    ``submitting`` → ``unknown``: the relay may have accepted it; resent only by ``retry_unknown``.
    """
    released = session.execute(
        update(Delivery)
        .where(Delivery.state == DeliveryState.SENDING, Delivery.lease_until < now)
        .values(state=DeliveryState.QUEUED, lease_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    unknown = session.execute(
        update(Delivery)
        .where(Delivery.state == DeliveryState.SUBMITTING, Delivery.lease_until < now)
        .values(state=DeliveryState.UNKNOWN, lease_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return LeaseSweep(int(released.rowcount or 0), int(unknown.rowcount or 0))  # type: ignore[attr-defined]


def pending_batches(
    session: Session, send_id: int, size: int, now: datetime
) -> list[tuple[int, int]]:
    """The batches of ``send_id`` that have deliveries due now, as (first id, last id), in order.

    Batches are fixed id ranges of ``size`` counted from the send's first delivery, so the same
    batch always has the same identity (the reconciler tracks its queue message by it). One
    ``GROUP BY`` query; deliveries deferred to a later time are left to their own batch message.
    """
    base = session.scalar(select(func.min(Delivery.id)).where(Delivery.send_id == send_id))
    if base is None:
        session.commit()
        return []
    bucket = (Delivery.id - literal_column(str(int(base)))) // literal_column(str(int(size)))
    rows = session.execute(
        select(bucket)
        .where(
            Delivery.send_id == send_id,
            Delivery.state.in_(RETRYABLE),
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        )
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    session.commit()
    return [(base + k * size, base + (k + 1) * size - 1) for (k,) in rows]


def progress(session: Session, send_id: int, since: datetime) -> tuple[dict[str, int], int]:
    """(deliveries per state, deliveries sent at or after ``since``): for the status display."""
    recent = session.scalar(
        select(func.count()).where(Delivery.send_id == send_id, Delivery.sent_at >= since)
    )
    counts = delivery_counts(session, send_id)
    session.commit()
    return counts, int(recent or 0)


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
        select(Delivery.state, func.count())
        .where(Delivery.send_id == send_id)
        .group_by(Delivery.state)
    ).all()
    return {state: int(count) for state, count in rows}


__all__ = [
    "BatchReport",
    "LeaseSweep",
    "SendPolicy",
    "backoff_seconds",
    "batch_ranges",
    "delivery_counts",
    "expire_leases",
    "finish_send_if_done",
    "pending_batches",
    "plan_deliveries",
    "progress",
    "record_outcome",
    "retry_unknown",
    "send_batch",
]
