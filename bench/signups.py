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

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def enqueue(namespace: str, count: int) -> None:
    """``count`` signup events, written as a PHP/Node site writes them."""
    import redis

    client = redis.Redis.from_url(common.REDIS_URL)
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        rid = str(uuid.uuid4())
        event = {
            "version": 1,
            "event_id": f"bench-{n}",
            "email": f"reader{n}@d{n % 50}.example.net",
            "language": ("en", "be", "ru")[n % 3],
            "source": "bench",
        }
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    common.flush_redis()
    sink = common.start_sink()
    with common.database() as db_url, tempfile.TemporaryDirectory() as tmp:
        env = common.settings_env(
            db_url,
            sink.url,
            extra={
                "NEWSLETTER_SIGNUPS_PER_IP_PER_HOUR": "0",
                "NEWSLETTER_CONFIRMATIONS_PER_ADDRESS_PER_DAY": "0",
                "NEWSLETTER_CONFIRMATIONS_PER_DOMAIN_PER_MINUTE": "0",
            },
        )
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
                "machine": common.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
