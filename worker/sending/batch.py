"""The batch loop: send the due deliveries of one id range of a send, recording every step in a
``DeliveryLedger`` (claim a chunk, fence before DATA, outcome after the reply).

The loop knows no SQL: it runs against ``SqlLedger`` in production and ``MemoryLedger`` in fast
tests. A slow worker whose claim was taken back finds the fence closed and resets the SMTP
transaction, so a message is never handed over twice. Queue messages are hints:
``worker.sending.planning.pending_batches`` re-creates them from the ledger.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.sending.composer import Composer
from worker.sending.connection import ConnectionSlot
from worker.sending.ledger import DeliveryLedger, DueDelivery
from worker.sending.policy import SendPolicy
from worker.sending.ports import Clock, Mailer, Throttle
from worker.states import DeliveryState, SendStatus

log = logging.getLogger(__name__)

LATE_WAKEUP_SECONDS = 0.05  # a slot missed by more than this is given up and another one taken


@dataclass
class BatchReport:
    """What one run of a batch did. ``retry_after`` (seconds): run the batch again then."""

    counts: dict[str, int] = field(default_factory=dict)
    retry_after: float | None = None
    stopped: str | None = None  # the send's status when the batch stopped early (paused, cancelled)
    session_refused: bool = False  # a 421 at connect: the batch gave its connection slot back

    def add(self, state: str, n: int = 1) -> None:
        """Count ``n`` deliveries that reached ``state``."""
        self.counts[str(state)] = self.counts.get(str(state), 0) + n

    def later(self, seconds: float) -> None:
        """Ask to run again after ``seconds`` (the earliest of all requests wins; ≥ 0)."""
        seconds = max(seconds, 0.0)
        self.retry_after = seconds if self.retry_after is None else min(self.retry_after, seconds)


@dataclass(frozen=True)
class BatchContext:
    """The ports and policy one batch runs with."""

    ledger: DeliveryLedger
    send_id: int
    composer: Composer
    mailer: Mailer
    throttle: Throttle
    clock: Clock
    policy: SendPolicy
    sleep: Callable[[float], None] = time.sleep
    heartbeat: Callable[[], None] = lambda: None  # "this batch is alive" (at most once a second)
    slot: ConnectionSlot | None = None  # the thread's kept connection; None: one for this batch


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
    """Send the due deliveries of ``send_id`` with ids in [first_id, last_id].

    Safe to run twice or concurrently for the same range: deliveries are claimed atomically (a
    chunk of ``policy.claim_chunk`` at a time), and only while the send is ``sending``; a pause or
    cancel stops the batch after the message in flight (its outcome write reads the send's
    status). Holds one shared SMTP connection slot while it runs: ``slot`` (the worker thread's
    ``ConnectionSlot`` over ``mailer``) keeps the connection open for the thread's next batch;
    without one the connection is closed at the end. Returns a ``BatchReport``; never raises for
    SMTP errors (they are outcomes).
    """
    beat = _every_second(heartbeat)
    ctx = BatchContext(
        ledger, send_id, composer, mailer, throttle, clock, policy, sleep, beat, slot
    )
    report = BatchReport()
    status = ledger.send_status(send_id)
    if status != SendStatus.SENDING:
        report.stopped = status
        return report
    batch = ledger.due(send_id, first_id, last_id, clock.now())
    if batch.skipped:
        report.add(DeliveryState.SKIPPED, batch.skipped)
    if batch.next_retry_at is not None:
        report.later((batch.next_retry_at - clock.now()).total_seconds())
    if batch.due:
        _send_with_connection(ctx, batch.due, report)
    if report.stopped is None:
        retry_at = ledger.next_retry_at(send_id, first_id, last_id)
        if retry_at is not None:
            report.later((retry_at - clock.now()).total_seconds())
        ledger.finish_send_if_done(send_id, clock.now())
    return report


def _send_with_connection(ctx: BatchContext, due: list[DueDelivery], report: BatchReport) -> None:
    """Send ``due`` holding a shared SMTP connection slot; none free in time: come back soon."""
    slot = ctx.slot or ConnectionSlot(ctx.mailer, ctx.throttle)
    policy = ctx.policy
    if not slot.take(
        policy.connection_ttl_seconds, policy.connection_wait_seconds, ctx.sleep, ctx.heartbeat
    ):
        report.later(0.5 + random.random())  # every slot busy: try again soon
        return
    kept = False
    try:
        _send_chunks(ctx, due, slot, report)
        kept = ctx.slot is not None and not report.session_refused
    finally:
        if kept:
            slot.put_down()  # open for this thread's next batch, closed if none comes
        else:
            slot.close()  # QUIT first: the slot is free only once the session is over


def _every_second(heartbeat: Callable[[], None]) -> Callable[[], None]:
    """``heartbeat`` at most once a second: it is a Redis write, and the batch's grace period
    (minutes) needs no finer news than that."""
    last = [-1.0]

    def beat() -> None:
        if time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            heartbeat()

    return beat


def _send_chunks(
    ctx: BatchContext, rows: list[DueDelivery], slot: ConnectionSlot, report: BatchReport
) -> None:
    """Claim the rows a chunk at a time and send each claimed one; stops early when the send
    is no longer ``sending`` or the throttle asks to come back later."""
    size = max(ctx.policy.claim_chunk, 1)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        ctx.heartbeat()
        slot.extend(ctx.policy.connection_ttl_seconds)
        ids = [row.id for row in chunk]
        claims = ctx.ledger.claim(ctx.send_id, ids, ctx.clock.now(), ctx.policy.lease_seconds)
        if not claims:
            status = ctx.ledger.send_status(ctx.send_id)
            if status != SendStatus.SENDING:
                report.stopped = status
                return
            continue  # other workers have them
        todo = [row for row in chunk if row.id in claims]
        try:
            if not _send_claimed(ctx, todo, claims, report):
                return
        finally:
            # Claims not sent (stopped, throttled, an error) go straight back to the queue
            # instead of waiting for their lease: they are ``sending``, so DATA never started.
            ctx.ledger.release([(row.id, claims[row.id]) for row in todo], ctx.clock.now())


def _send_claimed(
    ctx: BatchContext, todo: list[DueDelivery], claims: dict[int, int], report: BatchReport
) -> bool:
    """Send the claimed rows in order, removing each from ``todo`` once it has an outcome (or its
    claim was lost). Returns False when the batch must stop (``report`` says why)."""
    replied = ""  # the slot of the message whose outcome was just recorded
    # No rate for any of the chunk's domains: no slot to take per message (one Redis call per
    # chunk instead of one per message; a rate set meanwhile applies from the next chunk).
    free = ctx.throttle.unlimited({row.domain for row in todo})
    try:
        while todo:
            row = todo[0]
            ctx.heartbeat()
            composed = ctx.composer.compose(row.id, row.subscriber, row.language)
            # The send slot is taken last, right before the SMTP transaction: whatever ran
            # before (composing) must not shift the message past its slot into the next one.
            # The previous message's reply goes to the throttle in the same call.
            wait, token = (None, "") if free else _reserve(ctx, row.domain, replied)
            replied = ""
            if wait is not None:
                report.later(wait)  # the batch comes back when the slot is near
                return False
            replied = token  # reported after the outcome is recorded: a Redis error then
            status = _deliver(ctx, row, claims[row.id], composed, report)  # loses nothing
            todo.pop(0)
            if report.session_refused:  # one connection too many: give the slot back
                report.later(1.0)
                return False
            if status != SendStatus.SENDING:
                report.stopped = status
                return False
        return True
    finally:
        ctx.throttle.sent(replied)


def _reserve(ctx: BatchContext, domain: str, replied: str) -> tuple[float | None, str]:
    """Take a send slot for ``domain`` at most ``max_throttle_wait`` ahead and sleep until it;
    while the slot is further away, wait (up to ``max_throttle_wait`` in all) for it to come in
    reach. ``replied``: the token of the previous message, whose reply has come. Returns (None,
    the slot's token) once the slot has come, else (the seconds after which to try again,
    "")."""
    horizon = ctx.policy.max_throttle_wait
    deadline = time.monotonic() + horizon
    given_up = replied  # and a slot missed by waking too late goes back with the next request
    while True:
        reservation = ctx.throttle.reserve(domain, horizon, done=given_up)
        given_up = ""
        if reservation.granted:
            due = time.monotonic() + reservation.wait
            if reservation.wait > 0:  # no sleep(0): on a busy machine it gives the CPU away
                ctx.sleep(reservation.wait)  # and waits a scheduler turn (ms) per message
            if time.monotonic() - due <= LATE_WAKEUP_SECONDS or time.monotonic() > deadline:
                return None, reservation.token
            given_up = reservation.token
            continue  # woke up too late (a busy machine): sending now would crowd the next slot
        in_reach = reservation.wait - horizon  # seconds until the slot is within the horizon
        if in_reach > deadline - time.monotonic():
            return max(in_reach, 0.01), ""
        # within the horizon yet refused: the rate window is full of messages in flight
        ctx.sleep(in_reach if in_reach > 0 else max(reservation.wait, 0.005))


def _deliver(
    ctx: BatchContext,
    row: DueDelivery,
    attempt: int,
    composed: tuple[str, bytes],
    report: BatchReport,
) -> str | None:
    """One SMTP transaction for a claimed delivery; records its outcome. Returns the send's
    status read after the outcome (the batch goes on only while it is ``sending``)."""
    envelope_from, message = composed
    subscriber = row.subscriber
    fence: list[bool] = []

    def before_data() -> bool:
        now = ctx.clock.now()
        fence.append(ctx.ledger.submit(row.id, attempt, now, ctx.policy.lease_seconds))
        return fence[-1]

    outcome = ctx.mailer.send(
        envelope_from,
        subscriber.ascii_email or subscriber.email,
        message,
        smtputf8=subscriber.ascii_email is None,
        before_data=before_data,
    )
    if fence and not fence[-1]:
        return ctx.ledger.send_status(ctx.send_id)  # taken back; whoever holds it now sends
    if outcome.accepted:
        accepted = ctx.ledger.record_accepted(
            ctx.send_id, row.id, attempt, outcome, ctx.clock.now()
        )
        if accepted.written:
            report.add(DeliveryState.SENT)
        return accepted.send_status
    state = ctx.ledger.record_outcome(
        row.id, subscriber, outcome, ctx.clock.now(), ctx.policy, attempt
    )
    report.add(state)
    # the reason, per delivery (its id, never the address): an operator's first question
    log.log(
        logging.INFO if state == DeliveryState.DEFERRED else logging.WARNING,
        "delivery %d %s: %s",
        row.id,
        state,
        f"{outcome.code or 'no reply'} {outcome.text}".strip()[:300],
    )
    if outcome.at_connect and outcome.code == 421:
        # too many sessions: fewer connections (this one goes back), the same message rate
        ctx.throttle.fewer_connections()
        report.session_refused = True
    elif state == DeliveryState.DEFERRED and outcome.code in (421, 451):
        ctx.throttle.slow_down(row.domain)  # the real domain (DueDelivery)
    return ctx.ledger.send_status(ctx.send_id)


__all__ = ["BatchReport", "send_batch"]
