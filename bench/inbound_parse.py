"""Inbound messages parsed per second by ``worker.feedback.mail.parse_inbound``, one process.

Usage: ``python bench/inbound_parse.py [--seconds 2]``

Parses every handed bounce/complaint case and every recorded sample (tests/cases,
tests/payloads/mail) round-robin for the given time, then a few hostile inputs one by one,
and prints messages per second and per-message latency. Pure CPU: no database, no network.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from worker.feedback.mail import parse_inbound

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [
    *sorted((ROOT / "tests" / "cases" / "bounces").glob("*.eml")),
    *sorted((ROOT / "tests" / "cases" / "complaints").glob("*.eml")),
    *sorted((ROOT / "tests" / "payloads" / "mail").glob("*.eml")),
]


def _hostile() -> dict[str, bytes]:
    dsn = (ROOT / "tests" / "cases" / "bounces" / "b02_gmail_552_5_2_2_over_quota.eml").read_bytes()
    blocks = b"".join(
        b"Final-Recipient: rfc822; u%d@example.com\nAction: failed\nStatus: 5.1.1\n\n" % i
        for i in range(20000)
    )
    nested = b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i - 1, i)
        for i in range(1, 20000)
    )
    return {
        "20 MB DSN (returned message padded)": dsn[:-30] + b"A" * 76 * 270_000 + b"\n",
        "20,000 recipient blocks": b"MIME-Version: 1.0\nContent-Type: multipart/report; "
        b"report-type=delivery-status; boundary=XX\n\n"
        b"--XX\nContent-Type: message/delivery-status\n\n" + blocks,
        "20,000 nested multiparts": b"MIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=b0\n\n" + nested,
        "1 MB random bytes": bytes(range(256)) * 4096,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on the corpus")
    args = parser.parse_args()
    messages = [path.read_bytes() for path in CORPUS]
    for raw in messages:  # warm up imports and regex caches
        parse_inbound(raw)

    latencies: list[float] = []
    deadline = time.perf_counter() + args.seconds
    cpu_started = time.process_time()
    while time.perf_counter() < deadline:
        for raw in messages:
            started = time.perf_counter()
            parse_inbound(raw)
            latencies.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_started
    total = sum(latencies)
    average = sum(map(len, messages)) // len(messages)
    print(f"corpus: {len(messages)} messages, {average} bytes average")
    print(
        f"parsed {len(latencies)} messages in {total:.2f} s wall, {cpu:.2f} s CPU: "
        f"{len(latencies) / total:,.0f} messages/s wall, {len(latencies) / cpu:,.0f} per CPU-second"
    )
    print(
        f"latency median {statistics.median(latencies) * 1000:.2f} ms, "
        f"p99 {statistics.quantiles(latencies, n=100)[98] * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms"
    )
    for label, raw in _hostile().items():
        started = time.perf_counter()
        reports = parse_inbound(raw)
        elapsed = (time.perf_counter() - started) * 1000
        print(f"hostile: {label}: {elapsed:.1f} ms, {len(reports)} report(s)")


if __name__ == "__main__":
    main()
