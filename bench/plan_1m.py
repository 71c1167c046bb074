"""Benchmark: plan a send to 1,000,000 subscribers on PostgreSQL without loading them into memory.

Creates a scratch database, inserts the subscribers with one ``INSERT … SELECT generate_series``,
then times ``worker.sending.planning.plan_deliveries`` (keyset pages, one ``INSERT … SELECT``
each), planning again (a no-op: it resumes after the send's last planned reader), and
``pending_batches``; prints seconds, the PostgreSQL backend's CPU seconds, the load average and
the process's peak RSS. The scratch database is dropped at the end. Example::

    .venv/bin/python bench/plan_1m.py --subscribers 1000000 --admin-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from sqlalchemy import text

from worker.db import dispose_engines, make_engine
from worker.models import Base, Send
from worker.sending.planning import pending_batches, plan_deliveries


def backend_cpu(session: object) -> float:
    """CPU seconds (user + system) the session's PostgreSQL backend has used: the database's
    share of planning, which a loaded machine does not inflate the way it inflates wall time
    (the server is local; Linux ``/proc``)."""
    from sqlalchemy import text as sql

    pid = session.scalar(sql("SELECT pg_backend_pid()"))  # type: ignore[attr-defined]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def seed(url: str, count: int) -> tuple[int, int]:
    """A newsletter, an edition, ``count`` confirmed subscribers (3 languages) and a send."""
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        newsletter_id = conn.execute(
            text(
                "INSERT INTO newsletter (slug, default_language, profile, created_at) "
                "VALUES ('bench', 'en', '{}', :now) RETURNING id"
            ),
            {"now": now},
        ).scalar_one()
        conn.execute(
            text("""
            INSERT INTO subscriber (newsletter_id, email, email_key, ascii_email, domain, language,
                                    status, created_at, updated_at)
            SELECT :nl, a, a, a, 'example' || (g % 50) || '.org',
                   (ARRAY['en','ru','be','de'])[1 + g % 4], 'confirmed', :now, :now
            FROM generate_series(1, :count) AS g,
                 LATERAL (SELECT 's' || g || '@example' || (g % 50) || '.org' AS a) AS address
            """),
            {"nl": newsletter_id, "now": now, "count": count},
        )
        edition_columns = {c.name for c in Base.metadata.tables["edition"].columns}
        values = {
            "newsletter_id": newsletter_id,
            "key": "bench",
            "created_at": now,
            "updated_at": now,
        }
        values = {k: v for k, v in values.items() if k in edition_columns}
        edition_id = conn.execute(
            Base.metadata.tables["edition"]
            .insert()
            .values(**values)
            .returning(Base.metadata.tables["edition"].c.id)
        ).scalar_one()
        send_id = conn.execute(
            text(
                "INSERT INTO send (edition_id, status, batch_size, planned_count, created_at, "
                "audience) VALUES (:e, 'planning', 100, 0, :now, 'all') RETURNING id"
            ),
            {"e": edition_id, "now": now},
        ).scalar_one()
        conn.execute(text("ANALYZE subscriber"))
    engine.dispose()
    return int(newsletter_id), int(send_id)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--page-size", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    name = f"newsletter_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = (
        args.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        + f"/{name}"
    )
    try:
        started = time.perf_counter()
        newsletter_id, send_id = seed(url, args.subscribers)
        print(f"seeded {args.subscribers:,} subscribers in {time.perf_counter() - started:.1f} s")
        rss_before = peak_rss_mb()
        engine = make_engine(url)
        from sqlalchemy.orm import Session

        with Session(engine) as session:
            send = session.get(Send, send_id)
            assert send is not None
            load_before = load()
            cpu = backend_cpu(session)
            started = time.perf_counter()
            planned = plan_deliveries(
                session,
                send,
                newsletter_id=newsletter_id,
                languages=("be", "en", "ru"),
                default_language="en",
                page_size=args.page_size,
            )
            first = time.perf_counter() - started
            first_cpu = backend_cpu(session) - cpu
            cpu = backend_cpu(session)
            started = time.perf_counter()
            again = plan_deliveries(
                session,
                send,
                newsletter_id=newsletter_id,
                languages=("be", "en", "ru"),
                default_language="en",
                page_size=args.page_size,
            )
            second = time.perf_counter() - started
            second_cpu = backend_cpu(session) - cpu
            started = time.perf_counter()
            batches = pending_batches(session, send_id, 100, datetime.now(UTC))
            listing = time.perf_counter() - started
        print(
            f"planned {planned:,} deliveries in {first:.1f} s ({planned / first:,.0f}/s), "
            f"page size {args.page_size:,}; PostgreSQL backend CPU {first_cpu:.1f} s"
        )
        print(
            f"planned again (no-op): {again:,} deliveries, {second:.2f} s (CPU {second_cpu:.2f} s)"
        )
        print(f"load average before planning: {load_before}; after: {load()}")
        print(f"pending_batches: {len(batches):,} batches of 100 in {listing:.2f} s")
        print(f"peak RSS: {peak_rss_mb():.0f} MB (before planning: {rss_before:.0f} MB)")
        engine.dispose()
        dispose_engines()
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
