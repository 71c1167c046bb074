"""send tallies: a final send's delivery counts, counted once for the dashboard; the
(send_id, state) index that duplicated a prefix of ix_delivery_send_state_sent_at is dropped;
covering indexes for the dashboard's readers card and signups per day

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_tally",
        sa.Column(
            "send_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("send.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tally", sa.JSON(), nullable=False),
        sa.Column("counted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.drop_index("ix_delivery_send_state", table_name="delivery")
    op.create_index("ix_subscriber_status_language", "subscriber", ["status", "language"])
    op.create_index("ix_consent_method_source", "consent", ["method", "source", "subscriber_id"])
    op.drop_index("ix_consent_signed_up_at", table_name="consent")
    op.create_index(
        "ix_consent_signed_up_at", "consent", ["signed_up_at", "method", "confirmed_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_consent_signed_up_at", table_name="consent")
    op.create_index("ix_consent_signed_up_at", "consent", ["signed_up_at"])
    op.drop_index("ix_consent_method_source", table_name="consent")
    op.drop_index("ix_subscriber_status_language", table_name="subscriber")
    op.create_index("ix_delivery_send_state", "delivery", ["send_id", "state"])
    op.drop_table("send_tally")
