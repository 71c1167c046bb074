"""Benchmark: do several worker processes together hold the configured sending rates?

Starts ``--processes`` processes with ``--threads`` threads each; every thread takes send slots
from one shared ``RedisThrottle`` (the one the workers use) for a mix of recipient domains, as
fast as the throttle allows (a refused slot is retried after its wait, like a re-enqueued batch),
and records the time of each granted slot. No SMTP: this measures the throttle alone.

Prints, per limit: the configured rate, the achieved rate over the run (first to last slot) and
the most slots in any sliding second (by granted slot time, and by the time the thread woke up
to send, which adds the operating system's scheduling jitter). Example::

    .venv/bin/python bench/throttle_rate.py --processes 3 --seconds 60 \\
        --global-rate 100 --domain-rates gmail.com=20,mail.ru=5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import threading
import time
import uuid
from bisect import bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from worker.sending.throttle import RedisThrottle
from worker.settings import _parse_domain_rates

MIX = [("gmail.com", 0.3), ("mail.ru", 0.1), ("example.org", 0.3), ("yandex.ru", 0.3)]


# (reserved at, granted slot, process) per reservation, as one worker reports them back.
Slots = list[tuple[float, float, str]]


def _worker(
    args: argparse.Namespace,
    prefix: str,
    until: float,
    out: multiprocessing.Queue[Slots],
) -> None:
    client = redis.Redis.from_url(args.redis_url)
    throttle = RedisThrottle(
        client,
        global_rate=args.global_rate,
        domain_rates=_parse_domain_rates(args.domain_rates),
        prefix=prefix,
    )
    records: list[tuple[float, float, str]] = []
    lock = threading.Lock()

    def loop() -> None:
        rng = random.Random()
        domains, weights = zip(*MIX, strict=True)
        while time.time() < until:
            # like worker.sending.batch._reserve: a slot at most max_wait ahead, waiting up to
            # max_wait for one to come in reach, else the message is left for later
            domain = rng.choices(domains, weights)[0]
            deadline = time.monotonic() + args.max_wait
            while time.time() < until:
                reservation, at = throttle.reserve_at(domain, args.max_wait)
                if reservation.granted:
                    slot = at or 0.0  # the Redis server's clock
                    time.sleep(reservation.wait)
                    woke = time.time()  # the message goes out, and its reply comes, at once
                    throttle.sent(reservation.token)
                    with lock:
                        records.append((slot, woke, domain))
                    break
                in_reach = reservation.wait - args.max_wait
                if in_reach > deadline - time.monotonic():
                    break
                # within reach yet refused: the rate window is full of messages in flight
                time.sleep(in_reach if in_reach > 0 else max(reservation.wait, 0.005))

    threads = [threading.Thread(target=loop) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(records)


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    # 10 µs less than the window: slot times come rounded to the microsecond
    return max((bisect_right(times, t + window - 1e-5) - i for i, t in enumerate(times)), default=0)


def _rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run the benchmark; returns {limit: {configured, achieved, max_in_1s, count}}."""
    prefix = f"bench:throttle:{uuid.uuid4().hex[:8]}"
    until = time.time() + args.seconds
    out: multiprocessing.Queue[Slots] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_worker, args=(args, prefix, until, out))
        for _ in range(args.processes)
    ]
    for proc in procs:
        proc.start()
    records = [r for _ in procs for r in out.get()]
    for proc in procs:
        proc.join()
    limits = {"global": args.global_rate, **_parse_domain_rates(args.domain_rates)}
    result = {}
    for name, rate in limits.items():
        chosen = [r for r in records if name == "global" or r[2] == name]
        slots = sorted(r[0] for r in chosen)  # the slot times the throttle granted
        woke = sorted(r[1] for r in chosen)  # when the thread actually woke up to send
        result[name] = {
            "configured": rate,
            "achieved": _rate(slots),
            "max_in_1s": _max_in_window(slots),
            "max_in_1s_woken": _max_in_window(woke),
            "count": len(slots),
        }
    client = redis.Redis.from_url(args.redis_url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=64, help="threads per process")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--global-rate", type=float, default=100.0, help="messages per second")
    parser.add_argument("--domain-rates", default="gmail.com=20,mail.ru=5")
    parser.add_argument(
        "--max-wait", type=float, default=2.0, help="seconds a thread waits for a slot"
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.processes} processes × {args.threads} threads, {args.seconds:.0f} s")
    print(
        f"{'limit':10} {'configured/s':>12} {'achieved/s':>11} {'error':>7} "
        f"{'max in 1 s':>11} {'(woken)':>8} {'slots':>7}"
    )
    for name, row in result.items():
        error = (
            (row["achieved"] - row["configured"]) / row["configured"] * 100
            if row["configured"]
            else 0
        )
        print(
            f"{name:10} {row['configured']:12.1f} {row['achieved']:11.2f} {error:+6.2f}% "
            f"{row['max_in_1s']:11d} {row['max_in_1s_woken']:8d} {row['count']:7d}"
        )


if __name__ == "__main__":
    main()
