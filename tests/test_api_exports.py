"""Exports: the same rows as the list, streamed, and CSV that a spreadsheet cannot execute."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from api_fixtures import (
    BASE,
    STORE_A,
    add_card,
    api_client,
    client_on,
    seed,
    shared_ledger,
    write_payout,
)

from api.export import csv_cell

P = "/plugins/flash/api"


async def export_seed(engine):
    return await seed(engine, n_a=30, n_b=5)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger(request, tmp_path_factory):
    """One seeded ledger per database for the module's exports, which only read."""
    yield from shared_ledger(request.param, tmp_path_factory, export_seed)


@pytest.fixture
async def world(ledger, aiohttp_client):
    url, s = ledger
    # A small batch makes the export cross many keyset batches.
    async with client_on(aiohttp_client, url, export_batch=4) as (_, client):
        yield s, client


async def test_payout_export_has_every_filtered_row_in_csv_and_json(world):
    s, client = world
    query = {"status": ["Completed", "Processing"], "startDate": "2024-03-02"}
    want = sorted(
        (
            p
            for p in s.of(STORE_A)
            if p.status in ("Completed", "Processing") and p.created_at >= BASE + timedelta(days=1)
        ),
        key=lambda p: (p.created_at, p.id),
        reverse=True,
    )
    r = await client.get(
        f"{P}/payouts/export", params={**query, "format": "csv"}, headers=s.auth("A-viewer")
    )
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert [row["payoutId"] for row in rows] == [p.id for p in want]
    assert all(row["storeId"] == STORE_A for row in rows)

    r = await client.get(
        f"{P}/payouts/export", params={**query, "format": "json"}, headers=s.auth("A-viewer")
    )
    items = await r.json()
    assert [i["payoutId"] for i in items] == [p.id for p in want]
    for item, p in zip(items, want, strict=True):
        assert (Decimal(item["amount"]) if item["amount"] else None) == p.amount


async def test_empty_export_is_a_header_or_an_empty_array(world):
    s, client = world
    params = {"startDate": "2030-01-01"}
    r = await client.get(f"{P}/payouts/export", params=params, headers=s.auth("A-viewer"))
    assert (await r.text()).strip().startswith("payoutId,")
    assert len((await r.text()).strip().splitlines()) == 1
    r = await client.get(
        f"{P}/payouts/export", params={**params, "format": "json"}, headers=s.auth("A-viewer")
    )
    assert await r.json() == []


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("plain", "plain"),
        (None, ""),
        (Decimal("1.50"), "1.5"),
    ],
)
def test_csv_cells_cannot_start_a_formula(value, cell):
    assert csv_cell(value) == cell


async def test_hostile_alias_and_error_text_are_quoted_and_neutralised(engine, aiohttp_client):
    s = await seed(engine, n_a=0, n_b=0)
    hostile = '=cmd|"/c calc"!A1, "quoted", and\nnewline'
    await add_card(engine, "evil", STORE_A, alias=hostile)
    await write_payout(engine, "zz1", STORE_A, "Completed", Decimal(5), BASE, card_id="evil")
    client = await api_client(aiohttp_client, engine)
    r = await client.get(f"{P}/boltcards/usage/export", headers=s.auth("A-viewer"))
    rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert rows == [
        {
            "boltcardId": "evil",
            "alias": "'" + hostile,
            "totalPayouts": "1",
            "totalAmount": "5",
            "taps": "0",
            "refusedTaps": "0",
            "firstUsed": "2024-03-01T00:00:00Z",
            "lastUsed": "2024-03-01T00:00:00Z",
        }
    ]
    r = await client.get(f"{P}/boltcards/usage/export?format=json", headers=s.auth("A-viewer"))
    assert (await r.json())[0]["alias"] == hostile


async def test_usage_export_matches_the_usage_endpoint(world):
    s, client = world
    r = await client.get(f"{P}/boltcards/usage?limit=500", headers=s.auth("A-viewer"))
    listed = (await r.json())["items"]
    r = await client.get(f"{P}/boltcards/usage/export?format=json", headers=s.auth("A-viewer"))
    assert await r.json() == listed
