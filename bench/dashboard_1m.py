"""The operators' dashboard and ``/metrics`` on a ledger of 1M deliveries, on PostgreSQL.

    .venv/bin/python bench/dashboard_1m.py [--deliveries 1000000] [--runs 5] [--keep-indexes-off]

Builds, in a throw-away database, 1M confirmed subscribers over ~2,000 domains and three
languages, one send with one delivery each (the worst case: every per-send query reads all of
them), the feedback that comes back (1 % DSN bounces, 1.5 % SMTP refusals with their feedback
event, 0.08 % complaints, 0.3 % unsubscribes honoured minutes later) and a year of consents.
Then times, as the operator sees them (the FastAPI app in process, HTML rendered):

- ``GET /dashboard`` (the newest send's funnel by language and domain, send rate, bounce
  reasons, complaint rate, unsubscribe latency, signups per day);
- ``GET /metrics`` while the send is ``sending`` (the ledger gauges read all 1M rows).

A finished send is timed on its first view ever (its deliveries are counted once and stored
as its ``send_tally``), then on the first view in a fresh process (nothing remembered in memory:
the tally is read, the rest from the ledger), then on later views (what a final send or a settled
second can no longer change is remembered by ``worker.operators.dashboard``; the readers, signups,
unsubscribe latency, bounce reasons and a live send's funnel for
``NEWSLETTER_DASHBOARD_CACHE_SECONDS``, 30 s, by ``worker.operators.snapshots``, in memory and in
``dashboard_snapshot``); a live send on its first view in a fresh process and on later views
(the snapshots of the finished send's views are younger than 30 s, so a fresh process reads
them: the first view of a second web process);

first without the dashboard's indexes (``worker.models``: ``ix_delivery_send_funnel``,
``ix_delivery_send_state_sent_at``, ``ix_feedback_kind_occurred``, ``ix_feedback_delivery``,
``ix_consent_signed_up_at``, ``ix_subscriber_status_language``, ``ix_consent_method_source``),
then with them. Prints milliseconds (median and max of ``--runs``) and the load average.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from bench.common import DATA_KEY_ENV, database

DASHBOARD_INDEXES = (
    "ix_delivery_send_funnel",
    "ix_delivery_send_state_sent_at",
    "ix_feedback_kind_occurred",
    "ix_feedback_delivery",
    "ix_consent_signed_up_at",
    "ix_subscriber_status_language",
    "ix_consent_method_source",
)

FILL = """
INSERT INTO newsletter (id, slug, default_language, profile, created_at)
VALUES (1, 'bench', 'en', '{}', now());
INSERT INTO edition (id, newsletter_id, key, created_at, updated_at)
VALUES (1, 1, '2026-W48', now(), now());
INSERT INTO send (id, edition_id, status, batch_size, planned_count, created_at, started_at,
                  finished_at, audience)
VALUES (1, 1, 'finished', 100, :n, now() - interval '4 hours', now() - interval '4 hours',
        now() - interval '1 hour', 'all');
INSERT INTO subscriber (id, newsletter_id, email, email_key, ascii_email, domain, language, status,
                        created_at, updated_at, confirmed_at)
SELECT i, 1, 'r' || i || '@' || d, 'r' || i || '@' || d, 'r' || i || '@' || d, d,
       CASE WHEN i % 10 < 5 THEN 'ru' WHEN i % 10 < 8 THEN 'be' ELSE 'en' END,
       'confirmed', now() - interval '400 days', now(), now() - interval '399 days'
FROM (SELECT i, CASE
        WHEN i % 100 < 30 THEN 'gmail.com' WHEN i % 100 < 45 THEN 'yandex.ru'
        WHEN i % 100 < 60 THEN 'mail.ru' WHEN i % 100 < 70 THEN 'outlook.com'
        WHEN i % 100 < 75 THEN 'yahoo.com' WHEN i % 100 < 80 THEN 'tut.by'
        ELSE 'd' || (i % 2000) || '.example' END AS d
      FROM generate_series(1, :n) AS i) AS s;
INSERT INTO delivery (id, send_id, subscriber_id, language, domain, state, attempts, sent_at,
                      first_attempt_at, reply_code, updated_at)
SELECT s.id, 1, s.id, s.language, s.domain,
       CASE WHEN s.id % 1000 < 965 THEN 'sent' WHEN s.id % 1000 < 980 THEN 'failed'
            WHEN s.id % 1000 < 990 THEN 'deferred' WHEN s.id % 1000 < 995 THEN 'expired'
            WHEN s.id % 1000 < 996 THEN 'unknown' ELSE 'skipped' END,
       1,
       CASE WHEN s.id % 1000 < 965
            THEN now() - interval '4 hours' + (s.id::float / :n) * interval '3 hours' END,
       now() - interval '4 hours' + (s.id::float / :n) * interval '3 hours', 250, now()
FROM subscriber AS s;
-- feedback: SMTP refusals of the failed deliveries, DSN bounces, complaints, unsubscribes
INSERT INTO feedback_event (source_event_id, kind, source, subscriber_id, delivery_id, reason,
                            occurred_at, recorded_at)
SELECT 'smtp:' || d.id, CASE WHEN d.id % 3 = 0 THEN 'policy_block' ELSE 'hard_bounce' END, 'smtp',
       d.subscriber_id, d.id,
       CASE WHEN d.id % 3 = 0 THEN 'sender_blocked' WHEN d.id % 3 = 1 THEN 'user_unknown'
            ELSE 'bad_domain' END,
       d.first_attempt_at, d.first_attempt_at
FROM delivery AS d WHERE d.state = 'failed';
INSERT INTO feedback_event (source_event_id, kind, source, subscriber_id, delivery_id, reason,
                            occurred_at, recorded_at)
SELECT 'dsn:' || d.id, CASE WHEN d.id % 2 = 0 THEN 'hard_bounce' ELSE 'soft_bounce' END, 'dsn',
       d.subscriber_id, d.id, CASE WHEN d.id % 2 = 0 THEN 'user_unknown' ELSE 'mailbox_full' END,
       d.sent_at + interval '5 minutes', d.sent_at + interval '6 minutes'
FROM delivery AS d WHERE d.state = 'sent' AND d.id % 100 = 7;
INSERT INTO feedback_event (source_event_id, kind, source, subscriber_id, delivery_id, reason,
                            occurred_at, recorded_at)
SELECT 'arf:' || d.id, 'complaint', 'arf', d.subscriber_id, d.id, 'abuse',
       d.sent_at + interval '30 minutes', d.sent_at + interval '31 minutes'
FROM delivery AS d WHERE d.state = 'sent' AND d.id % 10000 < 8;
INSERT INTO feedback_event (source_event_id, kind, source, subscriber_id, reason,
                            occurred_at, recorded_at)
SELECT 'unsub:' || d.id, 'unsubscribe', 'one_click', d.subscriber_id, 'list_unsubscribe',
       d.sent_at + interval '20 minutes', d.sent_at + interval '20 minutes'
FROM delivery AS d WHERE d.state = 'sent' AND d.id % 1000 IN (501, 502, 503);
UPDATE subscriber AS s
SET status = 'unsubscribed', unsubscribed_at = f.occurred_at + interval '2 minutes'
FROM feedback_event AS f WHERE f.kind = 'unsubscribe' AND f.subscriber_id = s.id;
INSERT INTO consent (subscriber_id, event_id, signed_up_at, language, method, confirmed_at)
SELECT s.id, 'e' || s.id, now() - (s.id::float / :n) * interval '365 days', s.language,
       'double_opt_in',
       CASE WHEN s.id % 10 < 8 THEN now() - (s.id::float / :n) * interval '365 days'
                                        + interval '10 minutes' END
FROM subscriber AS s
"""


def timed(call: object, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from worker.db import engine_for
    from worker.operators.dashboard import _cache
    from worker.operators.snapshots import forget
    from worker.runtime import Runtime
    from worker.settings import Settings
    from worker.web.app import create_app

    with database() as url:
        settings = Settings.from_env(
            DATA_KEY_ENV,
            database_url=url,
            redis_url="",
            broker="stub",
            operator_password="bench",
            metrics_token="bench",
            secret_key="bench-secret-key-of-the-dashboard-benchmark",
        )
        engine = engine_for(settings)
        started = time.perf_counter()
        with engine.begin() as conn:
            for statement in FILL.split(";\n"):
                sql = "\n".join(x for x in statement.splitlines() if not x.startswith("--"))
                if sql.strip():
                    conn.execute(text(sql), {"n": args.deliveries})
        built = time.perf_counter() - started
        print(f"ledger of {args.deliveries:,} deliveries built in {built:.0f} s")
        definitions = {}
        with engine.connect() as conn:
            for name in DASHBOARD_INDEXES:
                definitions[name] = conn.scalar(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": name}
                )
                conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
            conn.commit()
        counts = _counts(engine)
        print("rows: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        client = TestClient(create_app(Runtime(settings)))
        auth = {"Authorization": "Basic " + base64.b64encode(b"operator:bench").decode()}
        for label in ("without the dashboard indexes", "with the dashboard indexes"):
            if label.startswith("with "):
                with engine.connect() as conn:
                    for ddl in definitions.values():
                        if ddl:
                            conn.execute(text(ddl))
                    conn.commit()
            _vacuum(engine)
            print(label)
            for status in ("finished", "sending"):
                with engine.begin() as conn:
                    conn.execute(text("UPDATE send SET status = :s"), {"s": status})
                if status == "finished":  # the first view ever counts the send once
                    with engine.begin() as conn:
                        conn.execute(text("DELETE FROM send_tally"))
                        conn.execute(text("DELETE FROM dashboard_snapshot"))
                    _cache.clear()
                    forget()
                    started = time.perf_counter()
                    page = client.get("/dashboard", headers=auth)
                    once = (time.perf_counter() - started) * 1000
                    assert page.status_code == 200 and "gmail.com" in page.text
                    print(f"  GET /dashboard, send finished: first view ever {once:7.1f} ms")
                _cache.clear()  # a fresh process: nothing remembered in memory
                forget()  # (the other web processes' dashboard_snapshot rows stay)
                started = time.perf_counter()
                page = client.get("/dashboard", headers=auth)
                cold = (time.perf_counter() - started) * 1000
                assert page.status_code == 200 and "gmail.com" in page.text, page.status_code
                med, worst = timed(lambda: client.get("/dashboard", headers=auth), args.runs)
                print(
                    f"  GET /dashboard, send {status:8}: first view {cold:7.1f} ms, then median "
                    f"{med:6.1f} ms, max {worst:6.1f} ms"
                )
            med, worst = timed(
                lambda: client.get("/metrics", headers={"Authorization": "Bearer bench"}), args.runs
            )
            print(f"  GET /metrics, send sending : median {med:6.1f} ms, max {worst:6.1f} ms")
            print("  load average: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
            with engine.begin() as conn:
                conn.execute(text("UPDATE send SET status = 'finished'"))
        missing = [name for name, ddl in definitions.items() if not ddl]
        if missing:
            print(f"(indexes not in worker.models, so not measured: {', '.join(missing)})")


def _counts(engine: object) -> dict[str, int]:
    out = {}
    with engine.connect() as conn:  # type: ignore[attr-defined]
        for table in ("delivery", "feedback_event", "consent", "subscriber"):
            out[table] = int(conn.scalar(text(f"SELECT count(*) FROM {table}")))
    return out


def _vacuum(engine: object) -> None:
    """VACUUM ANALYZE, as autovacuum would after the load: statistics and the visibility map
    (index-only scans need it)."""
    with engine.connect() as conn:  # type: ignore[attr-defined]
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("VACUUM ANALYZE"))


if __name__ == "__main__":
    main()
