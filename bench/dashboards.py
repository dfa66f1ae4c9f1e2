"""Every SQL query of the Grafana boards at 10 million payouts, on PostgreSQL.

The exporter suite's database is used (migrated to head, which creates the ``grafana_*`` views
and the read-only role; loaded by the same SQL: payouts spread over a year across
100,000 cards and 10 stores, their rollups, events and counters), plus card taps. Each board
query is expanded as Grafana would send it for the board's default period with every store
selected, and timed as Grafana's role ``flash_grafana`` over psycopg.

Baseline, timed in the same run: ``SELECT count(*)`` of the payouts of the same stores and
period, the least any query over that range can cost. Goal: each query under 200 ms, so a board
(whose queries Grafana sends at once) opens in well under 2 s. The overview's totals, top cards
and list count are also timed over the whole year of the ledger, without a goal: what picking a
long period costs.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from dashboards.loader import sql_queries
from dashboards.macros import Frame, expand_sql
from ledger.status import STATUSES

from .common import BenchOptions, Result, percentiles, print_results, save
from .exporter import KEEP_ENV, STORES, drop, prepare

SUITE = "dashboards"
FULL = (10_000_000, 100_000)  # payouts, cards
QUICK = (100_000, 2_000)
RUNS = 15
GOAL_MS = 200.0
PERIODS = {"flash-payout-detail": timedelta(days=30)}  # the others open on 7 days
YEAR = timedelta(days=365)
LONG_RUNS = 3  # a year of card rollups takes seconds per query: fewer runs, one to warm
LONG_PERIOD_PANELS = (
    "Payouts",
    "Value",
    "Success rate",
    "Active cards",
    "Top Boltcards",
    "Payouts listed",
)


def load_taps(conninfo: str, taps: int, cards: int) -> None:
    """Taps spread over the same year: 95% accepted, the rest refused for varied reasons."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(
            f"""INSERT INTO card_taps (store_id, card_id, uid, counter, source, outcome, reason,
                    k1_hash, amount_msat, payout_id, created_at, updated_at)
                SELECT 'store-' || (c % {STORES}), 'card-' || lpad(c::text, 7, '0'), NULL, i,
                    'gateway',
                    CASE WHEN r < 95 THEN 'accepted' WHEN r < 96 THEN 'replay'
                         WHEN r < 97 THEN 'bad_mac' WHEN r < 98 THEN 'limit'
                         ELSE 'k1_expired' END,
                    CASE WHEN r >= 95 THEN 'refused (' || r || ')' END,
                    md5(i::text), 100000, CASE WHEN r < 95 THEN 'PO' || i END, t, t
                FROM (SELECT i, (i::bigint * 7919) % {cards} AS c, i % 100 AS r,
                        now() - ((i::bigint * 104729) % 31536000) * interval '1 second' AS t
                      FROM generate_series(0, {taps - 1}) i) x"""
        )
        conn.commit()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE card_taps")
        conn.execute("CHECKPOINT")  # the load's writes done before any case is timed


def reader(conninfo: str) -> str:
    url = make_url(conninfo)
    return psycopg.conninfo.make_conninfo(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        dbname=url.database,
        user="flash_grafana",
        password="flash_grafana",
    )


def timed(
    conn: psycopg.Connection, query: str, runs: int = RUNS, warm: int = 2
) -> tuple[list[float], int]:
    rows = 0
    for _ in range(warm):  # warm the plan and the buffers
        rows = len(conn.execute(query).fetchall())  # type: ignore[call-overload]
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute(query).fetchall()  # type: ignore[call-overload]
        samples.append((time.perf_counter() - started) * 1000)
    return samples, rows


def variables(conn: psycopg.Connection) -> dict[str, Any]:
    card = conn.execute(
        "SELECT card_id FROM grafana_card_usage GROUP BY 1 ORDER BY sum(payouts) DESC LIMIT 1"
    ).fetchone()[0]
    payout = conn.execute(
        "SELECT payout_id FROM grafana_payouts WHERE card_id = %s ORDER BY created_at DESC LIMIT 1",
        (card,),
    ).fetchone()[0]
    return {
        "store": [f"store-{s}" for s in range(STORES)],
        "status": list(STATUSES),
        "card": "",
        "search": "",
        "payout": payout,
        "_card_id": card,
    }


def measure(conninfo: str, size: int) -> list[Result]:
    results = []
    with psycopg.connect(reader(conninfo), autocommit=True) as conn:
        values = variables(conn)
        card_id = values.pop("_card_id")
        cases: list[tuple[str, str, str, dict[str, Any], timedelta | None]] = []
        for uid, title, raw in sql_queries():
            board_values = dict(values)
            if uid == "flash-boltcards":
                board_values["card"] = card_id
            cases.append((uid, title, raw, board_values, None))
        # The overview's list and its count with their filters in use, besides their default.
        overview = "flash-payouts-overview"
        for title in ("Payout list", "Payouts listed"):
            raw = next(q for _, t, q in sql_queries() if t == title)
            cases += [
                (overview, f"{title}, search", raw, values | {"search": values["payout"]}, None),
                (overview, f"{title}, card filter", raw, values | {"card": card_id}, None),
                (overview, f"{title}, Failed only", raw, values | {"status": ["Failed"]}, None),
            ]
        for uid, title, raw in sql_queries():
            if uid == overview and title in LONG_PERIOD_PANELS:
                cases.append((uid, f"{title}, a year", raw, dict(values), YEAR))
        baselines: dict[timedelta, float] = {}
        for uid, title, raw, board_values, long_period in cases:
            period = long_period or PERIODS.get(uid, timedelta(days=7))
            frame = Frame.last(period, variables=board_values, interval="1h")
            runs, warm = (LONG_RUNS, 1) if long_period else (RUNS, 2)
            if period not in baselines:
                count = (
                    "SELECT count(*) FROM grafana_payouts WHERE store_id IN ("
                    + ",".join(f"'{s}'" for s in values["store"])
                    + ") AND $__timeFilter(created_at)"
                )
                samples, _ = timed(conn, expand_sql(count, frame), runs, warm)
                baselines[period] = percentiles(samples)["p50"]
            samples, rows = timed(conn, expand_sql(raw, frame), runs, warm)
            stats = percentiles(samples)
            results.append(
                Result(
                    suite=SUITE,
                    case=f"{uid.removeprefix('flash-')}: {title}",
                    metric="p50 ms",
                    value=stats["p50"],
                    size=f"{size:,} payouts",
                    baseline=f"count(*) of {period.days} days of payouts",
                    baseline_value=baselines[period],
                    goal="" if long_period else f"< {GOAL_MS:.0f} ms",
                    met=None if long_period else stats["p99"] < GOAL_MS,
                    notes=f"p99 {stats['p99']:.1f} ms, {rows} rows"
                    + (f", {runs} runs" if long_period else ""),
                    extra={"p99_ms": stats["p99"], "rows": rows},
                )
            )
    return results


async def run(options: BenchOptions) -> list[Result]:
    """Measure on the exporter suite's loaded ledger (same loader and size), adding the taps.

    With FLASH_BENCH_KEEP set, a ledger loaded by an earlier run is reused, so the 10 million
    payouts are loaded once for the exporter and dashboard suites alike.
    """
    payouts, cards = QUICK if options.quick else FULL
    keep = os.environ.get(KEEP_ENV, "") not in ("", "0")
    _async_url, conninfo = await prepare(options, payouts, cards, keep)
    try:
        with psycopg.connect(conninfo) as conn:
            has_taps = conn.execute("SELECT EXISTS (SELECT 1 FROM card_taps)").fetchone()[0]
        if not has_taps:
            started = time.perf_counter()
            await asyncio.to_thread(load_taps, conninfo, payouts // 2, cards)
            print(f"  loaded {payouts // 2:,} taps in {time.perf_counter() - started:.0f} s")
        return await asyncio.to_thread(measure, conninfo, payouts)
    finally:
        if not keep:
            drop(options, conninfo)


if __name__ == "__main__":
    opts = BenchOptions(quick="--quick" in sys.argv)
    found = asyncio.run(run(opts))
    print_results(found)
    if not opts.quick:
        save(SUITE, found)
