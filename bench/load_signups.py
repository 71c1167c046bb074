"""Signup load while a send runs: 10,000 signup events per minute for 5 minutes (issue 9).

A fresh PostgreSQL database, Redis (a spare database, flushed), ``python -m dramatiq worker.actors``
processes and an in-process SMTP server (aiosmtpd) that keeps only who got what and when. A send
of the sample edition to ``--recipients`` confirmed subscribers is started first and runs
throttled (``--send-rate`` messages per second) through the whole load. The generator writes the
signup events into the broker's Redis the way a website does (HSET + RPUSH in one transaction),
paced to ``--per-minute``. The traffic mixes ordinary readers with two attacks the abuse limits
must stop:

- 85 % new readers (unique address, 5,000 source IPs, 997 recipient domains);
- 10 % inbox bombing: signups of the same 10 victim addresses from changing IPs;
- 5 % one abusive IP signing up new addresses.

Afterwards: every event is accounted for (a consent or a recorded refusal carries its event id),
the limits held (victims got at most one mail per resend window, the abusive IP at most its hourly
limit, no recipient domain more than its per-minute limit), the send finished with every
recipient mailed exactly once, and the confirmation latency (event enqueued → mail accepted by
the SMTP server) of the ordinary readers.

    .venv/bin/python bench/load_signups.py                      # 10,000/min for 5 min
    .venv/bin/python bench/load_signups.py --per-minute 3000 --minutes 1

Prints one JSON document; ``run_load`` returns the same figures (tests/test_load.py asserts them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common

# A Redis database of its own: other benchmarks flush theirs (bench/common.py) while this runs.
REDIS_URL = os.environ.get("BENCH_LOAD_REDIS_URL", "redis://127.0.0.1:6379/8")
VICTIMS = [f"victim{n}@bombed.example.com" for n in range(10)]
ABUSIVE_IP = "198.51.100.66"
QUEUES = ("signups", "transactional", "sends", "deliveries")


@dataclass
class Mailbox:
    """What the SMTP server accepted: per recipient the acceptance times, split by kind."""

    confirmations: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    editions: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or b""
        now = time.time()
        head = data.split(b"\r\n\r\n", 1)[0]
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                if b"X-Newsletter-Edition:" in head:
                    self.editions[rcpt.lower()] += 1
                else:
                    self.confirmations[rcpt.lower()].append(now)
        return "250 2.0.0 Ok: queued"


def _start_smtp(mailbox: Mailbox) -> tuple[Any, str]:
    from aiosmtpd.controller import Controller

    port = common.free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, enable_SMTPUTF8=True)
    controller.start()
    return controller, f"smtp://127.0.0.1:{port}"


def _event(n: int, kind: str) -> dict[str, Any]:
    if kind == "victim":
        email, ip = VICTIMS[n // 20 % len(VICTIMS)], f"203.0.113.{n % 250 + 1}"
    elif kind == "abusive":
        email, ip = f"bot{n}@d{n % 997}.example.net", ABUSIVE_IP
    else:
        email, ip = f"new{n}@d{n % 997}.example.net", f"10.{n % 5000 // 250}.{n % 250}.1"
    return {
        "version": 1,
        "event_id": f"load-{n}",
        "email": email,
        "language": ("en", "be", "ru")[n % 3],
        "ip": ip,
        "source": "load",
        "consent_version": "2024-07",
    }


def _kind(n: int) -> str:
    slot = n % 20
    return "victim" if slot < 2 else "abusive" if slot == 2 else "reader"


def generate(
    client: Any, namespace: str, per_minute: int, minutes: float
) -> dict[str, tuple[str, float]]:
    """Write the events, paced; returns event id → (kind, enqueue time)."""
    sent: dict[str, tuple[str, float]] = {}
    total = int(per_minute * minutes)
    rate = per_minute / 60.0
    start = time.time()
    n = 0
    while n < total:
        due = min(total, int((time.time() - start) * rate) + 1)
        with client.pipeline(transaction=True) as pipe:
            now = time.time()
            for m in range(n, due):
                kind = _kind(m)
                rid = str(uuid.uuid4())
                message = {
                    "queue_name": "signups",
                    "actor_name": "handle_signup",
                    "args": [_event(m, kind)],
                    "kwargs": {},
                    "options": {"redis_message_id": rid},
                    "message_id": rid,
                    "message_timestamp": int(now * 1000),
                }
                pipe.hset(f"{namespace}:signups.msgs", rid, json.dumps(message))
                pipe.rpush(f"{namespace}:signups", rid)
                sent[f"load-{m}"] = (kind, now)
            pipe.execute()
        n = due
        time.sleep(0.05)
    return sent


def _queued(client: Any, namespace: str, queues: tuple[str, ...]) -> int:
    return sum(
        client.hlen(f"{namespace}:{q}.msgs") + client.hlen(f"{namespace}:{q}.DQ.msgs")
        for q in queues
    )


def _wait(predicate: Any, timeout: float) -> float | None:
    """Seconds until ``predicate()`` held, or None if it did not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(1)
    return None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _max_per_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def run_load(
    *,
    per_minute: int = 10_000,
    minutes: float = 5.0,
    recipients: int = 3_000,
    send_rate: float = 20.0,
    processes: int = 2,
    threads: int = 8,
    drain_timeout: float = 1800.0,
) -> dict[str, Any]:
    """Run the load and return the figures (see the module docstring). If the queues do not drain
    within ``drain_timeout`` seconds after the load, ``drained`` is False and the events not yet
    processed show up as lost."""
    import psycopg
    import redis
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    mailbox = Mailbox()
    controller, smtp_url = _start_smtp(mailbox)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    figures: dict[str, Any] = {
        "per_minute": per_minute,
        "minutes": minutes,
        "recipients": recipients,
        "send_rate": send_rate,
        "processes": processes,
        "threads": threads,
        "machine": common.machine(),
    }
    with common.database() as db_url, tempfile.TemporaryDirectory() as tmp:
        env = common.settings_env(
            db_url,
            smtp_url,
            batch_size=50,
            extra={
                "NEWSLETTER_REDIS_URL": REDIS_URL,
                "NEWSLETTER_GLOBAL_RATE": str(send_rate),
                "NEWSLETTER_CONFIRMATION_RESEND_MINUTES": "10",
                "NEWSLETTER_CONFIRMATIONS_PER_ADDRESS_PER_DAY": "3",
                "NEWSLETTER_SIGNUPS_PER_IP_PER_HOUR": "20",
                "NEWSLETTER_CONFIRMATIONS_PER_DOMAIN_PER_MINUTE": "60",
            },
        )
        namespace = env["NEWSLETTER_QUEUE_NAMESPACE"]
        common.load_edition_and_subscribers(db_url, recipients)
        send_id = common.create_send(db_url, 50)
        workers = common.start_workers(
            env, processes=processes, threads=threads, log=Path(tmp) / "workers.log"
        )
        try:
            workers.wait_ready(processes)
            broker = RedisBroker(url=REDIS_URL, namespace=namespace)  # type: ignore[no-untyped-call]
            broker.enqueue(
                Message(
                    queue_name="sends",
                    actor_name="plan_send",
                    args=(send_id,),
                    kwargs={},
                    options={},
                )
            )
            started = time.time()
            cpu_before = workers.cpu_seconds()
            sent = generate(client, namespace, per_minute, minutes)
            generated = time.time() - started
            figures["events"] = len(sent)
            figures["events_per_second_offered"] = round(len(sent) / generated, 1)
            backlog_at_end = _queued(client, namespace, ("signups",))
            figures["signup_backlog_when_load_ended"] = backlog_at_end
            drain = _wait(
                lambda: _queued(client, namespace, ("signups", "transactional")) == 0, drain_timeout
            )
            figures["drained"] = drain is not None
            if drain is not None:
                figures["drain_seconds_after_load"] = round(drain, 1)
                figures["events_per_second_processed"] = round(len(sent) / (generated + drain), 1)
            else:  # figures of what was done; unprocessed events count as lost below
                figures["signups_still_queued"] = _queued(client, namespace, ("signups",))
            _wait(lambda: common.ledger(db_url, send_id)["status"] == "finished", 120)
            figures["worker_cpu_seconds"] = round(workers.cpu_seconds() - cpu_before, 1)
            log = (Path(tmp) / "workers.log").read_text(errors="replace")
            figures["worker_log_errors"] = log.count("ERROR") + log.count("Traceback")
            figures["worker_log_error_sample"] = [
                line for line in log.splitlines() if "ERROR" in line or "Error" in line
            ][:5]
        finally:
            workers.stop()
            broker.close() if "broker" in locals() else None
        figures.update(_check(db_url, send_id, sent, mailbox, psycopg))
    controller.stop()
    client.flushdb()
    return figures


def _check(
    db_url: str, send_id: int, sent: dict[str, tuple[str, float]], mailbox: Mailbox, psycopg: Any
) -> dict[str, Any]:
    with psycopg.connect(common.plain_url(db_url)) as conn:
        consents = {
            r[0] for r in conn.execute("SELECT event_id FROM consent WHERE event_id LIKE 'load-%'")
        }
        refusals = dict(
            conn.execute(
                "SELECT event_id, reason FROM signup_refusal WHERE event_id LIKE 'load-%'"
            ).fetchall()
        )
        unmailed = conn.execute(
            "SELECT count(*) FROM subscriber "
            "WHERE status = 'pending' AND confirmation_sent_at IS NULL"
        ).fetchone()[0]
        abusive_accepted = conn.execute(
            "SELECT count(*) FROM consent WHERE ip = %s", (ABUSIVE_IP,)
        ).fetchone()[0]
    ledger = common.ledger(db_url, send_id)
    lost = [e for e in sent if e not in consents and e not in refusals]
    reader_latency = []
    for event_id, (kind, enqueued) in sent.items():
        if kind != "reader":
            continue
        n = int(event_id.split("-")[1])
        times = mailbox.confirmations.get(f"new{n}@d{n % 997}.example.net")
        if times:
            reader_latency.append(times[0] - enqueued)
    readers = sum(1 for kind, _ in sent.values() if kind == "reader")
    by_domain: dict[str, list[float]] = defaultdict(list)
    for rcpt, times in mailbox.confirmations.items():
        by_domain[rcpt.rsplit("@", 1)[1]].extend(times)
    return {
        "events_lost": len(lost),
        "pending_without_confirmation_mail": unmailed,
        "lost_sample": lost[:5],
        "refusals_by_reason": dict(Counter(refusals.values())),
        "readers": readers,
        "readers_mailed": len(reader_latency),
        "readers_mailed_twice": sum(
            1 for r, t in mailbox.confirmations.items() if r.startswith("new") and len(t) > 1
        ),
        "victim_mails": {v: len(mailbox.confirmations.get(v, [])) for v in VICTIMS},
        "abusive_ip_signups_accepted": abusive_accepted,
        "max_confirmations_per_domain_per_minute": max(
            (_max_per_window(t, 60.0) for t in by_domain.values()), default=0
        ),
        "confirmation_latency_seconds": {
            "p50": round(_percentile(reader_latency, 0.50), 2),
            "p95": round(_percentile(reader_latency, 0.95), 2),
            "max": round(max(reader_latency, default=float("nan")), 2),
            "mean": round(statistics.fmean(reader_latency), 2) if reader_latency else None,
        },
        "send": {
            "status": ledger["status"],
            "deliveries": {k: int(v) for k, v in ledger["counts"].items()},
            "recipients_mailed": len(mailbox.editions),
            "recipients_mailed_twice": sum(1 for c in mailbox.editions.values() if c > 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-minute", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--recipients", type=int, default=3_000)
    parser.add_argument("--send-rate", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    figures = run_load(
        per_minute=args.per_minute,
        minutes=args.minutes,
        recipients=args.recipients,
        send_rate=args.send_rate,
        processes=args.processes,
        threads=args.threads,
    )
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
