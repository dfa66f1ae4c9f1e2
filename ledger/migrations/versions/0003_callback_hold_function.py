"""The callback's checks and holds as one PostgreSQL function: one round trip per callback.

``flash_callback_hold`` does on the server, in one statement's transaction, what
``lnurl_gateway.handlers.BoltcardGateway._reserve`` does step by step on SQLite: consume the
k1, check the card, the amount and the store, hold the invoice under its payment hash's lock,
reserve the amount against the day limit, and finish the tap with its reason when a check
fails. The reasons' wording comes in as ``p_reasons`` (``ledger.taps.CALLBACK_REASONS``), so
both paths say the same thing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION flash_callback_hold(
    p_k1_hash text, p_now timestamptz, p_amount bigint, p_min_msat bigint,
    p_default_day_sats bigint, p_bolt11 text, p_payment_hash text, p_hash_fingerprint text,
    p_lock_key bigint, p_day date, p_reasons text[])
RETURNS TABLE (o_verdict text, o_reason text, o_tap_id bigint, o_tap_uid text,
               o_store_id text, o_card_id text, o_pull_payment_id text, o_btcpay_url text,
               o_card_tracking boolean)
LANGUAGE plpgsql AS $fn$
DECLARE
    t record;
    c record;
    v_max bigint;
    v_kept text;
    v_limit bigint;
    v_reserved boolean;
    v_held boolean;
    v_outcome text;
    v_reason text;
BEGIN
    -- The k1, once: its row locked, so of concurrent callbacks with it one goes on and the
    -- others, once it committed, find it used.
    SELECT ct.id, ct.store_id, ct.card_id, ct.uid, ct.max_withdrawable_msat, ct.k1_used_at,
           ct.k1_expires_at
      INTO t FROM card_taps AS ct WHERE ct.k1_hash = p_k1_hash FOR UPDATE;
    IF NOT FOUND THEN
        o_verdict := 'k1_unknown';
    ELSIF t.k1_used_at IS NOT NULL THEN
        o_verdict := 'k1_used';
    ELSIF t.k1_expires_at IS NULL THEN
        o_verdict := 'k1_unknown';
    ELSIF t.k1_expires_at <= p_now THEN
        o_verdict := 'k1_expired';
    END IF;
    IF o_verdict IS NOT NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;

    SELECT b.id, b.store_id, b.pull_payment_id, b.enabled, b.wiped_at, b.tx_limit_sats,
           b.day_limit_sats, s.btcpay_url, s.card_tracking
      INTO c
      FROM boltcards AS b JOIN stores AS s ON s.id = b.store_id
     WHERE b.id = t.card_id;
    IF NOT FOUND THEN
        v_outcome := 'card_unusable'; v_reason := p_reasons[1];
    ELSIF c.wiped_at IS NOT NULL THEN
        v_outcome := 'card_unusable'; v_reason := p_reasons[2];
    ELSIF NOT c.enabled THEN
        v_outcome := 'card_unusable'; v_reason := p_reasons[3];
    ELSE
        v_max := COALESCE(t.max_withdrawable_msat, 0);
        IF c.tx_limit_sats IS NOT NULL THEN
            v_max := LEAST(v_max, c.tx_limit_sats * 1000);
        END IF;
        IF NOT (p_min_msat <= p_amount AND p_amount <= v_max) THEN
            v_outcome := 'invoice_refused';
            v_reason := format(p_reasons[4], p_amount, p_min_msat, v_max);
        ELSIF c.btcpay_url IS NULL OR c.pull_payment_id IS NULL THEN
            v_outcome := 'btcpay_unavailable'; v_reason := p_reasons[5];
        END IF;
    END IF;

    v_held := false;
    IF v_outcome IS NULL THEN
        -- An opted-out store's taps keep a keyed fingerprint of the payment hash.
        v_kept := CASE WHEN c.card_tracking THEN p_payment_hash ELSE p_hash_fingerprint END;
        PERFORM pg_advisory_xact_lock(p_lock_key);
        IF EXISTS (SELECT 1 FROM card_taps AS h
                    WHERE h.payment_hash = v_kept AND h.outcome IN ('claiming', 'paid')
                      AND h.id <> t.id) THEN
            v_outcome := 'duplicate_invoice'; v_reason := p_reasons[6];
        ELSE
            v_held := true;
            v_limit := COALESCE(c.day_limit_sats, p_default_day_sats);
            v_reserved := false;
            IF p_amount <= v_limit * 1000 THEN
                -- The limit is in the conflict branch's WHERE: the check and the addition
                -- are one step, so concurrent reservations never pass it between them.
                INSERT INTO card_day_spend AS d (card_id, day, reserved_msat)
                VALUES (c.id, p_day, p_amount)
                ON CONFLICT (card_id, day) DO UPDATE
                   SET reserved_msat = d.reserved_msat + excluded.reserved_msat
                 WHERE d.reserved_msat + excluded.reserved_msat <= v_limit * 1000;
                v_reserved := FOUND;
            END IF;
            IF NOT v_reserved THEN
                v_outcome := 'over_limit'; v_reason := format(p_reasons[7], v_limit);
            END IF;
        END IF;
    END IF;

    -- The tap's row written once: its k1 used, the invoice it holds, what became of it.
    UPDATE card_taps
       SET k1_used_at = p_now, updated_at = p_now,
           bolt11 = CASE WHEN v_held THEN p_bolt11 ELSE bolt11 END,
           payment_hash = CASE WHEN v_held THEN v_kept ELSE payment_hash END,
           amount_msat = CASE WHEN v_held THEN p_amount ELSE amount_msat END,
           reserved_day = CASE WHEN v_held THEN p_day ELSE reserved_day END,
           outcome = COALESCE(v_outcome, 'claiming'), reason = v_reason
     WHERE id = t.id;
    IF v_outcome IS NOT NULL THEN
        INSERT INTO counters AS n (store_id, name, label, value)
        VALUES (COALESCE(t.store_id, ''), 'callbacks', v_outcome, 1)
        ON CONFLICT (store_id, name, label) DO UPDATE SET value = n.value + excluded.value;
        o_verdict := v_outcome; o_reason := v_reason; o_tap_id := t.id;
        RETURN NEXT;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'held'::text, NULL::text, t.id, t.uid::text, c.store_id::text,
                        c.id::text, c.pull_payment_id::text, c.btcpay_url::text,
                        c.card_tracking;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS flash_callback_hold")
