"""The SQL ledger's ports as the runtime wires them: refusals recorded in the outcome's commit,
no read transaction left open between SMTP transactions, and the session hooks of the metrics
installed by the entry points (runtime, CLI) rather than by ``worker.db``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from tests.sendkit import ScriptedRelay, seed, start_send
from worker.cli import main
from worker.models import Delivery, FeedbackEvent, Subscriber, Suppression
from worker.operators import metrics
from worker.runtime import Runtime
from worker.sending.batch import send_batch
from worker.sending.driver_ledger import DriverLedger, Statement
from worker.sending.ports import Refusal, SmtpOutcome
from worker.sending.sql_ledger import SqlLedger
from worker.sending.throttle import LocalThrottle
from worker.states import DeliveryState


def test_no_transaction_stays_open_between_smtp_transactions(rt: Runtime) -> None:
    # Given a send whose first recipients draw a 5xx and a 4xx
    seed(rt, ["a@example.org", "b@example.org", "c@example.org", "d@example.org"])
    send_id = start_send(rt)
    replies = {
        "a@example.org": SmtpOutcome(550, "5.1.1 no such user"),
        "b@example.org": SmtpOutcome(451, "4.3.0 try later"),
    }
    with rt.session() as session:
        open_at_rcpt: list[bool] = []  # at each RCPT: has the ledger's session a transaction?
        mailer = ScriptedRelay(
            replies, on_rcpt=lambda: open_at_rcpt.append(session.in_transaction())
        )
        # When the batch runs on the runtime's ledger
        report = send_batch(
            rt.ledger(session),
            send_id,
            0,
            10**12,
            composer=rt.composer(session, send_id),
            mailer=mailer,
            throttle=LocalThrottle(),
            clock=rt.clock,
            policy=rt.policy,
        )
        # Then no RCPT (nor the throttle wait before it) ran inside a database transaction
        assert report.counts == {"failed": 1, "deferred": 1, "sent": 2}
        assert open_at_rcpt == [False, False, False, False]
        # and the 5xx is a feedback event
        assert session.scalar(select(func.count()).select_from(FeedbackEvent)) == 1


def test_a_refused_mailbox_full_counts_toward_the_configured_soft_bounce_limit(
    rt: Runtime,
) -> None:
    # Given a limit of one soft bounce (the policy's default is 3)
    strict = Runtime(dataclasses.replace(rt.settings, soft_bounce_limit=1))
    seed(strict, ["full@example.org"])
    send_id = start_send(strict)
    # When the relay refuses the message with "mailbox full" at send time
    with strict.session() as session:
        mailer = ScriptedRelay({"full@example.org": SmtpOutcome(552, "5.2.2 full")})
        send_batch(
            strict.ledger(session),
            send_id,
            0,
            10**12,
            composer=strict.composer(session, send_id),
            mailer=mailer,
            throttle=LocalThrottle(),
            clock=strict.clock,
            policy=strict.policy,
        )
    # Then that one soft bounce suppresses the address
    with strict.session() as session:
        event = session.scalars(select(FeedbackEvent)).one()
        assert (event.kind, event.effect) == ("soft_bounce", "soft_limit_suppressed")
        assert session.scalar(select(func.count()).select_from(Suppression)) == 1
    strict.close()


def test_a_lost_claim_and_a_closed_fence_leave_no_transaction_open(rt: Runtime) -> None:
    seed(rt, ["a@example.org"])
    send_id = start_send(rt)
    now = rt.clock.now()
    with rt.session() as session:
        ledger = rt.ledger(session)
        (delivery_id,) = ledger.claim(send_id, list(range(1, 100)), now, 600)
        # a fence with another attempt's number fails; the batch then reads the send's status
        assert not ledger.submit(delivery_id, 99, now, 600)
        ledger.send_status(send_id)
        assert not session.in_transaction()
        # an outcome for a claim taken back writes nothing and says what the row holds
        subscriber = subscriber_of(session, delivery_id)
        outcome = SmtpOutcome(550, "5.1.1 no such user")
        state = ledger.record_outcome(delivery_id, subscriber, outcome, now, rt.policy, 99)
        assert state == DeliveryState.SENDING
        assert not session.in_transaction()


def test_send_status_leaves_a_callers_transaction_alone(rt: Runtime) -> None:
    seed(rt, ["a@example.org"])
    send_id = start_send(rt)
    with rt.session() as session:
        session.scalar(select(Delivery.id).limit(1))  # the caller's own read
        assert rt.ledger(session).send_status(send_id) == "sending"
        assert session.in_transaction()


def subscriber_of(session: Session, delivery_id: int) -> Subscriber:
    delivery = session.get(Delivery, delivery_id)
    assert delivery is not None
    subscriber = session.get(Subscriber, delivery.subscriber_id)
    assert subscriber is not None
    return subscriber


class FailingRecorder:
    """A refusal recorder that fails (a crash between the two writes)."""

    def record(self, session: Session, refusal: Refusal) -> None:
        raise RuntimeError("crash while recording the refusal")


def test_a_refusal_and_its_failed_delivery_are_committed_together(rt: Runtime) -> None:
    # Given a claimed delivery
    seed(rt, ["a@example.org"])
    send_id = start_send(rt)
    now = rt.clock.now()
    with rt.session() as session:
        ledger = SqlLedger(session, refusals=FailingRecorder())
        (delivery_id,) = ledger.claim(send_id, list(range(1, 100)), now, 600)
        subscriber = subscriber_of(session, delivery_id)
        # When recording its 5xx fails half-way
        with pytest.raises(RuntimeError):
            ledger.record_outcome(
                delivery_id, subscriber, SmtpOutcome(550, "5.1.1 no"), now, rt.policy, 1
            )
        session.rollback()
    # Then neither the failed state nor a feedback event is durable
    with rt.session() as session:
        assert session.get(Delivery, delivery_id).state == DeliveryState.SENDING  # type: ignore[union-attr]
        assert session.scalar(select(func.count()).select_from(FeedbackEvent)) == 0


def test_a_ledger_without_recorder_refuses_to_drop_a_bounce(rt: Runtime) -> None:
    seed(rt, ["a@example.org"])
    send_id = start_send(rt)
    now = rt.clock.now() + timedelta(seconds=1)
    with rt.session() as session:
        ledger = SqlLedger(session)
        (delivery_id,) = ledger.claim(send_id, list(range(1, 100)), now, 600)
        subscriber = subscriber_of(session, delivery_id)
        with pytest.raises(RuntimeError, match="RefusalRecorder"):
            ledger.record_outcome(
                delivery_id, subscriber, SmtpOutcome(550, "5.1.1 no"), now, rt.policy, 1
            )
        session.rollback()


_HOOKS: list[tuple[str, Any]] = [
    ("after_flush", metrics._after_flush),
    ("after_commit", metrics._after_commit),
    ("after_soft_rollback", metrics._after_rollback),
]


@pytest.fixture
def no_hooks() -> Iterator[None]:
    """The metrics' session hooks removed for the test, installed again afterwards."""
    for name, hook in _HOOKS:
        if event.contains(Session, name, hook):
            event.remove(Session, name, hook)
    yield
    metrics.install_session_hooks()


def installed() -> bool:
    return all(event.contains(Session, name, hook) for name, hook in _HOOKS)


def test_the_runtime_installs_the_session_hooks_with_its_engine(
    no_hooks: None, settings: Any
) -> None:
    # Given no hooks, and a runtime
    runtime = Runtime(settings)
    assert not installed()
    counter = metrics.counter("newsletter_feedback_events_total").labels(
        kind="complaint", source="arf"
    )
    before = counter._value.get()
    # When its session commits a feedback event (and the hooks are installed twice more)
    with runtime.session() as session:
        metrics.install_session_hooks()
        now = runtime.clock.now()
        session.add(
            FeedbackEvent(
                source_event_id="arf:1",
                kind="complaint",
                source="arf",
                occurred_at=now,
                recorded_at=now,
            )
        )
    # Then the row is counted once
    assert installed()
    assert counter._value.get() == before + 1
    runtime.close()


def test_the_cli_installs_the_session_hooks(no_hooks: None, db_url: str) -> None:
    env = {
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_SECRET_KEY": "ledger-test-secret-0123456789",
    }
    result = CliRunner().invoke(main, ["inbound", "reprocess"], env=env)
    assert result.exit_code == 0, result.output
    assert installed()


def test_the_send_path_records_on_the_driver_and_reopens_a_closed_connection(
    rt: Runtime,
) -> None:
    # Given the runtime's ledger (the one the batch actor uses)
    seed(rt, ["a@example.org"])
    send_id = start_send(rt)
    with rt.session() as session:
        ledger = rt.ledger(session)
        assert isinstance(ledger, DriverLedger)
        now = rt.clock.now()
        (first,) = session.scalars(select(Delivery.id).where(Delivery.send_id == send_id))
        assert ledger.claim(send_id, [first], now, 600) == {first: 1}
        # When its connection is closed (a database restart, a test's teardown)
        ledger.db.close()
        assert not ledger.db.usable
        again = rt.ledger(session)
        # Then the next ledger of this thread has a fresh one, and the claim still holds
        assert again.db is not ledger.db and again.db.usable
        assert again.submit(first, 1, now, 600)
        accepted = again.record_accepted(send_id, first, 1, SmtpOutcome(250, "2.0.0 ok"), now)
        assert (accepted.written, accepted.send_status) == (True, "sending")
        assert again.counts(send_id) == {"sent": 1}
        assert not session.in_transaction()  # the reads through the session were ended


class CountingMetrics:
    """The outcomes a ledger counted, in order."""

    def __init__(self) -> None:
        self.recorded: list[str] = []

    def delivery_recorded(self, state: str) -> None:
        self.recorded.append(state)

    def render_observed(self, seconds: float) -> None:
        """Not counted here."""


def test_a_delivery_two_batches_skip_is_counted_once(rt: Runtime) -> None:
    # Given a planned delivery whose reader is no longer confirmed
    seed(rt, ["a@example.org", "b@example.org"])
    send_id = start_send(rt)
    with rt.session() as session:
        first = session.scalar(select(func.min(Delivery.id)).where(Delivery.send_id == send_id))
        assert first is not None
        counted = CountingMetrics()
        ledger = SqlLedger(session, metrics=counted)
        # When two batches that both read it as ineligible skip it
        now = rt.clock.now()
        skips = [ledger._skip([first], now), ledger._skip([first], now)]
        # Then it is skipped and counted once
        assert skips == [1, 0]
        assert counted.recorded == [DeliveryState.SKIPPED]
        assert session.scalar(select(Delivery.state).where(Delivery.id == first)) == "skipped"


def test_a_ledger_statement_numbers_each_name_once_in_order_of_first_use() -> None:
    # Given a statement that uses :now twice
    statement = Statement.of(
        "UPDATE delivery SET sent_at = :now, updated_at = :now WHERE id = :id", ("now", "id")
    )

    # Then psycopg's raw form numbers each name once; sqlite3's keeps the names
    assert statement.numbered == "UPDATE delivery SET sent_at = $1, updated_at = $1 WHERE id = $2"
    assert statement.named.endswith("WHERE id = :id")
    # And an argument order that is not the statement's is refused when the module loads
    with pytest.raises(ValueError, match=r"parameters are \('now', 'id'\), not \('id', 'now'\)"):
        Statement.of("UPDATE delivery SET updated_at = :now WHERE id = :id", ("id", "now"))
