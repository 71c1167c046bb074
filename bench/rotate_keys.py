"""Benchmark: ``newsletter keys rotate`` over 1,000,000 readers on PostgreSQL (target: ≤ 60 s).

Creates a scratch database, loads ``--readers`` confirmed readers sealed under data key 1
(``bench.common.load_edition_and_subscribers``: email and ascii_email sealed, email_key the blind
index), then times ``worker.safety.data_keys.rotate`` to key 2 (every row re-sealed, the blind index
recomputed) and a second run (nothing left: every row skipped). Prints the machine and its load,
seconds, rows per second, the CPU seconds of this process (reading, re-sealing, sending) and of
the PostgreSQL backends (the updates) per 1,000 rows, peak RSS, and a reference: one UPDATE that
rewrites the same three columns of every row inside PostgreSQL (no crypto, nothing sent: the
floor of any rotation on this machine), with the rotation's time as a multiple of it. Example::

    .venv/bin/python bench/rotate_keys.py --readers 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from sqlalchemy import text

from bench.common import DATA_KEY, database, load_edition_and_subscribers, machine, postgres_cpu
from worker.db import dispose_engines, engine_for
from worker.safety import keyring
from worker.safety.data_keys import rotate
from worker.settings import Settings


def _postgres_cpu(url: str) -> float:
    """``bench.common.postgres_cpu``, or NaN when the server takes no more connections (a
    shared machine): the figure is then missing, not the run."""
    try:
        return postgres_cpu(url)
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL CPU not measured: {exc}")
        return float("nan")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    new_key = keyring.new_data_key()
    with database() as url:
        started = time.perf_counter()
        load_edition_and_subscribers(url, args.readers)
        print(f"loaded {args.readers:,} sealed readers in {time.perf_counter() - started:.1f} s")
        settings = Settings.from_env(
            {"NEWSLETTER_DATA_KEYS": f"2:{new_key},1:{DATA_KEY}"}, database_url=url
        )
        engine = engine_for(settings)
        ring = keyring.current()
        print(f"machine: {machine()}; load average {_load()} before")
        cpu, pg_cpu = time.process_time(), _postgres_cpu(url)
        started = time.perf_counter()
        first = rotate(engine, ring, batch_size=args.batch_size)
        took = time.perf_counter() - started
        cpu, pg_cpu = time.process_time() - cpu, _postgres_cpu(url) - pg_cpu
        per_k = 1000 / max(first.resealed, 1)
        print(
            f"rotate: {first.resealed:,} rows re-sealed in {took:.1f} s "
            f"({first.resealed / took:,.0f} rows/s); CPU per 1,000 rows: this process "
            f"{cpu * per_k * 1000:.0f} ms, PostgreSQL {pg_cpu * per_k * 1000:.0f} ms; "
            f"load average {_load()} after"
        )
        started = time.perf_counter()
        again = rotate(engine, ring, batch_size=args.batch_size)
        print(
            f"rotate again: {again.skipped:,} rows skipped, {again.resealed} re-sealed, "
            f"in {time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE subscriber SET email = email || '', "
                    "ascii_email = ascii_email || '', email_key = reverse(email_key)"
                )
            )
        floor = time.perf_counter() - started
        print(
            f"reference, one in-database UPDATE of the same columns of every row: {floor:.1f} s; "
            f"rotation / reference = {took / floor:.2f}"
        )
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        dispose_engines()
    os.environ.pop("NEWSLETTER_DATA_KEYS", None)


if __name__ == "__main__":
    main()
