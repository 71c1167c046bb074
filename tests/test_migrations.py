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
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

from tests.services import DATA_KEY, PG_ADMIN
from worker.cli import main
from worker.db import make_engine, upgrade
from worker.models import Base, InboundMessage, Subscriber, Suppression
from worker.safety import keyring
from worker.safety.keyring import DataKeyError


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


PLAIN_READERS = [
    ("Lesia.K@Gmail.com", "lesia.k@gmail.com", "gmail.com"),
    ("chytach@пошта.бел", "chytach@пошта.бел", "xn--80a1acn3a.xn--90ais"),
    ("petra@small-company.example", "petra@small-company.example", "small-company.example"),
]


def _plain_database(url: str) -> None:
    """A database at 0003 holding readers, a suppression, a feedback event and a stored inbound
    message in clear, as before issue 17; the second reader is already sealed (an upgrade that
    was interrupted after it)."""
    upgrade(url, "0004")
    ring = keyring.current()
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO newsletter (id, slug, default_language, profile, created_at) "
                "VALUES (1, 'weekly', 'en', '{}', '2024-01-01 00:00:00')"
            )
            for n, (email, key, domain) in enumerate(PLAIN_READERS, 1):
                if n == 2:  # sealed by an earlier, interrupted run
                    email = ring.seal(email, "subscriber.email")
                    key = ring.blind_index(key)
                conn.execute(
                    text(
                        "INSERT INTO subscriber (id, newsletter_id, email, email_key, domain, "
                        "language, status, created_at, updated_at) VALUES (:id, 1, :email, "
                        ":key, :domain, 'en', 'confirmed', '2024-01-01', '2024-01-01')"
                    ),
                    {"id": n, "email": email, "key": key, "domain": domain},
                )
            conn.exec_driver_sql(
                "INSERT INTO suppression (email_hash, email, reason, created_at) "
                "VALUES ('ab', 'petra@small-company.example', 'hard_bounce', '2024-01-02')"
            )
            conn.execute(
                text(
                    "INSERT INTO inbound_message (received_at, source, envelope_from, digest, "
                    "raw, size, truncated) VALUES ('2024-01-02', 'smtp', "
                    "'mailer-daemon@mx.example', 'd1', :raw, 40, false)"
                ),
                {"raw": b"Final-Recipient: rfc822; petra@small-company.example"},
            )
    finally:
        engine.dispose()


def _dump(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = []
            for table in ("subscriber", "suppression", "inbound_message"):
                for row in conn.execute(text(f"SELECT * FROM {table}")):
                    rows.append(repr(tuple(row)))
            return "\n".join(rows).lower()
    finally:
        engine.dispose()


def test_0005_seals_a_plain_database_in_place_and_resumes(empty_db: str) -> None:
    # Given a plain-text database, half of whose rows an interrupted upgrade had sealed
    _plain_database(empty_db)
    # When it is upgraded (twice: the second run finds nothing left to do)
    upgrade(empty_db)
    upgrade(empty_db)
    # Then no address is left in clear, the domains are provider buckets,
    dump = _dump(empty_db)
    for _, key, _ in PLAIN_READERS:
        assert key not in dump and key.split("@")[0] + "@" not in dump
    assert "small-company" not in dump
    # and the application reads every row and finds readers by address
    engine = make_engine(empty_db)
    try:
        with Session(engine) as session:
            readers = session.scalars(select(Subscriber).order_by(Subscriber.id)).all()
            assert [r.email for r in readers] == [e for e, _, _ in PLAIN_READERS]
            assert [r.domain for r in readers] == ["gmail.com", "other", "other"]
            found = session.scalars(
                select(Subscriber.id).where(Subscriber.email_key == "LESIA.K@gmail.com")
            ).all()
            assert found == [1]
            assert session.scalars(select(Suppression.email)).all() == [
                "petra@small-company.example"
            ]
            raw = session.scalars(select(InboundMessage.raw)).one()
            assert raw.endswith(b"petra@small-company.example")
    finally:
        engine.dispose()


def test_0005_without_the_data_key_seals_nothing(
    empty_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plain_database(empty_db)
    monkeypatch.delenv("NEWSLETTER_DATA_KEY")
    with pytest.raises(DataKeyError, match="NEWSLETTER_DATA_KEY"):
        upgrade(empty_db)
    assert "petra@small-company.example" in _dump(empty_db)  # left as it was, readable
    # and with the key, the same upgrade then goes through
    monkeypatch.setenv("NEWSLETTER_DATA_KEY", DATA_KEY)
    upgrade(empty_db)
    assert "petra@small-company.example" not in _dump(empty_db)
