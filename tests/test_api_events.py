"""Live updates: a new payout event or tap of the caller's store arrives on the stream."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

from api_fixtures import STORE_A, STORE_B, add_tap, api_client, seed, write_payout

P = "/plugins/flash/api"


async def next_event(resp, timeout: float = 10.0) -> dict:
    """Read SSE lines until one whole event (with data) has arrived."""
    event: dict = {}

    async def read() -> dict:
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("id: "):
                event["id"] = line[4:]
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and "data" in event:
                return event

    return await asyncio.wait_for(read(), timeout)


async def test_stream_pushes_payouts_and_taps_of_the_callers_store_only(engine, aiohttp_client):
    s = await seed(engine, n_a=2, n_b=2)
    client = await api_client(aiohttp_client, engine, events_poll_interval=0.05)
    resp = await client.get(f"{P}/events", headers=s.auth("A-viewer"))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    await asyncio.sleep(0.2)  # the stream has taken its starting position

    now = datetime.now(UTC)
    await write_payout(engine, "other1", STORE_B, "Completed", Decimal(9), now)
    await write_payout(engine, "live1", STORE_A, "AwaitingPayment", Decimal(7), now)
    first = await next_event(resp)
    assert first["event"] == "payout"
    assert first["data"]["payoutId"] == "live1"
    assert first["data"]["status"] == "Processing"

    await add_tap(engine, "carda1", STORE_A, datetime.now(UTC))
    tap = await next_event(resp)
    assert tap["event"] == "tap" and tap["data"]["boltcardId"] == "carda1"
    assert "remoteAddr" not in tap["data"] and "uid" not in tap["data"]
    resp.close()

    # Resuming from the last id misses nothing and repeats nothing.
    await write_payout(engine, "live2", STORE_A, "Completed", Decimal(3), datetime.now(UTC))
    resp = await client.get(
        f"{P}/events", headers={**s.auth("A-viewer"), "Last-Event-ID": tap["id"]}
    )
    again = await next_event(resp)
    assert again["data"]["payoutId"] == "live2"
    resp.close()


async def test_polling_fallback_returns_changes_after_a_position(engine, aiohttp_client):
    s = await seed(engine, n_a=1, n_b=1)
    client = await api_client(aiohttp_client, engine)
    r = await client.get(f"{P}/events/poll", headers=s.auth("A-viewer"))
    start = (await r.json())["next"]
    await write_payout(engine, "poll1", STORE_A, "Completed", Decimal(1), datetime.now(UTC))
    await write_payout(engine, "poll2", STORE_B, "Completed", Decimal(1), datetime.now(UTC))
    r = await client.get(f"{P}/events/poll", params={"after": start}, headers=s.auth("A-viewer"))
    body = await r.json()
    assert [c["data"]["payoutId"] for c in body["changes"]] == ["poll1"]
    r = await client.get(
        f"{P}/events/poll", params={"after": body["next"]}, headers=s.auth("A-viewer")
    )
    assert (await r.json())["changes"] == []
