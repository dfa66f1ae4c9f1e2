"""Exporter scrape time and series count with 10 thousand to 10 million payouts, on PostgreSQL.

Each size gets its own database, migrated to head and loaded with bulk SQL straight into the
fact tables (payouts, cards, events) AND the rollups and counters derived from them, as the
ledger's write functions would have left them. Then ``GET /metrics`` is timed over loopback
HTTP through the real exporter application.

Baseline: the very SQL one scrape runs (captured from the exporter's own engine), replayed
through psycopg in the same kind of transaction, so the ratio shows what the exporter adds on
top of the database. Goal: under 50 ms at every size, with the same number of series.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from typing import Any

import aiohttp
import psycopg
from aiohttp.test_utils import TestServer
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from exporter.app import ExporterConfig, create_app, read_slow_only
from ledger import migrate
from ledger.db import create_engine
from ledger.rollups import COMPLETION_BUCKETS

from .common import (
    BenchOptions,
    Result,
    admin_url,
    database_urls,
    percentiles,
    print_results,
    save,
    size_suite_arguments,
)

SUITE = "exporter"
STORES = 10
FULL_SIZES = (10_000, 1_000_000, 10_000_000)
QUICK_SIZES = (1_000, 10_000)
FULL_CARDS = 100_000
QUICK_CARDS = 2_000
EVENTS_MAX = 1_000_000  # the newest-event query is one index probe; more rows add nothing
SCRAPES = 40
SLOW_READS = 10
NOTES = {
    "scrape": "reused readings under a minute old, as between two refreshes",
    "slow": "at most once a minute, in the background: no scrape waits for it",
    "uncached": "every reading made by the scrape itself: the cost before reuse",
}
GOAL_MS = 50.0
TAP_OUTCOMES = (("replay", 200), ("bad_mac", 500), ("unknown_card", 1000), ("limit", 300))
# Raised whenever ``load`` writes something different, so a kept database of an older loader is
# loaded afresh rather than measured.
LOADER_VERSION = 2
# Keep the loaded databases and reuse them in the next run (the 10M load takes long).
KEEP_ENV = "FLASH_BENCH_KEEP"


def load(conninfo: str, payouts: int, cards: int) -> dict[str, int]:
    """Fill a migrated database; returns the row counts that matter."""
    le = ", ".join(f"({b}::float8, '{int(b)}')" for b in COMPLETION_BUCKETS)
    statements = [
        "SET synchronous_commit = off",
        "SET work_mem = '256MB'",
        f"""INSERT INTO stores (id, name, card_tracking, created_at, updated_at)
            SELECT 'store-' || s, 'Store ' || s, s <> {STORES - 1}, now(), now()
            FROM generate_series(0, {STORES - 1}) s""",
        f"""INSERT INTO boltcards (id, store_id, origin, alias, key_version, last_counter,
                enabled, created_at, updated_at)
            SELECT 'card-' || lpad(c::text, 7, '0'), 'store-' || (c % {STORES}), 'issued',
                CASE WHEN c % 3 = 0 THEN 'Card ' || c END, 1, -1, true,
                now() - interval '400 days', now()
            FROM generate_series(0, {cards - 1}) c""",
        # Payout i goes to card (i * 7919) mod cards, in that card's store, at a time spread
        # over the last 365 days; 85% Completed, 5% Failed, 5% Processing, 5% Pending.
        f"""INSERT INTO payouts (id, store_id, pull_payment_id, revision, state, status,
                original_amount, original_currency, payout_amount, payout_currency, amount_sats,
                payout_method_id, card_id, created_at, completed_at, updated_at)
            SELECT 'PO' || i, 'store-' || (c % {STORES}), 'pp-' || (c % {STORES}), 1,
                CASE WHEN r < 85 THEN 'Completed' WHEN r < 90 THEN 'Cancelled'
                     WHEN r < 95 THEN 'AwaitingPayment' ELSE 'AwaitingApproval' END,
                CASE WHEN r < 85 THEN 'Completed' WHEN r < 90 THEN 'Failed'
                     WHEN r < 95 THEN 'Processing' ELSE 'Pending' END,
                CASE WHEN r % 10 = 0 THEN round(sats * 0.0006, 2) ELSE sats / 1e8 END,
                CASE WHEN r % 10 = 0 THEN 'USD' ELSE 'BTC' END,
                sats / 1e8, 'BTC', sats, 'BTC-LN', 'card-' || lpad(c::text, 7, '0'), t,
                CASE WHEN r < 85 THEN t + (i % 1200) * interval '1 second' END, t
            FROM (SELECT i, (i::bigint * 7919) % {cards} AS c, i % 100 AS r,
                    100 + (i::bigint * 31) % 50000 AS sats,
                    now() - ((i::bigint * 104729) % 31536000) * interval '1 second' AS t
                  FROM generate_series(0, {payouts - 1}) i) x""",
        """INSERT INTO payout_rollups (store_id, day, status, currency, count, amount,
                amount_sats)
            SELECT store_id, (created_at AT TIME ZONE 'UTC')::date, status,
                coalesce(original_currency, payout_currency, ''), count(*),
                sum(coalesce(original_amount, 0)), sum(coalesce(amount_sats, 0))
            FROM payouts GROUP BY 1, 2, 3, 4""",
        """INSERT INTO card_rollups (card_id, day, store_id, payouts, amount_sats, taps,
                refused_taps, first_used_at, last_used_at)
            SELECT card_id, (created_at AT TIME ZONE 'UTC')::date, min(store_id), count(*),
                sum(amount_sats), count(*) + count(*) / 20, count(*) / 20,
                min(created_at), max(created_at)
            FROM payouts GROUP BY 1, 2""",
        """UPDATE boltcards b SET last_payout_at = x.last, last_used_at = x.last,
                first_used_at = x.first
            FROM (SELECT card_id, max(last_used_at) AS last, min(first_used_at) AS first
                  FROM card_rollups GROUP BY card_id) x
            WHERE b.id = x.card_id""",
        """INSERT INTO counters (store_id, name, label, value)
            SELECT store_id, 'payouts_created', '', count(*) FROM payouts GROUP BY 1
            UNION ALL SELECT store_id, 'sats_created', '', sum(amount_sats) FROM payouts
                GROUP BY 1
            UNION ALL SELECT store_id, 'payouts_completed', '', count(*) FROM payouts
                WHERE status = 'Completed' GROUP BY 1
            UNION ALL SELECT store_id, 'sats_completed', '', sum(amount_sats) FROM payouts
                WHERE status = 'Completed' GROUP BY 1
            UNION ALL SELECT store_id, 'payouts_failed', '', count(*) FROM payouts
                WHERE status = 'Failed' GROUP BY 1
            UNION ALL SELECT store_id, 'original_amount_created', original_currency,
                sum(original_amount) FROM payouts GROUP BY 1, 3
            UNION ALL SELECT store_id, 'taps', 'accepted', count(*) FROM payouts GROUP BY 1
            UNION ALL SELECT store_id, 'callbacks', 'paid', count(*) FROM payouts GROUP BY 1
            UNION ALL SELECT store_id, 'callbacks', 'over_limit', count(*) / 50 FROM payouts
                GROUP BY 1
            UNION ALL SELECT store_id, 'webhook_events', e.t, count(*) FROM payouts,
                (VALUES ('PayoutCreated'), ('PayoutApproved'), ('PayoutUpdated')) e(t)
                GROUP BY 1, 3""",
        f"""INSERT INTO counters (store_id, name, label, value)
            SELECT p.store_id, 'completion_seconds_bucket', b.le, count(*)
            FROM payouts p JOIN (VALUES {le}, ('Infinity'::float8, '+Inf')) b(bound, le)
                ON extract(epoch FROM p.completed_at - p.created_at) <= b.bound
            WHERE p.completed_at IS NOT NULL GROUP BY 1, 3
            UNION ALL SELECT store_id, 'completion_seconds_sum', '',
                sum(extract(epoch FROM completed_at - created_at))
            FROM payouts WHERE completed_at IS NOT NULL GROUP BY 1
            UNION ALL SELECT store_id, 'completion_seconds_count', '', count(*)
            FROM payouts WHERE completed_at IS NOT NULL GROUP BY 1""",
        "INSERT INTO counters (store_id, name, label, value) VALUES "
        + ", ".join(
            f"('store-{s}', 'taps', '{o}', {max(1, payouts // d)})"
            for s in range(STORES)
            for o, d in TAP_OUTCOMES
        ),
        f"""INSERT INTO payout_events (store_id, payout_id, source, event_type, state, revision,
                delivery_id, enrich_pending, enrich_attempts, occurred_at, received_at)
            SELECT store_id, id, 'webhook', 'PayoutCreated', state, revision, 'd-' || id,
                false, 0, created_at, created_at
            FROM payouts LIMIT {min(payouts, EVENTS_MAX)}""",
        f"""INSERT INTO sync_state (store_id, last_success_at, payouts_seen, payouts_changed)
            SELECT 'store-' || s, now() - interval '3 minutes', 0, 0
            FROM generate_series(0, {STORES - 1}) s""",
    ]
    with psycopg.connect(conninfo) as conn:
        for sql in statements:
            conn.execute(sql)
        conn.execute(
            "CREATE TABLE bench_loaded (version int NOT NULL, payouts bigint NOT NULL, "
            "cards bigint NOT NULL)"
        )
        conn.execute(
            "INSERT INTO bench_loaded VALUES (%s, %s, %s)", (LOADER_VERSION, payouts, cards)
        )
        conn.commit()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        # The load's dirty pages written now, not by the checkpointer while cases are timed.
        conn.execute("CHECKPOINT")
    return row_counts(conninfo)


def row_counts(conninfo: str) -> dict[str, int]:
    tables = ("payouts", "boltcards", "payout_rollups", "card_rollups", "counters")
    with psycopg.connect(conninfo) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def loaded_as(conninfo: str, payouts: int, cards: int) -> bool:
    """Whether an earlier run left this database loaded by this loader at this size."""
    with psycopg.connect(conninfo) as conn:
        exists = conn.execute("SELECT to_regclass('bench_loaded')").fetchone()[0]
        if exists is None:
            return False
        row = conn.execute("SELECT version, payouts, cards FROM bench_loaded").fetchone()
    return row == (LOADER_VERSION, payouts, cards)


def series_in(exposition: str) -> int:
    return sum(1 for line in exposition.splitlines() if line and not line.startswith("#"))


def replay(conninfo: str, statements: list[tuple[str, Any]], times: int) -> dict[str, float]:
    """The same statements in one transaction through psycopg: the database's share."""
    samples = []
    with psycopg.connect(conninfo) as conn:
        for _ in range(3 + times):
            started = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                for statement, parameters in statements:
                    cur.execute(statement, parameters or None)
                    if cur.description is not None:
                        cur.fetchall()
            samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples[3:])


async def scrapes(
    async_url: str, conninfo: str, config: ExporterConfig
) -> tuple[dict[str, Any], str, AsyncEngine]:
    """Time ``SCRAPES`` scrapes over HTTP (after three to warm up) beside their SQL alone.

    Returns the figures, the last exposition and the engine, still open, for further reads."""
    engine = create_engine(async_url)
    captured: list[tuple[str, Any]] = []
    capturing = False

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if capturing:
            captured.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    server = TestServer(create_app(engine, config), host="127.0.0.1")
    await server.start_server(access_log=None)
    url = f"http://127.0.0.1:{server.port}/metrics"
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # warm the pool, the server and the kept readings
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
            capturing = True
            async with session.get(url, headers=headers) as resp:
                body = await resp.text()
            capturing = False
            assert "flash_up 1.0" in body, "the exporter could not read the ledger"
            timings = []
            for _ in range(SCRAPES):
                started = time.perf_counter()
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                timings.append((time.perf_counter() - started) * 1000)
    finally:
        await server.close()
    event.remove(engine.sync_engine, "before_cursor_execute", capture)
    figures = {
        "scrape": percentiles(timings),
        "baseline": replay(conninfo, captured, SCRAPES),
        "statements": len(captured),
    }
    return figures, body, engine


async def slow_reads(engine: AsyncEngine, conninfo: str, config: ExporterConfig) -> dict[str, Any]:
    """The background read of the reused readings, as often as the scrapes, beside its SQL."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        captured.append((statement, parameters))

    await read_slow_only(engine, config)
    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    await read_slow_only(engine, config)
    event.remove(engine.sync_engine, "before_cursor_execute", capture)
    timings = []
    for _ in range(SLOW_READS):
        started = time.perf_counter()
        await read_slow_only(engine, config)
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "scrape": percentiles(timings),
        "baseline": replay(conninfo, captured, SLOW_READS),
        "statements": len(captured),
    }


async def measure(async_url: str, conninfo: str) -> dict[str, Any]:
    config = ExporterConfig(top_cards=20)
    found: dict[str, Any] = {}
    found["scrape"], body, engine = await scrapes(async_url, conninfo, config)
    try:
        found["slow"] = await slow_reads(engine, conninfo, config)
    finally:
        await engine.dispose()
    found["uncached"], _, engine = await scrapes(
        async_url, conninfo, dataclasses.replace(config, slow_max_age=0)
    )
    await engine.dispose()
    found["series"] = series_in(body)
    return found


def label(size: int) -> str:
    if size >= 1_000_000:
        return f"{size // 1_000_000}M payouts"
    return f"{size // 1000}k payouts" if size >= 1000 else f"{size} payouts"


async def prepare(options: BenchOptions, size: int, cards: int, keep: bool) -> tuple[str, str]:
    """A migrated database loaded with ``size`` payouts: a kept one when it matches, else new."""
    name = f"flash_bench_exporter_{size}_{cards}"
    async_url, conninfo = database_urls(options.postgres_url, name)
    with psycopg.connect(admin_url(options.postgres_url), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and keep and loaded_as(conninfo, size, cards):
        await asyncio.to_thread(migrate.upgrade, async_url)
        print(f"  reusing {label(size)}: {row_counts(conninfo)}", flush=True)
        return async_url, conninfo
    with psycopg.connect(admin_url(options.postgres_url), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    await asyncio.to_thread(migrate.upgrade, async_url)
    started = time.perf_counter()
    counts = await asyncio.to_thread(load, conninfo, size, cards)
    print(f"  loaded {label(size)} in {time.perf_counter() - started:.0f} s: {counts}", flush=True)
    return async_url, conninfo


def drop(options: BenchOptions, conninfo: str) -> None:
    name = make_url(conninfo).database
    with psycopg.connect(admin_url(options.postgres_url), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run(
    options: BenchOptions, *, keep: bool | None = None, load_only: bool = False
) -> list[Result]:
    """Measure each size. ``keep`` (default: the FLASH_BENCH_KEEP environment variable) leaves
    the loaded databases behind and reuses them when loaded by this loader at the same size."""
    if keep is None:
        keep = os.environ.get(KEEP_ENV, "") not in ("", "0")
    sizes = tuple(options.sizes) or (QUICK_SIZES if options.quick else FULL_SIZES)
    cards = QUICK_CARDS if options.quick else FULL_CARDS
    results: list[Result] = []
    series_seen: list[int] = []
    for size in sizes:
        async_url, conninfo = await prepare(options, size, cards, keep)
        try:
            if load_only:
                continue
            counts = row_counts(conninfo)
            m = await measure(async_url, conninfo)
        finally:
            if not keep:
                drop(options, conninfo)
        for key in ("scrape", "slow", "uncached"):
            f = m[key]
            print(
                f"  {key}: p50 {f['scrape']['p50']:.1f} ms (SQL {f['baseline']['p50']:.1f} ms), "
                f"p99 {f['scrape']['p99']:.1f} ms (SQL {f['baseline']['p99']:.1f} ms)",
                flush=True,
            )
        print(f"  {m['series']} series, load {uptime_load()}", flush=True)
        series_seen.append(m["series"])
        common = {
            "suite": SUITE,
            "size": label(size),
            "extra": {"rows": counts, "cards": cards, "load": f"{uptime_load()}"},
        }
        for key, case, goal in (
            ("scrape", "scrape GET /metrics", True),
            ("slow", "background read of the reused readings", False),
            ("uncached", "scrape, reuse off (slow_max_age 0)", False),
        ):
            f = m[key]
            note = f"{cards:,} cards, {STORES} stores, top 20; {NOTES[key]}"
            for q in ("p50", "p99"):
                results.append(
                    Result(
                        case=f"{case} {q}",
                        metric="ms",
                        value=f["scrape"][q],
                        baseline=f"its {f['statements']} SQL statements via psycopg {q}",
                        baseline_value=f["baseline"][q],
                        goal=f"< {GOAL_MS:g} ms" if goal else "",
                        met=f["scrape"][q] < GOAL_MS if goal else None,
                        notes=note if q == "p99" else "",
                        **common,
                    )
                )
        results.append(
            Result(
                case="series per scrape",
                metric="series",
                value=m["series"],
                baseline="series at the smallest size",
                baseline_value=series_seen[0],
                goal="same at every size",
                met=m["series"] == series_seen[0],
                **common,
            )
        )
    return results


def uptime_load() -> str:
    """The load averages while measuring: figures on a busy machine read differently."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: list[str]) -> int:
    args = size_suite_arguments(argv, "python -m bench.exporter", __doc__)
    opts = BenchOptions(quick=args.quick, sizes=tuple(args.sizes))
    found = asyncio.run(run(opts, keep=args.keep or None, load_only=args.load_only))
    if args.load_only:
        return 0
    print_results(found)
    if not opts.quick and not opts.sizes:
        save(SUITE, found)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
