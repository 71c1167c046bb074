"""old consent rows keep the network and the program's family, not the full IP and user agent

Revision ID: 0007
Revises: 0006

Consent rows written before the evidence rule (worker/subscriptions/evidence.py, issue 17) still
hold the reader's full IP address and raw User-Agent, at signup and at confirmation. This
revision applies the same rule to them in place: ``ip`` and ``confirm_ip`` become the network
(IPv4 /24, IPv6 /48; anything that is no IP address becomes NULL: ``network_of``), and
``user_agent`` and ``confirm_user_agent`` the program's family (``agent_family``).

Only rows that still hold something to cut are read (an IP without ``/``, a user agent with
``/`` or longer than a family: families have neither), in batches by id, in the migration's
transaction: an interrupted upgrade changes nothing, and a second run finds nothing to do. At the end the table is rewritten (PostgreSQL ``VACUUM FULL consent``; SQLite
``VACUUM``) so no dead row or free page keeps the old values.

Downgrade does nothing: what was cut cannot be restored (that is the point).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from worker.subscriptions.evidence import agent_family, network_of

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000
IPS = ("ip", "confirm_ip")
AGENTS = ("user_agent", "confirm_user_agent")
FAMILY_LENGTH = 100  # agent_family cuts a family to 100 characters


def _still_full() -> sa.ColumnElement[bool]:
    """SQL: the consent row holds a value the evidence rule would cut."""
    c = sa.column
    tests = [sa.and_(c(name).is_not(None), ~c(name).contains("/")) for name in IPS]
    tests += [
        sa.and_(
            c(name).is_not(None),
            sa.or_(c(name).contains("/"), sa.func.length(c(name)) > FAMILY_LENGTH),
        )
        for name in AGENTS
    ]
    return sa.or_(*tests)


def cut(row: dict[str, object]) -> dict[str, object]:
    """One consent row's evidence columns as the evidence rule keeps them; a value already
    kept that way (a network, a family) is left as it is."""
    kept = dict(row)
    for name in IPS:
        value = row[name]
        if isinstance(value, str) and "/" not in value:
            kept[name] = network_of(value)
    for name in AGENTS:
        value = row[name]
        if isinstance(value, str) and ("/" in value or len(value) > FAMILY_LENGTH):
            kept[name] = agent_family(value)
    return kept


def upgrade() -> None:
    consent = sa.table("consent", sa.column("id", sa.BigInteger), *map(sa.column, IPS + AGENTS))
    conn = op.get_bind()
    statement = (
        sa.update(consent)
        .where(consent.c.id == sa.bindparam("row_id"))
        .values({name: sa.bindparam(f"new_{name}") for name in IPS + AGENTS})
    )
    after = 0
    while True:
        rows = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(consent)
                .where(consent.c.id > after, _still_full())
                .order_by(consent.c.id)
                .limit(BATCH)
            )
        ]
        if not rows:
            break
        changed = []
        for row in rows:
            kept = cut(row)
            changed.append({"row_id": row["id"], **{f"new_{n}": kept[n] for n in IPS + AGENTS}})
        conn.execute(statement, changed)
        after = rows[-1]["id"]
    with op.get_context().autocommit_block():  # commits the above first
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("VACUUM FULL consent"))  # dead tuples kept the full values
        else:
            conn.execute(sa.text("VACUUM"))  # free pages kept the full values


def downgrade() -> None:
    """Nothing: a cut IP address or user agent cannot be restored."""
