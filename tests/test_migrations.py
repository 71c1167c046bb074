"""The Alembic history and the models agree: ``newsletter db upgrade`` on an empty database gives
exactly the schema the SQLAlchemy models describe, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect

from tests.services import PG_ADMIN
from worker.cli import main
from worker.db import make_engine, upgrade
from worker.models import Base


@pytest.fixture
def empty_pg() -> Iterator[str]:
    """A new, empty PostgreSQL database (no tables), dropped afterwards."""
    name = f"newsletter_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("empty_pg"))


def schema_diff(url: str) -> list[object]:
    """alembic's autogenerate comparison of the database at ``url`` with the models (the same
    options ``migrations/env.py`` uses); empty when they agree."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def readable(diff: list[object]) -> list[str]:
    """``add_index ix_x``, ``modify_type delivery.state …``: what a failure message shows."""
    out = []
    for entry in diff:
        if isinstance(entry, tuple):
            out.append(f"{entry[0]} {getattr(entry[-1], 'name', entry[-1])}")
        else:
            out.append(repr(entry))
    return out


def test_upgrade_on_an_empty_database_gives_exactly_the_models(empty_db: str) -> None:
    upgrade(empty_db)

    assert readable(schema_diff(empty_db)) == []
    engine = make_engine(empty_db)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_upgrade_twice_is_a_no_op(empty_db: str) -> None:
    upgrade(empty_db)
    upgrade(empty_db)
    assert readable(schema_diff(empty_db)) == []


def test_the_diff_sees_a_missing_table(empty_db: str) -> None:
    """The check itself works: a table the database lacks is reported (relative to whatever the
    diff was before, so that this test tells only about the check)."""
    upgrade(empty_db)
    before = {repr(d) for d in schema_diff(empty_db)}
    engine = make_engine(empty_db)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE signup_refusal")
    finally:
        engine.dispose()
    new = [d for d in schema_diff(empty_db) if repr(d) not in before]
    assert sorted((d[0], d[1].name) for d in new if isinstance(d, tuple)) == [
        ("add_index", "ix_signup_refusal_event_id"),
        ("add_table", "signup_refusal"),
    ]


def test_newsletter_db_upgrade_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert readable(schema_diff(url)) == []
