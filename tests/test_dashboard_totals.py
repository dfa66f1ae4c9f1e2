"""The overview's totals, top cards and payout list against the API, on two years of history.

The stat cards and Top Boltcards run their SQL as Grafana would (macros expanded for the
picked range, as Grafana's read-only role); the API answers /payouts/stats and
/boltcards/usage for the same instants. For 1 day, 90 days and 2 years they must agree, which
Prometheus' increase() over its retention could not. The list's search must match what the
API's ``q`` matches, and its count panel what the API's list counts.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from api_fixtures import add_card, add_tap, client_on, shared_ledger
from exporter_fixtures import payout
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dashboards import sql
from dashboards.macros import Frame, expand_sql
from ledger.payouts import CardLink, upsert_payout
from ledger.status import STATUSES
from ledger.stores import upsert_store
from ledger.tokens import create_token

pytestmark = pytest.mark.postgres

STORES = ("totals-a", "totals-b")
SPANS = {"1 day": timedelta(days=1), "90 days": timedelta(days=90), "2 years": timedelta(days=730)}
STATES = (
    "AwaitingApproval",
    "AwaitingPayment",
    "InProgress",
    "Completed",
    "Completed",
    "Cancelled",
)
NOW = datetime.now(UTC).replace(microsecond=0)


async def two_years(engine: AsyncEngine) -> dict[str, str]:
    """Two stores, 1020 payouts over 729 days (more of them lately), in BTC, USD and SATS, most
    collected by cards; taps of cards that collected nothing. Returns each store's token."""
    rng = random.Random(15)
    tokens = {}
    async with engine.begin() as conn:
        for store in STORES:
            await upsert_store(conn, store, name=f"Shop {store[-1].upper()}")
            _, tokens[store] = await create_token(conn, store, "viewer", "totals")
    cards = {store: [f"{store[-1]}card{i}" for i in range(8)] for store in STORES}
    for store, ids in cards.items():
        for i, card in enumerate(ids):
            await add_card(engine, card, store, alias=f"Till {i}" if i % 2 else None)
    ages = (
        [timedelta(seconds=rng.randrange(1, 729 * 86400)) for _ in range(800)]
        + [timedelta(seconds=rng.randrange(1, 90 * 86400)) for _ in range(160)]
        + [timedelta(seconds=rng.randrange(1, 86400)) for _ in range(60)]
    )
    for n, age in enumerate(ages):
        store = STORES[n % 3 == 0]
        sats = rng.randrange(1, 60) * 1000
        currency = rng.choice(("BTC", "USD", "SATS"))
        amount = {
            "BTC": Decimal(sats) / 100_000_000,
            "USD": Decimal(sats) / 2500,
            "SATS": Decimal(sats),
        }[currency]
        card = rng.choice([*cards[store][:6], None])
        async with engine.begin() as conn:
            await upsert_payout(
                conn,
                payout(
                    f"{store[-1]}{n:04d}x{rng.randrange(100)}",
                    store,
                    rng.choice(STATES),
                    sats,
                    NOW - age,
                    original_amount=amount.quantize(Decimal("0.00000001")),
                    original_currency=currency,
                ),
                source="reconcile",
                card=CardLink(card, "04a1b2c3d4e5f6") if card else None,
            )
    for store in STORES:
        for card in cards[store][6:]:  # tapped, refused, never paid
            await add_tap(engine, card, store, NOW - timedelta(hours=2), outcome="limit")
    return tokens


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:  # type: ignore[no-untyped-def]
    yield from shared_ledger("postgresql", tmp_path_factory, two_years)


def reader(db_url: str) -> str:
    url = make_url(db_url)
    return psycopg.conninfo.make_conninfo(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        dbname=url.database,
        user="flash_grafana",
        password="flash_grafana",
    )


def run_sql(db_url: str, raw: str, frame: Frame) -> list[tuple[Any, ...]]:
    with psycopg.connect(reader(db_url)) as conn:
        return conn.execute(expand_sql(raw, frame)).fetchall()  # type: ignore[arg-type]


def frame_of(span: timedelta, stores: list[str], **variables: Any) -> Frame:
    values: dict[str, Any] = {"store": stores, "status": list(STATUSES), "card": "", "search": ""}
    values.update(variables)
    return Frame(time_from=NOW - span, time_to=NOW, variables=values, interval="1h")


@pytest.fixture
async def api(aiohttp_client, ledger) -> AsyncIterator[Any]:  # type: ignore[no-untyped-def]
    url, tokens = ledger
    async with client_on(aiohttp_client, url) as (_, client):

        async def get(store: str, path: str, **params: Any) -> Any:
            resp = await client.get(
                f"/plugins/flash/api/{path}",
                params={"storeId": store, **params},
                headers={"Authorization": f"Bearer {tokens[store]}"},
            )
            assert resp.status == 200, await resp.text()
            return await resp.json()

        yield get


def period(span: timedelta) -> dict[str, str]:
    return {"startDate": (NOW - span).isoformat(), "endDate": NOW.isoformat()}


async def usage_of(api: Any, store: str, span: timedelta) -> dict[str, dict[str, Any]]:
    items, offset = [], 0
    while True:
        page = await api(store, "boltcards/usage", limit=500, offset=offset, **period(span))
        items += page["items"]
        offset += 500
        if offset >= page["total"]:
            return {i["boltcardId"]: i for i in items}


def one(db_url: str, raw: str, frame: Frame) -> Any:
    rows = run_sql(db_url, raw, frame)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]


@pytest.mark.parametrize("span", SPANS.values(), ids=SPANS.keys())
async def test_stat_cards_and_top_cards_equal_the_api_for_the_range(ledger, api, span) -> None:
    url, _ = ledger
    for store in STORES:
        frame = frame_of(span, [store])
        stats = await api(store, "payouts/stats", top=10, **period(span))
        usage = await usage_of(api, store, span)
        assert stats["totalCount"] > 0
        assert one(url, sql.TOTAL_PAYOUTS, frame) == stats["totalCount"]
        assert one(url, sql.TOTAL_SATS, frame) == stats["totalAmountSats"]
        assert one(url, sql.TOTAL_COMPLETED, frame) == stats["byStatus"]["Completed"]["count"]
        assert one(url, sql.TOTAL_FAILED, frame) == stats["byStatus"]["Failed"]["count"]
        rate = one(url, sql.SUCCESS_RATE, frame)
        assert rate == pytest.approx(stats["successRate"]) if stats["successRate"] else not rate
        paid_cards = [c for c in usage.values() if c["totalPayouts"] > 0]
        assert one(url, sql.ACTIVE_CARDS, frame) == len(paid_cards)
        assert len(usage) > len(paid_cards)  # tapped cards that collected nothing do not count
        top = run_sql(url, sql.TOP_CARDS, frame)
        assert top == [
            (c["alias"] or c["boltcardId"], c["boltcardId"], c["totalPayouts"], c["totalAmount"])
            for c in stats["topCards"]
        ]
        for _, card_id, payouts, sats in top:
            assert (usage[card_id]["totalPayouts"], usage[card_id]["totalAmount"]) == (
                payouts,
                sats,
            )


async def test_the_ranges_differ_and_the_cards_add_up_over_the_stores(ledger, api) -> None:
    url, _ = ledger
    counts = [one(url, sql.TOTAL_PAYOUTS, frame_of(s, list(STORES))) for s in SPANS.values()]
    assert counts[0] < counts[1] < counts[2] == 1020
    both = frame_of(SPANS["90 days"], list(STORES))
    apart = [await api(store, "payouts/stats", **period(SPANS["90 days"])) for store in STORES]
    assert one(url, sql.TOTAL_SATS, both) == sum(s["totalAmountSats"] for s in apart)


async def api_ids(api: Any, store: str, span: timedelta, **params: Any) -> list[str]:
    ids, cursor = [], {}
    while True:
        page = await api(store, "payouts", limit=500, **period(span), **params, **cursor)
        ids += [p["payoutId"] for p in page["items"]]
        if page["nextCursor"] is None:
            return ids
        cursor = {"cursor": page["nextCursor"]}


async def test_the_list_search_matches_what_the_api_q_matches(ledger, api) -> None:
    url, _ = ledger
    span = SPANS["2 years"]
    store = STORES[0]
    with psycopg.connect(reader(url)) as conn:
        sample = conn.execute(
            "SELECT payout_id, amount, currency, amount_sats FROM grafana_payouts "
            "WHERE store_id = %s AND currency = 'USD' ORDER BY payout_id LIMIT 1",
            (store,),
        ).fetchone()
    pid, usd, _, sats = sample
    searches = [pid, pid[:3], pid[:1], str(usd), str(sats), "5000", "0", "x' OR '1'='1", "a%", "_"]
    matched = 0
    for q in searches:
        board = [
            row[0] for row in run_sql(url, sql.PAYOUTS_TABLE, frame_of(span, [store], search=q))
        ]
        assert sorted(board) == sorted(await api_ids(api, store, span, q=q)), q
        matched += bool(board)
    assert matched >= 5
    by_sats = run_sql(url, sql.PAYOUTS_TABLE, frame_of(span, [store], search=str(sats)))
    assert pid in [row[0] for row in by_sats]  # a USD payout found by its sats


@pytest.mark.parametrize("span", SPANS.values(), ids=SPANS.keys())
async def test_the_list_says_how_many_it_shows_of_how_many_match(ledger, api, span) -> None:
    url, _ = ledger
    cases: list[dict[str, Any]] = [
        {},
        {"status": ["Completed", "Failed"]},
        {"search": "a0"},
        {"card": "Till 1"},
    ]
    for variables in cases:
        frame = frame_of(span, list(STORES), **variables)
        shown = run_sql(url, sql.PAYOUTS_TABLE, frame)
        listed = {row[0]: row for row in run_sql(url, sql.PAYOUTS_LISTED, frame)}
        assert sorted(listed) == sorted(STORES)
        for store in STORES:
            _, name, in_list, matching, card_id = listed[store]
            assert name == f"Shop {store[-1].upper()}"
            assert in_list == sum(1 for row in shown if row[-1] == store)
            params: dict[str, Any] = {"limit": 1}
            if "status" in variables:
                params["status"] = ",".join(variables["status"])
            if "search" in variables:
                params["q"] = variables["search"]
            if "card" in variables:
                params["boltcardId"] = card_id
                assert card_id  # the alias names one card of the store
            page = await api(store, "payouts", **period(span), **params)
            assert matching == page["total"], (variables, store)


def test_a_list_cut_at_its_limit_says_so(ledger) -> None:
    url, _ = ledger
    frame = frame_of(SPANS["2 years"], list(STORES))
    assert len(run_sql(url, sql.PAYOUTS_TABLE, frame)) == sql.LIST_LIMIT
    counts = run_sql(url, sql.PAYOUTS_LISTED, frame)
    assert sum(row[2] for row in counts) == sql.LIST_LIMIT
    assert sum(row[3] for row in counts) == 1020
