"""Read-only views for Grafana's SQL panels, and on PostgreSQL a role that can read only them.

The views leave out every secret and keyed lookup (sealed keys, UID hashes, k1 hashes and
fingerprints) and the tapper's network details. A card's NTAG UID is shown only for stores
that keep card tracking on, and never after the card's data was erased (the ledger clears it).
Grafana connects as ``flash_grafana``, which gets SELECT on these views and nothing else; its
password comes from ``FLASH_GRAFANA_DB_PASSWORD`` when the role is first created (default
``flash_grafana``, for a local trial only). The role is shared by every database of the server,
so a downgrade revokes its grants here but leaves the role itself.

Revision ID: dash_0001
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import os

from alembic import op

revision = "dash_0001"
down_revision = "0001"
branch_labels = None
depends_on = None

ROLE = "flash_grafana"
DEFAULT_PASSWORD = "flash_grafana"

VIEWS: dict[str, str] = {
    "grafana_payouts": """
        SELECT p.id AS payout_id,
               p.store_id,
               p.pull_payment_id,
               p.status,
               p.state,
               p.original_amount AS amount,
               p.original_currency AS currency,
               p.amount_sats,
               p.payout_method_id,
               p.destination AS recipient,
               p.transaction_id,
               p.error_message,
               p.card_id,
               c.alias AS card_alias,
               CASE WHEN s.card_tracking THEN p.card_uid END AS card_ntag,
               p.created_at,
               p.completed_at,
               p.updated_at
          FROM payouts p
          LEFT JOIN boltcards c ON c.id = p.card_id
          LEFT JOIN stores s ON s.id = p.store_id
    """,
    "grafana_payout_events": """
        SELECT e.id AS event_id,
               e.store_id,
               e.payout_id,
               e.source,
               e.event_type,
               e.state,
               e.revision,
               e.occurred_at,
               e.received_at
          FROM payout_events e
    """,
    "grafana_cards": """
        SELECT c.id AS card_id,
               c.store_id,
               c.alias,
               CASE WHEN s.card_tracking THEN c.uid END AS card_ntag,
               c.origin,
               c.enabled,
               c.key_version,
               c.tx_limit_sats,
               c.day_limit_sats,
               c.first_used_at,
               c.last_used_at,
               c.last_payout_at,
               c.wiped_at,
               c.erased_at,
               c.created_at
          FROM boltcards c
          LEFT JOIN stores s ON s.id = c.store_id
    """,
    "grafana_card_taps": """
        SELECT t.id AS tap_id,
               t.store_id,
               t.card_id,
               t.source,
               t.outcome,
               t.reason,
               t.counter,
               t.amount_msat,
               t.payout_id,
               t.k1_used_at,
               t.created_at
          FROM card_taps t
    """,
    "grafana_card_usage": """
        SELECT r.card_id,
               r.store_id,
               c.alias,
               r.day,
               r.payouts,
               r.amount_sats,
               r.taps,
               r.refused_taps,
               r.first_used_at,
               r.last_used_at
          FROM card_rollups r
          LEFT JOIN boltcards c ON c.id = r.card_id
    """,
    "grafana_payout_daily": """
        SELECT r.store_id,
               r.day,
               r.status,
               r.currency,
               r.count,
               r.amount,
               r.amount_sats
          FROM payout_rollups r
    """,
}


def upgrade() -> None:
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body.strip()}")
    if op.get_bind().dialect.name == "postgresql":
        _grant_reader()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"DO $flash$ BEGIN "
            f"IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
            f"EXECUTE 'REVOKE ALL ON {', '.join(VIEWS)} FROM {ROLE}'; "
            f"END IF; END $flash$"
        )
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def _grant_reader() -> None:
    password = os.environ.get("FLASH_GRAFANA_DB_PASSWORD") or DEFAULT_PASSWORD
    if "$flash$" in password:
        raise ValueError("FLASH_GRAFANA_DB_PASSWORD must not contain $flash$")
    literal = "'" + password.replace("'", "''") + "'"
    # Created if missing, atomically: two databases migrating at once on one server both see
    # the role afterwards, and neither fails on the other's CREATE. The role is made read-only
    # in the same block, by its creator only: a second ALTER ROLE racing it on another
    # database would fail with "tuple concurrently updated".
    op.execute(
        f"DO $flash$ BEGIN "
        f"CREATE ROLE {ROLE} LOGIN PASSWORD {literal}; "
        f"ALTER ROLE {ROLE} SET default_transaction_read_only = on; "
        f"EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; "
        f"END $flash$"
    )
    op.execute(
        "DO $flash$ BEGIN "
        f"EXECUTE format('GRANT CONNECT ON DATABASE %I TO {ROLE}', current_database()); "
        "END $flash$"
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {ROLE}")
