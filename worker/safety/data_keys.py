"""The data keys against the database: the start-up check and ``newsletter keys rotate``.

``open_data_keys`` runs when a process first opens its database (``worker.db.engine_for``):
it installs the configured keys (``safety.keyring``) and refuses to go on — before anything is
written — when they are not the keys the stored values were sealed with. The proof is one
*canary* row per key id (``DataKeyCanary``) plus the first stored address: a wrong key fails
to open them.

``rotate`` re-seals every sealed column under the primary key, in batches (keyset by id, one
transaction per batch), skipping values already under it, so it is resumable and runs beside
sends (a batch holds its rows' locks for one short transaction). The blind index
(``subscriber.email_key``) is recomputed from the opened address in the same update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    LargeBinary,
    MetaData,
    Table,
    Text,
    bindparam,
    inspect,
    select,
    type_coerce,
    update,
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
from worker.safety.keyring import DataKeyError, Keyring, SealedValueError, key_id_of
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


def rotate(
    engine: Engine,
    ring: Keyring,
    *,
    batch_size: int = 5000,
    progress: Callable[[str, int], None] | None = None,
) -> Rotation:
    """Re-seal every sealed value under ``ring.primary`` and recompute the blind index; then
    delete the canaries of the other key ids (they may be removed from the configuration).

    Batches of ``batch_size`` rows by id, one transaction each: safe to interrupt and run again
    (values already under the primary key are skipped), and safe while sends run. ``progress``
    is called with a table name and the number of rows of it just handled.
    Raises ``SealedValueError`` when a stored value opens with none of the keys.
    """
    result = Rotation()
    for table in _tables_with_sealed_columns():
        columns = [c for c in sealed_columns() if c.table is table]
        for done in _rotate_table(engine, ring, table, columns, batch_size, result):
            if progress:
                progress(table.name, done)
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


def _rotate_table(
    engine: Engine,
    ring: Keyring,
    table: Table,
    columns: list[SealedColumn],
    batch_size: int,
    result: Rotation,
) -> Iterator[int]:
    """Rotate ``table`` a batch at a time; yields the number of rows of each batch."""
    shadow = raw_table(table, [c.name for c in columns])
    names = [c.name for c in columns]
    with_index = table.name == Subscriber.__tablename__
    after = 0
    while True:
        with engine.begin() as conn:
            query = (
                select(shadow.c.id, *[shadow.c[n] for n in names])
                .where(shadow.c.id > after)
                .order_by(shadow.c.id)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()  # a send's update of the same row waits briefly
            rows = conn.execute(query.limit(batch_size)).all()
            if not rows:
                return
            changed = []
            for row in rows:
                values = dict(zip(names, row[1:], strict=True))
                if all(v is None or key_id_of(v) == ring.primary for v in values.values()):
                    result.skipped += 1
                    continue
                new = {"id": row[0]}
                for column in columns:
                    new[column.name] = _reseal(ring, column, values[column.name])
                if with_index:
                    email = ring.open(str(new["email"]), "subscriber.email")
                    new["email_key"] = (
                        ring.blind_index(email.casefold())
                        if not email.endswith("@erased.invalid")
                        else None
                    )
                changed.append(new)
            write_rows(conn, shadow, changed)
            result.resealed += len(changed)
            after = rows[-1][0]
        yield len(rows)


def _reseal(ring: Keyring, column: SealedColumn, value: object) -> object:
    if value is None:
        return None
    if column.is_bytes:
        assert isinstance(value, bytes | memoryview)  # LargeBinary: bytes (memoryview on PG)
        return ring.seal_bytes(ring.open_bytes(bytes(value), column.label), column.label)
    return ring.seal(ring.open(str(value), column.label), column.label)


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
    """Update ``rows`` (dicts with ``id`` and raw values) of ``shadow``'s table. An erased
    subscriber's ``email_key`` (None here) is left as it is."""
    if not rows:
        return
    by_shape: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for row in rows:
        kept = {k: v for k, v in row.items() if not (k == "email_key" and v is None)}
        by_shape.setdefault(tuple(kept), []).append(kept)
    for shape, group in by_shape.items():
        sets: dict[str, Any] = {k: bindparam(f"v_{k}") for k in shape if k != "id"}
        statement = update(shadow).where(shadow.c.id == bindparam("v_id")).values(sets)
        conn.execute(statement, [{f"v_{k}": v for k, v in r.items()} for r in group])
