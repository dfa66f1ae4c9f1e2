"""The callback's two writes as PostgreSQL functions: one round trip each.

``flash_callback_hold`` does on the server, in one statement's transaction, what
``lnurl_gateway.handlers.BoltcardGateway._reserve`` does step by step on SQLite: consume the
k1, check the card, the amount and the store, hold the invoice under its payment hash's lock,
reserve the amount against the day limit, and finish the tap with its reason when a check
fails. The reasons' wording comes in as ``p_reasons`` (``ledger.taps.CALLBACK_REASONS``), so
both paths say the same thing.

``flash_record_claim`` stores the payout BTCPay created for a held tap, as
``ledger.taps.record_claims`` does for a batch: the payout row with its card link, its audit
rows, the card's rollup and last payout, the tap finished as paid, and the payout rollups and
counters that Python computed (``RollupDeltas``, applied in their sorted order). When the
payout is in the ledger already (its webhook came first) it writes nothing and returns false,
and the caller takes the general path.

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
                         card_uid, tap_id, created_at, completed_at, updated_at)
    VALUES (r.id, r.store_id, r.pull_payment_id, r.revision, r.state, r.status,
            r.original_amount, r.original_currency, r.payout_amount, r.payout_currency,
            r.amount_sats, r.payout_method_id, r.destination, r.payment_hash,
            r.transaction_id, COALESCE(r.payment_proof, 'null'::json),
            COALESCE(r.metadata, 'null'::json), r.error_message, r.card_id, r.card_uid,
            r.tap_id, r.created_at, r.completed_at, r.updated_at)
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


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)
        op.execute(_RECORD_CLAIM)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS flash_record_claim")
        op.execute("DROP FUNCTION IF EXISTS flash_callback_hold")
