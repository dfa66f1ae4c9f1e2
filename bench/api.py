"""REST API latency at 1 million and 10 million payouts and 100,000 cards, on PostgreSQL.

Each size gets its own database, migrated to head and bulk-loaded with generate_series straight
into the fact tables (stores, cards, payouts, one audit event per payout) AND the rollups derived
from them, as the ledger's write functions would have left them. The payouts span two years
over four stores; the measured store holds a quarter of them and of the cards.

Timed over loopback HTTP through the real API application with a local viewer token:
- list, filtered (two statuses, 30 days), first page of 50;
- list, the same filter, a page 100,000 rows deep by keyset cursor;
- one payout's detail (history and card);
- stats for 30 days;
- card usage for 30 days, first page by total amount.
Baseline: the very SQL each request ran (captured from the API's engine), replayed through
psycopg. Goals: list and detail p99 < 20 ms; stats and usage p99 < 50 ms.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import psycopg
from aiohttp.test_utils import TestServer
from sqlalchemy import event

from api.app import create_app
from api.context import ApiConfig
from api.params import encode_cursor
from ledger import migrate
from ledger.db import create_engine
from ledger.tokens import create_token

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

SUITE = "api"
STORES = 4
STORE = "store-0"
DAYS = 730
END = date(2025, 1, 1)  # payouts fill the DAYS days before it
FULL_SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (20_000,)
FULL_CARDS = 100_000
QUICK_CARDS = 2_000
REQUESTS = 200
QUICK_REQUESTS = 30
DEEP = 100_000
GOALS = {"list": 20.0, "deep": 20.0, "detail": 20.0, "stats": 50.0, "usage": 50.0}


def load(conninfo: str, payouts: int, cards: int) -> dict[str, int]:
    """Fill a migrated database; returns the row counts."""
    start = datetime.combine(END - timedelta(days=DAYS), datetime.min.time(), tzinfo=UTC)
    step = DAYS * 86400 / payouts
    statements = [
        "SET synchronous_commit = off",
        "SET work_mem = '256MB'",
        "SET maintenance_work_mem = '512MB'",
        f"""INSERT INTO stores (id, name, card_tracking, created_at, updated_at)
            SELECT 'store-' || s, 'Store ' || s, true, now(), now()
            FROM generate_series(0, {STORES - 1}) s""",
        f"""INSERT INTO boltcards (id, store_id, origin, uid, alias, key_version, last_counter,
                enabled, created_at, updated_at)
            SELECT 'card-' || lpad(c::text, 6, '0'), 'store-' || (c % {STORES}), 'issued',
                lpad(to_hex(c), 14, '0'), 'Card ' || c, 1, 0, true, now(), now()
            FROM generate_series(0, {cards - 1}) c""",
        # A payout's card follows a multiplicative hash of its number; 70% are card payouts.
        # The store is the card's store, so card and payout always agree.
        f"""INSERT INTO payouts (id, store_id, pull_payment_id, revision, state, status,
                original_amount, original_currency, payout_amount, payout_currency, amount_sats,
                payout_method_id, destination, payment_hash, card_id, card_uid,
                created_at, completed_at, updated_at)
            SELECT md5(i::text), 'store-' || (k % {STORES}), 'pp-' || (k % {STORES}), 1,
                st.state, st.status, amt, 'SATS', amt / 100000000.0, 'BTC', amt,
                'BTC-LN', 'lnbc' || md5(i::text), md5('h' || i::text),
                CASE WHEN i % 10 < 7 THEN 'card-' || lpad(k::text, 6, '0') END,
                CASE WHEN i % 10 < 7 THEN lpad(to_hex(k), 14, '0') END,
                ts, CASE WHEN st.status = 'Completed' THEN ts + interval '4 seconds' END, ts
            FROM (
                SELECT i, (i * 2654435761) % {cards} AS k, 100 + (i * 7919) % 50000 AS amt,
                    timestamptz '{start.isoformat()}' + make_interval(secs => i * {step}) AS ts
                FROM generate_series(0::bigint, {payouts - 1}) i
            ) g
            CROSS JOIN LATERAL (
                SELECT CASE WHEN i % 20 < 16 THEN 'Completed' WHEN i % 20 = 16 THEN 'Cancelled'
                            WHEN i % 20 < 19 THEN 'InProgress' ELSE 'AwaitingApproval' END
                       AS state
            ) s0
            CROSS JOIN LATERAL (
                SELECT s0.state,
                       CASE s0.state WHEN 'Completed' THEN 'Completed'
                                     WHEN 'Cancelled' THEN 'Failed'
                                     WHEN 'InProgress' THEN 'Processing' ELSE 'Pending' END
                       AS status
            ) st""",
        """INSERT INTO payout_events (store_id, payout_id, source, event_type, state, revision,
                enrich_pending, enrich_attempts, received_at)
            SELECT store_id, id, 'webhook', 'PayoutCreated', state, 1, false, 0, created_at
            FROM payouts""",
        """INSERT INTO payout_rollups (store_id, day, status, currency, count, amount,
                amount_sats)
            SELECT store_id, (created_at AT TIME ZONE 'UTC')::date, status, original_currency,
                count(*), sum(original_amount), sum(amount_sats)
            FROM payouts GROUP BY 1, 2, 3, 4""",
        """INSERT INTO card_rollups (card_id, day, store_id, payouts, amount_sats, taps,
                refused_taps, first_used_at, last_used_at)
            SELECT card_id, (created_at AT TIME ZONE 'UTC')::date, store_id, count(*),
                sum(amount_sats), count(*), 0, min(created_at), max(created_at)
            FROM payouts WHERE card_id IS NOT NULL GROUP BY 1, 2, 3""",
        # As autovacuum would have left a settled ledger: statistics, and a visibility map that
        # lets index-only scans skip the heap.
        "VACUUM ANALYZE",
        # The load's dirty pages written now, not by the checkpointer while cases are timed.
        "CHECKPOINT",
    ]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)
        counts = {}
        for table in ("payouts", "payout_events", "card_rollups", "payout_rollups", "boltcards"):
            counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return counts


def _cases(conninfo: str) -> tuple[dict[str, str], int]:
    """The URL of each case; the deep cursor is the keyset position DEEP rows in (or, where
    fewer match, one page before the last matching row); also returns that depth."""
    depth = DEEP
    first = (END - timedelta(days=30)).isoformat()
    last = (END - timedelta(days=1)).isoformat()
    period = f"storeId={STORE}&startDate={first}&endDate={last}"
    filtered = f"{period}&status=Completed&status=Failed"
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            """SELECT created_at, id FROM payouts
               WHERE store_id = %s AND status IN ('Completed', 'Failed')
                 AND created_at >= %s::date
               ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1""",
            (STORE, first, DEEP),
        ).fetchone()
        if row is None:  # fewer rows match: go as deep as there are, a full page before the end
            matching = conn.execute(
                """SELECT count(*) FROM payouts
                   WHERE store_id = %s AND status IN ('Completed', 'Failed')
                     AND created_at >= %s::date""",
                (STORE, first),
            ).fetchone()[0]
            row = conn.execute(
                """SELECT created_at, id FROM payouts
                   WHERE store_id = %s AND status IN ('Completed', 'Failed')
                     AND created_at >= %s::date
                   ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1""",
                (STORE, first, max(matching - 60, 0)),
            ).fetchone()
            depth = max(matching - 60, 0)
        payout = conn.execute(
            "SELECT id FROM payouts WHERE store_id = %s AND card_id IS NOT NULL "
            "ORDER BY created_at DESC LIMIT 1",
            (STORE,),
        ).fetchone()[0]
    cursor = encode_cursor("createdAt", True, (row[0].astimezone(UTC), row[1]))
    return {
        "list": f"/payouts?{filtered}&limit=50",
        "deep": f"/payouts?{filtered}&limit=50&cursor={cursor}",
        "detail": f"/payouts/{payout}",
        "stats": f"/payouts/stats?{period}",
        "usage": f"/boltcards/usage?{period}&limit=50",
    }, depth


async def measure(async_url: str, conninfo: str, requests: int) -> dict[str, Any]:
    engine = create_engine(async_url)
    async with engine.begin() as conn:
        _, token = await create_token(conn, STORE, "viewer", "bench")
    captured: dict[str, list[tuple[str, Any]]] = {}
    capturing: list[str] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if capturing and "api_tokens" not in statement:
            captured.setdefault(capturing[0], []).append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    server = TestServer(create_app(engine, ApiConfig(rate=0)), host="127.0.0.1")
    await server.start_server(access_log=None)
    base = f"http://127.0.0.1:{server.port}/plugins/flash/api"
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:
            cases, depth = _cases(conninfo)
            for case, path in cases.items():
                for _ in range(3):  # warm the pool, the plans and the caches
                    async with session.get(base + path, headers=headers) as resp:
                        body = await resp.read()
                        assert resp.status == 200, (case, resp.status, body[:300])
                capturing.append(case)
                async with session.get(base + path, headers=headers) as resp:
                    await resp.read()
                capturing.clear()
                timings = []
                for _ in range(requests):
                    started = time.perf_counter()
                    async with session.get(base + path, headers=headers) as resp:
                        await resp.read()
                    timings.append((time.perf_counter() - started) * 1000)
                out[case] = {"api": percentiles(timings), "depth": depth}
    finally:
        await server.close()
        await engine.dispose()

    with psycopg.connect(conninfo) as conn:
        for case, statements in captured.items():
            samples = []
            for _ in range(3 + requests):
                started = time.perf_counter()
                with conn.transaction(), conn.cursor() as cur:
                    for statement, parameters in statements:
                        cur.execute(statement, parameters or None)
                        if cur.description is not None:
                            cur.fetchall()
                samples.append((time.perf_counter() - started) * 1000)
            out[case]["sql"] = percentiles(samples[3:])
            out[case]["statements"] = len(statements)
    return out


def label(size: int) -> str:
    if size >= 1_000_000:
        return f"{size // 1_000_000}M payouts"
    return f"{size // 1000}k payouts"


CASE_NAMES = {
    "list": "list filtered, first page",
    "deep": f"list filtered, cursor page {DEEP:,} rows deep",
    "detail": "payout detail",
    "stats": "stats, 30 days",
    "usage": "card usage, 30 days",
}


def _loaded(conninfo: str) -> dict[str, int] | None:
    """The row counts of a database loaded by an earlier run, or None when it is empty."""
    with psycopg.connect(conninfo) as conn:
        tables = ("payouts", "payout_events", "card_rollups", "payout_rollups", "boltcards")
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    return counts if counts["payouts"] else None


async def run(
    options: BenchOptions, *, keep: bool | None = None, load_only: bool = False
) -> list[Result]:
    """Measure each size. ``keep`` leaves the loaded databases behind and reuses them next
    time (migrated to head first), which spares the long 10M load when measuring again;
    ``load_only`` (with ``keep``) loads and stops there. ``keep`` defaults to the
    FLASH_BENCH_KEEP environment variable, as in the exporter suite."""
    if keep is None:
        keep = os.environ.get("FLASH_BENCH_KEEP", "") not in ("", "0")
    sizes = tuple(options.sizes) or (QUICK_SIZES if options.quick else FULL_SIZES)
    cards = QUICK_CARDS if options.quick else FULL_CARDS
    requests = QUICK_REQUESTS if options.quick else REQUESTS
    results: list[Result] = []
    for size in sizes:
        name = f"flash_bench_api_{size}"
        async_url, conninfo = database_urls(options.postgres_url, name)
        with psycopg.connect(admin_url(options.postgres_url), autocommit=True) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if exists and not keep:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            if not exists or not keep:
                admin.execute(f'CREATE DATABASE "{name}"')
        try:
            await asyncio.to_thread(migrate.upgrade, async_url)
            counts = _loaded(conninfo) if keep else None
            load_s = 0.0
            if counts is None:
                started = time.perf_counter()
                counts = await asyncio.to_thread(load, conninfo, size, cards)
                load_s = time.perf_counter() - started
                print(f"  loaded {label(size)} in {load_s:.0f} s: {counts}", flush=True)
            else:
                print(f"  reusing {label(size)}: {counts}", flush=True)
            if load_only:
                continue
            m = await measure(async_url, conninfo, requests)
        finally:
            if not keep:
                with psycopg.connect(admin_url(options.postgres_url), autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for case, figures in m.items():
            for q in ("p50", "p99"):
                results.append(
                    Result(
                        suite=SUITE,
                        case=f"{CASE_NAMES[case]} {q}",
                        metric="ms",
                        value=figures["api"][q],
                        size=label(size),
                        baseline=f"its {figures['statements']} SQL statements via psycopg {q}",
                        baseline_value=figures["sql"][q],
                        goal=f"< {GOALS[case]:g} ms" if q == "p99" else "",
                        met=figures["api"][q] < GOALS[case] if q == "p99" else None,
                        notes=f"{cards:,} cards, {STORES} stores, one quarter measured"
                        + (f"; cursor {figures['depth']:,} rows deep" if case == "deep" else ""),
                        extra={"rows": counts, "load_seconds": round(load_s, 1)},
                    )
                )
    return results


def main(argv: list[str]) -> int:
    args = size_suite_arguments(argv, "python -m bench.api", __doc__)
    opts = BenchOptions(quick=args.quick, sizes=tuple(args.sizes))
    found = asyncio.run(run(opts, keep=args.keep, load_only=args.load_only))
    if args.load_only:
        return 0
    print_results(found)
    if not opts.quick:
        save(SUITE, found)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
