"""The ledger and its claims on SQLite and PostgreSQL, against a real (scripted) SMTP server."""

from __future__ import annotations

import dataclasses
import email
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import dramatiq
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from tests.sendkit import run_batch, seed, start_send, states
from tests.smtp_script import ScriptServer
from worker import actors
from worker.broker import batch_name, current
from worker.cli import main
from worker.editions.store import find_edition
from worker.models import Delivery, FeedbackEvent, Send, Suppression
from worker.runtime import Runtime, runtime
from worker.sending.identity import seal_delivery
from worker.sending.planning import pending_batches, plan_deliveries
from worker.sending.ports import Mailer, SmtpOutcome
from worker.sending.sends import Repeat, When, create_send, set_status
from worker.sending.sql_ledger import SqlLedger
from worker.sending.throttle import LocalThrottle
from worker.settings import Settings


@pytest.fixture
def server() -> Iterator[ScriptServer]:
    with ScriptServer() as running:
        yield running


@pytest.fixture
def srt(settings: Settings, server: ScriptServer) -> Iterator[Runtime]:
    """A runtime whose relay is the scripted server, with second-scale retries."""
    changed = dataclasses.replace(
        settings, smtp_url=server.url(), retry_base_seconds=1.0, retry_max_age_seconds=30.0
    )
    runtime = Runtime(changed)
    actors.use_runtime(runtime)
    yield runtime
    actors.use_runtime(None)


def ids(rt: Runtime, send_id: int) -> list[int]:
    with rt.session() as session:
        return list(
            session.scalars(
                select(Delivery.id).where(Delivery.send_id == send_id).order_by(Delivery.id)
            )
        )


Fence = Callable[[], bool]
# Fault injection: (n-th send, recipient, the batch's fence) -> the fence the mailer runs instead.
Hook = Callable[[int, str, Fence | None], Fence | None]


class Wrapped:
    """A mailer calling ``hook(n, recipient, before_data)`` before each send (fault injection)."""

    def __init__(self, inner: Mailer, hook: Hook) -> None:
        self.inner, self.hook, self.n = inner, hook, 0

    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        *,
        smtputf8: bool,
        before_data: Fence | None = None,
    ) -> SmtpOutcome:
        self.n += 1
        fence = self.hook(self.n, recipient, before_data)
        return self.inner.send(
            envelope_from, recipient, message, smtputf8=smtputf8, before_data=fence
        )

    def close(self) -> None:
        self.inner.close()


def test_claim_lost_before_smtp_is_released_not_unknown(srt: Runtime, server: ScriptServer) -> None:
    seed(srt, ["a@example.org", "b@example.org", "c@example.org"])
    send_id = start_send(srt)
    first = ids(srt, send_id)[0]
    now = srt.clock.now()
    with srt.session() as session:  # a worker claimed a delivery, then died before any SMTP
        ledger = SqlLedger(session)
        assert ledger.claim(send_id, [first], now, 600) == {first: 1}
        sweep = ledger.expire_leases(now + timedelta(seconds=601))
    assert (sweep.released, sweep.unknown) == (1, 0)
    report = run_batch(srt, send_id)
    assert report.counts == {"sent": 3}
    assert dict(server.handler.accepted) == {
        "a@example.org": 1,
        "b@example.org": 1,
        "c@example.org": 1,
    }
    with srt.session() as session:
        assert session.get_one(Send, send_id).status == "finished"
        assert session.get_one(Delivery, first).attempts == 2


def test_claim_lost_during_data_is_unknown_and_retry_unknown_resends_same_message_id(
    srt: Runtime, server: ScriptServer
) -> None:
    seed(srt, ["a@example.org", "b@example.org"])
    send_id = start_send(srt)
    first = ids(srt, send_id)[0]
    now = srt.clock.now()
    with srt.session() as session:  # died after the fence, before the outcome was written
        ledger = SqlLedger(session)
        assert ledger.claim(send_id, [first], now, 600) == {first: 1}
        assert ledger.submit(first, 1, now, 600)
        assert not ledger.submit(first, 1, now, 600)  # a fence passes once
        sweep = ledger.expire_leases(now + timedelta(seconds=601))
    assert (sweep.released, sweep.unknown) == (0, 1)
    run_batch(srt, send_id)
    with srt.session() as session:
        assert SqlLedger(session).counts(send_id) == {"sent": 1, "unknown": 1}
        assert session.get_one(Send, send_id).status == "finished"  # unknown is an end state
        assert SqlLedger(session).retry_unknown(send_id, srt.clock.now()) == 1
        assert session.get_one(Send, send_id).status == "sending"
    run_batch(srt, send_id)
    message = email.message_from_bytes(server.handler.messages["a@example.org"][0])
    sealed = seal_delivery(first, key=srt.settings.secret_key)
    assert message["Message-ID"].startswith(f"<{sealed}.2024-W28@")
    assert dict(server.handler.accepted) == {"a@example.org": 1, "b@example.org": 1}
    assert states(srt, send_id) == {"a@example.org": "sent", "b@example.org": "sent"}


def test_a_slow_worker_whose_claim_was_taken_back_sends_nothing(
    srt: Runtime, server: ScriptServer
) -> None:
    seed(srt, ["slow@example.org"])
    send_id = start_send(srt)

    def reconciler_runs_first(n: int, recipient: str, fence: Fence | None) -> Fence:
        def late_fence() -> bool:
            with srt.session() as other:
                SqlLedger(other).expire_leases(srt.clock.now() + timedelta(hours=1))
            assert fence is not None  # the batch fences every send
            return fence()

        return late_fence

    report = run_batch(srt, send_id, mailer=Wrapped(srt.mailer, reconciler_runs_first))
    assert report.counts == {}
    assert server.handler.accepted["slow@example.org"] == 0
    assert states(srt, send_id) == {"slow@example.org": "queued"}
    run_batch(srt, send_id)
    assert server.handler.accepted["slow@example.org"] == 1


@pytest.mark.parametrize("target", ["paused", "cancelled"])
def test_pause_and_cancel_stop_a_running_batch(
    srt: Runtime, server: ScriptServer, target: str
) -> None:
    seed(srt, [f"r{n:02d}@example.org" for n in range(10)])
    send_id = start_send(srt)

    def stop_after_three(n: int, recipient: str, fence: Fence | None) -> Fence | None:
        if n == 3:
            with srt.session() as other:
                set_status(other, send_id, target, srt.clock.now())
        return fence

    report = run_batch(srt, send_id, mailer=Wrapped(srt.mailer, stop_after_three))
    assert (report.stopped, report.counts) == (target, {"sent": 3})
    assert sum(server.handler.accepted.values()) == 3
    if target == "paused":
        with srt.session() as session:
            set_status(session, send_id, "sending", srt.clock.now())
        run_batch(srt, send_id)
        assert sorted(server.handler.accepted.values()) == [1] * 10
    else:
        assert run_batch(srt, send_id).stopped == "cancelled"
        with srt.session() as session:
            assert SqlLedger(session).counts(send_id) == {"sent": 3, "queued": 7}


def test_replies_become_ledger_states_and_feedback(srt: Runtime, server: ScriptServer) -> None:
    server.handler.script.update(
        {
            "grey@example.com": ["RCPT 451 4.7.1 Greylisted", "RCPT 250 2.1.5 Ok"],
            "gone@example.com": ["RCPT 550 5.1.1 <gone@example.com>: no such user"],
            "full@example.com": ["RCPT 452 4.2.2 Mailbox full"],
        }
    )
    seed(srt, ["grey@example.com", "gone@example.com", "full@example.com", "fine@example.com"])
    send_id = start_send(srt)
    throttle = LocalThrottle(domain_rates={"example.com": 100.0}, recover_seconds=3600.0)
    started = srt.clock.now()
    report = run_batch(srt, send_id, throttle=throttle)
    assert report.counts == {"deferred": 2, "failed": 1, "sent": 1}
    # the first retry comes 1 s (+ up to 25 % jitter) after the reply, minus the rest of the batch
    assert report.retry_after is not None and 0.3 <= report.retry_after <= 1.25
    assert throttle.penalty("example.com") == pytest.approx(2.0, abs=0.05)  # halved by the 451
    with srt.session() as session:
        deferred = session.scalars(select(Delivery).where(Delivery.state == "deferred")).all()
        retry_at = started + timedelta(seconds=1)
        assert all(d.next_attempt_at and d.next_attempt_at >= retry_at for d in deferred)
        event = session.scalars(select(FeedbackEvent)).one()
        assert (event.kind, event.status_code, event.source) == ("hard_bounce", "5.1.1", "smtp")
        assert session.scalar(select(func.count()).select_from(Suppression)) == 1
    time.sleep(1.4)
    run_batch(srt, send_id)
    assert states(srt, send_id) == {
        "grey@example.com": "sent",
        "gone@example.com": "failed",
        "full@example.com": "deferred",
        "fine@example.com": "sent",
    }
    assert dict(server.handler.accepted) == {"grey@example.com": 1, "fine@example.com": 1}


def test_deferred_past_max_age_expires(srt: Runtime, server: ScriptServer) -> None:
    server.handler.script["busy@example.com"] = ["RCPT 421 4.7.0 Try again later"]
    seed(srt, ["busy@example.com"])
    send_id = start_send(srt)
    policy = dataclasses.replace(srt.policy, max_age_seconds=0.5)
    assert run_batch(srt, send_id, policy=policy).counts == {"deferred": 1}
    time.sleep(1.3)
    assert run_batch(srt, send_id, policy=policy).counts == {"expired": 1}
    with srt.session() as session:
        assert session.get_one(Send, send_id).status == "finished"
        assert session.scalar(select(func.count()).select_from(FeedbackEvent)) == 0  # not a bounce


def test_relay_without_smtputf8_fails_that_delivery_only(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with ScriptServer(smtputf8=False) as server:
        runtime = Runtime(dataclasses.replace(settings, smtp_url=server.url()))
        seed(runtime, ["читатель@пример.рф", "ascii@example.org"])
        send_id = start_send(runtime)
        with caplog.at_level(logging.INFO, logger="worker.sending.batch"):
            assert run_batch(runtime, send_id).counts == {"failed": 1, "sent": 1}
        with runtime.session() as session:
            failed = session.scalars(select(Delivery).where(Delivery.state == "failed")).one()
            assert failed.reply_code == 553 and "SMTPUTF8" in (failed.reply_text or "")
        # logged with its reason, under the delivery's id
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (
                logging.WARNING,
                f"delivery {failed.id} failed: 553 5.6.7 the relay does not offer SMTPUTF8, "
                "needed for this address (RFC 6531 §3.5)",
            )
        ]
        with runtime.session() as session:
            assert session.scalar(select(func.count()).select_from(FeedbackEvent)) == 0
        assert dict(server.handler.accepted) == {"ascii@example.org": 1}


def test_planning_is_keyset_paged_and_planning_twice_is_a_no_op(srt: Runtime) -> None:
    postgres = srt.settings.database_url.startswith("postgresql")
    count = 20_000 if postgres else 3_000
    newsletter_id = seed(srt, [f"s{n:05d}@example.org" for n in range(count)])
    seed_extra = [f"p{n}@example.org" for n in range(5)]
    seed(srt, seed_extra, status="pending")
    started = time.perf_counter()
    send_id = start_send(srt, batch_size=100)
    planned = time.perf_counter() - started
    with srt.session() as session:
        send = session.get_one(Send, send_id)
        assert send.planned_count == count
        again = plan_deliveries(
            session,
            send,
            newsletter_id=newsletter_id,
            languages=("en",),
            default_language="en",
            page_size=700,
        )
        assert again == count
        assert session.scalar(select(func.count()).select_from(Delivery)) == count
        batches = pending_batches(session, send_id, 100, srt.clock.now())
    assert len(batches) == count // 100
    assert all(last - first == 99 for first, last in batches)
    assert planned < 20  # seconds; measured about 1 s for 20,000 on PostgreSQL


def test_reconcile_enqueues_only_due_and_stalled_batches(srt: Runtime) -> None:
    seed(srt, [f"r{n:02d}@example.org" for n in range(30)])
    send_id = start_send(srt, batch_size=10)
    current().flush_all()
    assert actors.reconcile(srt) == 3  # nothing alive: every due batch
    assert actors.reconcile(srt) == 0  # their messages are alive now
    with srt.session() as session:
        (a, _), (b, b_last), _ = pending_batches(session, send_id, 10, srt.clock.now())
        later = srt.clock.now() + timedelta(hours=1)
        session.execute(
            update(Delivery)
            .where(Delivery.send_id == send_id, Delivery.id <= a + 9)
            .values(state="deferred", next_attempt_at=later)
        )
        session.commit()
    runtime().hints.forget(batch_name(send_id, a, a + 9))  # deferred an hour: not due
    runtime().hints.forget(batch_name(send_id, b, b_last))  # its message was lost
    assert actors.reconcile(srt) == 1
    current().flush_all()


def test_status_view_fits_80_columns_and_never_splits_a_figure() -> None:
    from rich.console import Console

    from worker.cli.core import status_view

    # Given a large send's figures (30 hours left): left to rich, this wrapped between
    # "unknown" and its count
    states = ("sent", "deferred", "failed", "unknown", "queued", "sending", "expired", "skipped")
    snap = {
        "status": "sending",
        "planned": 98_765_432,
        "done": 1_000_005,
        "counts": dict.fromkeys(states, 1_234_567),
        "rate": 1234.5,
        "eta": 30 * 3600.0,
    }

    # When it is printed on an 80-column console
    console = Console(width=80, force_terminal=False, record=True)
    console.print(status_view(7, snap, console.width))
    lines = console.export_text().splitlines()

    # Then no line is longer than 80, every figure keeps its name and count on one line, and the
    # ETA counts the day
    assert max(len(line) for line in lines) <= 80
    assert lines[2:] == [
        "planned 98765432  sent 1234567  deferred 1234567  failed 1234567",
        "unknown 1234567  queued 1234567  sending 1234567  expired 1234567",
        "skipped 1234567",
        "rate 1234.5/s  ETA 1d 06:00:00",
    ]


def test_status_command_shows_progress_and_throttle_set_changes_the_live_rate(
    srt: Runtime, server: ScriptServer, redis_url: str
) -> None:
    from click.testing import CliRunner

    from worker.cli import main
    from worker.sending.throttle import RedisThrottle

    seed(srt, [f"r{n}@example.org" for n in range(4)])
    send_id = start_send(srt)
    run_batch(srt, send_id, last=ids(srt, send_id)[1])  # two of four sent
    first, second = ids(srt, send_id)[:2]
    with srt.session() as session:  # sent 10 s and 5 s ago: 2 in 10 s is 0.2/s, not 2 in 60 s
        now = srt.clock.now()
        for delivery_id, age in ((first, 10), (second, 5)):
            session.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(sent_at=now - timedelta(seconds=age))
            )
        session.commit()
    env = {
        "NEWSLETTER_DATABASE_URL": srt.settings.database_url,
        "NEWSLETTER_REDIS_URL": redis_url,
        "COLUMNS": "80",
    }
    result = CliRunner().invoke(main, ["send", "status", str(send_id), "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert f"send {send_id}: sending  2/4 done" in result.output
    assert "planned 4  sent 2  deferred 0  failed 0  unknown 0  queued 2" in result.output
    assert "rate 0.2/s  ETA 00:00:10" in result.output  # 2 left at 0.2/s take 10 s
    result = CliRunner().invoke(main, ["throttle", "set", "20", "--domain", "Gmail.com"], env=env)
    assert result.exit_code == 0 and "gmail.com rate is now 20/s" in result.output.lower()
    assert RedisThrottle(redis.Redis.from_url(redis_url)).rates() == {"domain:gmail.com": 20.0}


def queued(queue: str) -> list[str]:
    """The actor names of the messages waiting in ``queue`` of the stub broker."""
    waiting = current().queues[queue].queue
    return [dramatiq.Message.decode(data).actor_name for data in waiting]


def test_a_send_started_now_whose_planning_message_was_lost_is_planned_by_the_reconciler(
    srt: Runtime,
) -> None:
    # Found by the chaos test: Redis restarted (empty) before any worker took the planning
    # message of a send started now, which stayed "scheduled" with no time, planned by nobody.
    seed(srt, ["a@example.org", "b@example.org", "c@example.org"])
    with srt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        now_id = create_send(session, edition, srt.clock.now(), 10).id
        later = When(srt.clock.now() + timedelta(days=1), "UTC")
        later_id = create_send(
            session, edition, srt.clock.now(), 10, when=later, repeat=Repeat.AGAIN
        ).id
        session.commit()
    current().flush_all()
    # Given a send started now, its planning enqueued with its hint: the reconciler leaves it
    actors.start_planning(srt, now_id)
    assert actors.reconcile(srt) == 0
    assert queued("sends") == ["plan_send"]
    # When the message is lost with Redis, and the hint with it
    current().flush_all()
    runtime().hints.forget(f"plan:{now_id}")
    # Then the reconciler enqueues its planning once, and leaves the send scheduled for tomorrow
    assert actors.reconcile(srt) == 1
    assert actors.reconcile(srt) == 0
    assert queued("sends") == ["plan_send"]
    # and that message plans it
    actors.plan_send(now_id)
    with srt.session() as session:
        assert session.get(Send, now_id).status == "sending"  # type: ignore[union-attr]
        assert session.get(Send, later_id).status == "scheduled"  # type: ignore[union-attr]
        planned = select(func.count()).where(Delivery.send_id == now_id)
        assert session.scalar(planned) == 3
    current().flush_all()


@pytest.fixture
def reconciled_at_each_commit(srt: Runtime) -> Iterator[list[int]]:
    """What a second scheduler's reconciler would enqueue if it ran right after each commit in
    this test: one count per commit (the reconciler's own commits are not checked again)."""
    counts: list[int] = []
    inside = False

    def reconcile_now(session: Session) -> None:
        nonlocal inside
        if not inside:
            inside = True
            try:
                counts.append(actors.reconcile(srt))
            finally:
                inside = False

    event.listen(Session, "after_commit", reconcile_now)
    yield counts
    event.remove(Session, "after_commit", reconcile_now)


def test_no_reconciler_sees_a_started_send_before_its_planning_hint(
    srt: Runtime, reconciled_at_each_commit: list[int]
) -> None:
    # Found by the suite loop: of two schedulers, one claimed a due send and committed; the
    # other's reconciler ran before the first recorded the planning hint, took the planning for
    # lost and enqueued it, and the first enqueued it too: two plan_send messages for one send.
    seed(srt, ["a@example.org", "b@example.org"])
    with srt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        day_before = srt.clock.now() - timedelta(days=1)
        when = When(srt.clock.now() - timedelta(minutes=5), "UTC")
        due_id = create_send(session, edition, day_before, 10, when=when).id
    current().flush_all()
    reconciled_at_each_commit.clear()
    # When the scheduler claims the due send, and `send start` starts another now
    assert actors.start_scheduled(srt) == [f"send {due_id} started (scheduled)"]
    result = CliRunner().invoke(main, ["send", "start", "2024-W28", "--again"])
    assert result.exit_code == 0, result.output
    now_id = int(result.output.split()[1])
    # Then a reconciler after any of their commits enqueues nothing: each hint came first
    assert len(reconciled_at_each_commit) >= 2 and set(reconciled_at_each_commit) == {0}
    assert queued("sends") == ["plan_send", "plan_send"]  # one per send, due_id and now_id
    assert now_id == due_id + 1
    current().flush_all()
