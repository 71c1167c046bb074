"""The shared throttle on a real Redis: slot spacing, live rate changes, adaptive slowing,
the connection cap, and several processes holding the configured rates. The rules both
throttles share (rate window, AIMD slowing, connection settle and cut) run on ``RedisThrottle``
and ``LocalThrottle`` alike."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.sendkit import run_batch, seed, start_send, states
from tests.services import redis_url
from worker.runtime import Runtime
from worker.sending.ports import Throttle
from worker.sending.throttle import LocalThrottle, RedisThrottle

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


ThrottleFactory = Callable[..., RedisThrottle | LocalThrottle]


@pytest.fixture(params=["redis", "local"])
def make(request: pytest.FixtureRequest, client: redis.Redis) -> ThrottleFactory:
    """Builds either throttle with the same keyword arguments."""
    if request.param == "redis":
        return lambda **kw: RedisThrottle(client, **kw)
    return lambda **kw: LocalThrottle(**kw)


def reserve_times(throttle: RedisThrottle, domain: str, n: int) -> tuple[list[float], list[float]]:
    """Slot times (Unix seconds, Redis's clock) of ``n`` reservations taken back to back, and the
    wait each was given (seconds)."""
    slots: list[float] = []
    waits: list[float] = []
    while len(slots) < n:
        reservation, at = throttle.reserve_at(domain, 5.0)
        if reservation.granted:
            assert at is not None
            slots.append(at)  # the slot on the Redis server's clock
            waits.append(reservation.wait)
            time.sleep(reservation.wait)  # as a batch does: the message goes at its slot …
            throttle.sent(reservation.token)  # … and its reply comes
        else:  # the domain is the bottleneck: ask again when it is free
            time.sleep(reservation.wait)
    return slots, waits


# Waits come in whole milliseconds (rounded), so a client may wake up to half a millisecond
# before its slot; slot times have microseconds.
ROUNDING = 0.001


def assert_never_faster_than(slots: list[float], interval: float) -> None:
    """The calendar's promise, which holds however late the client is: every slot has a cell of
    its own, so the slot ``j - i`` places later is more than ``(j - i - 1)`` intervals later. (A
    client late for its slot asks in a cell partly gone and gets it, as a batch would, so two
    neighbours may be closer than ``interval``; the suite loop saw a test that asked for
    ``interval`` between neighbours fail when its process was late.)"""
    for i, first in enumerate(slots):
        for j in range(i + 1, len(slots)):
            assert slots[j] - first >= (j - i - 1) * interval - ROUNDING, (i, j, slots)


def test_slots_are_spaced_by_the_rate_and_a_rate_change_applies_at_once(
    client: redis.Redis,
) -> None:
    # (Found by the suite loop: "consecutive slots at least 19.5 ms apart" failed when the test
    # process was late for a slot; a late client takes the current cell, as a batch would.)
    throttle = RedisThrottle(client, global_rate=50.0)
    slots, waits = reserve_times(throttle, "example.org", 11)
    assert_never_faster_than(slots, 0.02)  # 20 ms calendar cells at 50/s
    assert waits[0] <= 0.02 + ROUNDING  # the first went in the current cell or the next
    other_process = RedisThrottle(
        redis.Redis(connection_pool=client.connection_pool), global_rate=50.0
    )
    other_process.set_rate(10.0)  # `newsletter throttle set 10`
    time.sleep(0.25)
    slots, _ = reserve_times(throttle, "example.org", 6)
    assert_never_faster_than(slots, 0.1)  # 100 ms cells: the change applied at once
    assert slots[-1] - slots[0] >= 0.4 - ROUNDING  # six slots at 10/s, not at 50/s (0.1 s)
    assert throttle.rates() == {"global": 10.0}


def test_the_rate_check_passes_a_late_client_and_fails_a_crowded_cell() -> None:
    assert_never_faster_than([0.000, 0.020, 0.055, 0.060, 0.080], 0.02)  # late for 0.040
    with pytest.raises(AssertionError):
        assert_never_faster_than([0.000, 0.005, 0.010], 0.02)  # three in one 20 ms cell
    with pytest.raises(AssertionError):
        assert_never_faster_than([0.000, 0.020, 0.025, 0.030], 0.02)  # three in 10 ms


def test_a_busy_domain_does_not_hold_back_the_others(client: redis.Redis) -> None:
    throttle = RedisThrottle(client, global_rate=100.0, domain_rates={"mail.ru": 2.0})
    assert throttle.reserve("mail.ru", 0.3).granted
    refused = throttle.reserve("mail.ru", 0.3)  # its next slot is 0.5 s away: beyond 0.3 s
    assert not refused.granted and refused.wait == pytest.approx(0.5, abs=0.02)
    later = throttle.reserve("mail.ru", 1.0)  # booked 0.5 s ahead in the global calendar …
    assert later.granted and later.wait == pytest.approx(0.5, abs=0.02)
    assert throttle.reserve("gmail.com", 1.0).wait <= 0.021  # … without holding back the others


def test_a_rate_reply_halves_the_rate_once_a_second_and_it_climbs_back(
    make: ThrottleFactory,
) -> None:
    """AIMD: the replies to messages already under way (within a second) cut once; the rate then
    climbs back linearly, at the configured rate ``recover_seconds`` after the cut. Bounds are
    taken from measured times, so a stalled machine cannot fail it."""
    recover = 100.0
    throttle = make(domain_rates={"gmail.com": 40.0}, recover_seconds=recover)
    before = time.monotonic()
    throttle.slow_down("gmail.com")
    throttle.slow_down("gmail.com")  # a second reply in the same second: no second cut
    throttle.slow_down("GMail.com")
    share = 1.0 / throttle.penalty("gmail.com")
    after = time.monotonic()
    if after - before < 1.0:  # (a machine stalled for a second would rightly cut twice)
        assert 0.5 - 0.001 <= share <= 0.5 + (after - before) / recover + 0.001
    time.sleep(1.05)
    low = time.monotonic() - after
    throttle.slow_down("gmail.com")  # a new cut, from the share it had climbed back to
    share = 1.0 / throttle.penalty("gmail.com")
    high = time.monotonic() - before
    assert (0.5 + low / recover) / 2 - 0.001 <= share <= (0.5 + high / recover) / 2 + 0.01
    assert share < 0.5 * 0.7  # lower than after the first cut: not back to full rate in between


def test_a_slowed_rate_is_back_within_recover_seconds(make: ThrottleFactory) -> None:
    throttle = make(domain_rates={"gmail.com": 40.0}, recover_seconds=1.0)
    throttle.slow_down("gmail.com")
    assert 1.0 <= throttle.penalty("gmail.com") <= 2.0 + 1e-6
    time.sleep(1.05)
    assert throttle.penalty("gmail.com") == 1.0
    slots = []
    for _ in range(3):
        called = time.monotonic()
        reservation = throttle.reserve("gmail.com", 1.0)
        assert reservation.granted
        slots.append(called + reservation.wait)
    # 40/s again: the third slot 50 ms after the first (20/s would be 100 ms)
    assert slots[2] - slots[0] == pytest.approx(0.05, abs=0.015)


def test_the_rate_window_counts_messages_in_flight_until_their_reply(
    make: ThrottleFactory,
) -> None:
    """At 3/s, three messages in flight fill the window; once one has its reply, the next may
    start a second after that reply, not before (a late message cannot crowd a provider's
    second)."""
    throttle: Throttle = make(global_rate=3.0)
    first = [throttle.reserve("example.org", 5.0) for _ in range(3)]
    assert all(r.granted and r.token for r in first)
    full = throttle.reserve("example.org", 5.0)
    assert not full.granted and full.wait == pytest.approx(0.05)  # ask again shortly
    throttle.sent(first[0].token)
    replied = time.monotonic()
    throttle.sent(first[0].token)  # reported twice: counted once
    nxt = throttle.reserve("example.org", 5.0, done=first[1].token)  # done: folded in
    elapsed = time.monotonic() - replied
    assert nxt.granted
    # (RedisThrottle then takes the next whole calendar cell: up to 1/3 s more at 3/s)
    assert 1.0 - elapsed - 0.01 <= nxt.wait <= 1.0 + 1 / 3 + 0.02
    assert throttle.reserve("example.org", 5.0, done=first[2].token).granted


def test_a_released_connection_slot_settles_before_reuse(make: ThrottleFactory) -> None:
    throttle = make(max_connections=1, settle_seconds=3.0)
    assert throttle.acquire_connection("p1", 10)
    throttle.release_connection("p1")
    assert not throttle.acquire_connection("p2", 10)  # the provider still counts p1's session
    assert not throttle.acquire_connection("p1", 10)  # nor does p1 get it back under its name
    time.sleep(3.05)
    assert throttle.acquire_connection("p2", 10)


def test_a_421_at_connect_lowers_the_connection_cap_for_a_while(make: ThrottleFactory) -> None:
    throttle = make(max_connections=3, recover_seconds=3.0, settle_seconds=0)
    assert throttle.fewer_connections() == 1
    assert throttle.fewer_connections() == 1  # the same second: one cut
    assert throttle.acquire_connection("a", 10) and throttle.acquire_connection("b", 10)
    assert not throttle.acquire_connection("c", 10)  # 2 instead of 3
    assert throttle.penalty("example.org") == 1.0  # the message rate is untouched
    time.sleep(3.05)
    assert throttle.acquire_connection("c", 10)  # the cap is back


def test_connection_slots_are_shared_capped_and_expire(client: redis.Redis) -> None:
    a = RedisThrottle(client, max_connections=2, settle_seconds=0)
    b = RedisThrottle(
        redis.Redis(connection_pool=client.connection_pool), max_connections=2, settle_seconds=0
    )
    assert a.acquire_connection("p1", 10) and b.acquire_connection("p2", 0.3)
    assert not a.acquire_connection("p3", 10)
    assert a.acquire_connection("p1", 10)  # extending one's own slot always works
    time.sleep(0.35)  # p2's process died: its slot expires
    assert a.acquire_connection("p3", 10)
    a.release_connection("p1")
    assert b.acquire_connection("p4", 10)
    b.set_max_connections(3)
    assert b.acquire_connection("p5", 10)


def test_a_throttled_batch_returns_for_later_instead_of_raising(
    rt: Runtime, redis_url: str
) -> None:
    # (A wall-clock bound here, "back within 1.5 s", failed once beside another suite: the
    # batch took 1.63 s. What it stood for is checked by counts: slots 1 s apart, so a batch
    # that sat them out would send all 20, one per second.)
    readers = 20
    seed(rt, [f"r{n}@example.org" for n in range(readers)])
    send_id = start_send(rt)
    throttle = RedisThrottle(redis.Redis.from_url(redis_url), global_rate=1.0)
    policy = dataclasses.replace(rt.policy, max_throttle_wait=0.1)
    started = time.monotonic()
    report = run_batch(rt, send_id, throttle=throttle, policy=policy)
    elapsed = time.monotonic() - started
    sent = report.counts["sent"]
    # it sent what the slots allowed while it ran (one per second, the first at once), no more
    assert 1 <= sent <= 1 + math.ceil(elapsed)
    assert sent < readers  # and returned instead of waiting for the rest
    # back when the next slot comes, at most the 1 s between two slots away
    assert report.retry_after is not None and 0 < report.retry_after <= 1.0
    assert list(states(rt, send_id).values()).count("queued") == readers - sent


def test_three_processes_hold_the_configured_rates() -> None:
    """The benchmark (bench/throttle_rate.py), shortened to 8 s with a looser bound."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "throttle_rate.py"),
            "--processes",
            "3",
            "--seconds",
            "8",
            "--global-rate",
            "60",
            "--domain-rates",
            "gmail.com=15,mail.ru=4",
            "--json",
            "--redis-url",
            redis_url(3),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout)
    # the rate window: never more than the global rate in any second of actual sending, however
    # late the threads woke up
    assert result["global"]["max_in_1s_woken"] <= result["global"]["configured"]
    for name, low in (("global", 0.6), ("gmail.com", 0.75), ("mail.ru", 0.75)):
        row = result[name]
        # never above the rate (+1 at a window's edge); near it, though a busy 2-core machine
        # starves threads. The global rate pays for the window: 192 threads each holding a slot
        # booked up to 2 s ahead for the slow domains take places in it (docs/dispatch.md);
        # the 60 s benchmark reaches 0.74 of it, the domains 1.0.
        assert row["max_in_1s"] <= row["configured"] + 1, (name, row)
        assert row["configured"] * low <= row["achieved"] <= row["configured"] * 1.02, (name, row)


def test_unlimited_follows_the_configured_and_the_live_rates(make: ThrottleFactory) -> None:
    # Given no global rate and a rate for slow.example only
    throttle = make(domain_rates={"Slow.example": 5.0})
    # Then messages to other domains need no slot, and a chunk holding slow.example does
    assert throttle.unlimited({"fast.example", "other.example"})
    assert not throttle.unlimited({"fast.example", "SLOW.example"})
    assert make(global_rate=10.0).unlimited({"fast.example"}) is False


def test_unlimited_reads_the_overrides_of_a_running_send(client: redis.Redis) -> None:
    # Given a throttle with no configured rate
    throttle = RedisThrottle(client, domain_rates={"slow.example": 5.0})
    # When an operator sets a global rate (newsletter throttle set), Then every domain is limited
    throttle.set_rate(10.0)
    assert not throttle.unlimited({"fast.example"})
    # And when both are set to 0 in the live hash, nothing is
    throttle.set_rate(0.0)
    throttle.set_rate(0.0, "slow.example")
    assert throttle.unlimited({"fast.example", "slow.example"})
