"""Inbound messages stored + parsed + recorded per second through the SMTP receiver.

Usage: ``python bench/inbound_smtp.py [--db postgresql|sqlite] [--messages 2000] [--clients 4]``

Starts :class:`worker.feedback.smtp_receiver.InboundServer` on loopback over a throw-away database
holding
``--subscribers`` confirmed subscribers with one sent delivery each, then ``--clients`` SMTP
clients (persistent connections, smtplib) send ``--messages`` bounces built from the handed cases
(hard, soft, policy block, delayed, auto-reply, complaint), each with its own delivery's VERP
address and a unique DSN Message-Id. A ``250`` is given only after the message is stored, parsed
and its feedback recorded (and applied), so replies per second is the end-to-end figure.
"""

from __future__ import annotations

import argparse
import logging
import re
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select  # noqa: E402

from bench.common import DATA_KEY_ENV, SECRET, database, free_port  # noqa: E402
from worker.db import dispose_engines, make_engine, session_scope  # noqa: E402
from worker.models import (  # noqa: E402
    Base,
    Delivery,
    Edition,
    FeedbackEvent,
    InboundMessage,
    Newsletter,
    Send,
    Subscriber,
)
from worker.sending.identity import verp_address  # noqa: E402
from worker.settings import Settings  # noqa: E402

CASES = ROOT / "tests" / "cases"
TEMPLATES = [
    CASES / "bounces" / name
    for name in (
        "b01_postfix_5_1_1_headers_only.eml",
        "b02_gmail_552_5_2_2_over_quota.eml",
        "b04_dsn_action_delayed_4_4_7.eml",
        "b05_office365_550_5_1_10.eml",
        "b06_outlook_550_5_7_1_ip_blocklist.eml",
        "b07_exchange_ooo_autoreply_null_sender.eml",
        "b08_mailru_style_russian_user_unknown.eml",
    )
] + [CASES / "complaints" / "c01_arf_abuse_full_message.eml"]
DOMAIN = "news.example.org"


def load(settings: Settings, count: int) -> list[tuple[int, str]]:
    """``count`` subscribers with one sent delivery each; returns (delivery id, address)."""
    now = datetime.now(UTC)
    with session_scope(settings) as session:
        newsletter = Newsletter(slug="bench", default_language="en", profile={}, created_at=now)
        session.add(newsletter)
        session.flush()
        edition = Edition(
            newsletter_id=newsletter.id, key="2026w48-en", created_at=now, updated_at=now
        )
        session.add(edition)
        session.flush()
        send = Send(edition_id=edition.id, status="finished", created_at=now)
        session.add(send)
        session.flush()
        rows = [
            {
                "newsletter_id": newsletter.id,
                "email": f"r{n}@example.com",
                "email_key": f"r{n}@example.com",
                "ascii_email": f"r{n}@example.com",
                "domain": "example.com",
                "language": "en",
                "status": "confirmed",
                "created_at": now,
                "updated_at": now,
                "confirmed_at": now,
            }
            for n in range(count)
        ]
        session.execute(insert(Subscriber), rows)
        ids = list(session.scalars(select(Subscriber.id).order_by(Subscriber.id)))
        session.execute(
            insert(Delivery),
            [
                {
                    "send_id": send.id,
                    "subscriber_id": sid,
                    "language": "en",
                    "domain": "example.com",
                    "state": "sent",
                    "attempts": 1,
                    "sent_at": now,
                }
                for sid in ids
            ],
        )
        pairs = session.execute(
            select(Delivery.id, Subscriber.email).join(
                Subscriber, Subscriber.id == Delivery.subscriber_id
            )
        ).all()
    return [(int(d), str(e)) for d, e in pairs]


def messages(targets: list[tuple[int, str]], count: int) -> list[bytes]:
    """``count`` CRLF messages, template i % 8 for target i, each unique."""
    templates = [t.read_bytes() for t in TEMPLATES]
    out = []
    for n in range(count):
        delivery, _address = targets[n % len(targets)]
        raw = templates[n % len(templates)]
        raw = re.sub(
            rb"bounces\+[\w.]+=[\w.-]+@news\.example\.org",
            verp_address(delivery, key=SECRET, domain=DOMAIN).encode(),
            raw,
        )
        raw = re.sub(rb"<ed-([\w-]+)\.s\d+@", b"<d%d.\\1@" % delivery, raw)
        raw = re.sub(rb"(?im)^(Message-Id: <)", b"\\g<1>bench%d." % n, raw, count=1)
        out.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return out


def client(port: int, batch: list[bytes], latencies: list[float]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        for raw in batch:
            started = time.perf_counter()
            smtp.sendmail("", [f"bounces+0-0@{DOMAIN}"], raw)
            latencies.append(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--subscribers", type=int, default=5000)
    args = parser.parse_args()

    from worker.feedback.smtp_receiver import InboundServer

    logging.getLogger("worker.feedback.policy").setLevel(
        logging.ERROR
    )  # 1 in 8 is a policy-block alert

    with ExitStack() as stack:
        if args.db == "postgresql":
            url = stack.enter_context(database())
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = f"sqlite:///{folder / 'bench.db'}"
            engine = make_engine(url)
            Base.metadata.create_all(engine)
            engine.dispose()
        settings = Settings.from_env(
            DATA_KEY_ENV, database_url=url, secret_key=SECRET, bounce_domain=DOMAIN
        )
        batch = messages(load(settings, args.subscribers), args.messages)
        port = free_port()
        server = stack.enter_context(InboundServer(settings, port=port))
        assert server is not None
        latencies: list[float] = []
        share = [batch[i :: args.clients] for i in range(args.clients)]
        threads = [threading.Thread(target=client, args=(port, s, latencies)) for s in share]
        started, cpu = time.perf_counter(), time.process_time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        with session_scope(settings) as session:
            parsed = session.scalar(
                select(func.count())
                .select_from(InboundMessage)
                .where(InboundMessage.parsed_at.is_not(None))
            )
            events = session.scalar(select(func.count()).select_from(FeedbackEvent))
        dispose_engines()
    size = sum(len(m) for m in batch) / len(batch)
    print(
        f"database {args.db}, {args.clients} SMTP clients, {len(batch)} messages"
        f" (mean {size / 1024:.1f} KiB)"
    )
    print(
        f"stored+parsed+recorded: {parsed} messages, {events} feedback events, in {elapsed:.2f} s"
    )
    print(
        f"throughput: {len(batch) / elapsed:.0f} messages/s; process CPU"
        f" {cpu / len(batch) * 1000:.1f} ms"
        " per message (receiver and clients)"
    )
    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"per-message latency (DATA to 250): p50 {quantiles[49] * 1000:.1f} ms, "
        f"p99 {quantiles[98] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
