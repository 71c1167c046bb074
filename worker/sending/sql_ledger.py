"""``SqlLedger``: the delivery ledger in the SQL database (SQLite or PostgreSQL). See
``worker.sending.ledger.DeliveryLedger`` for the contract.

Each write commits before it returns (the crash guarantees need every claim, fence and outcome
durable before the next SMTP step); reads never commit, except ``send_status``, which ends the
transaction it opened (the batch loop calls it between SMTP transactions). Every UPDATE takes its
``WHERE state IN (…)`` from ``worker.states.sources``.

The ledger imports no higher layer: the refusal recorder (feedback) and the counters (operators)
come in through ``worker.sending.ports``, filled by the runtime (``Runtime.ledger``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, exists, func, or_, select, update
from sqlalchemy.orm import Session

from worker.models import Delivery, Send, Subscriber
from worker.sending.ledger import RETRYABLE, Accepted, DueBatch, DueDelivery, LeaseSweep
from worker.sending.policy import SendPolicy, judge
from worker.sending.ports import (
    NoMetrics,
    Refusal,
    RefusalRecorder,
    SendingMetrics,
    SmtpOutcome,
)
from worker.states import (
    UNFINISHED_STATES,
    DeliveryState,
    SendStatus,
    SubscriberStatus,
    sources,
    sources_among,
)
from worker.states import DeliveryState as D
from worker.subscriptions.addresses import recipient_domain

# The statements every message runs, built once on the Core table with bound parameters:
# building an UPDATE costs more CPU than executing it (0.3–0.5 ms each, measured), and a prebuilt
# Core statement keeps its cache key and compiled form (the ORM layer would rebuild them).
_LEDGER = cast(Table, Delivery.__table__)
_FENCE = (
    update(_LEDGER)
    .where(
        _LEDGER.c.id == bindparam("d_id"),
        _LEDGER.c.state.in_(sources(D.SUBMITTING)),
        _LEDGER.c.attempts == bindparam("attempt"),
    )
    .values(state=D.SUBMITTING, lease_until=bindparam("lease"), updated_at=bindparam("now"))
)
_ACCEPTED = (
    update(_LEDGER)
    .where(
        _LEDGER.c.id == bindparam("d_id"),
        _LEDGER.c.attempts == bindparam("attempt"),
        _LEDGER.c.state.in_(sources(D.SENT)),
    )
    .values(
        state=D.SENT,
        sent_at=bindparam("now"),
        reply_code=bindparam("code"),
        reply_text=bindparam("text"),
        lease_until=None,
        updated_at=bindparam("now"),
    )
    # the send's status comes back with the write: a pause or cancel needs no query of its own
    .returning(select(Send.status).where(Send.id == bindparam("of_send")).scalar_subquery())
)
_RELEASE = (  # Core: an ORM UPDATE refuses executemany with a WHERE
    update(_LEDGER)
    .where(
        _LEDGER.c.id == bindparam("d_id"),
        _LEDGER.c.attempts == bindparam("attempt"),
        # OR of equalities, not IN: an expanding IN cannot run as executemany
        or_(*(_LEDGER.c.state == state for state in sources_among(D.QUEUED, D.SENDING))),
    )
    .values(state=D.QUEUED, lease_until=None, updated_at=bindparam("now"))
)


class SqlLedger:
    """The delivery ledger over one SQLAlchemy session. See ``DeliveryLedger``.

    ``refusals`` records a relay's 5xx as a feedback event; without one, recording a refusal
    raises (a ledger built for reading or maintenance must not lose a bounce silently).
    ``metrics`` counts the outcomes written.
    """

    def __init__(
        self,
        session: Session,
        *,
        refusals: RefusalRecorder[Session] | None = None,
        metrics: SendingMetrics | None = None,
    ) -> None:
        self.session = session
        self.refusals = refusals
        self.metrics: SendingMetrics = metrics or NoMetrics()

    def send_status(self, send_id: int) -> SendStatus | None:
        """The send's status; None if there is no such send. Writes nothing.

        Ends the transaction the read opened (a caller's open transaction is left alone): the
        batch loop reads the status between SMTP transactions, and a transaction left open on
        PostgreSQL would span the throttle wait and the next RCPT.
        """
        opened = not self.session.in_transaction()
        status = self.session.scalar(select(Send.status).where(Send.id == send_id))
        if opened:
            self.session.commit()  # nothing pending: ends the read (a rollback would expire rows)
        return status

    def due(self, send_id: int, first_id: int, last_id: int, now: datetime) -> DueBatch:
        """One query for the range's retryable deliveries and their subscribers; the ineligible
        ones become ``skipped`` in one UPDATE (committed)."""
        rows = self.session.execute(
            select(
                Delivery.id,
                Delivery.language,
                Delivery.domain,
                Delivery.next_attempt_at,
                Subscriber,
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
        due, ineligible, later = [], [], []
        for delivery_id, language, domain, next_attempt_at, subscriber in rows:
            if next_attempt_at is not None and next_attempt_at > now:
                later.append(next_attempt_at)
            elif subscriber.status != SubscriberStatus.CONFIRMED:
                ineligible.append(delivery_id)
            else:
                # throttled by the real domain, from the decrypted address: the stored
                # domain is only a provider bucket
                domain = recipient_domain(subscriber.ascii_email, subscriber.email)
                due.append(DueDelivery(delivery_id, language, domain, subscriber))
        skipped = self._skip(ineligible, now)
        return DueBatch(due, skipped, min(later, default=None))

    def _skip(self, ids: list[int], now: datetime) -> int:
        """Queued or deferred ``ids`` → ``skipped`` (one UPDATE, committed); returns how many
        rows it changed. Only those are counted: a batch that read the same rows and skipped
        them first leaves this one nothing to count."""
        if not ids:
            return 0
        result = self.session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.state.in_(sources_among(D.SKIPPED, *RETRYABLE)))
            .values(state=D.SKIPPED, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
        changed = int(result.rowcount)  # type: ignore[attr-defined]
        for _ in range(changed):
            self.metrics.delivery_recorded(D.SKIPPED)
        return changed

    def claim(
        self, send_id: int, ids: list[int], now: datetime, lease_seconds: float
    ) -> dict[int, int]:
        """One UPDATE … RETURNING and one commit for the whole chunk. Claiming ahead is safe: a
        ``sending`` claim whose lease runs out goes back to ``queued`` (DATA never started), and
        each message is still fenced before its DATA."""
        sending = exists().where(Send.id == send_id, Send.status == SendStatus.SENDING)
        rows = self.session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(ids),
                Delivery.state.in_(sources(D.SENDING)),
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                sending,
            )
            .values(
                state=D.SENDING,
                lease_until=now + timedelta(seconds=lease_seconds),
                attempts=Delivery.attempts + 1,
                first_attempt_at=func.coalesce(Delivery.first_attempt_at, now),
                updated_at=now,
            )
            .returning(Delivery.id, Delivery.attempts)
            .execution_options(synchronize_session=False)
        ).all()
        self.session.commit()
        return {int(d_id): int(attempt) for d_id, attempt in rows}

    def submit(self, delivery_id: int, attempt: int, now: datetime, lease_seconds: float) -> bool:
        """The fence (prebuilt UPDATE, one commit); True if it passed."""
        lease = now + timedelta(seconds=lease_seconds)
        params = {"d_id": delivery_id, "attempt": attempt, "lease": lease, "now": now}
        result = self.session.connection().execute(_FENCE, params)
        self.session.commit()
        return bool(result.rowcount == 1)

    def record_accepted(
        self, send_id: int, delivery_id: int, attempt: int, outcome: SmtpOutcome, now: datetime
    ) -> Accepted:
        """One prebuilt statement that also returns the send's status, one commit. An accepted
        outcome needs nothing from the row, so it is not read first."""
        params = {
            "d_id": delivery_id,
            "attempt": attempt,
            "of_send": send_id,
            "now": now,
            "code": outcome.code or None,
            "text": outcome.text[:1000],
        }
        written = self.session.connection().execute(_ACCEPTED, params).scalar()
        self.session.commit()
        if written is None:  # the claim was taken back meanwhile
            return Accepted(False, self.send_status(send_id))
        self.metrics.delivery_recorded(D.SENT)
        return Accepted(True, SendStatus(written))

    def record_outcome(
        self,
        delivery_id: int,
        subscriber: Subscriber,
        outcome: SmtpOutcome,
        now: datetime,
        policy: SendPolicy,
        attempt: int | None = None,
    ) -> DeliveryState:
        """Reads the row (first attempt, attempts), writes the judged state in one conditional
        UPDATE plus, for a relay's 5xx, its feedback event through ``refusals``.

        Crash safety: the delivery's ``failed`` state and its feedback event are written in one
        transaction and one commit, so neither is ever durable without the other. A lost claim
        (the UPDATE matched nothing) reads the row's state before that commit: no transaction
        stays open afterwards. Raises ``LookupError`` for an unknown delivery.
        """
        delivery = self.session.get(Delivery, delivery_id, populate_existing=True)
        if delivery is None:
            raise LookupError(f"no delivery {delivery_id}")
        verdict = judge(outcome, delivery.first_attempt_at, delivery.attempts, now, policy)
        conditions = [Delivery.id == delivery_id, Delivery.state.in_(sources(verdict.state))]
        if attempt is not None:
            conditions.append(Delivery.attempts == attempt)
        result = self.session.execute(
            update(Delivery)
            .where(*conditions)
            .values(**_outcome_values(verdict.state, verdict.next_attempt_at, outcome, now))
            .execution_options(synchronize_session=False)
        )
        written = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if not written:  # claim lost: what the row says now, read before the commit ends it
            current = select(Delivery.state).where(Delivery.id == delivery_id)
            state = self.session.execute(current).scalar_one()
            self.session.commit()
            return D(state)
        if verdict.state == D.FAILED and not outcome.local:
            refusal = Refusal(delivery_id, delivery.attempts, subscriber.id, outcome, now)
            self._record_refusal(refusal)
        self.session.commit()
        self.metrics.delivery_recorded(verdict.state)
        return verdict.state

    def _record_refusal(self, refusal: Refusal) -> None:
        """Hand ``refusal`` to the recorder in this session's open transaction (not committed);
        raises ``RuntimeError`` without a recorder."""
        if self.refusals is None:
            raise RuntimeError("this SqlLedger has no RefusalRecorder: use Runtime.ledger")
        self.refusals.record(self.session, refusal)

    def release(self, claims: list[tuple[int, int]], now: datetime) -> None:
        """One executemany UPDATE, one commit."""
        if not claims:
            return
        params = [{"d_id": d_id, "attempt": attempt, "now": now} for d_id, attempt in claims]
        self.session.connection().execute(_RELEASE, params)
        self.session.commit()

    def next_retry_at(self, send_id: int, first_id: int, last_id: int) -> datetime | None:
        """Reads only."""
        return self.session.scalar(
            select(func.min(Delivery.next_attempt_at)).where(
                Delivery.send_id == send_id,
                Delivery.id.between(first_id, last_id),
                Delivery.state == D.DEFERRED,
            )
        )

    def finish_send_if_done(self, send_id: int, now: datetime) -> bool:
        """Commits when it wrote."""
        unfinished = self.session.scalar(
            select(Delivery.id)
            .where(Delivery.send_id == send_id, Delivery.state.in_(UNFINISHED_STATES))
            .limit(1)
        )
        if unfinished is not None:
            return False
        result = self.session.execute(
            update(Send)
            .where(Send.id == send_id, Send.status.in_(sources(SendStatus.FINISHED)))
            .values(status=SendStatus.FINISHED, finished_at=now)
        )
        self.session.commit()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def expire_leases(self, now: datetime) -> LeaseSweep:
        """``sending`` → ``queued`` (the relay cannot have the message) and ``submitting`` →
        ``unknown`` (it may have it); two UPDATEs, one commit."""
        released = self._expire(D.SENDING, D.QUEUED, now)
        unknown = self._expire(D.SUBMITTING, D.UNKNOWN, now)
        self.session.commit()
        return LeaseSweep(released, unknown)

    def _expire(self, current: DeliveryState, target: DeliveryState, now: datetime) -> int:
        result = self.session.execute(
            update(Delivery)
            .where(Delivery.state.in_(sources_among(target, current)), Delivery.lease_until < now)
            .values(state=target, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def retry_unknown(self, send_id: int, now: datetime) -> int:
        """Operator command: the send's ``unknown`` deliveries → ``queued``, and a ``finished``
        send → ``sending`` again; one commit. Returns how many deliveries."""
        result = self.session.execute(
            update(Delivery)
            .where(
                Delivery.send_id == send_id,
                Delivery.state.in_(sources_among(D.QUEUED, D.UNKNOWN)),
            )
            .values(state=D.QUEUED, next_attempt_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        self.session.execute(
            update(Send)
            .where(
                Send.id == send_id,
                Send.status.in_(sources_among(SendStatus.SENDING, SendStatus.FINISHED)),
            )
            .values(status=SendStatus.SENDING, finished_at=None)
        )
        self.session.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def counts(self, send_id: int) -> dict[str, int]:
        """Reads only."""
        rows = self.session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.send_id == send_id)
            .group_by(Delivery.state)
        ).all()
        return {str(state): int(count) for state, count in rows}

    def progress(
        self, send_id: int, since: datetime
    ) -> tuple[dict[str, int], int, datetime | None]:
        """Reads only."""
        recent, first = self.session.execute(
            select(func.count(), func.min(Delivery.sent_at)).where(
                Delivery.send_id == send_id, Delivery.sent_at >= since
            )
        ).one()
        return self.counts(send_id), int(recent or 0), first


def _outcome_values(
    state: DeliveryState, retry_at: datetime | None, outcome: SmtpOutcome, now: datetime
) -> dict[str, object]:
    """The columns an outcome writes."""
    values: dict[str, object] = {
        "state": state,
        "reply_code": outcome.code or None,
        "reply_text": outcome.text[:1000],
        "lease_until": None,
        "updated_at": now,
    }
    if state == D.SENT:
        values["sent_at"] = now
    if state == D.DEFERRED:
        values["next_attempt_at"] = retry_at
    return values


__all__ = ["SqlLedger"]
