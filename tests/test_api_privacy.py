"""A card holder's data: everything is exported; erasure removes the personal part only."""

from __future__ import annotations

from datetime import timedelta

from api_fixtures import BASE, STORE_A, add_tap, api_client, seed
from sqlalchemy import select

from ledger.schema import Boltcard, CardTap, Counter, Payout

P = "/plugins/flash/api"


async def test_card_data_export_holds_taps_payouts_and_no_keys(engine, aiohttp_client):
    s = await seed(engine, n_a=20, n_b=3)
    tap_id = await add_tap(engine, "carda1", STORE_A, BASE + timedelta(hours=5))
    client = await api_client(aiohttp_client, engine)
    r = await client.get(f"{P}/boltcards/carda1/data", headers=s.auth("A-manager"))
    assert r.status == 200
    data = await r.json()
    assert data["boltcard"]["uid"] == "04a1b2c3d4e5f6"
    assert "keys_sealed" not in str(data) and "uid_hash" not in str(data)
    assert [t["id"] for t in data["taps"]] == [tap_id]
    assert data["taps"][0]["remoteAddr"] == "203.0.113.7"
    assert sorted(p["payoutId"] for p in data["payouts"]) == sorted(
        p.id for p in s.of(STORE_A) if p.card_id == "carda1"
    )


async def test_erasure_removes_personal_data_and_keeps_every_aggregate(engine, aiohttp_client):
    s = await seed(engine, n_a=20, n_b=3)
    await add_tap(engine, "carda1", STORE_A, BASE + timedelta(hours=5))
    client = await api_client(aiohttp_client, engine)
    h = s.auth("A-manager")
    reads = [
        f"{P}/payouts/stats?startDate=2024-03-01&endDate=2024-03-31",
        f"{P}/boltcards/usage",
        f"{P}/payouts?boltcardId=carda1&limit=500",
    ]

    async def snapshot():
        out = [await (await client.get(u, headers=h)).json() for u in reads]
        async with engine.connect() as conn:
            counters = (await conn.execute(select(Counter.__table__))).all()
        return out, sorted(counters)

    before, counters_before = await snapshot()
    r = await client.delete(f"{P}/boltcards/carda1/personal-data", headers=h)
    assert r.status == 200
    body = await r.json()
    linked = sum(1 for p in s.of(STORE_A) if p.card_id == "carda1")
    assert (body["tapsErased"], body["payoutsErased"]) == (1, linked)

    async with engine.connect() as conn:
        card = (await conn.execute(select(Boltcard.__table__).where(Boltcard.id == "carda1"))).one()
        taps = (
            await conn.execute(select(CardTap.__table__).where(CardTap.card_id == "carda1"))
        ).all()
        uids = (
            (await conn.execute(select(Payout.card_uid).where(Payout.card_id == "carda1")))
            .scalars()
            .all()
        )
    assert card.uid is None and card.alias is None and card.erased_at is not None
    assert all(t.uid is None and t.remote_addr is None and t.user_agent is None for t in taps)
    assert uids and all(u is None for u in uids)

    after, counters_after = await snapshot()
    assert counters_after == counters_before

    def without_aliases(stats):
        return {**stats, "topCards": [{**c, "alias": None} for c in stats["topCards"]]}

    assert without_aliases(after[0]) == without_aliases(before[0])
    for a, b in zip(after[1]["items"], before[1]["items"], strict=True):  # usage, alias gone
        assert {**a, "alias": None} == {**b, "alias": None}
    assert [p["payoutId"] for p in after[2]["items"]] == [p["payoutId"] for p in before[2]["items"]]
    assert all(p["boltcardNtag"] is None for p in after[2]["items"])

    r = await client.get(f"{P}/boltcards/carda1", headers=h)
    assert (await r.json())["erased"] is True
