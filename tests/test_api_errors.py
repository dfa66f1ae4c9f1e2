"""Bad input is a 400 naming the parameter, in the API's JSON error shape; never a 500."""

from __future__ import annotations

import base64
import json

import pytest
from api_fixtures import client_on, seed, shared_ledger

P = "/plugins/flash/api"

BAD = [
    ("/payouts?startDate=yesterday", "startDate"),
    ("/payouts?startDate=2024-02-30", "startDate"),
    ("/payouts?endDate=2024-13-01", "endDate"),
    ("/payouts?startDate=2024-03-05&endDate=2024-03-01", "endDate"),
    ("/payouts?status=Paid", "status"),
    ("/payouts?status=Completed&status=bogus", "status"),
    ("/payouts?limit=501", "limit"),
    ("/payouts?limit=0", "limit"),
    ("/payouts?limit=ten", "limit"),
    ("/payouts?offset=-1", "offset"),
    ("/payouts?cursor=not-a-cursor", "cursor"),
    ("/payouts?cursor=" + base64.urlsafe_b64encode(b'["createdAt","desc",1,2]').decode(), "cursor"),
    (
        "/payouts?sort=amount&cursor="
        + base64.urlsafe_b64encode(
            json.dumps(["createdAt", "desc", "2024-03-01T00:00:00+00:00", "x"]).encode()
        ).decode(),
        "cursor",
    ),
    ("/payouts?sort=payee", "sort"),
    ("/payouts?order=sideways", "order"),
    ("/payouts?minAmount=-5", "minAmount"),
    ("/payouts?maxAmount=1e999", "maxAmount"),
    ("/payouts?minAmount=10&maxAmount=1", "maxAmount"),
    ("/payouts?boltcardId=" + "x" * 65, "boltcardId"),
    ("/payouts?q=%00", "q"),
    ("/payouts/export?format=xls", "format"),
    ("/payouts/stats?startDate=2024-99-01", "startDate"),
    ("/payouts/stats?top=0", "top"),
    ("/boltcards/usage?sort=alias", "sort"),
    ("/boltcards/usage?limit=1000", "limit"),
    ("/events/poll?after=yesterday", "after"),
]


async def small_seed(engine):
    return await seed(engine, n_a=3, n_b=1)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger(request, tmp_path_factory):
    """One small ledger per database for the module: bad requests change nothing."""
    yield from shared_ledger(request.param, tmp_path_factory, small_seed)


@pytest.fixture
async def world(ledger, aiohttp_client):
    url, s = ledger
    async with client_on(aiohttp_client, url) as (_, client):
        yield s, client


async def test_bad_parameter_is_400_naming_it(world):
    s, client = world
    for path, name in BAD:
        r = await client.get(P + path, headers=s.auth("A-viewer"))
        assert r.status == 400, (path, await r.text())
        body = await r.json()
        assert body["code"] == "invalid-parameter", path
        assert body["message"].startswith(name + ":"), (path, body["message"])


async def test_a_cursor_from_one_page_works_only_with_its_own_sort(world):
    s, client = world
    r = await client.get(P + "/payouts?limit=1&sort=amount", headers=s.auth("A-viewer"))
    cursor = (await r.json())["nextCursor"]
    r = await client.get(P + f"/payouts?cursor={cursor}&sort=status", headers=s.auth("A-viewer"))
    assert r.status == 400
    assert (await r.json())["message"].startswith("cursor:")


async def test_unknown_payout_and_route_are_json_404(world):
    s, client = world
    r = await client.get(P + "/payouts/nope", headers=s.auth("A-viewer"))
    assert r.status == 404 and (await r.json())["code"] == "not-found"
    r = await client.get(P + "/nowhere", headers=s.auth("A-viewer"))
    assert r.status == 404 and (await r.json())["code"] == "not-found"


async def test_malformed_bodies_are_400(world):
    s, client = world
    h = {**s.auth("A-manager"), "Content-Type": "application/json"}
    for body in ("{", "[]", '{"enabled": "yes"}', '{"txLimitSats": -1}', '{"colour": 1}'):
        r = await client.patch(P + "/boltcards/carda1", data=body, headers=h)
        assert r.status == 400, body
        assert set(await r.json()) == {"code", "message"}
