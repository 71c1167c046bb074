"""The shared throttle on a real Redis: slot spacing, live rate changes, adaptive slowing,
the connection cap, and several processes holding the configured rates."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.sendkit import run_batch, seed, start_send, states
from tests.services import redis_url
from worker.runtime import Runtime
from worker.sending.throttle import RedisThrottle

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def reserve_times(throttle: RedisThrottle, domain: str, n: int) -> list[float]:
    """Slot times (Unix seconds) of ``n`` reservations taken back to back."""
    out: list[float] = []
    while len(out) < n:
        reservation, at = throttle.reserve_at(domain, 5.0)
        if reservation.granted:
            assert at is not None
            out.append(at)  # the slot on the Redis server's clock
        else:  # the domain is the bottleneck: ask again when it is free
            time.sleep(reservation.wait)
    return out


def test_slots_are_spaced_by_the_rate_and_a_rate_change_applies_at_once(
    client: redis.Redis,
) -> None:
    throttle = RedisThrottle(client, global_rate=50.0)
    times = reserve_times(throttle, "example.org", 11)
    # slots are 20 ms calendar cells; the first one may be the current, partly elapsed cell
    assert 0.18 <= times[-1] - times[0] <= 0.21
    assert all(b - a >= 0.0195 for a, b in itertools.pairwise(times[1:]))
    other_process = RedisThrottle(
        redis.Redis(connection_pool=client.connection_pool), global_rate=50.0
    )
    other_process.set_rate(10.0)  # `newsletter throttle set 10`
    time.sleep(0.25)
    times = reserve_times(throttle, "example.org", 6)
    assert 0.4 <= times[-1] - times[0] <= 0.51
    assert all(b - a >= 0.099 for a, b in itertools.pairwise(times[1:]))
    assert throttle.rates() == {"global": 10.0}


def test_a_busy_domain_does_not_hold_back_the_others(client: redis.Redis) -> None:
    throttle = RedisThrottle(client, global_rate=100.0, domain_rates={"mail.ru": 2.0})
    assert throttle.reserve("mail.ru", 0.3).granted
    refused = throttle.reserve("mail.ru", 0.3)  # its next slot is 0.5 s away: beyond 0.3 s
    assert not refused.granted and refused.wait == pytest.approx(0.5, abs=0.02)
    later = throttle.reserve("mail.ru", 1.0)  # booked 0.5 s ahead in the global calendar …
    assert later.granted and later.wait == pytest.approx(0.5, abs=0.02)
    assert throttle.reserve("gmail.com", 1.0).wait <= 0.021  # … without holding back the others


def test_421_halves_a_domain_rate_which_then_recovers(client: redis.Redis) -> None:
    throttle = RedisThrottle(client, domain_rates={"gmail.com": 40.0}, recover_seconds=0.6)
    throttle.slow_down("gmail.com")
    assert throttle.penalty("gmail.com") == 2
    times = reserve_times(throttle, "gmail.com", 5)
    assert times[-1] - times[0] == pytest.approx(4 / 20.0, abs=0.01)  # 20/s instead of 40/s
    before = time.monotonic()
    throttle.slow_down("gmail.com")
    after = time.monotonic()
    assert throttle.penalty("gmail.com") == 4
    for _ in range(2):  # each recovery period (0.6 s) doubles the rate back
        time.sleep(0.65)
        low, penalty, high = (
            time.monotonic() - after,
            throttle.penalty("gmail.com"),
            time.monotonic() - before,
        )
        assert penalty in {max(1, 4 / 2 ** int(elapsed / 0.6)) for elapsed in (low, high)}
    assert throttle.penalty("gmail.com") < 4


def test_connection_slots_are_shared_capped_and_expire(client: redis.Redis) -> None:
    a = RedisThrottle(client, max_connections=2)
    b = RedisThrottle(redis.Redis(connection_pool=client.connection_pool), max_connections=2)
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
    seed(rt, [f"r{n}@example.org" for n in range(6)])
    send_id = start_send(rt)
    throttle = RedisThrottle(redis.Redis.from_url(redis_url), global_rate=1.0)
    policy = dataclasses.replace(rt.policy, max_throttle_wait=0.1)
    started = time.monotonic()
    report = run_batch(rt, send_id, throttle=throttle, policy=policy)
    assert time.monotonic() - started < 1.5  # it did not sit out 6 s of slots
    assert 1 <= report.counts["sent"] <= 2  # slots 1 s apart, at most 0.2 s of waiting each
    # back when the next slot comes within the 0.1 s horizon
    assert report.retry_after is not None and 0 < report.retry_after <= 0.9
    assert list(states(rt, send_id).values()).count("queued") == 6 - report.counts["sent"]


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
    for name in ("global", "gmail.com", "mail.ru"):
        row = result[name]
        # never above the rate (+1 at a window's edge); near it, though a busy 2-core machine
        # starves threads (the 60 s benchmark on a quiet machine holds all three within 1.1 %)
        assert row["max_in_1s"] <= row["configured"] + 1, (name, row)
        assert row["configured"] * 0.75 <= row["achieved"] <= row["configured"] * 1.02, (name, row)
