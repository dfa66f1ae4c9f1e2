"""Each store's own read-only role: PostgreSQL row-level security on every table the Grafana
views read, the views run with the reader's rights, and a view of the stores' names.

``grafana_stores`` lists each store's id and name (the boards' store picker). On PostgreSQL
15 or later the ``grafana_*`` views become ``security_invoker`` views, so the row-level security
of the tables below applies to whoever queries them; the readers get SELECT on exactly the
columns the views show (never a key, hash or address). Every role keeps reading every row
(a permissive policy for all), except members of ``flash_store_readers``: a restrictive policy
limits them to the rows of the store ``store_readers`` maps them to. Grafana's all-stores role
``flash_grafana`` is not such a member and sees what it saw before; ``flash-payouts dashboards
roles`` makes one member role per store. Table owners (the service) bypass the policies.
``flash_store_readers`` is shared by the databases of the server, so a downgrade leaves it.

Revision ID: g15_0001
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "g15_0001"
down_revision = "0005"
branch_labels = None
depends_on = None

READERS = "flash_store_readers"
ALL_STORES = "flash_grafana"

STORES_VIEW = """
    SELECT s.id AS store_id,
           s.name,
           s.card_tracking
      FROM stores s
"""

# The columns the grafana_* views read, per table, and the column that names the store.
VIEW_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stores": ("id", ("id", "name", "card_tracking")),
    "payouts": (
        "store_id",
        (
            "id", "store_id", "pull_payment_id", "status", "state", "original_amount",
            "original_currency", "amount_sats", "payout_method_id", "destination",
            "transaction_id", "error_message", "card_id", "card_uid", "created_at",
            "completed_at", "updated_at",
        ),
    ),
    "payout_events": (
        "store_id",
        (
            "id", "store_id", "payout_id", "source", "event_type", "state", "revision",
            "occurred_at", "received_at",
        ),
    ),
    "boltcards": (
        "store_id",
        (
            "id", "store_id", "alias", "uid", "origin", "enabled", "key_version",
            "tx_limit_sats", "day_limit_sats", "first_used_at", "last_used_at",
            "last_payout_at", "wiped_at", "erased_at", "created_at",
        ),
    ),
    "card_taps": (
        "store_id",
        (
            "id", "store_id", "card_id", "source", "outcome", "reason", "counter",
            "amount_msat", "payout_id", "k1_used_at", "created_at",
        ),
    ),
    "card_rollups": (
        "store_id",
        (
            "card_id", "store_id", "day", "payouts", "amount_sats", "taps", "refused_taps",
            "first_used_at", "last_used_at",
        ),
    ),
    "payout_rollups": (
        "store_id",
        ("store_id", "day", "status", "currency", "count", "amount", "amount_sats"),
    ),
}  # fmt: skip

VIEWS = (
    "grafana_payouts",
    "grafana_payout_events",
    "grafana_cards",
    "grafana_card_taps",
    "grafana_card_usage",
    "grafana_payout_daily",
    "grafana_stores",
)


def upgrade() -> None:
    op.create_table(
        "store_readers",
        sa.Column("role_name", sa.String(length=63), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("role_name", name=op.f("pk_store_readers")),
        sa.UniqueConstraint("store_id", name=op.f("uq_store_readers_store_id")),
    )
    op.execute(f"CREATE VIEW grafana_stores AS {STORES_VIEW.strip()}")
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(f"GRANT SELECT ON grafana_stores TO {ALL_STORES}")
    if bind.execute(sa.text("SHOW server_version_num")).scalar_one() < "150000":
        return  # no security_invoker views before PostgreSQL 15: no per-store roles
    _create_readers_group()
    for view in VIEWS:
        op.execute(f"ALTER VIEW {view} SET (security_invoker = true)")
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {READERS}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {READERS}")
    op.execute(
        "DO $flash$ BEGIN "
        f"EXECUTE format('GRANT CONNECT ON DATABASE %I TO {READERS}', current_database()); "
        "END $flash$"
    )
    # A reader finds its own store through store_readers, and sees only its own row there.
    op.execute(f"GRANT SELECT (role_name, store_id) ON store_readers TO {READERS}")
    op.execute("ALTER TABLE store_readers ENABLE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY flash_everyone ON store_readers USING (true) WITH CHECK (true)")
    op.execute(
        f"CREATE POLICY flash_own_role ON store_readers AS RESTRICTIVE FOR SELECT TO {READERS} "
        "USING (role_name = current_user)"
    )
    own_store = "(SELECT r.store_id FROM store_readers r WHERE r.role_name = current_user)"
    for table, (store_column, columns) in VIEW_COLUMNS.items():
        listed = ", ".join(columns)
        op.execute(f"GRANT SELECT ({listed}) ON {table} TO {ALL_STORES}, {READERS}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY flash_everyone ON {table} USING (true) WITH CHECK (true)")
        # The uncorrelated subquery runs once per statement, so the store filter can use the
        # tables' store indexes.
        op.execute(
            f"CREATE POLICY flash_own_store ON {table} AS RESTRICTIVE FOR SELECT TO {READERS} "
            f"USING ({store_column} = {own_store})"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        has_group = bind.execute(
            sa.text("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :r)"), {"r": READERS}
        ).scalar_one()
        for table, (_, columns) in VIEW_COLUMNS.items():
            op.execute(f"DROP POLICY IF EXISTS flash_own_store ON {table}")
            op.execute(f"DROP POLICY IF EXISTS flash_everyone ON {table}")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
            grantees = ALL_STORES + (f", {READERS}" if has_group else "")
            op.execute(f"REVOKE SELECT ({', '.join(columns)}) ON {table} FROM {grantees}")
        for view in VIEWS[:-1]:
            op.execute(f"ALTER VIEW {view} RESET (security_invoker)")
        if has_group:
            op.execute(f"REVOKE ALL ON {', '.join(VIEWS[:-1])} FROM {READERS}")
            op.execute(
                "DO $flash$ BEGIN "
                f"EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {READERS}', "
                "current_database()); END $flash$"
            )
    op.execute("DROP VIEW IF EXISTS grafana_stores")
    op.drop_table("store_readers")


def _create_readers_group() -> None:
    # Created if missing, atomically: two databases migrating at once on one server both see
    # the role afterwards, and neither fails on the other's CREATE.
    op.execute(
        "DO $flash$ BEGIN "
        f"CREATE ROLE {READERS} NOLOGIN; "
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; "
        "END $flash$"
    )
