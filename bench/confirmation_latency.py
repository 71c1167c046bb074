"""How long a confirmation mail waits when it is enqueued during a 20,000-recipient send (issue 3).

A fresh PostgreSQL database with the sample edition and ``--recipients`` confirmed subscribers,
Redis (a spare database), Postfix's ``smtp-sink`` as the relay, unthrottled sending. Two layouts
of the same worker code are measured:

- ``shared``: ``--processes`` dramatiq processes consume every queue (the default command);
- ``dedicated``: the same processes consume ``sends`` and ``deliveries`` only, plus one small
  process (2 threads) for ``signups`` and ``transactional`` (the docker-compose layout).

Once the send is under way (``--probe-after`` deliveries sent) a signup event is enqueued every
``--interval`` seconds, ``--probes`` times; its latency runs from the enqueue to the moment the
relay accepted the confirmation mail (``subscriber.confirmation_sent_at``).

    .venv/bin/python bench/confirmation_latency.py
    .venv/bin/python bench/confirmation_latency.py --layouts dedicated --recipients 5000

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common


def raw_send(namespace: str, queue: str, actor: str, args: list[Any]) -> float:
    """Enqueue a message as a website would (docs/signup-event.md); returns the enqueue time."""
    import redis

    client = redis.Redis.from_url(common.REDIS_URL)
    rid = str(uuid.uuid4())
    message = {
        "queue_name": queue,
        "actor_name": actor,
        "args": args,
        "kwargs": {},
        "options": {"redis_message_id": rid},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
    pipe = client.pipeline(transaction=True)
    pipe.hset(f"{namespace}:{queue}.msgs", rid, json.dumps(message))
    pipe.rpush(f"{namespace}:{queue}", rid)
    pipe.execute()
    client.close()
    return time.time()


def query(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(common.plain_url(db_url)) as conn:
        return list(conn.execute(sql, params).fetchall())


def start(
    env: dict[str, str], tmp: Path, name: str, processes: int, threads: int, queues: list[str]
) -> Any:
    log = tmp / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "worker.actors",
        "-p",
        str(processes),
        "-t",
        str(threads),
    ]
    if queues:
        command += ["--queues", *queues]
    process = subprocess.Popen(
        command,
        env={**os.environ, **env, "PYTHONPATH": str(common.ROOT)},
        cwd=common.ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    workers = common.Workers(process, log)
    workers.wait_ready(processes)
    return workers


def run(layout: str, args: argparse.Namespace) -> dict[str, Any]:
    common.flush_redis()
    sink = common.start_sink()
    with common.database() as db_url, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        common.load_edition_and_subscribers(db_url, args.recipients)
        env = common.settings_env(db_url, sink.url, batch_size=100)
        namespace = env["NEWSLETTER_QUEUE_NAMESPACE"]
        pools = []
        try:
            if layout == "shared":
                pools.append(start(env, tmp, "all", args.processes, args.threads, []))
            else:
                pools.append(
                    start(env, tmp, "bulk", args.processes, args.threads, ["sends", "deliveries"])
                )
                pools.append(start(env, tmp, "tx", 1, 2, ["signups", "transactional"]))
            send_id = common.create_send(db_url, 100)
            started = time.time()
            raw_send(namespace, "sends", "plan_send", [send_id])
            while (
                query(db_url, "SELECT count(*) FROM delivery WHERE state = 'sent'")[0][0]
                < args.probe_after
            ):
                time.sleep(0.05)
            probes: dict[str, float] = {}
            for n in range(args.probes):
                address = f"probe{n}@confirm.example.org"
                event = {"version": 1, "event_id": f"probe-{n}", "email": address, "language": "en"}
                probes[address] = raw_send(namespace, "signups", "handle_signup", [event])
                time.sleep(args.interval)
            deadline = time.time() + 900
            while time.time() < deadline:
                done = query(
                    db_url,
                    "SELECT email, confirmation_sent_at FROM subscriber WHERE email LIKE 'probe%%' "
                    "AND confirmation_sent_at IS NOT NULL",
                )
                status = query(
                    db_url, "SELECT status, finished_at FROM send WHERE id = %s", send_id
                )[0]
                if len(done) == len(probes) and status[0] == "finished":
                    break
                time.sleep(0.2)
            hops = query(
                db_url,
                "SELECT s.email, c.signed_up_at, s.confirmation_sent_at FROM subscriber s "
                "JOIN consent c ON c.subscriber_id = s.id WHERE s.email LIKE 'probe%%'",
            )
            sent_during = query(
                db_url,
                "SELECT count(*) FROM delivery WHERE sent_at > %s",
                datetime.fromtimestamp(min(probes.values()), UTC),
            )[0][0]
        finally:
            for pool in pools:
                pool.stop()
            sink.stop()
    latencies = sorted(at.timestamp() - probes[email] for email, at in done)
    # Where the time goes: enqueue -> signup processed, signup processed -> mail accepted
    to_signup = statistics.median(signed.timestamp() - probes[email] for email, signed, _ in hops)
    to_mail = statistics.median(
        mailed.timestamp() - signed.timestamp() for _, signed, mailed in hops if mailed
    )
    finished = status[1].timestamp() if status[1] else time.time()
    return {
        "layout": layout,
        "recipients": args.recipients,
        "send_seconds": round(finished - started, 1),
        "probes_confirmed": len(latencies),
        "latency_seconds": {
            "median": round(statistics.median(latencies), 3),
            "p90": round(latencies[int(0.9 * (len(latencies) - 1))], 3),
            "max": round(latencies[-1], 3),
        },
        "median_seconds_enqueue_to_signup_processed": round(to_signup, 3),
        "median_seconds_signup_processed_to_mail_accepted": round(to_mail, 3),
        "deliveries_sent_after_first_probe": sent_during,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--probe-after", type=int, default=1000)
    parser.add_argument("--layouts", nargs="+", default=["shared", "dedicated"])
    args = parser.parse_args()
    results = [run(layout, args) for layout in args.layouts]
    print(json.dumps({"runs": results, "machine": common.machine()}, indent=2))


if __name__ == "__main__":
    main()
