"""The SQL behind the boards' PostgreSQL panels, over the read-only ``grafana_*`` views.

Each query uses Grafana's macros (``$__timeFilter``, ``$__timeGroupAlias``, ``$__timeFrom()``)
and the boards' variables. Free-text variables go through ``${name:sqlstring}``, which Grafana
quotes and escapes, so a search box cannot change the statement (and the role Grafana connects
as can only read the views anyway). Every query is shaped for an index of the ledger: the time
range and store lead, a text search only narrows what the range already selected, and lists are
bounded by LIMIT. ``bench/dashboards.py`` times each one at 10 million payouts.
"""

from __future__ import annotations

from exporter.catalogue import TAP_OUTCOMES

REFUSED_OUTCOMES = ", ".join(f"'{o}'" for o in TAP_OUTCOMES if o != "accepted")

SEARCH = "${search:sqlstring}"
PAYOUT = "${payout:sqlstring}"
CARD = "${card:sqlstring}"

# The payouts table of the overview: newest first within the picked period, filtered by store,
# status, card (id or alias) and a search text (payout id, pull payment id, amount or sats).
# The card's ids are gathered once (ARRAY(...)) so that the payouts are found through their
# card index; an OR of the id and an IN (subquery) made PostgreSQL walk the whole period.
# The search is cast through text so that PostgreSQL converts it only when the pattern matched:
# a quoted literal cast straight to numeric would be converted (and fail) while parsing.
PAYOUTS_TABLE = f"""
SELECT payout_id AS "Payout",
       created_at AS "Created",
       status AS "Status",
       amount AS "Amount",
       currency AS "Currency",
       amount_sats AS "Sats",
       coalesce(card_alias, card_id) AS "Card",
       completed_at AS "Completed",
       store_id AS "Store"
  FROM grafana_payouts
 WHERE $__timeFilter(created_at)
   AND store_id IN ($store)
   AND status IN ($status)
   AND ({CARD} = ''
        OR card_id = ANY (ARRAY(SELECT card_id FROM grafana_cards
                                 WHERE card_id = {CARD} OR alias = {CARD})))
   AND ({SEARCH} = ''
        OR payout_id = {SEARCH}
        OR pull_payment_id = {SEARCH}
        OR amount = CASE WHEN {SEARCH} ~ '^[0-9]+(\\.[0-9]+)?$' THEN ({SEARCH}::text)::numeric END
        OR amount_sats = CASE WHEN {SEARCH} ~ '^[0-9]{{1,18}}$' THEN ({SEARCH}::text)::bigint END)
 ORDER BY created_at DESC
 LIMIT 1000
""".strip()

# Trends come from the daily rollup (store, creation day, current status), never the facts.
_DAILY_RANGE = (
    "day BETWEEN $__timeFrom()::date AND $__timeTo()::date "
    "AND store_id IN ($store) AND status IN ($status)"
)


def _trend(period: str) -> str:
    """Payouts by status per period; ``period`` is the time column's SELECT expression."""
    return f"""
SELECT {period},
       status AS metric,
       sum(count) AS value
  FROM grafana_payout_daily
 WHERE {_DAILY_RANGE}
 GROUP BY 1, 2
 ORDER BY 1, 2
""".strip()


TREND_DAY = _trend("$__timeGroupAlias(day, 1d)")
TREND_WEEK = _trend("date_trunc('week', day)::timestamp AS \"time\"")
TREND_MONTH = _trend("date_trunc('month', day)::timestamp AS \"time\"")

STATUS_DISTRIBUTION = f"""
SELECT status AS "Status",
       sum(count) AS "Payouts"
  FROM grafana_payout_daily
 WHERE {_DAILY_RANGE}
 GROUP BY 1
 ORDER BY 1
""".strip()

# --- payout detail (the requirements' detail modal)

PAYOUT_DETAIL = f"""
SELECT payout_id AS "Payout",
       store_id AS "Store",
       pull_payment_id AS "Pull payment",
       status AS "Status",
       state AS "BTCPay state",
       amount AS "Amount",
       currency AS "Currency",
       amount_sats AS "Sats",
       payout_method_id AS "Method",
       recipient AS "Recipient",
       transaction_id AS "Transaction",
       error_message AS "Error",
       created_at AS "Created",
       completed_at AS "Completed",
       updated_at AS "Updated"
  FROM grafana_payouts
 WHERE payout_id = {PAYOUT}
   AND store_id IN ($store)
""".strip()

PAYOUT_EVENTS = f"""
SELECT received_at AS "Received",
       occurred_at AS "Occurred",
       source AS "Source",
       event_type AS "Event",
       state AS "BTCPay state",
       revision AS "Revision"
  FROM grafana_payout_events
 WHERE payout_id = {PAYOUT}
   AND store_id IN ($store)
 ORDER BY event_id
""".strip()

PAYOUT_CARD = f"""
SELECT c.card_id AS "Card",
       c.alias AS "Alias",
       c.card_ntag AS "NTAG UID",
       c.origin AS "Origin",
       c.enabled AS "Enabled",
       c.tx_limit_sats AS "Limit per payout (sats)",
       c.day_limit_sats AS "Limit per day (sats)",
       c.first_used_at AS "First used",
       c.last_used_at AS "Last used"
  FROM grafana_payouts p
  JOIN grafana_cards c ON c.card_id = p.card_id
 WHERE p.payout_id = {PAYOUT}
   AND p.store_id IN ($store)
""".strip()

PAYOUT_TAPS = f"""
SELECT created_at AS "Tapped",
       outcome AS "Outcome",
       reason AS "Reason",
       counter AS "Counter",
       amount_msat / 1000 AS "Sats",
       source AS "Source"
  FROM grafana_card_taps
 WHERE payout_id = {PAYOUT}
 ORDER BY tap_id
""".strip()

# --- Boltcards

CARD_CHOICES = """
SELECT card_id AS __value,
       coalesce(alias, card_id) AS __text
  FROM grafana_cards
 WHERE store_id IN ($store)
 ORDER BY last_payout_at DESC NULLS LAST, card_id
 LIMIT 500
""".strip()

# Sums per card first, names for the page's cards after: joining every rollup row to its card
# before grouping costs three times as much at 10 million payouts.
CARD_USAGE = """
WITH usage AS (
    SELECT card_id,
           sum(payouts) AS payouts,
           sum(amount_sats) AS sats,
           sum(taps) AS taps,
           sum(refused_taps) AS refused,
           min(first_used_at) AS first_used,
           max(last_used_at) AS last_used
      FROM grafana_card_usage
     WHERE day BETWEEN $__timeFrom()::date AND $__timeTo()::date
       AND store_id IN ($store)
     GROUP BY card_id
     ORDER BY 2 DESC, 1
     LIMIT 200
)
SELECT u.card_id AS "Card",
       c.alias AS "Alias",
       u.payouts AS "Payouts",
       u.sats AS "Sats",
       u.taps AS "Taps",
       u.refused AS "Refused taps",
       u.first_used AS "First used",
       u.last_used AS "Last used"
  FROM usage u
  LEFT JOIN grafana_cards c ON c.card_id = u.card_id
 ORDER BY 3 DESC, 1
""".strip()

REFUSED_TAPS = f"""
SELECT created_at AS "Tapped",
       outcome AS "Outcome",
       reason AS "Reason",
       coalesce(card_id, '') AS "Card",
       coalesce(store_id, '') AS "Store"
  FROM grafana_card_taps
 WHERE outcome IN ({REFUSED_OUTCOMES})
   AND $__timeFilter(created_at)
   AND (store_id IN ($store) OR store_id IS NULL)
 ORDER BY created_at DESC
 LIMIT 500
""".strip()

CARD_INFO = f"""
SELECT card_id AS "Card",
       alias AS "Alias",
       card_ntag AS "NTAG UID",
       origin AS "Origin",
       enabled AS "Enabled",
       tx_limit_sats AS "Limit per payout (sats)",
       day_limit_sats AS "Limit per day (sats)",
       first_used_at AS "First used",
       last_used_at AS "Last used",
       wiped_at AS "Wiped"
  FROM grafana_cards
 WHERE card_id = {CARD}
   AND store_id IN ($store)
""".strip()

CARD_TAPS_OVER_TIME = f"""
SELECT $__timeGroupAlias(created_at, $__interval),
       outcome AS metric,
       count(*) AS value
  FROM grafana_card_taps
 WHERE card_id = {CARD}
   AND $__timeFilter(created_at)
 GROUP BY 1, 2
 ORDER BY 1, 2
""".strip()

CARD_PAYOUTS_OVER_TIME = f"""
SELECT $__timeGroupAlias(created_at, $__interval),
       count(*) AS "Payouts",
       coalesce(sum(amount_sats), 0) AS "Sats"
  FROM grafana_payouts
 WHERE card_id = {CARD}
   AND $__timeFilter(created_at)
 GROUP BY 1
 ORDER BY 1
""".strip()
