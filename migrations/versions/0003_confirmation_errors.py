"""confirmation mail errors on the subscriber

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("subscriber", sa.Column("confirmation_error", sa.String(500), nullable=True))
    op.add_column(
        "subscriber",
        sa.Column("confirmation_failed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_subscriber_confirmation_failed_at", "subscriber", ["confirmation_failed_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_subscriber_confirmation_failed_at", table_name="subscriber")
    with op.batch_alter_table("subscriber") as batch:
        batch.drop_column("confirmation_failed_at")
        batch.drop_column("confirmation_error")
