"""Worker memory (RSS) over a send: 10,000 vs 1,000,000 recipients, and what planning costs.

Same set-up as ``e2e_throughput.py`` (fresh PostgreSQL database, confirmed subscribers inserted in
bulk, ``python -m dramatiq worker.actors -p 2``, throttling off, Postfix's ``smtp-sink``). The RSS
of each worker process is sampled every second from ``/proc`` while the send is planned (render,
one ledger row per subscriber, the batch messages) and sent. A send larger than what
``--send-seconds`` allows is cancelled after that time: planning and the batch messages cover
the whole ledger, and the RSS series shows whether memory grows with the send.

    .venv/bin/python bench/memory.py --subscribers 10000
    .venv/bin/python bench/memory.py --subscribers 1000000 --send-seconds 180

Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--send-seconds", type=float, default=180, help="then cancel the send")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    print(f"machine: {common.machine()}; load average {os.getloadavg()[0]:.2f}")
    sink = common.start_sink()
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        with common.database() as db_url:
            t = time.perf_counter()
            common.load_edition_and_subscribers(db_url, args.subscribers)
            print(
                f"{args.subscribers} confirmed subscribers inserted (COPY) "
                f"in {time.perf_counter() - t:.1f} s"
            )
            send_id = common.create_send(db_url, args.batch_size)
            env = common.settings_env(db_url, sink.url, batch_size=args.batch_size)
            os.environ.update(env)
            from worker import actors

            workers = common.start_workers(
                env, processes=args.processes, threads=args.threads, log=workdir / "dramatiq.log"
            )
            try:
                workers.wait_ready(args.processes)
                run(workers, db_url, send_id, args, actors)
            finally:
                workers.stop()
    finally:
        sink.stop()
        common.flush_redis(os.environ.get("NEWSLETTER_QUEUE_NAMESPACE"))


def run(
    workers: common.Workers, db_url: str, send_id: int, args: argparse.Namespace, actors: object
) -> None:
    idle = workers.sample_rss()
    print(f"idle workers, RSS MiB: {[mib(v) for v in idle.values()]}")
    conn = psycopg.connect(common.plain_url(db_url), autocommit=True)
    t0 = time.monotonic()
    actors.plan_send.send(send_id)  # type: ignore[attr-defined]
    planned_at = sending_since = None
    plan_peak: dict[int, int] = {}
    send_series: list[tuple[float, dict[int, int], int]] = []
    last_print = 0.0
    while True:
        time.sleep(1.0)
        rss = workers.sample_rss()
        now = time.monotonic() - t0
        status, planned = common.one_row(
            conn, "SELECT status, planned_count FROM send WHERE id = %s", (send_id,)
        )
        if sending_since is None:
            first = conn.execute(
                "SELECT 1 FROM delivery WHERE send_id = %s AND state <> 'queued' LIMIT 1",
                (send_id,),
            ).fetchone()
            if status == "sending" and planned_at is None:
                planned_at = now
            if first is None:
                for pid, value in rss.items():
                    plan_peak[pid] = max(plan_peak.get(pid, 0), value)
                continue
            sending_since = now
            print(
                f"planning: ledger of {planned} deliveries written by {planned_at or now:.1f} s, "
                f"first claim at {now:.1f} s after enqueue; "
                "peak RSS per worker during planning (MiB): "
                f"{[mib(v) for v in plan_peak.values()]}"
            )
        (sent,) = common.one_row(
            conn, "SELECT count(*) FROM delivery WHERE send_id = %s AND state = 'sent'", (send_id,)
        )
        send_series.append((now - sending_since, rss, sent))
        if now - last_print >= 10:
            last_print = now
            print(
                f"  t={now - sending_since:6.1f} s sent={sent:8d}  "
                f"RSS MiB per worker: {[mib(v) for v in rss.values()]}"
            )
        if status == "finished":
            break
        if now - sending_since >= args.send_seconds:
            conn.execute("UPDATE send SET status = 'cancelled' WHERE id = %s", (send_id,))
            print(
                f"cancelled after {args.send_seconds:.0f} s of sending ({sent} of {planned} sent)"
            )
            break
    summarise(send_series, planned)
    conn.close()


def summarise(series: list[tuple[float, dict[int, int], int]], planned: int) -> None:
    if not series:
        return
    totals = [(t, sum(rss.values()), sent) for t, rss, sent in series]
    third = max(len(totals) // 3, 1)
    early = max(v for _, v, _ in totals[:third])
    late = max(v for _, v, _ in totals[-third:])
    peak = max(max(rss.values()) for _, rss, _ in series)
    t_end, _, sent_end = totals[-1]
    print(
        f"send of {planned}: {sent_end} sent in {t_end:.0f} s; "
        "RSS of the workers together, max over the "
        f"first third of the sending window {mib(early)} MiB, over the last third {mib(late)} MiB "
        f"(growth {mib(late - early)} MiB); peak of one worker {mib(peak)} MiB"
    )


if __name__ == "__main__":
    main()
