"""the lease index holds only leased deliveries (``lease_until IS NOT NULL``): planning a send
no longer writes an entry per planned delivery; ``dashboard_snapshot``: the dashboard's
expensive aggregates shared by the web processes for a short time

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEASED = sa.text("lease_until IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "dashboard_snapshot",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
    )
    op.drop_index("ix_delivery_state_lease", table_name="delivery")
    op.create_index(
        "ix_delivery_state_lease",
        "delivery",
        ["state", "lease_until"],
        postgresql_where=LEASED,
        sqlite_where=LEASED,
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_state_lease", table_name="delivery")
    op.create_index("ix_delivery_state_lease", "delivery", ["state", "lease_until"])
    op.drop_table("dashboard_snapshot")
