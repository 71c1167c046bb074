"""A worker thread's SMTP connection kept across batches (``worker.sending.connection``), and
what a provider's 421 at connect and 451 about the rate change, against a real SMTP server that
counts sessions as providers do (until a moment after the connection closed)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from tests.sendkit import run_batch, seed, start_send, states
from tests.smtp_script import ScriptHandler, ScriptServer
from worker.models import Delivery
from worker.runtime import Runtime
from worker.sending.connection import ConnectionSlot
from worker.sending.smtp import SmtpMailer
from worker.sending.throttle import LocalThrottle


@pytest.fixture
def server() -> Iterator[ScriptServer]:
    with ScriptServer(ScriptHandler(close_lag=0.2, keep_data=False)) as running:
        # aiosmtpd connects once itself at start: let that session stop counting first
        assert eventually(lambda: running.handler.sessions == 0)
        running.handler.max_sessions = 0
        yield running


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def delivery_ids(rt: Runtime, send_id: int) -> list[int]:
    with rt.session() as session:
        return list(
            session.scalars(select(Delivery.id).where(Delivery.send_id == send_id).order_by("id"))
        )


def test_a_thread_keeps_its_connection_across_batches_then_closes_and_settles(
    rt: Runtime, server: ScriptServer
) -> None:
    # Given one connection slot, a thread's kept connection and two batches one after the other
    seed(rt, [f"r{n}@example.org" for n in range(4)])
    send_id = start_send(rt)
    ids = delivery_ids(rt, send_id)
    throttle = LocalThrottle(max_connections=1, settle_seconds=5.0)
    slot = ConnectionSlot(SmtpMailer(server.url(), timeout=10), throttle, idle_seconds=60)
    before = server.handler.connections  # aiosmtpd's own check at start
    # When both batches run
    for first, last in ((ids[0], ids[1]), (ids[2], ids[3])):
        report = run_batch(
            rt, send_id, first, last, mailer=slot.mailer, throttle=throttle, slot=slot
        )
        assert report.counts == {"sent": 2}
    # Then the second one used the first one's session: one connection, RSET between them
    assert (server.handler.connections - before, slot.reused) == (1, 1)
    assert set(states(rt, send_id).values()) == {"sent"}
    # and once idle, the thread closes it; its slot stays taken while the provider may count it
    slot.idle_seconds = 0.05
    slot.put_down()  # (the idle timer again, shorter)
    assert eventually(lambda: not slot.held)
    assert not throttle.acquire_connection("another thread", 10)
    assert eventually(lambda: server.handler.sessions == 0)
    assert eventually(lambda: throttle.acquire_connection("another thread", 10), 10.0)
    assert server.handler.max_sessions == 1 and server.handler.limit_replies == 0


def test_a_421_at_connect_lowers_the_connection_cap_not_the_rate(
    rt: Runtime, server: ScriptServer
) -> None:
    # Given a provider that refuses the first session as one too many
    server.handler.connect_replies.append("CONNECT 421 4.7.0 Too many concurrent sessions")
    seed(rt, ["a@example.org", "b@example.org"])
    send_id = start_send(rt)
    throttle = LocalThrottle(global_rate=50.0, max_connections=3, settle_seconds=0)
    # When a batch runs into it
    report = run_batch(rt, send_id, throttle=throttle, mailer=SmtpMailer(server.url(), timeout=10))
    # Then that delivery waits for its retry, and the batch gives its slot back and comes back
    # soon for the rest (given back to the queue at once, not left claimed)
    assert report.counts == {"deferred": 1}
    assert report.retry_after == pytest.approx(1.0)
    assert sorted(states(rt, send_id).values()) == ["deferred", "queued"]
    # and the cap is one lower for a while, while the message rate is untouched
    assert throttle.penalty("example.org") == 1.0
    assert throttle.acquire_connection("x", 10) and throttle.acquire_connection("y", 10)
    assert not throttle.acquire_connection("z", 10)
    throttle.release_connection("x")
    throttle.release_connection("y")
    # the next run sends the rest on a new session
    assert run_batch(rt, send_id, throttle=throttle, mailer=SmtpMailer(server.url())).counts == {
        "sent": 1
    }


def test_a_451_about_the_rate_slows_that_domain_only(rt: Runtime, server: ScriptServer) -> None:
    server.handler.script["a@example.org"] = ["RCPT 451 4.7.1 Rate limit exceeded, slow down"]
    seed(rt, ["a@example.org", "b@example.org", "c@example.net"])
    send_id = start_send(rt)
    throttle = LocalThrottle(global_rate=50.0, recover_seconds=3600.0)  # no recovery meanwhile
    report = run_batch(rt, send_id, throttle=throttle, mailer=SmtpMailer(server.url(), timeout=10))
    assert report.counts == {"deferred": 1, "sent": 2}
    assert throttle.penalty("example.org") == pytest.approx(2.0, abs=0.01)
    assert throttle.penalty("example.net") == 1.0
    assert throttle.acquire_connection("x", 10)  # no connection cap was touched


def test_every_send_slot_leaves_the_rate_window_once_its_outcome_is_recorded(
    rt: Runtime, server: ScriptServer
) -> None:
    """A slot never reported would hold a place in the rate window until its ttl (130 s): at
    10/s, ten leaked slots stop every worker."""
    server.handler.script["b@example.org"] = ["RCPT 550 5.1.1 no such user"]
    seed(rt, ["a@example.org", "b@example.org", "c@example.org", "d@example.org"])
    send_id = start_send(rt)
    throttle = LocalThrottle(global_rate=50.0)
    report = run_batch(rt, send_id, throttle=throttle, mailer=SmtpMailer(server.url(), timeout=10))
    assert report.counts == {"sent": 3, "failed": 1}
    assert throttle._inflight == {}  # all four reported (the 550 too: the relay answered)
    assert throttle._done  # (entries older than a second are pruned at the next reservation)
