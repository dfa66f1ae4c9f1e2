"""Who may read what: credentials, store isolation, BTCPay API keys, and the rate limit."""

from __future__ import annotations

import asyncio

import pytest
from api_fixtures import STORE_A, STORE_B, api_client, client_on, seed, shared_ledger

from btcpay_sim.app import create_app as create_sim
from btcpay_sim.config import SimConfig
from ledger.stores import upsert_store
from ledger.tokens import create_token, revoke_token

P = "/plugins/flash/api"


def store_b_reads(s) -> list[str]:
    """Every read of store B's data, as a store-A viewer would try it."""
    payout_b = s.of(STORE_B)[0].id
    q = f"storeId={STORE_B}"
    return [
        f"{P}/payouts?{q}",
        f"{P}/payouts/{payout_b}",
        f"{P}/payouts/stats?{q}",
        f"{P}/boltcards/usage?{q}",
        f"{P}/payouts/export?{q}&format=csv",
        f"{P}/payouts/export?{q}&format=json",
        f"{P}/boltcards/usage/export?{q}",
        f"{P}/events?{q}",
        f"{P}/events/poll?{q}",
        f"{P}/boltcards/cardb1",
        f"{P}/boltcards/cardb1/data",
    ]


async def two_stores(engine):
    return await seed(engine, n_a=8, n_b=8)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger(request, tmp_path_factory):
    """One seeded ledger per database for the refusals, which must leave it as it was."""
    yield from shared_ledger(request.param, tmp_path_factory, two_stores)


@pytest.fixture
async def world(ledger, aiohttp_client):
    url, s = ledger
    async with client_on(aiohttp_client, url) as (_, client):
        yield s, client


async def test_a_viewer_of_store_a_gets_403_on_every_read_of_store_b(world):
    s, client = world
    for url in store_b_reads(s):
        r = await client.get(url, headers=s.auth("A-viewer"))
        assert r.status == 403, url
        body = await r.json()
        assert body["code"] == "forbidden" and body["message"], url
    # And the same reads of its own store succeed.
    for url in store_b_reads(s):
        url = url.replace(STORE_B, STORE_A).replace(s.of(STORE_B)[0].id, s.of(STORE_A)[0].id)
        url = url.replace("cardb1", "carda1")
        if "/events?" in url:
            continue  # the stream never ends; it is covered in test_api_events
        headers = s.auth("A-manager" if url.endswith("/data") else "A-viewer")
        r = await client.get(url, headers=headers)
        assert r.status == 200, url


async def test_a_viewer_of_store_a_cannot_change_store_b(world):
    s, client = world
    h = s.auth("A-manager")
    r = await client.patch(f"{P}/boltcards/cardb1", json={"enabled": False}, headers=h)
    assert r.status == 403
    r = await client.delete(f"{P}/boltcards/cardb1/personal-data", headers=h)
    assert r.status == 403
    r = await client.put(f"{P}/stores/{STORE_B}/card-tracking", json={"enabled": False}, headers=h)
    assert r.status == 403


async def test_a_viewer_token_may_not_manage(world):
    s, client = world
    h = s.auth("A-viewer")
    r = await client.patch(f"{P}/boltcards/carda1", json={"alias": "x"}, headers=h)
    assert r.status == 403
    r = await client.delete(f"{P}/boltcards/carda1/personal-data", headers=h)
    assert r.status == 403
    r = await client.get(f"{P}/boltcards/carda1/data", headers=h)
    assert r.status == 403


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer nope", "Basic dXNlcjpwYXNz", "token", "Bearer " + "x" * 600],
)
async def test_missing_or_unknown_credentials_get_401(world, header):
    _s, client = world
    headers = {} if header is None else {"Authorization": header}
    for url in (f"{P}/payouts", f"{P}/payouts/stats", f"{P}/events", f"{P}/boltcards/usage"):
        r = await client.get(url, headers=headers)
        assert r.status == 401, url
        assert (await r.json())["code"] == "unauthorized"


async def test_a_revoked_token_gets_401(engine, aiohttp_client):
    await two_stores(engine)
    client = await api_client(aiohttp_client, engine)
    async with engine.begin() as conn:
        info, token = await create_token(conn, STORE_A, "viewer")
    h = {"Authorization": f"Bearer {token}"}
    assert (await client.get(f"{P}/payouts", headers=h)).status == 200
    async with engine.begin() as conn:
        assert await revoke_token(conn, info.id)
    assert (await client.get(f"{P}/payouts", headers=h)).status == 401


async def test_rate_limit_answers_429_with_retry_after(engine, aiohttp_client):
    s = await seed(engine, n_a=2, n_b=1)
    client = await api_client(aiohttp_client, engine, rate=0.5, burst=3)
    statuses = [
        (await client.get(f"{P}/payouts", headers=s.auth("A-viewer"))).status for _ in range(3)
    ]
    assert statuses == [200, 200, 200]
    r = await client.get(f"{P}/payouts", headers=s.auth("A-viewer"))
    assert r.status == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["code"] == "rate-limited"
    # The bucket is per credential: another token is still served.
    assert (await client.get(f"{P}/payouts", headers=s.auth("A-manager"))).status == 200


# --- BTCPay API keys, checked against a BTCPay Server (the simulator, over HTTP) --------------

KEYS = {
    "view-a": [f"btcpay.store.canviewpayouts:{STORE_A}"],
    "manage-a": [f"btcpay.store.canmanagepayouts:{STORE_A}"],
    "settings-a": [f"btcpay.store.canviewstoresettings:{STORE_A}"],
    "pullpayments-a": [f"btcpay.store.canmanagepullpayments:{STORE_A}"],
}


@pytest.fixture
async def btcpay_world(engine, aiohttp_client, aiohttp_server):
    sim = await aiohttp_server(create_sim(SimConfig(api_keys=KEYS)))
    s = await seed(engine, n_a=4, n_b=4)
    async with engine.begin() as conn:
        for store in (STORE_A, STORE_B):
            await upsert_store(conn, store, btcpay_url=str(sim.make_url("")).rstrip("/"))
    return s, await api_client(aiohttp_client, engine)


def key(name: str) -> dict[str, str]:
    return {"Authorization": f"token {name}"}


async def test_btcpay_key_with_view_permission_reads_its_store_only(btcpay_world):
    s, client = btcpay_world
    for name in ("view-a", "manage-a", "settings-a"):
        r = await client.get(f"{P}/payouts?storeId={STORE_A}", headers=key(name))
        assert r.status == 200, name
        assert (await r.json())["total"] == 4
        r = await client.get(f"{P}/payouts/{s.of(STORE_A)[0].id}", headers=key(name))
        assert r.status == 200, name
        r = await client.get(f"{P}/payouts?storeId={STORE_B}", headers=key(name))
        assert r.status == 403, name
        r = await client.get(f"{P}/payouts/{s.of(STORE_B)[0].id}", headers=key(name))
        assert r.status == 403, name


async def test_btcpay_key_must_name_the_store(btcpay_world):
    _s, client = btcpay_world
    r = await client.get(f"{P}/payouts", headers=key("view-a"))
    assert r.status == 400
    assert "storeId" in (await r.json())["message"]


async def test_pull_payment_permissions_do_not_reach_payouts(btcpay_world):
    _s, client = btcpay_world
    r = await client.get(f"{P}/payouts?storeId={STORE_A}", headers=key("pullpayments-a"))
    assert r.status == 403


async def test_managing_needs_canmanagepayouts(btcpay_world):
    _s, client = btcpay_world
    body = {"alias": "till 3"}
    r = await client.patch(f"{P}/boltcards/carda1", json=body, headers=key("view-a"))
    assert r.status == 403
    r = await client.patch(f"{P}/boltcards/carda1", json=body, headers=key("manage-a"))
    assert r.status == 200
    assert (await r.json())["alias"] == "till 3"


async def test_unknown_btcpay_key_gets_401(btcpay_world):
    _s, client = btcpay_world
    r = await client.get(f"{P}/payouts?storeId={STORE_A}", headers=key("not-a-key"))
    assert r.status == 401


async def test_btcpay_answers_are_cached_briefly(engine, aiohttp_client, aiohttp_server):
    sim = await aiohttp_server(create_sim(SimConfig(api_keys=KEYS)))
    await seed(engine, n_a=2, n_b=1)
    async with engine.begin() as conn:
        await upsert_store(conn, STORE_A, btcpay_url=str(sim.make_url("")).rstrip("/"))
    client = await api_client(aiohttp_client, engine)
    url = f"{P}/payouts?storeId={STORE_A}"
    assert (await client.get(url, headers=key("view-a"))).status == 200
    await sim.close()
    # With BTCPay gone, the cached answer still serves the key it was given for...
    results = await asyncio.gather(*[client.get(url, headers=key("view-a")) for _ in range(5)])
    assert [r.status for r in results] == [200] * 5
    # ...while a key never seen must be checked, and BTCPay being down is a 502, not a 500.
    r = await client.get(url, headers=key("manage-a"))
    assert r.status == 502
    assert (await r.json())["code"] == "btcpay-unavailable"
