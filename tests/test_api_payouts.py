"""Listing payouts: every filter, sort and paging path, checked against what the test wrote."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from api_fixtures import BASE, STORE_A, STORE_B, Written, client_on, seed, shared_ledger

URL = "/plugins/flash/api/payouts"


def sort_key(sort: str):
    return {
        "createdAt": lambda p: (p.created_at, p.id),
        "amount": lambda p: (p.amount if p.amount is not None else Decimal(-1), p.id),
        "status": lambda p: (p.status, p.created_at, p.id),
    }[sort]


def expected(
    rows: list[Written],
    *,
    start=None,
    end=None,
    statuses=(),
    card=None,
    q=None,
    lo=None,
    hi=None,
    sort="createdAt",
    desc=True,
) -> list[str]:
    def keep(p: Written) -> bool:
        if start is not None and p.created_at < start:
            return False
        if end is not None and p.created_at >= end:
            return False
        if statuses and p.status not in statuses:
            return False
        if card is not None and p.card_id != card:
            return False
        if lo is not None and (p.amount is None or p.amount < lo):
            return False
        if hi is not None and (p.amount is None or p.amount > hi):
            return False
        if q is not None:
            by_amount = p.amount is not None and _is_number(q) and p.amount == Decimal(q)
            if not (p.id.startswith(q) or by_amount):
                return False
        return True

    return [p.id for p in sorted(filter(keep, rows), key=sort_key(sort), reverse=desc)]


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


async def walk(client, headers, params: dict, limit: int = 7) -> tuple[list[str], set[int]]:
    """Every page by cursor; returns the ids in order and the totals each page reported."""
    ids: list[str] = []
    totals: set[int] = set()
    cursor = None
    for _ in range(100):
        query = {**params, "limit": str(limit)}
        if cursor:
            query["cursor"] = cursor
        r = await client.get(URL, params=query, headers=headers)
        assert r.status == 200, await r.text()
        body = await r.json()
        assert len(body["items"]) <= limit
        ids += [p["payoutId"] for p in body["items"]]
        totals.add(body["total"])
        cursor = body["nextCursor"]
        if cursor is None:
            return ids, totals
    raise AssertionError("paging never ended")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger(request, tmp_path_factory):
    """One seeded ledger per database for the whole module: every test here only reads."""
    yield from shared_ledger(request.param, tmp_path_factory, seed)


@pytest.fixture
async def world(ledger, aiohttp_client):
    url, s = ledger
    async with client_on(aiohttp_client, url) as (_, client):
        yield s, client


@pytest.mark.parametrize("sort", ["createdAt", "amount", "status"])
@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_cursor_paging_visits_every_payout_once_in_sort_order(world, sort, order):
    s, client = world
    ids, totals = await walk(client, s.auth("A-viewer"), {"sort": sort, "order": order})
    want = expected(s.of(STORE_A), sort=sort, desc=order == "desc")
    assert ids == want
    assert totals == {len(want)}


async def test_offset_paging_matches_the_sorted_rows(world):
    s, client = world
    want = expected(s.of(STORE_A), sort="amount", desc=False)
    got = []
    for offset in range(0, len(want) + 10, 10):
        r = await client.get(
            URL,
            params={"sort": "amount", "order": "asc", "limit": "10", "offset": str(offset)},
            headers=s.auth("A-viewer"),
        )
        body = await r.json()
        assert body["total"] == len(want)
        got += [p["payoutId"] for p in body["items"]]
    assert got == want


FILTERS = [
    ({"startDate": "2024-03-03"}, dict(start=BASE + timedelta(days=2))),
    ({"endDate": "2024-03-04"}, dict(end=BASE + timedelta(days=4))),
    (
        {"startDate": "2024-03-02", "endDate": "2024-03-05"},
        dict(start=BASE + timedelta(days=1), end=BASE + timedelta(days=5)),
    ),
    (
        {"startDate": "2024-03-02T10:30:00Z", "endDate": "2024-03-06T03:37:00+00:00"},
        dict(
            start=datetime.fromisoformat("2024-03-02T10:30:00+00:00"),
            end=datetime.fromisoformat("2024-03-06T03:37:00+00:00"),
        ),
    ),
    ({"status": "Completed"}, dict(statuses=("Completed",))),
    ({"status": ["Failed", "Pending"]}, dict(statuses=("Failed", "Pending"))),
    ({"status": "processing,completed"}, dict(statuses=("Processing", "Completed"))),
    ({"boltcardId": "carda2"}, dict(card="carda2")),
    ({"q": "ab"}, dict(q="ab")),
    ({"q": "aa01"}, dict(q="aa01")),
    ({"q": "10"}, dict(q="10")),
    ({"q": "2.25"}, dict(q="2.25")),
    ({"minAmount": "2"}, dict(lo=Decimal(2))),
    ({"maxAmount": "2.25"}, dict(hi=Decimal("2.25"))),
    ({"minAmount": "1", "maxAmount": "10"}, dict(lo=Decimal(1), hi=Decimal(10))),
    (
        {"startDate": "2024-03-02", "status": ["Completed", "Failed"], "boltcardId": "carda1"},
        dict(start=BASE + timedelta(days=1), statuses=("Completed", "Failed"), card="carda1"),
    ),
    (
        {"endDate": "2024-03-08", "status": "Processing"},
        dict(end=BASE + timedelta(days=8), statuses=("Processing",)),
    ),
]


@pytest.mark.parametrize(("query", "want"), FILTERS, ids=[str(q) for q, _ in FILTERS])
async def test_each_filter_returns_exactly_the_matching_payouts(world, query, want):
    s, client = world
    for sort in ("createdAt", "amount"):
        ids, totals = await walk(client, s.auth("A-viewer"), {**query, "sort": sort}, limit=5)
        rows = expected(s.of(STORE_A), sort=sort, **want)
        assert rows, "the filter should match something in the seed"
        assert ids == rows
        assert totals == {len(rows)}


async def test_a_token_sees_only_its_own_store_when_storeId_is_omitted(world):
    s, client = world
    ids, _ = await walk(client, s.auth("B-viewer"), {}, limit=50)
    assert ids == expected(s.of(STORE_B))
    assert not set(ids) & {p.id for p in s.of(STORE_A)}


async def test_the_default_page_is_fifty_newest_first(world):
    s, client = world
    r = await client.get(URL, headers=s.auth("A-viewer"))
    body = await r.json()
    assert [p["payoutId"] for p in body["items"]] == expected(s.of(STORE_A))[:50]
    assert body["total"] == 60 and body["nextCursor"]


async def test_a_payout_carries_the_requirements_fields_and_raw_state(world):
    s, client = world
    some = next(p for p in s.of(STORE_A) if p.card_id and p.amount is not None)
    r = await client.get(URL, params={"q": some.id}, headers=s.auth("A-viewer"))
    (item,) = (await r.json())["items"]
    assert item["payoutId"] == some.id
    assert item["storeId"] == STORE_A
    assert item["status"] == some.status and item["state"] == some.state
    assert Decimal(item["amount"]) == some.amount and item["currency"] == "SATS"
    assert item["boltcardId"] == some.card_id and item["boltcardNtag"] == "04a1b2c3d4e5f6"
    assert item["createdAt"] == some.created_at.isoformat().replace("+00:00", "Z")
    assert item["recipientAddress"] == "lnbc1" + some.id
    for name in ("pullPaymentId", "completedAt", "transactionId", "errorMessage", "revision"):
        assert name in item
