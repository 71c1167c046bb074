"""readers' addresses sealed at rest; the blind index; provider buckets

Revision ID: 0005
Revises: 0004

Seals every stored copy of an address (worker.safety.keyring: AES-256-GCM under the data key of
``NEWSLETTER_DATA_KEY`` / ``_FILE`` / ``NEWSLETTER_DATA_KEYS``), replaces ``subscriber.email_key``
by its blind index and the stored domains by provider buckets. Rows go in batches, each row in
its own statement outside the migration's transaction, and values already sealed are skipped:
an interrupted upgrade is resumed by running it again. At the end the tables are rewritten
(PostgreSQL ``VACUUM FULL``; SQLite ``VACUUM``) so no dead row or free page keeps the old
plain text. Backups taken before stay readable: see docs/reader-safety.md.

Downgrade restores the column types only: sealed values stay sealed (a plain-text copy of the
addresses is exactly what this revision removes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from worker.safety import keyring
from worker.subscriptions.addresses import PROVIDER_BUCKETS

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000
# (table, column, old type): text columns that hold addresses or copies of them, as of 0005
TEXT_COLUMNS: list[tuple[str, str, sa.types.TypeEngine[str]]] = [
    ("subscriber", "email", sa.String(320)),
    ("subscriber", "ascii_email", sa.String(320)),
    ("subscriber", "confirmation_error", sa.String(500)),
    ("signup_refusal", "detail", sa.Text()),
    ("signup_refusal", "payload", sa.Text()),
    ("delivery", "reply_text", sa.Text()),
    ("feedback_event", "recipient", sa.String(320)),
    ("feedback_event", "detail", sa.Text()),
    ("suppression", "email", sa.String(320)),
    ("inbound_message", "envelope_from", sa.String(320)),
    ("inbound_message", "envelope_to", sa.Text()),
]
BYTES_COLUMNS = [("inbound_message", "raw")]
ERASED_DOMAIN = "erased.invalid"


def upgrade() -> None:
    # The key first: without it nothing at all is changed (DataKeyError names the variable).
    # An earlier run interrupted in the data pass left the DDL done: it is not redone.
    ring = _ring_if_needed()
    if sa.inspect(op.get_bind()).has_table("data_key_canary"):
        _seal_after_ddl(ring)
        return
    op.create_table(
        "data_key_canary",
        sa.Column("key_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id"),
    )
    for table, column, old in TEXT_COLUMNS:
        if not isinstance(old, sa.Text):
            with op.batch_alter_table(table) as batch:
                batch.alter_column(column, type_=sa.Text(), existing_type=old)
    _seal_after_ddl(ring)


TABLES = sorted({t for t, _, _ in TEXT_COLUMNS} | {t for t, _ in BYTES_COLUMNS})


def _ring_if_needed() -> keyring.Keyring | None:
    """The data keys of the environment, or None for a database with nothing to seal."""
    conn = op.get_bind()
    if not any(conn.execute(sa.text(f"SELECT 1 FROM {t} LIMIT 1")).first() for t in TABLES):
        return None  # a new database: nothing to seal, no key needed yet
    return keyring.keyring_from_env(os.environ)  # DataKeyError: a clear message, nothing done


def _seal_after_ddl(ring: keyring.Keyring | None) -> None:
    if ring is not None:
        with op.get_context().autocommit_block():
            _seal_all(ring)


def _seal_all(ring: keyring.Keyring) -> None:
    conn = op.get_bind()
    tables = TABLES
    work = {t: [c for tt, c, _ in TEXT_COLUMNS if tt == t] for t in tables}
    for table in tables:
        _seal_table(conn, ring, table, work[table], [c for t, c in BYTES_COLUMNS if t == table])
    _bucket_domains(conn)
    if conn.dialect.name == "postgresql":
        for table in tables:
            conn.execute(sa.text(f"VACUUM FULL {table}"))  # dead tuples kept the plain text
    else:
        conn.execute(sa.text("VACUUM"))  # free pages kept the plain text


def _seal_table(
    conn: sa.Connection,
    ring: keyring.Keyring,
    table: str,
    texts: list[str],
    blobs: list[str],
) -> None:
    with_index = table == "subscriber"
    columns = ["id", *texts, *blobs] + (["email_key"] if with_index else [])
    query = sa.text(
        f"SELECT {', '.join(columns)} FROM {table} WHERE id > :after ORDER BY id LIMIT {BATCH}"
    )
    after = 0
    while rows := conn.execute(query, {"after": after}).all():
        for row in rows:
            values = dict(zip(columns, row, strict=True))
            changes: dict[str, object] = {}
            for name in texts:
                value = values[name]
                if value is not None and not keyring.is_sealed(value):
                    changes[name] = ring.seal(value, f"{table}.{name}")
            for name in blobs:
                value = values[name]
                if value is not None and not bytes(value).startswith(keyring.BYTES_MAGIC):
                    changes[name] = ring.seal_bytes(bytes(value), f"{table}.{name}")
            key = values.get("email_key")
            if with_index and key and "@" in key:  # erased rows keep their "erased:" marker
                changes["email_key"] = ring.blind_index(key.casefold())
            if changes:  # one statement: the row is sealed whole or not at all
                sets = ", ".join(f"{name} = :{name}" for name in changes)
                conn.execute(
                    sa.text(f"UPDATE {table} SET {sets} WHERE id = :id"),
                    {**changes, "id": values["id"]},
                )
        after = rows[-1][0]


def _bucket_domains(conn: sa.Connection) -> None:
    """Stored domains become provider buckets (worker.subscriptions.addresses)."""
    names = sorted(set(PROVIDER_BUCKETS.values()))
    for table in ("subscriber", "delivery"):
        for alias, bucket in PROVIDER_BUCKETS.items():
            if alias != bucket:
                conn.execute(
                    sa.text(f"UPDATE {table} SET domain = :bucket WHERE domain = :alias"),
                    {"bucket": bucket, "alias": alias},
                )
        kept = ", ".join(f":k{n}" for n in range(len(names) + 2))
        params = {f"k{n}": name for n, name in enumerate([*names, "other", ERASED_DOMAIN])}
        conn.execute(
            sa.text(f"UPDATE {table} SET domain = 'other' WHERE domain NOT IN ({kept})"), params
        )


def downgrade() -> None:
    for table, column, old in reversed(TEXT_COLUMNS):
        if not isinstance(old, sa.Text):
            with op.batch_alter_table(table) as batch:
                batch.alter_column(column, type_=old, existing_type=sa.Text())
    op.drop_table("data_key_canary")
