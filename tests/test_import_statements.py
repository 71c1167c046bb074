"""The import's cost in statements and plans, not in seconds (issue 14: 100,000 rows in under
30 s on PostgreSQL; the figures are in ``bench/import_subscribers.py`` and docs/benchmarks.md).

A per-row round trip, or a look-up planned as a scan of the whole newsletter (what
``email_key = ANY(:keys)`` became: 364 s of PostgreSQL CPU for 100,000 rows), fails here
without any timing."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Select, Update, event
from sqlalchemy.orm import Session

from worker.runtime import Runtime
from worker.safety.keyring import blind_index
from worker.subscriptions.exports import read_export
from worker.subscriptions.imports import (
    CHUNK,
    ImportOptions,
    ImportReport,
    active_suppressions_statement,
    import_rows,
    known_readers_statement,
)
from worker.subscriptions.lifecycle import suppress_keys_statement
from worker.subscriptions.suppressions import email_hash

HEADER = ("Email Address", "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP", "LANGUAGE")
LEFT = ("Email Address", "OPTIN_TIME", "LANGUAGE", "UNSUB_TIME")


def subscribed(count: int, start: int = 0) -> str:
    """A Mailchimp subscribed-members export of ``count`` readers (every 100th row bad)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for n in range(start, start + count):
        optin = "not a time" if n % 100 == 73 else "2023-03-01 08:15:02"
        language = ("be_BY", "ru", "")[n % 3]
        address = f"reader{n}@d{n % 7}.example.org"
        writer.writerow(
            (address, optin, "198.51.100.7", "2023-03-01 08:16:40", "203.0.113.9", language)
        )
    return out.getvalue()


def unsubscribed(count: int, start: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(LEFT)
    for n in range(start, start + count):
        writer.writerow((f"reader{n}@d{n % 7}.example.org", "2023-03-01 08:15:02", "en",
                         "2024-02-01 09:00:00"))  # fmt: skip
    return out.getvalue()


def options(rt: Runtime, session: Session, **extra: Any) -> ImportOptions:
    newsletter = rt.newsletter(session)
    return ImportOptions(
        newsletter_id=newsletter.id,
        source="import:mailchimp:members.csv",
        languages=("en", "be", "ru"),
        default_language="en",
        hash_key=rt.settings.secret_key,
        now=rt.clock.now(),
        **extra,
    )


@contextmanager
def counting(session: Session) -> Iterator[list[str]]:
    """Every statement the session's connection sends while inside (an executemany counts
    once: it is one statement, planned once)."""
    statements: list[str] = []
    engine = session.get_bind()

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def run_import(rt: Runtime, text: str, **extra: Any) -> tuple[ImportReport, list[str]]:
    with rt.session() as session:
        opts = options(rt, session, **extra)
        with counting(session) as statements:
            report = import_rows(session, read_export("mailchimp", io.StringIO(text)), opts)
    return report, statements


def test_an_import_sends_a_few_statements_per_chunk_never_one_per_row(rt: Runtime) -> None:
    # Given 2,500 readers (three chunks), some rows bad
    rows = 2 * CHUNK + CHUNK // 2
    chunks = 3

    # When they are imported, then imported again, then 1,200 of them unsubscribe there
    first, first_statements = run_import(rt, subscribed(rows))
    again, again_statements = run_import(rt, subscribed(rows))
    left, left_statements = run_import(rt, unsubscribed(1200, start=1000))

    # Then every good row is in, and the file is still refused line by line
    assert first.counts["imported"] == rows - 25
    assert first.counts["refused"] == 25
    assert again.counts["already_known"] == rows - 25
    assert left.counts["suppression_added"] == 1200
    # with a bound number of statements per chunk whatever the number of rows: two look-ups,
    # one INSERT per status and one of consents (first); two look-ups (again); two look-ups,
    # one INSERT of suppressions and one UPDATE per 500 readers suppressed (left; one per chunk
    # on PostgreSQL)
    assert len(first_statements) <= 4 * chunks + 2, first_statements
    assert len(again_statements) <= 2 * chunks + 2, again_statements
    assert len(left_statements) <= 2 * 2 + 2 + 3 + 2, left_statements


def explain(session: Session, statement: Select[*tuple[Any, ...]] | Update) -> str:
    connection = session.connection()
    compiled = statement.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    params = {name: getattr(v, "value", v) for name, v in compiled.params.items()}  # enums
    plan = connection.exec_driver_sql(f"EXPLAIN {compiled}", params)
    return "\n".join(row[0] for row in plan)


def test_on_postgresql_each_key_of_a_chunk_is_one_index_probe(rt: Runtime) -> None:
    if rt.settings.database_url.startswith("sqlite"):
        return  # the plan is PostgreSQL's (SQLite looks keys up by its unique index anyway)
    # Given 5,000 readers and 1,200 suppressions just written in this transaction, so that
    # the tables have no statistics yet (as during an import: autovacuum has not analysed them)
    with rt.session() as session:
        opts = options(rt, session)
        import_rows(session, read_export("mailchimp", io.StringIO(subscribed(5000))), opts)
        import_rows(
            session, read_export("mailchimp", io.StringIO(unsubscribed(1200, start=6000))), opts
        )
        keys = [f"reader{n}@d{n % 7}.example.org" for n in range(2000, 2000 + CHUNK)]

        # When the look-ups of a chunk of 1,000 keys are planned
        readers = explain(
            session,
            known_readers_statement(
                "postgresql", opts.newsletter_id, [blind_index(k) for k in keys]
            ),
        )
        suppressing = explain(
            session, suppress_keys_statement([blind_index(k) for k in keys], opts.now)
        )
        suppressions = explain(
            session,
            active_suppressions_statement(
                "postgresql", [email_hash(k, opts.hash_key) for k in keys]
            ),
        )

    # Then each key probes the unique index once: no scan of the whole newsletter, which
    # compared every reader with every key (issue 14: 364 s of PostgreSQL CPU for 100,000 rows)
    assert "Index Scan using uq_subscriber_newsletter_email_key on subscriber" in readers, readers
    assert "Seq Scan on subscriber" not in readers, readers
    assert "Hash Join" not in readers and "Bitmap Heap Scan" not in readers, readers
    # and so does suppressing them in every newsletter (email_key alone is no index's prefix)
    assert "uq_subscriber_newsletter_email_key on subscriber" in suppressing, suppressing
    assert "Seq Scan on subscriber" not in suppressing, suppressing
    assert "ix_suppression_hash_active on suppression" in suppressions, suppressions
    assert "Seq Scan on suppression" not in suppressions, suppressions
