"""Signups per second that one worker process sustains (issue 3).

A fresh PostgreSQL database, Redis (a spare database), Postfix's ``smtp-sink`` as the relay, and
ONE ``python -m dramatiq worker.actors`` process (``--threads``, queues ``signups`` and
``transactional``). ``--count`` signup events for distinct new addresses are written into Redis
the way a website does (MULTI; HSET; RPUSH; EXEC, see docs/signup-event.md) before the worker
starts; the clock runs from the first consent row to the moment every event has its consent and
its confirmation mail was accepted by the relay (``subscriber.confirmation_sent_at``). Abuse
limits are set to unlimited (every address is new; the limits' Redis calls still run).

    .venv/bin/python bench/signups.py                 # 3,000 events, 8 threads
    .venv/bin/python bench/signups.py --count 1000 --threads 4

``--inline`` runs the same work in THIS process, one event after the other, with no queue in
between: ``actors.handle_signup(event)`` (which mails a new reader itself when the domain's slot
is free, issue 16), then ``actors.send_confirmation(id)`` for each message it enqueued (a stub
broker holds them; ``messages_run``); the same Redis limits, PostgreSQL and smtp-sink. It
prints signups/s, the CPU milliseconds per signup of this process and of the PostgreSQL backend,
and ``--profile FILE`` writes a cProfile of the run, timed in CPU seconds of this process
(``python -m pstats FILE``).

    .venv/bin/python bench/signups.py --inline --count 2000 --profile /tmp/signups.prof

Prints one JSON document, with the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def enqueue(namespace: str, count: int) -> None:
    """``count`` signup events, written as a PHP/Node site writes them."""
    import redis

    client = redis.Redis.from_url(common.REDIS_URL)
    pipe = client.pipeline(transaction=False)
    for event in events(count):
        rid = str(uuid.uuid4())
        message = {
            "queue_name": "signups",
            "actor_name": "handle_signup",
            "args": [event],
            "kwargs": {},
            "options": {"redis_message_id": rid},
            "message_id": str(uuid.uuid4()),
            "message_timestamp": int(time.time() * 1000),
        }
        pipe.multi()
        pipe.hset(f"{namespace}:signups.msgs", rid, json.dumps(message))
        pipe.rpush(f"{namespace}:signups", rid)
        pipe.execute()
    client.close()


def progress(db_url: str) -> tuple[int, int]:
    """(consents recorded, confirmation mails accepted)."""
    import psycopg

    with psycopg.connect(common.plain_url(db_url)) as conn:
        (consents,) = common.one_row(conn, "SELECT count(*) FROM consent")
        (sent,) = common.one_row(
            conn, "SELECT count(*) FROM subscriber WHERE confirmation_sent_at IS NOT NULL"
        )
    return int(consents), int(sent)


def events(count: int) -> list[dict[str, object]]:
    """``count`` signup events of distinct new readers, languages round-robin, 50 domains; the
    addresses are new in every run (the abuse limits' Redis keys outlive a run)."""
    run = uuid.uuid4().hex[:6]
    return [
        {
            "version": 1,
            "event_id": f"bench-{n}",
            "email": f"reader{n}.{run}@d{n % 50}.example.net",
            "language": ("en", "be", "ru")[n % 3],
            "source": "bench",
            "ip": f"198.51.100.{n % 250}",
        }
        for n in range(count)
    ]


def drain(queue_names: tuple[str, ...]) -> int:
    """Run every message the stub broker holds on ``queue_names`` in this thread; how many."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    broker = dramatiq.get_broker()
    assert isinstance(broker, StubBroker)
    ran = 0
    for name in queue_names:
        queue = broker.queues[name]
        while not queue.empty():
            message = dramatiq.Message.decode(queue.get_nowait())
            broker.get_actor(message.actor_name).fn(*message.args, **message.kwargs)
            ran += 1
    return ran


def run_inline(env: dict[str, str], count: int, profile: str | None) -> dict[str, object]:
    """Signups handled in this process: (figures) after every confirmation mail was sent."""
    import cProfile

    os.environ.update({**env, "NEWSLETTER_BROKER": "stub"})
    from worker import broker
    from worker.settings import Settings

    broker.setup(Settings.from_env())
    from sqlalchemy import Engine
    from sqlalchemy import event as sql_event

    from worker import actors

    statements: list[str] = []
    sql_event.listen(Engine, "before_cursor_execute", lambda *a: statements.append(a[2].split()[0]))
    work = events(count + 1)
    actors.handle_signup(work.pop())  # warm-up: imports, connections, the first rendering
    drain(("transactional",))
    statements.clear()
    # CPU time, not wall time: the wall is mostly waiting for PostgreSQL's commit (fsync)
    profiler = cProfile.Profile(time.process_time) if profile else None
    cpu, started = time.process_time(), time.perf_counter()
    mails = 0
    if profiler:
        profiler.enable()
    for event in work:
        actors.handle_signup(event)
        mails += drain(("transactional",))
    if profiler and profile:
        profiler.disable()
        profiler.dump_stats(profile)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    pg_cpu = common.postgres_cpu(env["NEWSLETTER_DATABASE_URL"])
    consents, sent = progress(env["NEWSLETTER_DATABASE_URL"])
    return {
        "events": count,
        "mode": "inline: handle_signup + send_confirmation in one process, one thread",
        "consents": consents - 1,
        "confirmation_mails_accepted": sent - 1,
        "messages_run": mails,
        "seconds": round(elapsed, 2),
        "signups_per_second": round(count / elapsed, 1),
        "cpu_ms_per_signup": round(1000 * cpu / count, 2),
        "postgres_cpu_ms_per_signup": round(1000 * pg_cpu / (count + 1), 2),
        "sql_statements_per_signup": round(len(statements) / count, 2),
        "sql_statements_by_kind": dict(Counter(statements)),
        "profiled": bool(profiler),
    }


def bench_env(db_url: str, smtp_url: str) -> dict[str, str]:
    """The worker settings: abuse limits unlimited (their Redis calls still run)."""
    return common.settings_env(
        db_url,
        smtp_url,
        extra={
            "NEWSLETTER_SIGNUPS_PER_IP_PER_HOUR": "0",
            "NEWSLETTER_CONFIRMATIONS_PER_ADDRESS_PER_DAY": "0",
            "NEWSLETTER_CONFIRMATIONS_PER_DOMAIN_PER_MINUTE": "0",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--inline", action="store_true", help="in this process, no queue")
    parser.add_argument("--profile", help="cProfile output file (with --inline)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    common.flush_redis()
    sink = common.start_sink()
    if args.inline:
        with common.database() as db_url:
            try:
                figures = run_inline(bench_env(db_url, sink.url), args.count, args.profile)
            finally:
                sink.stop()
        figures["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
        figures["machine"] = common.machine()
        print(json.dumps(figures, indent=2))
        return
    with common.database() as db_url, tempfile.TemporaryDirectory() as tmp:
        env = bench_env(db_url, sink.url)
        enqueue(env["NEWSLETTER_QUEUE_NAMESPACE"], args.count)
        workers = common.start_workers(
            env, processes=1, threads=args.threads, log=Path(tmp) / "w.log"
        )
        try:
            workers.wait_ready(1)
            first = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                consents, sent = progress(db_url)
                if first is None and consents:
                    first = time.monotonic()
                if consents >= args.count and sent >= args.count:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - (first or time.monotonic())
            cpu = workers.cpu_seconds()
        finally:
            workers.stop()
            sink.stop()
    print(
        json.dumps(
            {
                "events": args.count,
                "worker_processes": 1,
                "threads": args.threads,
                "seconds": round(elapsed, 2),
                "signups_per_second": round(args.count / elapsed, 1),
                "worker_cpu_seconds": round(cpu, 1),
                "each_signup_includes": "validation, abuse limits (Redis), consent + subscriber "
                "(PostgreSQL), confirmation mail rendered and accepted by smtp-sink",
                "cpu_ms_per_signup": round(1000 * cpu / args.count, 2),
                "load_average_before_after": [load_before[0], os.getloadavg()[0]],
                "machine": common.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
