"""The batch loop (``worker.sending.batch.send_batch``) against every ledger: the in-memory one
(fast, no I/O), ``SqlLedger`` on SQLite (the reference) and ``DriverLedger`` on SQLite and
PostgreSQL (production), with the same scenarios and the same expected values."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.sendkit import ScriptedRelay
from worker.db import make_engine
from worker.feedback.policy import FeedbackPolicy
from worker.feedback.refusals import RefusalFeedback
from worker.models import Base, Delivery, Edition, Newsletter, Send, Subscriber
from worker.sending.batch import BatchReport, send_batch
from worker.sending.driver_ledger import DriverLedger, LedgerConnection
from worker.sending.ledger import LeaseSweep
from worker.sending.memory_ledger import MemoryLedger
from worker.sending.planning import plan_deliveries
from worker.sending.policy import SendPolicy
from worker.sending.ports import Reservation, SmtpOutcome
from worker.sending.sql_ledger import SqlLedger
from worker.sending.throttle import LocalThrottle
from worker.states import (
    DeliveryState,
    IllegalTransition,
    SendStatus,
    SubscriberStatus,
    sources_among,
)

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
POLICY = SendPolicy(retry_base_seconds=60.0, lease_seconds=600.0, claim_chunk=2)
SEND_ID = 1
CONFIRMED = SubscriberStatus.CONFIRMED


class FakeClock:
    def __init__(self) -> None:
        self.at = START

    def now(self) -> datetime:
        return self.at


class FakeComposer:
    def compose(self, delivery_id: int, subscriber: Any, language: str) -> tuple[str, bytes]:
        return f"b{delivery_id}@bounces.example", b"Subject: hi\r\n\r\nhello\r\n"


class MemoryWorld:
    def __init__(self) -> None:
        self.ledger = MemoryLedger()

    def plan(self, addresses: dict[str, SubscriberStatus]) -> list[int]:
        subscribers = [
            Subscriber(id=n, email=a, ascii_email=a, domain=a.split("@")[1], status=s)
            for n, (a, s) in enumerate(addresses.items(), 1)
        ]
        return self.ledger.plan(SEND_ID, subscribers)

    def send_status(self) -> SendStatus | None:
        return self.ledger.send_status(SEND_ID)


class SqlWorld:
    def __init__(self, session: Session, driver: LedgerConnection | None = None) -> None:
        self.session = session
        # the send path's refusal recorder (Runtime.ledger): a 5xx becomes a feedback event
        refusals = RefusalFeedback(FeedbackPolicy(hash_key="test-key"))
        self.ledger: SqlLedger | DriverLedger = SqlLedger(session, refusals=refusals)
        if driver is not None:  # the production ledger: per-message statements on the driver
            self.ledger = DriverLedger(session, driver, refusals=refusals)

    def plan(self, addresses: dict[str, SubscriberStatus]) -> list[int]:
        s = self.session
        s.add(Newsletter(id=1, slug="n", default_language="en", profile={}, created_at=START))
        s.flush()  # no relationships between these rows: the unit of work needs the order
        s.add(Edition(id=1, newsletter_id=1, key="2026-W49", created_at=START, updated_at=START))
        s.flush()
        send = Send(id=SEND_ID, edition_id=1, status=SendStatus.SENDING, created_at=START)
        s.add(send)
        s.flush()
        for address in addresses:
            domain = address.split("@")[1]
            s.add(
                Subscriber(
                    newsletter_id=1, email=address, email_key=address, ascii_email=address,
                    domain=domain, language="en", status=CONFIRMED,
                    created_at=START, updated_at=START,
                )
            )  # fmt: skip
        s.commit()
        plan_deliveries(s, send, newsletter_id=1, languages=("en",), default_language="en")
        for subscriber in s.scalars(select(Subscriber)):  # then the status each scenario asks for
            subscriber.status = addresses[subscriber.email]
        s.commit()
        return list(s.scalars(select(Delivery.id).order_by(Delivery.id)))

    def send_status(self) -> SendStatus | None:
        return self.ledger.send_status(SEND_ID)


World = MemoryWorld | SqlWorld


@pytest.fixture(params=["memory", "sqlite", "driver-sqlite", "driver-postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """The same scenarios on every ledger: in memory, ``SqlLedger`` (the reference) and
    ``DriverLedger`` (production) on SQLite and PostgreSQL."""
    if request.param == "memory":
        yield MemoryWorld()
        return
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    if request.param == "driver-postgresql":
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    Base.metadata.drop_all(engine)  # the run's PostgreSQL database: fixed ids, so start empty
    Base.metadata.create_all(engine)
    driver = LedgerConnection.open(url) if request.param.startswith("driver") else None
    with sessionmaker(engine, expire_on_commit=False)() as session:
        yield SqlWorld(session, driver)
    if driver is not None:
        driver.close()
    engine.dispose()


def run(world: World, clock: FakeClock, mailer: ScriptedRelay) -> BatchReport:
    return send_batch(
        world.ledger, SEND_ID, 0, 10**9,
        composer=FakeComposer(),  # type: ignore[arg-type]
        mailer=mailer, throttle=LocalThrottle(), clock=clock, policy=POLICY,
        sleep=lambda _s: None,
    )  # fmt: skip


def test_accepted_deliveries_are_sent_and_the_send_finishes(world: World) -> None:
    # Given three confirmed subscribers (two claim chunks)
    world.plan({"a@x.example": CONFIRMED, "b@y.example": CONFIRMED, "c@x.example": CONFIRMED})
    mailer = ScriptedRelay()
    # When the batch runs
    report = run(world, FakeClock(), mailer)
    # Then every one is sent, once, and the send is finished
    assert report.counts == {"sent": 3}
    assert report.retry_after is None and report.stopped is None
    assert sorted(mailer.accepted) == ["a@x.example", "b@y.example", "c@x.example"]
    assert world.ledger.counts(SEND_ID) == {"sent": 3}
    assert world.send_status() == SendStatus.FINISHED


def test_a_4xx_defers_with_backoff_and_the_retry_sends_it(world: World) -> None:
    world.plan({"a@x.example": CONFIRMED, "grey@y.example": CONFIRMED})
    clock = FakeClock()
    mailer = ScriptedRelay({"grey@y.example": SmtpOutcome(451, "4.7.1 greylisted")})
    report = run(world, clock, mailer)
    assert report.counts == {"sent": 1, "deferred": 1}
    # first retry after retry_base (60 s) plus 0–25 % jitter
    assert report.retry_after is not None and 60.0 <= report.retry_after <= 75.0
    assert world.send_status() == SendStatus.SENDING
    assert run(world, clock, ScriptedRelay()).counts == {}  # not due yet: nothing is sent
    clock.at += timedelta(seconds=76)
    report = run(world, clock, ScriptedRelay())
    assert report.counts == {"sent": 1}
    assert world.ledger.counts(SEND_ID) == {"sent": 2}
    assert world.send_status() == SendStatus.FINISHED


def test_a_5xx_fails_the_delivery_for_good(world: World) -> None:
    world.plan({"gone@x.example": CONFIRMED})
    mailer = ScriptedRelay({"gone@x.example": SmtpOutcome(550, "5.1.1 no such user")})
    report = run(world, FakeClock(), mailer)
    assert report.counts == {"failed": 1}
    assert world.ledger.counts(SEND_ID) == {"failed": 1}
    assert world.send_status() == SendStatus.FINISHED


def test_a_subscriber_no_longer_confirmed_is_skipped(world: World) -> None:
    world.plan({"a@x.example": CONFIRMED, "left@x.example": SubscriberStatus.UNSUBSCRIBED})
    report = run(world, FakeClock(), ScriptedRelay())
    assert report.counts == {"sent": 1, "skipped": 1}
    assert world.ledger.counts(SEND_ID) == {"sent": 1, "skipped": 1}


def test_a_crash_between_fence_and_outcome_leaves_unknown(world: World) -> None:
    world.plan({"a@x.example": CONFIRMED, "b@x.example": CONFIRMED})
    clock = FakeClock()
    # Given a process that dies after the fence, before the reply is recorded
    with pytest.raises(RuntimeError):
        run(world, clock, ScriptedRelay({"a@x.example": "crash"}))
    # Then its claim is ``submitting`` and the claim it never used went back to the queue
    assert world.ledger.counts(SEND_ID) == {"submitting": 1, "queued": 1}
    # When the lease runs out, the relay may have the message: unknown, never resent by itself
    sweep = world.ledger.expire_leases(clock.at + timedelta(seconds=601))
    assert sweep == LeaseSweep(released=0, unknown=1)
    mailer = ScriptedRelay()
    assert run(world, clock, mailer).counts == {"sent": 1}
    assert mailer.accepted == ["b@x.example"]
    assert world.ledger.counts(SEND_ID) == {"sent": 1, "unknown": 1}
    assert world.send_status() == SendStatus.FINISHED  # unknown is an end state


def test_an_expired_claim_before_data_is_released_and_sent_again(world: World) -> None:
    (first,) = world.plan({"a@x.example": CONFIRMED})
    clock = FakeClock()
    assert world.ledger.claim(SEND_ID, [first], clock.at, 600) == {first: 1}  # then died
    sweep = world.ledger.expire_leases(clock.at + timedelta(seconds=601))
    assert sweep == LeaseSweep(released=1, unknown=0)
    assert run(world, clock, ScriptedRelay()).counts == {"sent": 1}
    assert world.ledger.claim(SEND_ID, [first], clock.at, 600) == {}  # sent: not claimable


def test_a_late_reply_after_the_lease_ran_out_settles_unknown(world: World) -> None:
    """Found while moving the ledger onto the transition table: a 250 that arrives after the
    reconciler turned the claim ``unknown`` must still be recorded as ``sent`` (the table lacked
    the arrow), or an operator's ``retry_unknown`` would mail the reader twice."""
    (first,) = world.plan({"a@x.example": CONFIRMED})
    now = START
    assert world.ledger.claim(SEND_ID, [first], now, 600) == {first: 1}
    assert world.ledger.submit(first, 1, now, 600)
    assert not world.ledger.submit(first, 1, now, 600)  # a fence passes once
    world.ledger.expire_leases(now + timedelta(seconds=601))
    accepted = world.ledger.record_accepted(SEND_ID, first, 1, SmtpOutcome(250, "ok"), now)
    assert accepted.written and accepted.send_status == SendStatus.SENDING
    assert world.ledger.counts(SEND_ID) == {"sent": 1}


def test_a_paused_send_sends_nothing(world: World) -> None:
    world.plan({"a@x.example": CONFIRMED})
    if isinstance(world, MemoryWorld):
        world.ledger.sends[SEND_ID] = SendStatus.PAUSED
    else:
        world.session.get_one(Send, SEND_ID).status = SendStatus.PAUSED
        world.session.commit()
    report = run(world, FakeClock(), ScriptedRelay())
    assert report.stopped == SendStatus.PAUSED and report.counts == {}
    assert world.ledger.counts(SEND_ID) == {"queued": 1}


def test_a_narrowed_where_cannot_widen_the_machine() -> None:
    assert sources_among(DeliveryState.QUEUED, DeliveryState.SENDING) == (DeliveryState.SENDING,)
    with pytest.raises(IllegalTransition):
        sources_among(DeliveryState.SENT, DeliveryState.QUEUED)  # queued → sent is no arrow


def test_a_slot_granted_at_once_is_not_slept_for(world: World) -> None:
    # Given three confirmed subscribers and no throttling (every slot is granted with wait 0)
    world.plan({"a@x.example": CONFIRMED, "b@y.example": CONFIRMED, "c@x.example": CONFIRMED})
    slept: list[float] = []
    # When the batch runs
    report = send_batch(
        world.ledger, SEND_ID, 0, 10**9,
        composer=FakeComposer(),  # type: ignore[arg-type]
        mailer=ScriptedRelay(), throttle=LocalThrottle(), clock=FakeClock(), policy=POLICY,
        sleep=slept.append,
    )  # fmt: skip
    # Then all three are sent without a single sleep(0): on a busy machine each one gives the
    # CPU away for a scheduler turn (about 10 ms at load 10 on 2 cores)
    assert report.counts == {"sent": 3}
    assert slept == []


class CountingThrottle(LocalThrottle):
    """A ``LocalThrottle`` that counts the calls the batch loop makes."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls: list[str] = []

    def reserve(self, domain: str, max_wait: float, done: str = "") -> Reservation:
        self.calls.append("reserve")
        return super().reserve(domain, max_wait, done)

    def unlimited(self, domains: Collection[str]) -> bool:
        self.calls.append("unlimited")
        return super().unlimited(domains)


def test_an_unthrottled_chunk_takes_no_slot_and_a_throttled_one_one_per_message(
    world: World,
) -> None:
    # Given three confirmed subscribers in two claim chunks (of 2 and 1)
    readers = {"a@x.example": CONFIRMED, "b@y.example": CONFIRMED, "c@x.example": CONFIRMED}
    world.plan(readers)
    unthrottled = CountingThrottle()
    # When the batch runs with no rate configured
    report = send_batch(
        world.ledger, SEND_ID, 0, 10**9,
        composer=FakeComposer(),  # type: ignore[arg-type]
        mailer=ScriptedRelay(), throttle=unthrottled, clock=FakeClock(), policy=POLICY,
        sleep=lambda _s: None,
    )  # fmt: skip
    # Then the throttle is asked once per chunk and no slot is taken
    assert report.counts == {"sent": 3}
    assert unthrottled.calls == ["unlimited", "unlimited"]


def test_a_rate_for_one_domain_of_a_chunk_takes_a_slot_for_each_message(world: World) -> None:
    # Given three confirmed subscribers and a rate for y.example only
    world.plan({"a@x.example": CONFIRMED, "b@y.example": CONFIRMED, "c@x.example": CONFIRMED})
    throttled = CountingThrottle(domain_rates={"y.example": 1000.0})
    # When the batch runs
    report = send_batch(
        world.ledger, SEND_ID, 0, 10**9,
        composer=FakeComposer(),  # type: ignore[arg-type]
        mailer=ScriptedRelay(), throttle=throttled, clock=FakeClock(), policy=POLICY,
        sleep=lambda _s: None,
    )  # fmt: skip
    # Then the chunk holding y.example reserves a slot per message; the other one none
    assert report.counts == {"sent": 3}
    assert throttled.calls == ["unlimited", "reserve", "reserve", "unlimited"]
