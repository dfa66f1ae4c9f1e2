"""Each store's own read-only role: PostgreSQL row-level security on every table the Grafana
views read, the views run with the reader's rights, and a view of the stores' names.

``grafana_stores`` lists each store's id and name (the boards' store picker);
``grafana_payout_keys`` the payouts' keys and amounts without a join, what the payout list's
count filters on (PostgreSQL reads it from an index alone). On PostgreSQL
15 or later the ``grafana_*`` views become ``security_invoker`` views, so the row-level security
of the tables below applies to whoever queries them; the readers get SELECT on exactly the
columns the views show (never a key, hash or address). Every role keeps reading every row
(a permissive policy for all), except members of ``flash_store_readers``: a restrictive policy
limits them to the rows of the store ``store_readers`` maps them to. Grafana's all-stores role
``flash_grafana`` is not such a member and sees what it saw before; ``flash-payouts dashboards
roles`` makes one member role per store. Table owners (the service) bypass the policies.
``flash_store_readers`` is shared by the databases of the server, so a downgrade leaves it.

A card's NTAG UID is the one column a view shows only in part (for stores that keep card
tracking on): the readers get no right on the UID columns, and the views read them through two
SECURITY DEFINER functions that apply the same rule and the reader's store.

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
# Grafana's roles group a period's card rollups by card (top cards, active cards, usage): at
# 100,000 cards the hash table outgrows PostgreSQL's default 4MB and spills to disk.
READER_WORK_MEM = "32MB"

STORES_VIEW = """
    SELECT s.id AS store_id,
           s.name,
           s.card_tracking
      FROM stores s
"""

KEYS_VIEW = """
    SELECT p.id AS payout_id,
           p.store_id,
           p.status,
           p.created_at,
           p.original_amount AS amount,
           p.amount_sats,
           p.card_id
      FROM payouts p
"""

# The columns the grafana_* views read, per table, and the column that names the store.
VIEW_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "stores": ("id", ("id", "name", "card_tracking")),
    "payouts": (
        "store_id",
        (
            "id", "store_id", "pull_payment_id", "status", "state", "original_amount",
            "original_currency", "amount_sats", "payout_method_id", "destination",
            "transaction_id", "error_message", "card_id", "created_at", "completed_at",
            "updated_at",
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
            "id", "store_id", "alias", "origin", "enabled", "key_version",
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

# The UID of a card or of a payout's card, when the row's store keeps card tracking on and the
# caller may see the store (a store's role: its own store only; a role without a store: any).
# SECURITY DEFINER, so the readers need no right on the UID columns; session_user is the role
# that logged in.
_NTAG_FUNCTIONS = {
    "flash_card_ntag": """
        SELECT CASE WHEN s.card_tracking THEN c.uid END
          FROM boltcards c JOIN stores s ON s.id = c.store_id
         WHERE c.id = key
           AND c.store_id = coalesce((SELECT r.store_id FROM store_readers r
                                         WHERE r.role_name = session_user), c.store_id)
    """,
    "flash_payout_ntag": """
        SELECT CASE WHEN s.card_tracking THEN p.card_uid END
          FROM payouts p JOIN stores s ON s.id = p.store_id
         WHERE p.id = key
           AND p.store_id = coalesce((SELECT r.store_id FROM store_readers r
                                         WHERE r.role_name = session_user), p.store_id)
    """,
}
# The two views' UID column, as dash_0001 wrote it and as the functions give it.
_NTAG_COLUMNS = {
    "grafana_payouts": (
        "CASE WHEN s.card_tracking THEN p.card_uid END AS card_ntag",
        "flash_payout_ntag(p.id)::varchar AS card_ntag",
    ),
    "grafana_cards": (
        "CASE WHEN s.card_tracking THEN c.uid END AS card_ntag",
        "flash_card_ntag(c.id)::varchar AS card_ntag",
    ),
}

VIEWS = (
    "grafana_payouts",
    "grafana_payout_events",
    "grafana_cards",
    "grafana_card_taps",
    "grafana_card_usage",
    "grafana_payout_daily",
    "grafana_stores",
    "grafana_payout_keys",
)
NEW_VIEWS = ("grafana_stores", "grafana_payout_keys")


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
    op.execute(f"CREATE VIEW grafana_payout_keys AS {KEYS_VIEW.strip()}")
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(f"GRANT SELECT ON {', '.join(NEW_VIEWS)} TO {ALL_STORES}")
    # Per database, so two databases migrating at once never update the same setting row.
    op.execute(
        "DO $flash$ BEGIN "
        f"EXECUTE format('ALTER ROLE {ALL_STORES} IN DATABASE %I SET work_mem = %L', "
        f"current_database(), '{READER_WORK_MEM}'); END $flash$"
    )
    if bind.execute(sa.text("SHOW server_version_num")).scalar_one() < "150000":
        return  # no security_invoker views before PostgreSQL 15: no per-store roles
    _create_readers_group()
    for name, body in _NTAG_FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION {name}(key text) RETURNS text LANGUAGE sql STABLE "
            f"SECURITY DEFINER SET search_path = public, pg_temp AS $flash${body}$flash$"
        )
        op.execute(f"REVOKE ALL ON FUNCTION {name}(text) FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {name}(text) TO {ALL_STORES}, {READERS}")
    for view, (old, new) in _NTAG_COLUMNS.items():
        _replace_view(view, old, new)
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
        old_views = [v for v in VIEWS if v not in NEW_VIEWS]
        for view in old_views:
            op.execute(f"ALTER VIEW {view} RESET (security_invoker)")
        for view, (old, new) in _NTAG_COLUMNS.items():
            _replace_view(view, new, old)
        for name in _NTAG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {name}(text)")
        if has_group:
            op.execute(f"REVOKE ALL ON {', '.join(old_views)} FROM {READERS}")
            op.execute(
                "DO $flash$ BEGIN "
                f"EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {READERS}', "
                "current_database()); END $flash$"
            )
    if bind.dialect.name == "postgresql":
        op.execute(
            "DO $flash$ BEGIN "
            f"EXECUTE format('ALTER ROLE {ALL_STORES} IN DATABASE %I RESET work_mem', "
            "current_database()); END $flash$"
        )
    op.execute("DROP VIEW IF EXISTS grafana_payout_keys")
    op.execute("DROP VIEW IF EXISTS grafana_stores")
    op.drop_table("store_readers")


def _replace_view(view: str, old: str, new: str) -> None:
    """Redefine ``view`` with one column expression swapped, from its definition in the
    database (pg_get_viewdef writes it back fully qualified)."""
    bind = op.get_bind()
    body = bind.execute(
        sa.text("SELECT pg_get_viewdef(CAST(:v AS regclass))"), {"v": view}
    ).scalar_one()
    old_sql, new_sql = _viewdef_form(old), _viewdef_form(new)
    if new_sql in body:
        return
    if old_sql not in body:
        raise RuntimeError(f"{view}: column {old!r} not found in its definition")
    op.execute(f"CREATE OR REPLACE VIEW {view} AS {body.replace(old_sql, new_sql)}")


def _viewdef_form(column: str) -> str:
    """A column expression as pg_get_viewdef prints it."""
    forms = {
        "CASE WHEN s.card_tracking THEN p.card_uid END AS card_ntag": (
            "CASE\n            WHEN s.card_tracking THEN p.card_uid\n"
            "            ELSE NULL::character varying\n        END AS card_ntag"
        ),
        "CASE WHEN s.card_tracking THEN c.uid END AS card_ntag": (
            "CASE\n            WHEN s.card_tracking THEN c.uid\n"
            "            ELSE NULL::character varying\n        END AS card_ntag"
        ),
        "flash_payout_ntag(p.id)::varchar AS card_ntag": (
            "(flash_payout_ntag((p.id)::text))::character varying AS card_ntag"
        ),
        "flash_card_ntag(c.id)::varchar AS card_ntag": (
            "(flash_card_ntag((c.id)::text))::character varying AS card_ntag"
        ),
    }
    return forms[column]


def _create_readers_group() -> None:
    # Created if missing, atomically: two databases migrating at once on one server both see
    # the role afterwards, and neither fails on the other's CREATE.
    op.execute(
        "DO $flash$ BEGIN "
        f"CREATE ROLE {READERS} NOLOGIN; "
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; "
        "END $flash$"
    )
