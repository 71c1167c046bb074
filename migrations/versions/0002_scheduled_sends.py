"""scheduled sends, the audience of a send, the weekly send slot

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("audience", sa.String(length=8), nullable=False, server_default="all")
        )
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.alter_column("audience", server_default=None)
    op.create_table(
        "send_slot",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "newsletter_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("weekday", sa.Integer(), nullable=False),
        sa.Column("local_time", sa.String(length=5), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["newsletter_id"], ["newsletter.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("newsletter_id"),
    )


def downgrade() -> None:
    op.drop_table("send_slot")
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.drop_column("audience")
        batch_op.drop_column("timezone")
        batch_op.drop_column("scheduled_for")
