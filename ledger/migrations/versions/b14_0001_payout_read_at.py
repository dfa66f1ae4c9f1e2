"""When each payout's view was read from BTCPay: the ledger orders views by it, not by revision.

BTCPay's ``revision`` does not move when a payout's state changes, so it cannot tell which of
two views is newer. ``payouts.btcpay_read_at`` records when the view a row holds was read
(``ledger.payouts.view_supersedes``); rows from before have none, and any view read after
replaces them.

``flash_record_claim`` (migration 0003) writes a payout new to the ledger with every column the
Python path writes, so it is replaced here by the same function writing ``btcpay_read_at`` too.

Revision ID: b14_0001
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "b14_0001"
down_revision = "0005"
branch_labels = None
depends_on = None

_RECORD_CLAIM = """
CREATE OR REPLACE FUNCTION flash_record_claim(
    p_payout json, p_tap_id bigint, p_linked boolean, p_now timestamptz,
    p_rollups json, p_counters json)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    r payouts%ROWTYPE;
BEGIN
    r := json_populate_record(NULL::payouts, p_payout);
    INSERT INTO payouts (id, store_id, pull_payment_id, revision, state, status,
                         original_amount, original_currency, payout_amount, payout_currency,
                         amount_sats, payout_method_id, destination, payment_hash,
                         transaction_id, payment_proof, metadata, error_message, card_id,
                         card_uid, tap_id, created_at, completed_at, updated_at,
                         btcpay_read_at)
    VALUES (r.id, r.store_id, r.pull_payment_id, r.revision, r.state, r.status,
            r.original_amount, r.original_currency, r.payout_amount, r.payout_currency,
            r.amount_sats, r.payout_method_id, r.destination, r.payment_hash,
            r.transaction_id, COALESCE(r.payment_proof, 'null'::json),
            COALESCE(r.metadata, 'null'::json), r.error_message, r.card_id, r.card_uid,
            r.tap_id, r.created_at, r.completed_at, r.updated_at, r.btcpay_read_at)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO payout_events (store_id, payout_id, source, event_type, state, revision,
                               delivery_id, payload, occurred_at, enrich_pending,
                               enrich_attempts, received_at)
    VALUES (r.store_id, r.id, 'gateway', 'PayoutCreated', r.state, r.revision, NULL,
            'null'::json, NULL, false, 0, p_now);
    IF p_linked THEN
        UPDATE boltcards SET last_payout_at = r.created_at
         WHERE id = r.card_id AND (last_payout_at IS NULL OR last_payout_at < r.created_at);
        INSERT INTO card_rollups AS cr (card_id, day, store_id, payouts, amount_sats, taps,
                                        refused_taps, first_used_at, last_used_at)
        VALUES (r.card_id, (r.created_at AT TIME ZONE 'UTC')::date, r.store_id, 1,
                COALESCE(r.amount_sats, 0), 0, 0, r.created_at, r.created_at)
        ON CONFLICT (card_id, day) DO UPDATE SET
               payouts = cr.payouts + excluded.payouts,
               amount_sats = cr.amount_sats + excluded.amount_sats,
               first_used_at = LEAST(COALESCE(cr.first_used_at, excluded.first_used_at),
                                     excluded.first_used_at),
               last_used_at = GREATEST(COALESCE(cr.last_used_at, excluded.last_used_at),
                                       excluded.last_used_at);
        INSERT INTO payout_events (store_id, payout_id, source, event_type, state, revision,
                                   delivery_id, payload, occurred_at, enrich_pending,
                                   enrich_attempts, received_at)
        VALUES (r.store_id, r.id, 'gateway', 'CardLinked', NULL, NULL, NULL,
                json_build_object('cardId', r.card_id), NULL, false, 0, p_now);
    END IF;
    UPDATE card_taps SET outcome = 'paid', reason = NULL, payout_id = r.id, updated_at = p_now
     WHERE id = p_tap_id;
    INSERT INTO payout_rollups AS pr (store_id, day, status, currency, count, amount,
                                      amount_sats)
    SELECT e.x->>'store_id', (e.x->>'day')::date, e.x->>'status', e.x->>'currency',
           (e.x->>'count')::bigint, (e.x->>'amount')::numeric, (e.x->>'amount_sats')::bigint
      FROM json_array_elements(p_rollups) WITH ORDINALITY AS e(x, n)
     ORDER BY e.n  -- the caller's order: every writer takes these rows' locks in one order
    ON CONFLICT (store_id, day, status, currency) DO UPDATE SET
           count = pr.count + excluded.count,
           amount = pr.amount + excluded.amount,
           amount_sats = pr.amount_sats + excluded.amount_sats;
    INSERT INTO counters AS n (store_id, name, label, value)
    SELECT e.x->>'store_id', e.x->>'name', e.x->>'label', (e.x->>'value')::numeric
      FROM json_array_elements(p_counters) WITH ORDINALITY AS e(x, n)
     ORDER BY e.n
    ON CONFLICT (store_id, name, label) DO UPDATE SET value = n.value + excluded.value;
    RETURN true;
END
$fn$
"""


def _previous_record_claim() -> str:
    """The function as migration 0003 made it, to give back on downgrade."""
    path = Path(__file__).with_name("0003_gateway_functions.py")
    spec = importlib.util.spec_from_file_location("flash_migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._RECORD_CLAIM


def upgrade() -> None:
    # Plain ALTER TABLE on both databases (SQLite has ADD and DROP COLUMN): a batch copy of
    # the table would break the Grafana views that read it.
    op.add_column("payouts", sa.Column("btcpay_read_at", sa.DateTime(timezone=True)))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_RECORD_CLAIM)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # The old function names no btcpay_read_at; it must be back before the column goes.
        op.execute(_previous_record_claim())
    op.drop_column("payouts", "btcpay_read_at")
