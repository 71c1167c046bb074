"""Abuse limits on the real Redis: per IP, per address, per resend window, per recipient domain,
shared by processes; and what they mean end to end (mails actually sent)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dramatiq
import pytest
import redis
from sqlalchemy import func, select

from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.outbox import OutboxServer
from worker.models import SignupRefusal, Subscriber
from worker.runtime import Runtime
from worker.settings import Settings
from worker.subscriptions.limits import AbuseLimits, MemorySignupLimiter, RedisSignupLimiter


def limiter(redis_url: str, **limits: Any) -> RedisSignupLimiter:
    return RedisSignupLimiter(redis.Redis.from_url(redis_url), AbuseLimits(**limits), "k")


def test_signups_per_ip_per_hour(redis_url: str) -> None:
    limits = limiter(redis_url, signups_per_ip_per_hour=3)

    verdicts = [limits.allow_signup("203.0.113.7") for _ in range(5)]

    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert verdicts[3].reason == "ip_limit"
    assert 3590 < verdicts[3].retry_after <= 3600
    assert limits.allow_signup("203.0.113.8").allowed  # another IP has its own window
    client = redis.Redis.from_url(redis_url)
    assert not any(b"203.0.113" in key for key in client.keys("*"))  # keys are keyed hashes


def test_confirmations_per_address_per_day_and_resend_window(redis_url: str) -> None:
    limits = limiter(redis_url, confirmations_per_address_per_day=2, resend_window_seconds=1.5)

    first, again = (
        limits.allow_confirmation("a@example.org"),
        limits.allow_confirmation("a@example.org"),
    )
    time.sleep(1.6)
    second = limits.allow_confirmation("a@example.org")
    time.sleep(1.6)
    third = limits.allow_confirmation("a@example.org")

    assert (first.allowed, again.allowed, again.reason) == (True, False, "resend_window")
    assert 0 < again.retry_after <= 1.5
    assert second.allowed
    assert (third.allowed, third.reason) == (False, "address_limit")
    assert 86_390 < third.retry_after <= 86_400


def test_refused_call_counts_in_no_window(redis_url: str) -> None:
    # The resend window refuses first; the daily count must not be used up by refused calls.
    limits = limiter(redis_url, confirmations_per_address_per_day=2, resend_window_seconds=2.0)
    assert limits.allow_confirmation("b@example.org").allowed
    for _ in range(10):
        assert limits.allow_confirmation("b@example.org").reason == "resend_window"
    time.sleep(2.1)
    assert limits.allow_confirmation("b@example.org").allowed


def test_confirmations_per_domain_per_minute(redis_url: str) -> None:
    limits = limiter(redis_url, confirmations_per_domain_per_minute=4)
    verdicts = [limits.allow_domain("gmail.com") for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 4 + [False] * 2
    assert verdicts[4].reason == "domain_limit" and 59 < verdicts[4].retry_after <= 60
    assert limits.allow_domain("mail.ru").allowed


def test_zero_means_unlimited(redis_url: str) -> None:
    limits = limiter(
        redis_url,
        signups_per_ip_per_hour=0,
        confirmations_per_address_per_day=0,
        confirmations_per_domain_per_minute=0,
        resend_window_seconds=0,
    )
    assert all(limits.allow_signup("198.51.100.1").allowed for _ in range(50))
    assert all(limits.allow_confirmation("c@example.org").allowed for _ in range(50))
    assert all(limits.allow_domain("example.org").allowed for _ in range(50))


def _hammer(redis_url: str, rounds: int, results: Any) -> None:
    limits = limiter(redis_url, confirmations_per_address_per_day=7, resend_window_seconds=0)
    results.put(sum(limits.allow_confirmation("victim@example.org").allowed for _ in range(rounds)))


def test_limit_holds_across_processes(redis_url: str) -> None:
    # Given 6 processes each asking 50 times for a mail to the same address
    results: Any = multiprocessing.get_context("fork").Queue()
    workers = [
        multiprocessing.get_context("fork").Process(target=_hammer, args=(redis_url, 50, results))
        for _ in range(6)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    # Then exactly the daily limit was granted, in total
    assert sum(results.get(timeout=5) for _ in workers) == 7


def test_memory_limiter_has_the_same_rules() -> None:
    now = [1000.0]
    limits = MemorySignupLimiter(
        AbuseLimits(confirmations_per_address_per_day=2, resend_window_seconds=600),
        "k",
        lambda: now[0],
    )
    assert limits.allow_confirmation("d@example.org").allowed
    assert limits.allow_confirmation("D@EXAMPLE.ORG").reason == "resend_window"
    now[0] += 601
    assert limits.allow_confirmation("d@example.org").allowed
    now[0] += 601
    verdict = limits.allow_confirmation("d@example.org")
    assert verdict.reason == "address_limit" and verdict.retry_after == pytest.approx(86_400 - 1202)


# End to end: the actor, real Redis limits, real SMTP server.


def signup(n: int, address: str, ip: str | None = None, language: str = "en") -> dict[str, Any]:
    event = {"version": 1, "event_id": f"abuse-{n}", "email": address, "language": language}
    return {**event, "ip": ip} if ip else event


@pytest.fixture
def limited_rt(settings: Settings, stub_worker: StubWorker) -> Iterator[Runtime]:
    # After stub_worker, whose ``rt`` fixture installs the default runtime for the actors.
    from worker.db import dispose_engines

    rt = Runtime(
        replace(
            settings,
            signups_per_ip_per_hour=5,
            confirmations_per_address_per_day=3,
            confirmations_per_domain_per_minute=100,
            confirmation_resend_minutes=10,
        )
    )
    actors.use_runtime(rt)
    with rt.session() as session:  # created before concurrent actors would race to create it
        rt.newsletter(session)
    yield rt
    actors.use_runtime(None)
    dispose_engines()


def refusals(rt: Runtime) -> dict[str, int]:
    with rt.session() as session:
        rows = session.execute(
            select(SignupRefusal.reason, func.count()).group_by(SignupRefusal.reason)
        )
        return {reason: n for reason, n in rows.all()}


def test_a_bombed_address_gets_one_mail_per_window(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given a bot signing the same stranger up 40 times from 40 addresses in one window
    for n in range(40):
        actors.handle_signup.send(signup(n, "Stranger@Example.org", ip=f"198.51.100.{n}"))
    stub_worker.join()

    # Then the stranger got one confirmation mail, and 39 limited signups are on record
    assert [r.recipients for r in smtp.handler.received] == [["Stranger@example.org"]]
    assert refusals(limited_rt) == {"resend_window": 39}
    with limited_rt.session() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_one_ip_signing_up_many_addresses_is_stopped_after_the_hourly_limit(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    for n in range(12):
        actors.handle_signup.send(signup(n, f"person{n}@example.net", ip="203.0.113.9"))
    stub_worker.join()

    assert len(smtp.handler.received) == 5
    assert refusals(limited_rt) == {"ip_limit": 7}
    with limited_rt.session() as session:  # refused signups store no subscriber
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 5


def test_suppressed_address_gets_nothing(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    from worker.subscriptions.suppressions import suppress

    with limited_rt.session() as session:
        suppress(
            session,
            dedupe_key="bounced@example.org",
            hash_key=limited_rt.settings.secret_key,
            reason="hard_bounce",
            now=limited_rt.clock.now(),
        )
    actors.handle_signup.send(signup(1, "Bounced@Example.org"))
    stub_worker.join()

    assert smtp.handler.received == []
    with limited_rt.session() as session:
        assert session.scalars(select(Subscriber)).all() == []
        refusal = session.scalars(select(SignupRefusal)).one()
        assert (refusal.event_id, refusal.reason, refusal.payload) == (
            "abuse-1",
            "suppressed",
            "{}",
        )


def test_domain_limit_paces_confirmation_mails(settings: Settings, smtp: OutboxServer) -> None:
    from worker.broker import current

    broker = current()
    broker.flush_all()
    rt = Runtime(replace(settings, confirmations_per_domain_per_minute=3))
    actors.use_runtime(rt)
    try:
        # Given six signups, five at gmail.com, run by the actors one by one
        for n in range(5):
            actors.handle_signup(signup(n, f"reader{n}@gmail.com"))
        actors.handle_signup(signup(9, "reader@mail.ru", language="ru"))
        queued = broker.queues["transactional"]
        while not queued.empty():
            message = dramatiq.Message.decode(queued.get_nowait())
            queued.task_done()  # or the broker's join() waits for it forever
            actors.send_confirmation(*message.args)

        # Then three went to gmail.com (the per-minute limit) and one to mail.ru at once
        domains = sorted(r.recipients[0].split("@")[1] for r in smtp.handler.received)
        assert domains == ["gmail.com"] * 3 + ["mail.ru"]
        # And the other two wait in dramatiq's delay queue for the next free slot (<= 60 s)
        delayed = [
            dramatiq.Message.decode(m) for m in list(broker.queues["transactional.DQ"].queue)
        ]
        assert len(delayed) == 2
        assert all(0 < m.options["eta"] - m.message_timestamp <= 60_010 for m in delayed)
        with rt.session() as session:
            unsent = session.scalars(
                select(Subscriber).where(Subscriber.confirmation_sent_at.is_(None))
            ).all()
            assert sorted(s.id for s in unsent) == sorted(m.args[0] for m in delayed)
    finally:
        broker.flush_all()
        actors.use_runtime(None)
