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

# The search box matches what the API's ``q`` matches: a payout id by its prefix, or an exact
# amount in the payout's own currency or in sats. The text is cast through text so that
# PostgreSQL converts it only when the pattern matched: a quoted literal cast straight to a
# number would be converted (and fail) while parsing.
SEARCH_MATCH = f"""
({SEARCH} = ''
        OR payout_id LIKE replace(replace(replace({SEARCH}, '\\', '\\\\'), '%', '\\%'), '_', '\\_')
                          || '%'
        OR amount = CASE WHEN {SEARCH} ~ '^[0-9]{{1,16}}(\\.[0-9]{{1,12}})?$'
                         THEN ({SEARCH}::text)::numeric END
        OR amount_sats = CASE WHEN {SEARCH} ~ '^[0-9]{{1,18}}$' THEN ({SEARCH}::text)::bigint END)
""".strip()

# The card filter: the card's ids are gathered once (ARRAY(...)) so that the payouts are found
# through their card index; an OR of the id and an IN (subquery) made PostgreSQL walk the whole
# period.
CARD_MATCH = f"""
({CARD} = ''
        OR card_id = ANY (ARRAY(SELECT card_id FROM grafana_cards
                                 WHERE card_id = {CARD} OR alias = {CARD})))
""".strip()

PAYOUT_FILTER = f"""
$__timeFilter(created_at)
   AND store_id IN ($store)
   AND status IN ($status)
   AND {CARD_MATCH}
   AND {SEARCH_MATCH}
""".strip()

# The list holds at most this many rows; the panel beside it says how many of how many.
LIST_LIMIT = 1000

# The payouts table of the overview: newest first within the picked period, filtered by store,
# status, card (id or alias) and the search text.
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
 WHERE {PAYOUT_FILTER}
 ORDER BY created_at DESC
 LIMIT {LIST_LIMIT}
""".strip()

# The UTC days a period touches, as the API's rollup reads count them: the first day holds the
# start, the last one holds the instant just before the end (an end at midnight ends the day
# before). Grafana writes $__timeFrom() and $__timeTo() as UTC RFC 3339 text, whose date is
# the UTC day; as a timestamp without time zone PostgreSQL reads its UTC wall time.
DAYS = (
    "day BETWEEN $__timeFrom()::date AND ($__timeTo()::timestamp - interval '1 microsecond')::date"
)

# Trends come from the daily rollup (store, creation day, current status), never the facts.
_DAILY_RANGE = f"{DAYS} AND store_id IN ($store) AND status IN ($status)"

# --- the overview's totals: the API's /payouts/stats and /boltcards/usage for the same days

_TOTAL_DAYS = f"{DAYS} AND store_id IN ($store)"


def _total(expression: str, name: str) -> str:
    return f"""
SELECT {expression} AS "{name}"
  FROM grafana_payout_daily
 WHERE {_TOTAL_DAYS}
""".strip()


def _status_count(status: str) -> str:
    return _total(f"coalesce(sum(count) FILTER (WHERE status = '{status}'), 0)", status)


TOTAL_PAYOUTS = _total("coalesce(sum(count), 0)", "Payouts")
TOTAL_SATS = _total("coalesce(sum(amount_sats), 0)", "Sats")
TOTAL_COMPLETED = _status_count("Completed")
TOTAL_FAILED = _status_count("Failed")
# Completed among the payouts that finished (completed or failed); none finished: no value.
SUCCESS_RATE = _total(
    "sum(count) FILTER (WHERE status = 'Completed')::float8"
    " / nullif(sum(count) FILTER (WHERE status IN ('Completed', 'Failed')), 0)",
    "Success rate",
)

# Cards that collected at least one payout in the days.
ACTIVE_CARDS = f"""
SELECT count(*) AS "Active cards"
  FROM (SELECT card_id
          FROM grafana_card_usage
         WHERE {_TOTAL_DAYS}
         GROUP BY card_id
        HAVING sum(payouts) > 0) active
""".strip()

TOP_CARDS_LIMIT = 10

# The busiest cards by value, ranked as the API's topCards ranks them (value, then card id):
# the sums per card first, the names of the winners after.
TOP_CARDS = f"""
WITH ranked AS (
    SELECT card_id,
           sum(payouts) AS payouts,
           sum(amount_sats) AS sats
      FROM grafana_card_usage
     WHERE {_TOTAL_DAYS}
     GROUP BY card_id
    HAVING sum(payouts) > 0
     ORDER BY 3 DESC, 1
     LIMIT {TOP_CARDS_LIMIT}
)
SELECT coalesce(c.alias, r.card_id) AS "Card",
       r.card_id AS "Card id",
       r.payouts AS "Payouts",
       r.sats AS "Sats"
  FROM ranked r
  LEFT JOIN grafana_cards c ON c.card_id = r.card_id
 ORDER BY r.sats DESC, r.card_id
""".strip()


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

# How many payouts the list's filters match, per store, beside how many of them the list shows
# (the newest LIST_LIMIT across the stores). Without a card or search filter, the whole days
# inside the period come from the daily rollup and only the partial days at its two ends from
# the payouts, so a year costs about what two days cost. The counts read grafana_payout_keys,
# which has no join, so PostgreSQL counts from an index alone.
_FIRST_DAY = "$__timeFrom()::date"
_LAST_DAY = "($__timeTo()::timestamp - interval '1 microsecond')::date"
_INNER_START = f"(({_FIRST_DAY} + 1)::timestamp AT TIME ZONE 'UTC')"
_INNER_END = f"(greatest({_FIRST_DAY} + 1, {_LAST_DAY})::timestamp AT TIME ZONE 'UTC')"
_UNFILTERED = f"{CARD} = '' AND {SEARCH} = ''"

PAYOUTS_LISTED = f"""
WITH listed AS MATERIALIZED (
    SELECT store_id
      FROM grafana_payouts
     WHERE {PAYOUT_FILTER}
     ORDER BY created_at DESC
     LIMIT {LIST_LIMIT}
), shown AS (
    SELECT store_id, count(*) AS n FROM listed GROUP BY 1
), matching AS (
    SELECT store_id, count(*) AS n
      FROM grafana_payout_keys
     WHERE NOT ({_UNFILTERED})
       AND {PAYOUT_FILTER}
     GROUP BY 1
    UNION ALL
    SELECT store_id, count(*)
      FROM grafana_payout_keys
     WHERE {_UNFILTERED}
       AND $__timeFilter(created_at)
       AND created_at < {_INNER_START}
       AND store_id IN ($store)
       AND status IN ($status)
     GROUP BY 1
    UNION ALL
    SELECT store_id, count(*)
      FROM grafana_payout_keys
     WHERE {_UNFILTERED}
       AND $__timeFilter(created_at)
       AND created_at >= {_INNER_END}
       AND store_id IN ($store)
       AND status IN ($status)
     GROUP BY 1
    UNION ALL
    SELECT store_id, sum(count)
      FROM grafana_payout_daily
     WHERE {_UNFILTERED}
       AND day > {_FIRST_DAY} AND day < {_LAST_DAY}
       AND store_id IN ($store)
       AND status IN ($status)
     GROUP BY 1
), matched AS (
    SELECT store_id, sum(n) AS n FROM matching GROUP BY 1
)
SELECT s.store_id AS "Store id",
       coalesce(nullif(s.name, ''), s.store_id) AS "Store",
       coalesce(sh.n, 0) AS "Listed",
       coalesce(m.n, 0) AS "Matching",
       -- The API's export filters by card id: the card filter's card, when it names one.
       coalesce((SELECT c.card_id FROM grafana_cards c
                  WHERE {CARD} <> '' AND c.store_id = s.store_id
                    AND (c.card_id = {CARD} OR c.alias = {CARD})
                  ORDER BY c.card_id LIMIT 1), '') AS "Card id"
  FROM grafana_stores s
  LEFT JOIN shown sh ON sh.store_id = s.store_id
  LEFT JOIN matched m ON m.store_id = s.store_id
 WHERE s.store_id IN ($store)
 ORDER BY 2, 1
""".strip()

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
CARD_USAGE = f"""
WITH usage AS (
    SELECT card_id,
           sum(payouts) AS payouts,
           sum(amount_sats) AS sats,
           sum(taps) AS taps,
           sum(refused_taps) AS refused,
           min(first_used_at) AS first_used,
           max(last_used_at) AS last_used
      FROM grafana_card_usage
     WHERE {DAYS}
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
