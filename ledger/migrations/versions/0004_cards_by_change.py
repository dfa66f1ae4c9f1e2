"""Cards by their last change, for the gateway's key ring: it learns the keys of cards added
since its last load by ``updated_at``, on every tap no known key reads.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("boltcards", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_boltcards_updated_at"), ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("boltcards", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_boltcards_updated_at"))
