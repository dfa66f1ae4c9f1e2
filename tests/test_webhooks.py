"""The webhook receiver and the enrichment worker, fed by the BTCPay simulator over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from btcpay_sim import InvoiceMinter, SimConfig, start
from btcpay_sim.models import PayoutEvent as SimEvent
from btcpay_sim.webhooks import Delivery
from ledger.ingest import count_pending_events
from ledger.schema import Counter, Payout, PayoutEvent
from ledger.secretbox import SecretBox
from ledger.stores import upsert_store
from lnurl_gateway.app import GatewayConfig, create_app
from lnurl_gateway.btcpay_stores import StoreClients, seal_api_key, seal_webhook_secret
from lnurl_gateway.enrich import Enricher
from lnurl_gateway.greenfield import GreenfieldClient
from lnurl_gateway.ingestion import ENRICHER, setup_ingestion
from lnurl_gateway.webhooks import WEBHOOK_PATH, WebhookReceiver, add_webhook_route, signature_of

MINTER = InvoiceMinter()
SECRET = "whsec-test-0123456789"
API_KEY = "greenfield-key"


@pytest.fixture
def box(master_key_hex: str) -> SecretBox:
    return SecretBox.from_text(master_key_hex)


@dataclass
class Shop:
    url: str
    store_id: str
    pull_payment_id: str
    admin: GreenfieldClient

    async def claim(self, sats: int = 1_000) -> dict[str, Any]:
        return await self.admin.claim_payout(self.pull_payment_id, MINTER.mint(sats * 1000).bolt11)

    async def control(self, path: str, body: dict[str, Any]) -> Any:
        return await self.admin._json("POST", path, body=body, auth=False)


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    running = await start(
        SimConfig(
            api_keys={API_KEY: ["unrestricted"]},
            auto_progress=False,
            redelivery_scale=0.001,
            seed=11,
        )
    )
    admin = GreenfieldClient(running.url, API_KEY, timeout=5, retries=0)
    try:
        store = await admin._json("POST", "/api/v1/stores", body={"name": "Shop"})
        pp = await admin._json(
            "POST",
            f"/api/v1/stores/{store['id']}/pull-payments",
            body={
                "name": "c",
                "amount": "100000000",
                "currency": "SATS",
                "autoApproveClaims": True,
                "payoutMethods": ["BTC-LN"],
                "BOLT11Expiration": 0,
            },
        )
        yield Shop(running.url, store["id"], pp["id"], admin)
    finally:
        await admin.close()
        await running.close()


async def connect(engine: AsyncEngine, box: SecretBox, shop: Shop, secret: str = SECRET) -> None:
    async with engine.begin() as conn:
        await upsert_store(
            conn,
            shop.store_id,
            name="Shop",
            btcpay_url=shop.url,
            api_key_sealed=seal_api_key(box, shop.store_id, API_KEY),
            webhook_secret_sealed=seal_webhook_secret(box, shop.store_id, secret),
        )


@pytest.fixture
async def receiver(engine: AsyncEngine, box: SecretBox) -> AsyncIterator[str]:
    """A bare receiver (no background worker), so tests drive enrichment themselves."""
    app = web.Application()
    add_webhook_route(app, WebhookReceiver(engine, box))
    async with TestServer(app) as server:
        yield str(server.make_url(WEBHOOK_PATH))


def btcpay_body(store_id: str, payout_id: str, delivery: str = "D1", original: str = "D1") -> bytes:
    """A body exactly as BTCPay (the simulator's sender) serialises it."""
    event = SimEvent("PayoutCreated", store_id, payout_id, "PP1", "AwaitingApproval", 1767225600)
    return Delivery("WH1", delivery, original, delivery != original, event).body()


async def post(url: str, body: bytes, signature: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["BTCPay-Sig"] = signature
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status, await r.json()


async def pending(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await count_pending_events(conn)


async def event_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(PayoutEvent))).scalar_one()


async def test_btcpay_body_signed_with_the_store_secret_is_accepted(
    engine: AsyncEngine, box: SecretBox, shop: Shop, receiver: str
) -> None:
    await connect(engine, box, shop)
    body = btcpay_body(shop.store_id, "PAYOUT1")
    assert body.startswith(b'{\n  "deliveryId": "D1",')  # BTCPay's indented format
    status, answer = await post(receiver, body, signature_of(SECRET, body))
    assert (status, answer["status"]) == (200, "accepted")
    async with engine.connect() as conn:
        row = (await conn.execute(select(PayoutEvent))).mappings().one()
    assert (row["payout_id"], row["source"], row["delivery_id"]) == ("PAYOUT1", "webhook", "D1")
    assert row["enrich_pending"] is True
    assert row["state"] == "AwaitingApproval"


@pytest.mark.parametrize("tamper", ["flip-one-byte", "wrong-secret", "no-header", "bare-hex"])
async def test_altered_or_unsigned_body_gets_401_and_leaves_the_ledger_untouched(
    engine: AsyncEngine, box: SecretBox, shop: Shop, receiver: str, tamper: str
) -> None:
    await connect(engine, box, shop)
    body = btcpay_body(shop.store_id, "PAYOUT1")
    signature: str | None = signature_of(SECRET, body)
    if tamper == "flip-one-byte":
        at = body.index(b"PAYOUT1")
        body = body[:at] + b"Q" + body[at + 1 :]  # still valid JSON, same store
    elif tamper == "wrong-secret":
        signature = signature_of("another-secret", body)
    elif tamper == "no-header":
        signature = None
    else:
        signature = signature_of(SECRET, body).removeprefix("sha256=")
    status, answer = await post(receiver, body, signature)
    assert status == 401
    assert answer["error"] == "bad-signature"
    assert await event_count(engine) == 0


async def test_unknown_store_is_404_and_bad_json_is_400_and_nothing_is_stored(
    engine: AsyncEngine, box: SecretBox, shop: Shop, receiver: str
) -> None:
    await connect(engine, box, shop)
    unknown = btcpay_body("NOSUCHSTORE", "PAYOUT1")
    status, answer = await post(receiver, unknown, signature_of(SECRET, unknown))
    assert (status, answer["error"]) == (404, "unknown-store")
    for garbage in (b"{not json", b"[1, 2]", b"\xff\xfe", b'{"storeId": 5}'):
        status, answer = await post(receiver, garbage, signature_of(SECRET, garbage))
        assert status == 400, garbage
        assert "error" in answer
    assert await event_count(engine) == 0


async def test_the_gateway_listener_answers_wrong_paths_and_methods_in_json(
    engine: AsyncEngine, box: SecretBox
) -> None:
    # Beside the Boltcard endpoints (LUD-03 errors), the listener's other answers to bad
    # requests are JSON in the webhook receiver's shape, not aiohttp's text pages.
    app = create_app(engine, box, GatewayConfig(public_url="http://gw.test", network="regtest"))
    add_webhook_route(app, WebhookReceiver(engine, box))
    async with TestClient(TestServer(app)) as client:
        wrong_method = await client.get(WEBHOOK_PATH)
        missing = await client.post("/webhooks/nowhere", data=b"{}")
        assert wrong_method.status == 405 and wrong_method.headers["Allow"] == "POST"
        assert await wrong_method.json() == {
            "error": "method-not-allowed",
            "message": "Method Not Allowed",
        }
        assert missing.status == 404
        assert await missing.json() == {"error": "not-found", "message": "Not Found"}
    assert await event_count(engine) == 0


async def test_redelivery_of_the_same_event_is_stored_once(
    engine: AsyncEngine, box: SecretBox, shop: Shop, receiver: str
) -> None:
    await connect(engine, box, shop)
    first = btcpay_body(shop.store_id, "PAYOUT1", "D1", "D1")
    again = btcpay_body(shop.store_id, "PAYOUT1", "D2", "D1")  # BTCPay's redelivery
    answers = [
        await post(receiver, body, signature_of(SECRET, body)) for body in (first, first, again)
    ]
    assert [a[1]["status"] for a in answers] == ["accepted", "duplicate", "duplicate"]
    assert await event_count(engine) == 1
    async with engine.connect() as conn:
        counted = (
            await conn.execute(select(Counter.value).where(Counter.name == "webhook_events"))
        ).scalar_one()
    assert counted == 1


async def test_concurrent_deliveries_are_each_stored_once_with_their_redeliveries(
    engine: AsyncEngine, box: SecretBox, shop: Shop, receiver: str
) -> None:
    """Deliveries arriving together share writes: each still gets its own answer, a redelivery
    racing its original (even in the same write) is stored once, and the counter agrees."""
    await connect(engine, box, shop)
    bodies = []
    for i in range(40):
        bodies.append(btcpay_body(shop.store_id, f"PAYOUT{i}", f"D{i}", f"D{i}"))
        if i % 2 == 0:
            bodies.append(btcpay_body(shop.store_id, f"PAYOUT{i}", f"R{i}", f"D{i}"))
    answers = await asyncio.gather(
        *(post(receiver, body, signature_of(SECRET, body)) for body in bodies)
    )
    assert all(status == 200 for status, _ in answers)
    statuses = [answer["status"] for _, answer in answers]
    assert statuses.count("accepted") == 40 and statuses.count("duplicate") == 20
    ids = [answer["eventId"] for _, answer in answers if answer["status"] == "accepted"]
    assert len(set(ids)) == 40
    assert await event_count(engine) == 40
    async with engine.connect() as conn:
        counted = (
            await conn.execute(select(Counter.value).where(Counter.name == "webhook_events"))
        ).scalar_one()
        delivered = set(
            (await conn.execute(select(PayoutEvent.delivery_id, PayoutEvent.payout_id))).all()
        )
    assert counted == 40
    assert delivered == {(f"D{i}", f"PAYOUT{i}") for i in range(40)}


async def test_simulator_deliveries_are_enriched_into_payouts(
    engine: AsyncEngine, box: SecretBox, shop: Shop
) -> None:
    """End to end on a gateway app: BTCPay posts, the worker fetches, the payout lands."""
    await connect(engine, box, shop)
    app = web.Application()
    setup_ingestion(app, engine=engine, box=box, reconcile_interval=3600, btcpay_timeout=5)
    async with TestServer(app) as server:
        await shop.admin.create_webhook(shop.store_id, str(server.make_url(WEBHOOK_PATH)), SECRET)
        claimed = await shop.claim(2_100)
        payout = await _wait_for_payout(engine, claimed["id"], "AwaitingPayment")
        for _ in range(100):  # both deliveries (created, approved) worked off
            if await pending(engine) == 0 and await event_count(engine) >= 2:
                break
            await asyncio.sleep(0.05)
        assert app[ENRICHER].backing_off() == {}
    assert payout["amount_sats"] == 2_100
    assert payout["destination"] == claimed["destination"]
    assert payout["payout_method_id"] == "BTC-LN"
    async with engine.connect() as conn:
        assert await count_pending_events(conn) == 0
        sources = (await conn.execute(select(PayoutEvent.source, PayoutEvent.event_type))).all()
    assert {(s, t) for s, t in sources} >= {
        ("webhook", "PayoutCreated"),
        ("webhook", "PayoutApproved"),
    }


async def _wait_for_payout(engine: AsyncEngine, payout_id: str, state: str) -> dict[str, Any]:
    for _ in range(200):
        async with engine.connect() as conn:
            row = (
                (await conn.execute(select(Payout).where(Payout.id == payout_id)))
                .mappings()
                .one_or_none()
            )
        if row is not None and row["state"] == state:
            return dict(row)
        await asyncio.sleep(0.05)
    raise AssertionError(f"payout {payout_id} never reached {state} in the ledger")


async def test_events_wait_in_the_ledger_while_btcpay_is_down_and_are_enriched_after(
    engine: AsyncEngine, box: SecretBox, shop: Shop, receiver: str
) -> None:
    await connect(engine, box, shop)
    await shop.admin.create_webhook(shop.store_id, receiver, SECRET)
    claimed = [await shop.claim(1_000 + i) for i in range(5)]
    for _ in range(200):
        if await pending(engine) == 10:  # created + approved, per payout
            break
        await asyncio.sleep(0.05)
    assert await pending(engine) == 10

    await shop.control("/_sim/faults", {"drop_connections": True})
    clients = StoreClients(engine, box, timeout=1, retries=0)
    try:
        down = Enricher(engine, clients, backoff_base=0.05, backoff_max=0.1)
        stats = await down.run_once()
        assert stats.enriched == 0 and stats.deferred > 0
        async with engine.connect() as conn:
            assert await count_pending_events(conn) == 10
            assert (await conn.execute(select(func.count()).select_from(Payout))).scalar_one() == 0
    finally:
        await clients.close()

    # BTCPay is back, and this is a fresh worker: as after a restart, the queue is the ledger.
    await shop.control("/_sim/faults", {"drop_connections": False})
    clients = StoreClients(engine, box, timeout=5)
    try:
        stats = await Enricher(engine, clients).run_once()
    finally:
        await clients.close()
    assert stats.enriched == 10
    async with engine.connect() as conn:
        assert await count_pending_events(conn) == 0
        rows = (await conn.execute(select(Payout.id, Payout.state, Payout.amount_sats))).all()
    assert {(r.id, r.state, r.amount_sats) for r in rows} == {
        (c["id"], "AwaitingPayment", 1_000 + i) for i, c in enumerate(claimed)
    }


async def test_enrichment_converges_on_btcpay_state_whatever_the_event_order(
    engine: AsyncEngine, box: SecretBox, shop: Shop, receiver: str
) -> None:
    await connect(engine, box, shop)
    claimed = await shop.claim(3_000)
    await shop.admin._json(
        "POST",
        f"/api/v1/stores/{shop.store_id}/payouts/{claimed['id']}/mark-paid",
    )
    # The newest event arrives first, the oldest last.
    for delivery, state in (("D3", "Completed"), ("D1", "AwaitingApproval")):
        body = json.dumps(
            {
                "deliveryId": delivery,
                "webhookId": "W",
                "originalDeliveryId": delivery,
                "isRedelivery": False,
                "type": "PayoutUpdated",
                "timestamp": 1767225600,
                "storeId": shop.store_id,
                "payoutId": claimed["id"],
                "pullPaymentId": shop.pull_payment_id,
                "payoutState": state,
            },
            indent=2,
        ).encode()
        assert (await post(receiver, body, signature_of(SECRET, body)))[0] == 200
        clients = StoreClients(engine, box, timeout=5)
        try:
            await Enricher(engine, clients).run_once()
        finally:
            await clients.close()
    async with engine.connect() as conn:
        row = (
            (await conn.execute(select(Payout).where(Payout.id == claimed["id"]))).mappings().one()
        )
    assert row["state"] == "Completed" and row["status"] == "Completed"


class SlowBtcpay:
    """In front of the simulator: the next payout fetch is answered with the payout as it was
    when asked, but only once released, as when BTCPay or the network is slow to answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hold_next = False
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        held, self.hold_next = self.hold_next, False
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                self.upstream + request.path_qs,
                headers={"Authorization": request.headers.get("Authorization", "")},
                data=await request.read() or None,
            ) as answer,
        ):
            status, body = answer.status, await answer.read()
        if held:
            self.asked.set()
            await self.release.wait()
        return web.Response(status=status, body=body, content_type="application/json")


async def test_a_stale_in_progress_fetch_answered_after_completed_leaves_completed(
    engine: AsyncEngine, box: SecretBox, shop: Shop, receiver: str
) -> None:
    slow = SlowBtcpay(shop.url)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow.handle)
    async with TestServer(app) as front:
        shop_via_front = dataclasses.replace(shop, url=str(front.make_url("")).rstrip("/"))
        await connect(engine, box, shop_via_front)
        claimed = await shop.claim(4_000)
        payout_url = f"/api/v1/stores/{shop.store_id}/payouts/{claimed['id']}"
        await shop.admin._json("POST", payout_url + "/mark", body={"state": "InProgress"})

        async def deliver(delivery: str, state: str) -> None:
            body = json.dumps(
                {"deliveryId": delivery, "webhookId": "W", "originalDeliveryId": delivery,
                 "isRedelivery": False, "type": "PayoutUpdated", "timestamp": 1767225600,
                 "storeId": shop.store_id, "payoutId": claimed["id"],
                 "pullPaymentId": shop.pull_payment_id, "payoutState": state},
                indent=2,
            ).encode()  # fmt: skip
            assert (await post(receiver, body, signature_of(SECRET, body)))[0] == 200

        async def enrich() -> None:
            clients = StoreClients(engine, box, timeout=30, retries=0)
            try:
                await Enricher(engine, clients).run_once()
            finally:
                await clients.close()

        # The InProgress event's fetch is asked for, and its answer is slow to come back ...
        await deliver("D1", "InProgress")
        slow.hold_next = True
        stale = asyncio.create_task(enrich())
        await asyncio.wait_for(slow.asked.wait(), 10)
        # ... meanwhile the payment completes, and its event is enriched at once.
        await shop.admin._json("POST", payout_url + "/mark-paid")
        await deliver("D2", "Completed")
        await enrich()
        assert (await _wait_for_payout(engine, claimed["id"], "Completed"))["status"] == "Completed"
        # The stale InProgress answer arrives last.
        slow.release.set()
        await asyncio.wait_for(stale, 10)

    async with engine.connect() as conn:
        row = (
            (await conn.execute(select(Payout).where(Payout.id == claimed["id"]))).mappings().one()
        )
        states = (
            (
                await conn.execute(
                    select(PayoutEvent.state)
                    .where(PayoutEvent.payout_id == claimed["id"], PayoutEvent.state.is_not(None))
                    .order_by(PayoutEvent.id)
                )
            )
            .scalars()
            .all()
        )
    assert (row["state"], row["status"]) == ("Completed", "Completed")
    assert "InProgress" not in states[states.index("Completed") :]
