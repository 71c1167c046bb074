"""initial schema

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbound_message",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("envelope_from", sa.String(length=320), nullable=True),
        sa.Column("envelope_to", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("parsed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parse_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    op.create_table(
        "newsletter",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=False),
        sa.Column("default_language", sa.String(length=16), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slug"),
    )
    op.create_table(
        "signup_refusal",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=100), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("signup_refusal", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signup_refusal_event_id"), ["event_id"], unique=False)

    op.create_table(
        "edition",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "newsletter_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("period_end", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["newsletter_id"],
            ["newsletter.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("newsletter_id", "key", name="uq_edition_newsletter_key"),
    )
    op.create_table(
        "subscriber",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "newsletter_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("email_key", sa.String(length=320), nullable=False),
        sa.Column("ascii_email", sa.String(length=320), nullable=True),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("confirm_nonce", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("unsubscribed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirmation_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["newsletter_id"],
            ["newsletter.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "newsletter_id", "email_key", name="uq_subscriber_newsletter_email_key"
        ),
    )
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.create_index(
            "ix_subscriber_newsletter_status_id", ["newsletter_id", "status", "id"], unique=False
        )

    op.create_table(
        "consent",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "subscriber_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("event_id", sa.String(length=100), nullable=False),
        sa.Column("signed_up_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.Column("consent_version", sa.String(length=100), nullable=True),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("confirm_ip", sa.String(length=64), nullable=True),
        sa.Column("confirm_user_agent", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("consent", schema=None) as batch_op:
        batch_op.create_index("ix_consent_signed_up_at", ["signed_up_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_consent_subscriber_id"), ["subscriber_id"], unique=False
        )

    op.create_table(
        "edition_content",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "edition_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["edition_id"], ["edition.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("edition_id", "language", name="uq_edition_content_lang"),
    )
    op.create_table(
        "send",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "edition_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("planned_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["edition_id"],
            ["edition.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_send_edition_id"), ["edition_id"], unique=False)

    op.create_table(
        "delivery",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("send_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "subscriber_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("domain", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reply_code", sa.Integer(), nullable=True),
        sa.Column("reply_text", sa.Text(), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["send_id"], ["send.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("send_id", "subscriber_id", name="uq_delivery_send_subscriber"),
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_send_funnel", ["send_id", "language", "domain", "state"], unique=False
        )
        batch_op.create_index("ix_delivery_send_state", ["send_id", "state"], unique=False)
        batch_op.create_index(
            "ix_delivery_send_state_sent_at", ["send_id", "state", "sent_at"], unique=False
        )
        batch_op.create_index("ix_delivery_state_lease", ["state", "lease_until"], unique=False)
        batch_op.create_index("ix_delivery_subscriber", ["subscriber_id"], unique=False)

    op.create_table(
        "rendition",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("send_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("preheader", sa.Text(), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("rendered_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["send_id"], ["send.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("send_id", "language", name="uq_rendition_send_lang"),
    )
    op.create_table(
        "feedback_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source_event_id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column(
            "subscriber_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("status_code", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "inbound_message_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("effect", sa.String(length=32), nullable=True),
        sa.Column("attribution", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(["delivery_id"], ["delivery.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["inbound_message_id"], ["inbound_message.id"], ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_event_id"),
    )
    with op.batch_alter_table("feedback_event", schema=None) as batch_op:
        batch_op.create_index("ix_feedback_delivery", ["delivery_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_feedback_event_inbound_message_id"), ["inbound_message_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_feedback_event_subscriber_id"), ["subscriber_id"], unique=False
        )
        batch_op.create_index("ix_feedback_kind_occurred", ["kind", "occurred_at"], unique=False)
        batch_op.create_index(
            "ix_feedback_subscriber_kind", ["subscriber_id", "kind", "occurred_at"], unique=False
        )

    op.create_table(
        "suppression",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column(
            "source_event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["source_event_id"], ["feedback_event.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("suppression", schema=None) as batch_op:
        batch_op.create_index(
            "ix_suppression_hash_active", ["email_hash", "removed_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("suppression", schema=None) as batch_op:
        batch_op.drop_index("ix_suppression_hash_active")

    op.drop_table("suppression")
    with op.batch_alter_table("feedback_event", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_subscriber_kind")
        batch_op.drop_index("ix_feedback_kind_occurred")
        batch_op.drop_index(batch_op.f("ix_feedback_event_subscriber_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_event_inbound_message_id"))
        batch_op.drop_index("ix_feedback_delivery")

    op.drop_table("feedback_event")
    op.drop_table("rendition")
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_subscriber")
        batch_op.drop_index("ix_delivery_state_lease")
        batch_op.drop_index("ix_delivery_send_state_sent_at")
        batch_op.drop_index("ix_delivery_send_state")
        batch_op.drop_index("ix_delivery_send_funnel")

    op.drop_table("delivery")
    with op.batch_alter_table("send", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_send_edition_id"))

    op.drop_table("send")
    op.drop_table("edition_content")
    with op.batch_alter_table("consent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_subscriber_id"))
        batch_op.drop_index("ix_consent_signed_up_at")

    op.drop_table("consent")
    with op.batch_alter_table("subscriber", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriber_newsletter_status_id")

    op.drop_table("subscriber")
    op.drop_table("edition")
    with op.batch_alter_table("signup_refusal", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signup_refusal_event_id"))

    op.drop_table("signup_refusal")
    op.drop_table("newsletter")
    op.drop_table("inbound_message")
