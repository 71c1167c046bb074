"""``newsletter suppressions remove|list|import|export`` through the CLI (SQLite, PostgreSQL)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from tests.test_feedback import NOW, load_world
from worker.cli import main
from worker.feedback.classification import classify_feedback_type, classify_smtp_reply
from worker.feedback.policy import FeedbackPolicy, record_feedback
from worker.feedback.report import FeedbackReport
from worker.models import Subscriber, Suppression
from worker.runtime import Runtime
from worker.subscriptions.suppressions import email_hash


@pytest.fixture
def cli(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", rt.settings.database_url)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", rt.settings.secret_key)
    return CliRunner()


def run(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(main, ["suppressions", *args], catch_exceptions=False)


def feedback(rt: Runtime, recipient: str, kind: str, event: str) -> None:
    classification = (
        classify_feedback_type("abuse")
        if kind == "complaint"
        else classify_smtp_reply(550, "5.1.1 unknown")
    )
    report = FeedbackReport(
        kind=classification.kind,
        classification=classification,
        recipient=recipient,
        status=None,
        diagnostic=None,
        original_message_id=None,
        verp_local=None,
        feedback_type=None,
        source_event_id=event,
        source="webhook:test",
    )
    with rt.session() as session:
        record_feedback(
            session,
            report,
            policy=FeedbackPolicy.from_settings(rt.settings),
            now=NOW,
            verified_provider=True,
        )


def status_of(rt: Runtime, address: str) -> str:
    with rt.session() as session:
        return str(session.scalar(select(Subscriber.status).where(Subscriber.email_key == address)))


def test_remove_restores_a_hard_bounced_reader(rt: Runtime, cli: CliRunner) -> None:
    with rt.session() as session:
        load_world(session)
    feedback(rt, "nobody.here@example.net", "hard", "t:1")
    assert status_of(rt, "nobody.here@example.net") == "suppressed"

    result = run(
        cli, "remove", "Nobody.Here@example.net", "--reason", "mailbox exists again (ticket 42)"
    )

    assert result.exit_code == 0, result.output
    assert "1 confirmed, 0 unsubscribed" in result.output
    assert status_of(rt, "nobody.here@example.net") == "confirmed"
    with rt.session() as session:
        [entry] = session.scalars(select(Suppression))
        assert entry.removed_reason == "mailbox exists again (ticket 42)"
        assert entry.removed_at is not None and entry.source_event_id is not None
    listed = run(cli, "list", "--all").output
    assert "hard_bounce" in listed and "lifted" in listed and "ticket 42" in listed
    assert run(cli, "list").output == ""


def test_a_lifted_complaint_stays_unsubscribed(rt: Runtime, cli: CliRunner) -> None:
    with rt.session() as session:
        load_world(session)
    feedback(rt, "complainer@example.com", "complaint", "t:2")
    result = run(cli, "remove", "complainer@example.com", "--reason", "complained by mistake")
    assert "0 confirmed, 1 unsubscribed" in result.output
    assert status_of(rt, "complainer@example.com") == "unsubscribed"


def test_remove_needs_an_active_entry_and_a_reason(rt: Runtime, cli: CliRunner) -> None:
    missing = cli.invoke(main, ["suppressions", "remove", "who@example.org", "--reason", "x"])
    no_reason = cli.invoke(main, ["suppressions", "remove", "who@example.org"])
    assert missing.exit_code == 1 and "is not suppressed" in missing.output
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output


def test_export_then_import_round_trip_with_hashed_entries(
    rt: Runtime, cli: CliRunner, tmp_path: Path
) -> None:
    with rt.session() as session:
        load_world(session)
    feedback(rt, "nobody.here@example.net", "hard", "t:3")
    key = rt.settings.secret_key
    hashed = email_hash("leser@example.org", key)  # an erased or imported-hashed entry
    source = tmp_path / "in.csv"
    source.write_text(
        "email,email_sha256-hmac,reason,created_at\n"
        "Reader@Example.NET,,manual,2025-01-02T03:04:05+00:00\n"
        f",{hashed},import,\n"
        ",not-a-hash,import,\n"
        "nobody.here@example.net,,manual,\n",
        encoding="utf-8",
    )

    imported = run(cli, "import", str(source))

    assert "added 2, already suppressed 1, refused 1" in imported.output
    assert "line 4 refused" in imported.output
    assert status_of(rt, "reader@example.net") == "suppressed"
    assert status_of(rt, "leser@example.org") == "suppressed"  # found by its hash alone
    assert status_of(rt, "full.box@example.com") == "confirmed"

    out = tmp_path / "out.csv"
    assert run(cli, "export", str(out)).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [(r["email"], r["email_sha256-hmac"], r["reason"]) for r in rows] == [
        ("nobody.here@example.net", email_hash("nobody.here@example.net", key), "hard_bounce"),
        ("reader@example.net", email_hash("reader@example.net", key), "manual"),
        ("", hashed, "import"),
    ]
    assert datetime.fromisoformat(rows[1]["created_at"]) == datetime(
        2025, 1, 2, 3, 4, 5, tzinfo=UTC
    )

    with rt.session() as session:  # the same list into an empty installation with the same key
        for entry in session.scalars(select(Suppression)):
            session.delete(entry)
    again = run(cli, "import", str(out))
    assert "added 3, already suppressed 0, refused 0" in again.output


def test_import_needs_an_address_column(rt: Runtime, cli: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("address,reason\nx@example.org,manual\n", encoding="utf-8")
    result = cli.invoke(main, ["suppressions", "import", str(source)])
    assert result.exit_code == 1 and "email or email_sha256-hmac" in result.output
