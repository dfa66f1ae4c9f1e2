"""Card rollups: a covering index for usage and top cards by store and period.

Replaces the (store_id, day) index with (store_id, day, card_id), which on PostgreSQL also
carries every counted column, so grouping a store's period by card reads the index only.
Every query the old index served is served by the new one's leading columns.

Revision ID: api_0001
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "api_0001"
down_revision = "0001"
branch_labels = None
depends_on = None

INCLUDED = ["payouts", "amount_sats", "taps", "refused_taps", "first_used_at", "last_used_at"]


def upgrade() -> None:
    with op.batch_alter_table("card_rollups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_card_rollups_store_id_day_card_id"),
            ["store_id", "day", "card_id"],
            unique=False,
            postgresql_include=INCLUDED,
        )
        batch_op.drop_index(batch_op.f("ix_card_rollups_store_id_day"))


def downgrade() -> None:
    with op.batch_alter_table("card_rollups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_card_rollups_store_id_day"), ["store_id", "day"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_card_rollups_store_id_day_card_id"))
