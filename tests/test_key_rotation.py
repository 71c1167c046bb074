"""``newsletter keys rotate`` (``worker.safety.data_keys.rotate``): every sealed column of every
table is re-sealed under the new key, in batches, while other processes keep writing under it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text, type_coerce, update
from sqlalchemy.orm import Session
from sqlalchemy.types import LargeBinary, Text

from tests.samples import SAMPLE_EDITION
from tests.sendkit import seed, start_send
from tests.services import DATA_KEY_ENV
from worker.cli import main
from worker.db import dispose_engines, engine_for, make_engine
from worker.models import (
    Delivery,
    DeskAccount,
    FeedbackEvent,
    InboundMessage,
    SignupRefusal,
    Subscriber,
    Suppression,
)
from worker.runtime import Runtime
from worker.safety import keyring
from worker.safety.data_keys import rotate, sealed_columns
from worker.safety.keyring import key_id_of, new_data_key
from worker.settings import Settings

SECRET = "key-rotation-secret-0123456789"
READERS = [f"reader{n}@example.org" for n in range(7)]


@pytest.fixture
def restore_test_key() -> Iterator[None]:
    """These tests install keys of their own; the suite's key comes back afterwards."""
    yield
    dispose_engines()
    keyring.install(keyring.keyring_from_env(DATA_KEY_ENV))


def _settings(url: str, **keys: str) -> Settings:
    env = {f"NEWSLETTER_{name.upper()}": value for name, value in keys.items()}
    return Settings.from_env(
        env,
        database_url=url,
        secret_key=SECRET,
        public_url="http://testserver",
        bounce_domain="news.example.org",
        newsletter_path=str(SAMPLE_EDITION / "newsletter.yaml"),
    )


def _fill_every_sealed_column(rt: Runtime) -> None:
    """Readers, a planned send, and one row of every other table with sealed columns, each
    sealed column holding a value (sealed under ``rt``'s key by the column types)."""
    seed(rt, READERS)
    start_send(rt)
    now = datetime.now(UTC)
    with rt.session() as session:
        session.execute(update(Subscriber).values(confirmation_error="554 5.7.1 refused"))
        session.execute(update(Delivery).values(reply_text="550 5.1.1 <reader1@example.org>"))
        event = FeedbackEvent(
            source_event_id="dsn:1",
            kind="hard_bounce",
            source="dsn",
            recipient="reader1@example.org",
            detail="550 5.1.1 reader1@example.org: no such user",
            occurred_at=now,
            recorded_at=now,
        )
        session.add(event)
        session.add(
            Suppression(
                email_hash="0" * 64,
                email="reader1@example.org",
                reason="hard_bounce",
                created_at=now,
            )
        )
        session.add(
            SignupRefusal(
                received_at=now,
                reason="invalid_email",
                detail="reader@@example.org",
                payload='{"email": "reader@@example.org"}',
            )
        )
        session.add(
            DeskAccount(
                name="editor",
                role="editor",
                password_hash="$argon2id$not-a-real-hash",
                address="editor.own@example.org",
                created_at=now,
            )
        )
        session.add(
            InboundMessage(
                received_at=now,
                source="smtp",
                envelope_from="mailer-daemon@example.org",
                envelope_to="bounces+x@news.example.org",
                digest="1" * 64,
                raw=b"From: mailer-daemon@example.org\r\n\r\nreader1@example.org: no such user",
                size=70,
            )
        )
        session.commit()


def _stored_key_ids(url: str) -> dict[str, set[int | None]]:
    """Every sealed column (``table.column``) → the key ids its non-null stored values are under."""
    engine = make_engine(url)
    found: dict[str, set[int | None]] = {}
    try:
        with engine.connect() as conn:
            for column in sealed_columns():
                storage: LargeBinary | Text = LargeBinary() if column.is_bytes else Text()
                stored = type_coerce(column.table.c[column.name], storage)
                values: list[str | bytes] = list(
                    conn.scalars(select(stored).where(stored.is_not(None)))
                )
                found[column.label] = {
                    key_id_of(v if isinstance(v, str) else bytes(v)) for v in values
                }
    finally:
        engine.dispose()
    return found


def test_rotation_reseals_every_sealed_column_while_others_write_under_the_new_key(
    db_url: str, restore_test_key: None
) -> None:
    # Given a database where every sealed column of every table holds values under key 1
    old, new = new_data_key(), new_data_key()
    rt = Runtime(_settings(db_url, data_key=old))
    _fill_every_sealed_column(rt)
    rt.close()
    dispose_engines()
    before = _stored_key_ids(db_url)
    assert all(ids == {1} for ids in before.values()), before  # a new sealed column: fill it
    # When every process has key 2 first, and the rotation runs in batches of 2 while another
    # process writes between its batches: a new reader, and a not yet rotated reader's refusal
    # text (both sealed under key 2 by that process)
    both = _settings(db_url, data_keys=f"2:{new},1:{old}")
    engine = engine_for(both)
    ring = keyring.current()
    seen: list[tuple[str, int, int]] = []

    def meanwhile(table: str, done: int, todo: int) -> None:
        seen.append((table, done, todo))
        if (table, done) == ("subscriber", 2):
            with Session(engine) as session:
                last = session.scalars(select(Subscriber).order_by(Subscriber.id.desc())).first()
                assert last is not None
                last.confirmation_error = "421 written mid-rotation"
                session.add(
                    Subscriber(
                        newsletter_id=last.newsletter_id,
                        email="late@example.org",
                        email_key="late@example.org",
                        ascii_email="late@example.org",
                        domain="other",
                        language="en",
                        status="confirmed",
                        created_at=last.created_at,
                        updated_at=last.created_at,
                    )
                )
                session.commit()

    done = rotate(engine, ring, batch_size=2, progress=meanwhile)
    # Then every stored value of every sealed column is under key 2
    after = _stored_key_ids(db_url)
    assert after == {label: {2} for label in before}, after
    assert done.resealed == 2 * len(READERS) + 5  # readers, deliveries, one row of 5 tables
    # and the progress told each table's total before its first batch, then its batches
    assert ("subscriber", 0, len(READERS)) in seen
    assert seen[-1][1] == seen[-1][2]
    dispose_engines()
    # and key 2 alone opens everything, the rows written meanwhile included, and finds readers
    # by address (the blind index is under key 2)
    alone = _settings(db_url, data_key=new, data_key_id="2")
    engine = engine_for(alone)
    with Session(engine) as session:
        errors = {
            e: c
            for e, c in session.execute(select(Subscriber.email, Subscriber.confirmation_error))
        }
        assert errors["late@example.org"] is None
        assert errors[READERS[-1]] == "421 written mid-rotation"
        assert errors[READERS[0]] == "554 5.7.1 refused"
        raw = session.scalars(select(InboundMessage.raw)).one()
        assert raw.endswith(b"reader1@example.org: no such user")
        assert session.scalars(select(SignupRefusal.detail)).one() == "reader@@example.org"
    for address in [READERS[3].upper(), "late@example.org"]:
        shown = CliRunner().invoke(
            main,
            ["subscribers", "show", address],
            env={
                "NEWSLETTER_DATABASE_URL": db_url,
                "NEWSLETTER_SECRET_KEY": SECRET,
                "NEWSLETTER_DATA_KEY": new,
                "NEWSLETTER_DATA_KEY_ID": "2",
                "NEWSLETTER_DATA_KEYS": "",
            },
        )
        assert shown.exit_code == 0, shown.output
        assert address.lower() in shown.output


def test_rotation_reads_the_stored_prefix_the_keyring_writes() -> None:
    """The rotation finds rows to do by prefix (``sealed_prefix``); it must be what ``seal``
    writes for every key id and every text, and differ between key ids."""
    for key_id in (1, 2, 255, 256, 65535):
        ring = keyring.Keyring({key_id: bytes(32)}, key_id)
        for value in ["a@b.c", "чытач@пошта.бел", "x" * 300]:
            assert ring.seal(value, "t.c").startswith(keyring.sealed_prefix(key_id))
            assert ring.seal_bytes(value.encode(), "t.c").startswith(
                keyring.sealed_bytes_prefix(key_id)
            )
    assert len({keyring.sealed_prefix(k) for k in range(1, 4000)}) == 3999


def test_rotation_leaves_nothing_to_do_on_a_second_run(db_url: str, restore_test_key: None) -> None:
    # Given readers rotated to key 2
    old, new = new_data_key(), new_data_key()
    rt = Runtime(_settings(db_url, data_key=old))
    seed(rt, READERS)
    rt.close()
    dispose_engines()
    engine = engine_for(_settings(db_url, data_keys=f"2:{new},1:{old}"))
    first = rotate(engine, keyring.current(), batch_size=3)
    # When it runs again
    seen: list[tuple[str, int, int]] = []
    again = rotate(engine, keyring.current(), batch_size=3, progress=lambda *a: seen.append(a))
    # Then nothing is selected, nothing re-sealed, and every row counts as skipped
    assert (first.resealed, again.resealed) == (len(READERS), 0)
    assert again.skipped == len(READERS)
    assert ("subscriber", 0, 0) in seen
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM subscriber")) == len(READERS)


def test_the_rotate_command_reports_what_it_did(db_url: str, restore_test_key: None) -> None:
    # Given readers under key 1, and key 2 configured first
    old, new = new_data_key(), new_data_key()
    rt = Runtime(_settings(db_url, data_key=old))
    seed(rt, READERS)
    rt.close()
    dispose_engines()
    env = {
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_SECRET_KEY": SECRET,
        "NEWSLETTER_DATA_KEY": "",
        "NEWSLETTER_DATA_KEYS": f"2:{new},1:{old}",
    }
    # When `newsletter keys rotate` runs twice
    first = CliRunner().invoke(main, ["keys", "rotate", "--batch-size", "100"], env=env)
    dispose_engines()
    again = CliRunner().invoke(main, ["keys", "rotate"], env=env)
    # Then it says what it re-sealed, and then that everything already was
    assert first.exit_code == 0, first.output
    assert f"re-sealed {len(READERS)} rows under data key id 2 (0 were already)" in first.output
    assert again.exit_code == 0, again.output
    assert f"re-sealed 0 rows under data key id 2 ({len(READERS)} were already)" in again.output


def test_a_value_that_does_not_open_stops_the_rotation_after_the_batches_before_it(
    db_url: str, restore_test_key: None
) -> None:
    # Given seven readers under key 1, the fifth of which was altered in the database
    old, new = new_data_key(), new_data_key()
    rt = Runtime(_settings(db_url, data_key=old))
    seed(rt, READERS)
    rt.close()
    dispose_engines()
    engine = engine_for(_settings(db_url, data_keys=f"2:{new},1:{old}"))
    with engine.begin() as conn:
        stored = conn.scalar(text("SELECT email FROM subscriber WHERE id = 5"))
        altered = stored[:-6] + ("AAAAAA" if not stored.endswith("AAAAAA") else "BBBBBB")
        conn.execute(text("UPDATE subscriber SET email = :e WHERE id = 5"), {"e": altered})
    # When the rotation runs in batches of 2
    with pytest.raises(keyring.SealedValueError, match=r"subscriber\.email"):
        rotate(engine, keyring.current(), batch_size=2)
    # Then the two batches before the altered row are rotated, its batch and the rest are not
    with engine.connect() as conn:
        emails = list(conn.scalars(text("SELECT email FROM subscriber ORDER BY id")))
    assert [key_id_of(e) for e in emails] == [2, 2, 2, 2, 1, 1, 1]
