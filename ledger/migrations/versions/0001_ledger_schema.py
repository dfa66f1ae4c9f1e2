"""The ledger schema: stores, cards, taps, payouts, their audit trail and the rollups.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_store_id"), ["store_id"], unique=False)

    op.create_table(
        "card_rollups",
        sa.Column("card_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("payouts", sa.BigInteger(), nullable=False),
        sa.Column("amount_sats", sa.BigInteger(), nullable=False),
        sa.Column("taps", sa.BigInteger(), nullable=False),
        sa.Column("refused_taps", sa.BigInteger(), nullable=False),
        sa.Column("first_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("card_id", "day", name=op.f("pk_card_rollups")),
    )
    with op.batch_alter_table("card_rollups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_card_rollups_store_id_day"), ["store_id", "day"], unique=False
        )

    op.create_table(
        "card_taps",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=True),
        sa.Column("card_id", sa.String(length=64), nullable=True),
        sa.Column("uid", sa.String(length=14), nullable=True),
        sa.Column("counter", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("k1_hash", sa.String(length=64), nullable=True),
        sa.Column("k1_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("k1_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_withdrawable_msat", sa.BigInteger(), nullable=True),
        sa.Column("bolt11", sa.Text(), nullable=True),
        sa.Column("payment_hash", sa.String(length=64), nullable=True),
        sa.Column("amount_msat", sa.BigInteger(), nullable=True),
        sa.Column("reserved_day", sa.Date(), nullable=True),
        sa.Column("payout_id", sa.String(length=64), nullable=True),
        sa.Column("remote_addr", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_card_taps")),
        sa.UniqueConstraint("k1_hash", name=op.f("uq_card_taps_k1_hash")),
    )
    with op.batch_alter_table("card_taps", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_card_taps_card_id_created_at"), ["card_id", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_card_taps_outcome_created_at"), ["outcome", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_card_taps_payment_hash"), ["payment_hash"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_card_taps_payout_id"), ["payout_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_card_taps_store_id_created_at"), ["store_id", "created_at"], unique=False
        )

    op.create_table(
        "counters",
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Numeric(precision=28, scale=12), nullable=False),
        sa.PrimaryKeyConstraint("store_id", "name", "label", name=op.f("pk_counters")),
    )
    op.create_table(
        "payout_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("payout_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("delivery_id", sa.String(length=64), nullable=True),
        sa.Column("enrich_pending", sa.Boolean(), nullable=False),
        sa.Column("enrich_attempts", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_events")),
        sa.UniqueConstraint("delivery_id", name=op.f("uq_payout_events_delivery_id")),
    )
    with op.batch_alter_table("payout_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payout_events_enrich_pending_id"), ["enrich_pending", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_payout_events_payout_id_id"), ["payout_id", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_payout_events_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_payout_events_store_id_received_at"),
            ["store_id", "received_at"],
            unique=False,
        )

    op.create_table(
        "payout_rollups",
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=28, scale=12), nullable=False),
        sa.Column("amount_sats", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "store_id", "day", "status", "currency", name=op.f("pk_payout_rollups")
        ),
    )
    op.create_table(
        "payouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("pull_payment_id", sa.String(length=64), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("original_amount", sa.Numeric(precision=28, scale=12), nullable=True),
        sa.Column("original_currency", sa.String(length=16), nullable=True),
        sa.Column("payout_amount", sa.Numeric(precision=28, scale=12), nullable=True),
        sa.Column("payout_currency", sa.String(length=16), nullable=True),
        sa.Column("amount_sats", sa.BigInteger(), nullable=True),
        sa.Column("payout_method_id", sa.String(length=32), nullable=True),
        sa.Column("destination", sa.Text(), nullable=True),
        sa.Column("payment_hash", sa.String(length=64), nullable=True),
        sa.Column("transaction_id", sa.String(length=128), nullable=True),
        sa.Column("payment_proof", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("card_id", sa.String(length=64), nullable=True),
        sa.Column("card_uid", sa.String(length=14), nullable=True),
        sa.Column("tap_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payouts")),
    )
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payouts_card_id_created_at"), ["card_id", "created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_payouts_payment_hash"), ["payment_hash"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_payouts_pull_payment_id"), ["pull_payment_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_payouts_store_id_created_at"), ["store_id", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_payouts_store_id_status_created_at"),
            ["store_id", "status", "created_at"],
            unique=False,
        )

    op.create_table(
        "stores",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("btcpay_url", sa.String(length=500), nullable=True),
        sa.Column("api_key_sealed", sa.Text(), nullable=True),
        sa.Column("webhook_id", sa.String(length=64), nullable=True),
        sa.Column("webhook_secret_sealed", sa.Text(), nullable=True),
        sa.Column("issuer_key_sealed", sa.Text(), nullable=True),
        sa.Column("btcpay_issuer_key_sealed", sa.Text(), nullable=True),
        sa.Column("btcpay_issuer_k1_sealed", sa.Text(), nullable=True),
        sa.Column("card_tracking", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stores")),
    )
    op.create_table(
        "sync_state",
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("payouts_seen", sa.BigInteger(), nullable=False),
        sa.Column("payouts_changed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("store_id", name=op.f("pk_sync_state")),
    )
    op.create_table(
        "boltcards",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("pull_payment_id", sa.String(length=64), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("uid", sa.String(length=14), nullable=True),
        sa.Column("uid_hash", sa.String(length=64), nullable=True),
        sa.Column("alias", sa.String(length=100), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("keys_sealed", sa.Text(), nullable=True),
        sa.Column("k1_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("last_counter", sa.BigInteger(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("tx_limit_sats", sa.BigInteger(), nullable=True),
        sa.Column("day_limit_sats", sa.BigInteger(), nullable=True),
        sa.Column("first_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_payout_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("wiped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["store_id"], ["stores.id"], name=op.f("fk_boltcards_store_id_stores")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boltcards")),
    )
    with op.batch_alter_table("boltcards", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_boltcards_k1_fingerprint"), ["k1_fingerprint"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_boltcards_store_id_created_at"), ["store_id", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_boltcards_store_id_last_payout_at"),
            ["store_id", "last_payout_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_boltcards_uid_hash"), ["uid_hash"], unique=False)

    op.create_table(
        "card_day_spend",
        sa.Column("card_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("reserved_msat", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["card_id"], ["boltcards.id"], name=op.f("fk_card_day_spend_card_id_boltcards")
        ),
        sa.PrimaryKeyConstraint("card_id", "day", name=op.f("pk_card_day_spend")),
    )


def downgrade() -> None:
    op.drop_table("card_day_spend")
    with op.batch_alter_table("boltcards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_boltcards_uid_hash"))
        batch_op.drop_index(batch_op.f("ix_boltcards_store_id_last_payout_at"))
        batch_op.drop_index(batch_op.f("ix_boltcards_store_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_boltcards_k1_fingerprint"))

    op.drop_table("boltcards")
    op.drop_table("sync_state")
    op.drop_table("stores")
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payouts_store_id_status_created_at"))
        batch_op.drop_index(batch_op.f("ix_payouts_store_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_payouts_pull_payment_id"))
        batch_op.drop_index(batch_op.f("ix_payouts_payment_hash"))
        batch_op.drop_index(batch_op.f("ix_payouts_card_id_created_at"))

    op.drop_table("payouts")
    op.drop_table("payout_rollups")
    with op.batch_alter_table("payout_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payout_events_store_id_received_at"))
        batch_op.drop_index(batch_op.f("ix_payout_events_received_at"))
        batch_op.drop_index(batch_op.f("ix_payout_events_payout_id_id"))
        batch_op.drop_index(batch_op.f("ix_payout_events_enrich_pending_id"))

    op.drop_table("payout_events")
    op.drop_table("counters")
    with op.batch_alter_table("card_taps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_card_taps_store_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_card_taps_payout_id"))
        batch_op.drop_index(batch_op.f("ix_card_taps_payment_hash"))
        batch_op.drop_index(batch_op.f("ix_card_taps_outcome_created_at"))
        batch_op.drop_index(batch_op.f("ix_card_taps_card_id_created_at"))

    op.drop_table("card_taps")
    with op.batch_alter_table("card_rollups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_card_rollups_store_id_day"))

    op.drop_table("card_rollups")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_store_id"))

    op.drop_table("api_tokens")
