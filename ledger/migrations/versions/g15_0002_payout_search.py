"""Payouts found by what the search matches: an id by its prefix, an exact amount or sats.

The API's ``q`` and the boards' search box match a payout id by its prefix, or an exact amount
in the payout's currency or in sats. A prefix LIKE reads a B-tree only in the C collation or
through ``text_pattern_ops``; the amounts had no index at all, so a search walked every payout
of the period.

Revision ID: g15_0002
Revises: g15_0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "g15_0002"
down_revision = "g15_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_payouts_id"),
            ["id"],
            unique=False,
            postgresql_ops={"id": "text_pattern_ops"},
        )
        batch_op.create_index(
            batch_op.f("ix_payouts_store_id_original_amount"),
            ["store_id", "original_amount"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_payouts_store_id_amount_sats"), ["store_id", "amount_sats"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("payouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payouts_store_id_amount_sats"))
        batch_op.drop_index(batch_op.f("ix_payouts_store_id_original_amount"))
        batch_op.drop_index(batch_op.f("ix_payouts_id"))
