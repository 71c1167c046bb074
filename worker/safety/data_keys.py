"""The data keys against the database: the start-up check and ``newsletter keys rotate``.

``open_data_keys`` runs when a process first opens its database (``worker.db.engine_for``):
it installs the configured keys (``safety.keyring``) and refuses to go on — before anything is
written — when they are not the keys the stored values were sealed with. The proof is one
*canary* row per key id (``DataKeyCanary``) plus the first stored address: a wrong key fails
to open them.

``rotate`` re-seals every sealed column under the primary key, in batches (keyset by id, one
transaction per batch, one UPDATE statement per batch), selecting only rows that hold a value
under another key, so it is resumable and runs beside sends (a batch holds its rows' locks for
one short transaction). The blind index (``subscriber.email_key``) is recomputed from the opened
address in the same update.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Engine,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    and_,
    case,
    func,
    inspect,
    or_,
    select,
    text,
    type_coerce,
)
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeEngine

from worker.models import (
    Base,
    DataKeyCanary,
    EncryptedBytes,
    EncryptedText,
    Subscriber,
)
from worker.safety import keyring
from worker.safety.keyring import DataKeyError, Keyring, SealedValueError
from worker.settings import Settings

CANARY_TEXT = "newsletter data key canary"
CANARY_COLUMN = "data_key_canary.sealed"


def keyring_of(settings: Settings) -> Keyring:
    """The keyring ``settings`` configure; ``DataKeyError`` naming the variable otherwise."""
    env = {
        "NEWSLETTER_DATA_KEY": settings.data_key,
        "NEWSLETTER_DATA_KEY_FILE": settings.data_key_file,
        "NEWSLETTER_DATA_KEY_ID": str(settings.data_key_id),
        "NEWSLETTER_DATA_KEYS": settings.data_keys,
    }
    return keyring.keyring_from_env(env)


def open_data_keys(settings: Settings, engine: Engine) -> Keyring:
    """Install the configured keys for this process after checking them against the database
    at ``engine``; returns them.

    Raises ``DataKeyError`` (a clear message naming the variable) when a key is missing or
    malformed, when a stored canary or the first stored address does not open with them, or
    when the stored data are still under a key id that is not configured. A database without
    the canary table (not yet upgraded) is not checked.
    """
    ring = keyring_of(settings)
    if not inspect(engine).has_table(DataKeyCanary.__tablename__):
        keyring.install(ring)
        return ring
    with Session(engine) as session:
        _check_canaries(session, ring)
        _check_first_address(session, ring)
        if session.get(DataKeyCanary, ring.primary) is None:
            now = datetime.now(UTC)
            session.add(
                DataKeyCanary(
                    key_id=ring.primary,
                    sealed=ring.seal(CANARY_TEXT, CANARY_COLUMN),
                    created_at=now,
                )
            )
            try:
                session.commit()
            except Exception:
                session.rollback()
                _check_canaries(session, ring)
    keyring.install(ring)
    return ring


def _check_canaries(session: Session, ring: Keyring) -> None:
    for canary in session.scalars(select(DataKeyCanary)):
        if canary.key_id not in ring.keys:
            raise DataKeyError(
                f"stored data are sealed under data key id {canary.key_id}, which is not "
                "configured: give it in NEWSLETTER_DATA_KEYS (remove an old key only after "
                "`newsletter keys rotate` has finished)"
            )
        try:
            ring.open(canary.sealed, CANARY_COLUMN)
        except SealedValueError:
            raise DataKeyError(
                f"the configured data key id {canary.key_id} is not the key this database "
                "was sealed with (NEWSLETTER_DATA_KEY / NEWSLETTER_DATA_KEYS): nothing was "
                "written; start with the right key"
            ) from None


def _check_first_address(session: Session, ring: Keyring) -> None:
    # type_coerce: the value as stored, not opened by the column's type
    stored = session.execute(
        select(type_coerce(Subscriber.email, Text)).order_by(Subscriber.id).limit(1)
    ).scalar()
    if stored is None:
        return
    if not keyring.is_sealed(stored):
        raise DataKeyError(
            "the database holds addresses in clear: run `newsletter db upgrade` with the data "
            "key set (migration 0005 seals them)"
        )
    try:
        ring.open(stored, "subscriber.email")
    except SealedValueError as exc:
        raise DataKeyError(
            f"stored addresses do not open with the configured data keys ({exc}): nothing was "
            "written; start with the right NEWSLETTER_DATA_KEY / NEWSLETTER_DATA_KEYS"
        ) from None


@dataclass(frozen=True)
class SealedColumn:
    """One column of sealed values: its table, name and whether it holds bytes."""

    table: Table
    name: str
    is_bytes: bool

    @property
    def label(self) -> str:
        return f"{self.table.name}.{self.name}"


def sealed_columns() -> list[SealedColumn]:
    """Every ``EncryptedText`` / ``EncryptedBytes`` column of the models, table by table."""
    found = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, EncryptedText | EncryptedBytes):
                found.append(
                    SealedColumn(table, column.name, isinstance(column.type, EncryptedBytes))
                )
    return found


@dataclass
class Rotation:
    """What ``rotate`` did: rows re-sealed and rows already under the primary key."""

    resealed: int = 0
    skipped: int = 0


RotationProgress = Callable[[str, int, int], None]
"""Called by ``rotate`` with a table's name, its rows re-sealed so far and its rows to re-seal
(once with 0 before the table's first batch, then after each batch)."""


def rotate(
    engine: Engine,
    ring: Keyring,
    *,
    batch_size: int = 5000,
    progress: RotationProgress | None = None,
) -> Rotation:
    """Re-seal every sealed value under ``ring.primary`` and recompute the blind index; then
    delete the canaries of the other key ids (they may be removed from the configuration).

    Covers every ``EncryptedText`` / ``EncryptedBytes`` column of the models
    (``sealed_columns``). Per table: the rows that hold a value under another key id are found
    by the stored prefix (``keyring.sealed_prefix``: nothing is opened to find them), then
    handled ``batch_size`` at a time by id: one transaction per batch that reads the batch
    (locked: ``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite, so a concurrent write
    to one of its rows waits for the batch instead of being overwritten), re-seals in Python and
    writes the batch back in ONE statement (PostgreSQL: ``UPDATE … FROM unnest(arrays)``;
    SQLite: an executemany of one prepared UPDATE).

    Safe to interrupt and run again (what is already under the primary key is not selected),
    and safe while sends run: every stored value names its key id, so rows written under the
    new key between batches, or before the rotation reaches them, open as they are. Every
    process must have the new key first (``NEWSLETTER_DATA_KEYS``), or a row written under the
    old key behind the rotation's cursor stays under it (a second run re-seals it).

    ``progress`` (``RotationProgress``) is told of each table's batches. Raises
    ``SealedValueError`` when a stored value opens with none of the keys (nothing of that
    batch is written).
    """
    result = Rotation()
    for table in _tables_with_sealed_columns():
        columns = [c for c in sealed_columns() if c.table is table]
        _rotate_table(engine, ring, table, columns, batch_size, result, progress)
    with Session(engine) as session, session.begin():
        for canary in session.scalars(select(DataKeyCanary)):
            if canary.key_id != ring.primary:
                session.delete(canary)
    return result


def _tables_with_sealed_columns() -> list[Table]:
    tables: list[Table] = []
    for column in sealed_columns():
        if column.table not in tables:
            tables.append(column.table)
    return tables


def _not_under(shadow: Table, columns: Sequence[SealedColumn], key_id: int) -> ColumnElement[bool]:
    """SQL: the row holds at least one value not sealed under ``key_id`` (by its prefix)."""
    tests = []
    for column in columns:
        stored = shadow.c[column.name]
        prefix: str | bytes = (
            keyring.sealed_bytes_prefix(key_id)
            if column.is_bytes
            else keyring.sealed_prefix(key_id)
        )
        head = func.substr(stored, 1, len(prefix))
        tests.append(and_(stored.is_not(None), head != prefix))
    return or_(*tests)


def _rotate_table(
    engine: Engine,
    ring: Keyring,
    table: Table,
    columns: list[SealedColumn],
    batch_size: int,
    result: Rotation,
    progress: RotationProgress | None,
) -> None:
    """Rotate ``table`` a batch at a time (see ``rotate``)."""
    names = [c.name for c in columns]
    shadow = raw_table(table, names)
    stale = _not_under(shadow, columns, ring.primary)
    with engine.connect() as conn:
        total, todo = conn.execute(select(func.count(), func.count(case((stale, 1))))).one()
    result.skipped += total - todo
    if progress:
        progress(table.name, 0, todo)
    with_index = table.name == Subscriber.__tablename__
    fresh = (keyring.sealed_prefix(ring.primary), keyring.sealed_bytes_prefix(ring.primary))
    labels = [c.label for c in columns]

    def reseal_batch(rows: Sequence[Row[Any]]) -> list[dict[str, object]]:
        changed = []
        for row in rows:
            new: dict[str, object] = {"id": row[0]}
            stored: tuple[object, ...] = tuple(row[1:])
            for column, label, value in zip(columns, labels, stored, strict=True):
                new[column.name], opened = _reseal(ring, column.is_bytes, label, value, fresh)
                if with_index and column.name == "email":
                    # None: the blind index is left as it is (not re-sealed, or erased)
                    new["email_key"] = (
                        ring.blind_index(opened.casefold())
                        if isinstance(opened, str) and not opened.endswith("@erased.invalid")
                        else None
                    )
            changed.append(new)
        return changed

    def write_and_commit(conn: Connection, changed: list[dict[str, object]]) -> int:
        try:
            write_rows(conn, shadow, changed)
            conn.commit()
        finally:
            conn.close()
        return len(changed)

    # On PostgreSQL, batch n is written and committed (by a thread, on its own connection)
    # while batch n + 1 is read, locked and re-sealed: the database's work and Python's
    # overlap. Commits stay in id order (a batch is handed over only after the previous one
    # has committed), so an interrupted run leaves a prefix done. SQLite has one writer.
    overlap = engine.dialect.name == "postgresql"
    after = done = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rotate") as writer:
        writing: Future[int] | None = None
        try:
            while True:
                conn = engine.connect()
                try:
                    if conn.dialect.name == "sqlite":
                        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the batch's read and write
                    query = (
                        select(shadow.c.id, *[shadow.c[n] for n in names])
                        .where(shadow.c.id > after, stale)
                        .order_by(shadow.c.id)
                        .limit(batch_size)
                    )
                    if conn.dialect.name == "postgresql":
                        query = query.with_for_update()  # a send's update of a row waits
                    rows = conn.execute(query).all()
                    changed = reseal_batch(rows) if rows else []
                    if writing is not None:  # the previous batch: committed, or its error
                        finished, writing = writing.result(), None
                        result.resealed += finished
                        done += finished
                        if progress:
                            progress(table.name, done, todo)
                except BaseException:
                    conn.close()  # rolls this batch back
                    raise
                if not rows:
                    conn.close()
                    return
                after = rows[-1][0]
                if overlap:
                    writing = writer.submit(write_and_commit, conn, changed)
                else:
                    finished = write_and_commit(conn, changed)
                    result.resealed += finished
                    done += finished
                    if progress:
                        progress(table.name, done, todo)
        finally:
            if writing is not None and writing.exception() is None:
                result.resealed += writing.result()


def _reseal(
    ring: Keyring, is_bytes: bool, label: str, value: object, fresh: tuple[str, bytes]
) -> tuple[object, str | bytes | None]:
    """``value`` (as stored in the column ``label``) sealed under the primary key, and what it
    opened to; ``value`` itself and None when it already is under the primary key (``fresh``:
    its prefixes), or is None."""
    if value is None:
        return None, None
    if is_bytes:
        assert isinstance(value, bytes | memoryview)  # LargeBinary: bytes (memoryview on PG)
        data = bytes(value)
        if data.startswith(fresh[1]):
            return value, None
        opened_bytes = ring.open_bytes(data, label)
        return ring.seal_bytes(opened_bytes, label), opened_bytes
    stored = str(value)
    if stored.startswith(fresh[0]):
        return value, None
    opened = ring.open(stored, label)
    return ring.seal(opened, label), opened


def raw_table(table: Table, names: list[str]) -> Table:
    """A copy of ``table`` with only ``id``, ``names`` and (for subscribers) ``email_key``,
    typed by their storage types: values are read and written as stored, not opened."""
    metadata = MetaData()
    columns: list[Column[Any]] = [Column("id", BigInteger, primary_key=True)]
    for name in names:
        impl = table.c[name].type.impl  # type: ignore[attr-defined]
        storage: TypeEngine[Any] = LargeBinary() if isinstance(impl, LargeBinary) else Text()
        columns.append(Column(name, storage))
    if table.name == Subscriber.__tablename__:
        columns.append(Column("email_key", Text()))
    return Table(table.name, metadata, *columns)


def write_rows(conn: Connection, shadow: Table, rows: list[dict[str, object]]) -> None:
    """Write ``rows`` (dicts with ``id`` and raw values for every other column of ``shadow``;
    all with the same keys) back to ``shadow``'s table in one statement. An ``email_key`` of
    None leaves the stored one as it is (an erased subscriber's, or one not re-sealed).

    PostgreSQL: ``UPDATE t SET … FROM json_to_recordset(:rows) AS v(…) WHERE t.id = v.id``, the
    rows one JSON parameter (``json.dumps`` in C; the statement is the same whatever the batch
    size), or for a table with bytes ``FROM unnest(:id, :col, …)``, one array per column.
    SQLite: one prepared UPDATE, executemany.
    """
    if not rows:
        return
    names = [n for n in rows[0] if n != "id"]

    def assign(name: str, value: str, stored: str) -> str:
        # the blind index: None keeps the stored one
        return f'"{name}" = ' + (f"COALESCE({value}, {stored})" if name == "email_key" else value)

    if conn.dialect.name == "postgresql":
        binary = {n for n in names if isinstance(shadow.c[n].type, LargeBinary)}
        sets = ", ".join(assign(n, f'v."{n}"', f't."{n}"') for n in names)
        if binary:
            # bytes do not travel in JSON: one array per column
            arrays = ", ".join(
                ["CAST(:p_id AS bigint[])"]
                + [f"CAST(:p_{n} AS {'bytea' if n in binary else 'text'}[])" for n in names]
            )
            as_columns = ", ".join(['"id"'] + [f'"{n}"' for n in names])
            source = f"unnest({arrays}) AS v({as_columns})"
            params: dict[str, object] = {
                f"p_{n}": [bytes(v) if isinstance(v, memoryview) else v for v in column]
                for n in ["id", *names]
                for column in [[r[n] for r in rows]]
            }
        else:
            # texts: the rows as one JSON document, written by the C encoder
            as_types = ", ".join(['"id" bigint'] + [f'"{n}" text' for n in names])
            source = f"json_to_recordset(CAST(:p_rows AS json)) AS v({as_types})"
            params = {"p_rows": json.dumps(rows)}
        sql = f'UPDATE "{shadow.name}" AS t SET {sets} FROM {source} WHERE t.id = v.id'
        conn.execute(text(sql), params)
        return
    sets = ", ".join(assign(n, f":p_{n}", f'"{n}"') for n in names)
    sql = f'UPDATE "{shadow.name}" SET {sets} WHERE id = :p_id'
    conn.execute(text(sql), [{f"p_{k}": v for k, v in r.items()} for r in rows])
