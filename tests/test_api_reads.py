"""One payout in full, the period's statistics and card usage, against what the test wrote."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from api_fixtures import BASE, STORE_A, add_tap, api_client, client_on, seed, shared_ledger

P = "/plugins/flash/api"


async def seed_with_taps(engine):
    """The seed, and one accepted and one refused tap of carda1 on the fourth day."""
    s = await seed(engine)
    await add_tap(engine, "carda1", STORE_A, BASE + timedelta(days=3))
    await add_tap(engine, "carda1", STORE_A, BASE + timedelta(days=3), outcome="replay")
    return s


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger(request, tmp_path_factory):
    """One seeded ledger per database for the module's read-only tests."""
    yield from shared_ledger(request.param, tmp_path_factory, seed_with_taps)


@pytest.fixture
async def world(ledger, aiohttp_client):
    url, s = ledger
    async with client_on(aiohttp_client, url) as (_, client):
        yield s, client


@pytest.fixture
async def own_world(engine, aiohttp_client):
    """A ledger of the test's own, for the tests that change it."""
    s = await seed(engine)
    return s, await api_client(aiohttp_client, engine)


async def test_detail_has_history_and_card_usage(world):
    s, client = world
    p = next(p for p in s.of(STORE_A) if p.card_id == "carda2")
    r = await client.get(f"{P}/payouts/{p.id}", headers=s.auth("A-viewer"))
    assert r.status == 200
    body = await r.json()
    assert body["payoutId"] == p.id and body["state"] == p.state
    assert [e["type"] for e in body["events"]] == ["PayoutCreated", "CardLinked"]
    assert body["events"][0]["source"] == "reconcile"
    card = body["boltcard"]
    mine = [q for q in s.of(STORE_A) if q.card_id == "carda2"]
    assert card["alias"] == "alias carda2"
    assert card["totalPayouts"] == len(mine)
    assert card["totalAmount"] == sum(int(q.amount) for q in mine if q.amount is not None)


async def test_stats_count_and_value_by_status_and_period(world):
    s, client = world
    r = await client.get(
        f"{P}/payouts/stats",
        params={"startDate": "2024-03-02", "endDate": "2024-03-08"},
        headers=s.auth("A-viewer"),
    )
    assert r.status == 200
    body = await r.json()
    first, last = BASE.date() + timedelta(days=1), BASE.date() + timedelta(days=7)
    rows = [p for p in s.of(STORE_A) if first <= p.created_at.date() <= last]
    by_status = Counter(p.status for p in rows)
    assert body["totalCount"] == len(rows)
    assert body["totalAmountSats"] == sum(int(p.amount or 0) for p in rows)
    for status in ("Pending", "Processing", "Completed", "Failed"):
        assert body["byStatus"][status]["count"] == by_status[status]
    finished = by_status["Completed"] + by_status["Failed"]
    assert body["successRate"] == pytest.approx(by_status["Completed"] / finished)
    days = Counter(p.created_at.date().isoformat() for p in rows)
    assert {d["start"]: d["count"] for d in body["series"]["day"]} == dict(days)
    weeks = Counter(
        (p.created_at.date() - timedelta(days=p.created_at.weekday())).isoformat() for p in rows
    )
    assert {w["start"]: w["count"] for w in body["series"]["week"]} == dict(weeks)
    assert body["series"]["month"] == [
        {
            "start": "2024-03-01",
            "count": len(rows),
            "amountSats": body["totalAmountSats"],
            "byStatus": {k: by_status[k] for k in body["byStatus"]},
        }
    ]
    sats = defaultdict(int)
    for p in rows:
        if p.card_id:
            sats[p.card_id] += int(p.amount or 0)
    top = sorted(sats.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(c["boltcardId"], c["totalAmount"]) for c in body["topCards"]] == top


async def test_stats_default_to_the_last_30_days(world):
    s, client = world
    body = await (await client.get(f"{P}/payouts/stats", headers=s.auth("A-viewer"))).json()
    assert body["totalCount"] == 0  # the seed lies in March 2024
    first, last = body["startDate"], body["endDate"]
    from datetime import date

    assert (date.fromisoformat(last) - date.fromisoformat(first)).days == 29


@pytest.mark.parametrize(
    ("sort", "order"), [("totalAmount", "desc"), ("totalPayouts", "asc"), ("lastUsed", "desc")]
)
async def test_usage_per_card_sorted_and_paged(world, sort, order):
    s, client = world
    rows = [p for p in s.of(STORE_A) if p.card_id and p.created_at >= BASE + timedelta(days=2)]
    want: dict[str, dict] = {}
    for p in rows:
        w = want.setdefault(p.card_id, {"totalPayouts": 0, "totalAmount": 0, "lastUsed": None})
        w["totalPayouts"] += 1
        w["totalAmount"] += int(p.amount or 0)
        w["lastUsed"] = max(w["lastUsed"] or p.created_at, p.created_at)
    ordered = sorted(want, key=lambda c: (want[c][sort], c), reverse=order == "desc")
    got = []
    for offset in (0, 2):
        r = await client.get(
            f"{P}/boltcards/usage",
            params={
                "startDate": "2024-03-03",
                "sort": sort,
                "order": order,
                "limit": "2",
                "offset": str(offset),
            },
            headers=s.auth("A-viewer"),
        )
        body = await r.json()
        assert body["total"] == len(want)
        got += body["items"]
    assert [u["boltcardId"] for u in got] == ordered
    for u in got:
        assert u["totalPayouts"] == want[u["boltcardId"]]["totalPayouts"]
        assert u["totalAmount"] == want[u["boltcardId"]]["totalAmount"]
        assert u["alias"] == "alias " + u["boltcardId"]
    carda1 = next(u for u in got if u["boltcardId"] == "carda1")
    assert (carda1["taps"], carda1["refusedTaps"]) == (2, 1)


async def test_manager_changes_card_and_tracking(own_world):
    s, client = own_world
    h = s.auth("A-manager")
    r = await client.patch(
        f"{P}/boltcards/carda1",
        json={"alias": "front till", "enabled": False, "txLimitSats": 5000, "dayLimitSats": 20000},
        headers=h,
    )
    assert r.status == 200
    body = await r.json()
    assert (body["alias"], body["enabled"], body["txLimitSats"], body["dayLimitSats"]) == (
        "front till",
        False,
        5000,
        20000,
    )
    r = await client.get(f"{P}/boltcards/carda1", headers=s.auth("A-viewer"))
    assert (await r.json())["alias"] == "front till"
    r = await client.put(f"{P}/stores/{STORE_A}/card-tracking", json={"enabled": False}, headers=h)
    assert r.status == 200 and (await r.json()) == {"storeId": STORE_A, "cardTracking": False}


async def test_usage_page_past_the_last_card_is_empty_but_keeps_the_total(world):
    s, client = world
    cards = {p.card_id for p in s.of(STORE_A) if p.card_id}
    r = await client.get(
        f"{P}/boltcards/usage",
        params={"startDate": "2024-03-01", "limit": "5", "offset": "50"},
        headers=s.auth("A-viewer"),
    )
    body = await r.json()
    assert r.status == 200 and body["items"] == []
    assert body["total"] == len(cards)
