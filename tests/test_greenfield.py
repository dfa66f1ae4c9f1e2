"""The Greenfield client against the BTCPay simulator (over HTTP) and against scripted servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from btcpay_sim import InvoiceMinter, SimConfig, start
from lnurl_gateway.greenfield import (
    CAN_VIEW_PAYOUTS,
    GreenfieldAuthError,
    GreenfieldClient,
    GreenfieldError,
    GreenfieldNotFound,
    GreenfieldUnavailable,
    GreenfieldValidationError,
    permission_granted,
    refused_for_invoice_expiry,
)
from lnurl_gateway.payout_shape import normalise_payout

MINTER = InvoiceMinter()
ADMIN = "admin-key"


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    running = await start(
        SimConfig(api_keys={ADMIN: ["unrestricted"]}, auto_progress=False, seed=3)
    )
    try:
        yield running.url
    finally:
        await running.close()


async def _store_and_pull_payment(client: GreenfieldClient, auto_approve: bool = True):
    store = await client._json("POST", "/api/v1/stores", body={"name": "Shop"})
    pp = await client._json(
        "POST",
        f"/api/v1/stores/{store['id']}/pull-payments",
        body={
            "name": "cards",
            "amount": "1000000",
            "currency": "SATS",
            "autoApproveClaims": auto_approve,
            "payoutMethods": ["BTC-LN"],
            "BOLT11Expiration": 0,
        },
    )
    return store["id"], pp["id"]


async def test_claimed_payout_can_be_fetched_and_listed(sim: str) -> None:
    async with GreenfieldClient(sim, ADMIN, timeout=5) as client:
        store_id, pp_id = await _store_and_pull_payment(client)
        invoice = MINTER.mint(21_000)
        async with GreenfieldClient(sim, timeout=5) as anonymous:
            claimed = await anonymous.claim_payout(pp_id, invoice.bolt11)
        assert claimed["state"] == "AwaitingPayment"
        fetched = await client.get_payout(store_id, claimed["id"])
        assert fetched["destination"] == invoice.bolt11
        listed = await client.list_payouts(store_id)
        assert [p["id"] for p in listed] == [claimed["id"]]
        record = normalise_payout(fetched, store_id)
        assert record.payment_hash == invoice.payment_hash
        assert record.amount_sats == 21
        assert record.original_amount == Decimal(21) and record.original_currency == "SATS"


async def test_claiming_the_same_invoice_twice_is_a_validation_error(sim: str) -> None:
    async with GreenfieldClient(sim, ADMIN, timeout=5) as client:
        _, pp_id = await _store_and_pull_payment(client)
        invoice = MINTER.mint(5_000)
        await client.claim_payout(pp_id, invoice.bolt11)
        with pytest.raises(GreenfieldValidationError) as caught:
            await client.claim_payout(pp_id, invoice.bolt11)
        assert caught.value.code == "duplicate-destination"
        assert caught.value.status == 400


async def test_missing_payout_is_not_found(sim: str) -> None:
    async with GreenfieldClient(sim, ADMIN, timeout=5) as client:
        store_id, _ = await _store_and_pull_payment(client)
        with pytest.raises(GreenfieldNotFound):
            await client.get_payout(store_id, "nope")


async def test_key_without_payout_permission_names_it(sim: str) -> None:
    async with GreenfieldClient(sim, ADMIN, timeout=5) as admin:
        store_id, _ = await _store_and_pull_payment(admin)
        await admin._json(
            "POST",
            "/_sim/api-keys",
            body={"apiKey": "weak", "permissions": ["btcpay.store.canviewpullpayments"]},
        )
    async with GreenfieldClient(sim, "weak", timeout=5) as weak:
        info = await weak.current_api_key()
        assert info.missing(store_id) == [
            "btcpay.store.canviewpayouts",
            "btcpay.store.webhooks.canmodifywebhooks",
        ]
        with pytest.raises(GreenfieldAuthError) as caught:
            await weak.list_payouts(store_id)
    assert caught.value.status == 403
    assert caught.value.missing_permission == CAN_VIEW_PAYOUTS
    assert "weak" not in str(caught.value)


async def test_a_store_the_key_cannot_see_is_a_403_naming_the_permission(sim: str) -> None:
    async with GreenfieldClient(sim, ADMIN, timeout=5) as client:
        with pytest.raises(GreenfieldAuthError) as caught:
            await client.get_payout("no-such-store", "p1")
    assert caught.value.status == 403
    assert caught.value.missing_permission == CAN_VIEW_PAYOUTS
    assert "missing permission btcpay.store.canviewpayouts" in caught.value.message


async def test_missing_permission_is_read_from_btcpays_field_first() -> None:
    async def denied(request: web.Request) -> web.Response:
        # The message names nothing: only the field does.
        body = {"code": "missing-permission", "message": "Insufficient API Permissions.",
                "missingPermission": "btcpay.store.webhooks.canmodifywebhooks"}  # fmt: skip
        return web.json_response(body, status=403)

    app = web.Application()
    app.router.add_get("/api/v1/stores/{store}/webhooks", denied)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        async with GreenfieldClient(url, "k", timeout=2, retries=0) as client:
            with pytest.raises(GreenfieldAuthError) as caught:
                await client.list_webhooks("S1")
    assert caught.value.missing_permission == "btcpay.store.webhooks.canmodifywebhooks"


async def test_a_claim_refused_for_the_invoices_expiry_is_told_apart(sim: str) -> None:
    async with GreenfieldClient(sim, ADMIN, timeout=5) as client:
        store_id, open_pp = await _store_and_pull_payment(client)
        strict = await client._json(
            "POST",
            f"/api/v1/stores/{store_id}/pull-payments",
            body={"amount": "100000", "currency": "SATS", "payoutMethods": ["BTC-LN"]},
        )
    refusals = []
    async with GreenfieldClient(sim, timeout=5) as anonymous:
        for pp_id, destination, amount in (
            (strict["id"], MINTER.mint(21_000, expiry=3600).bolt11, None),
            (open_pp, MINTER.mint(21_000).bolt11, "1"),  # 422 too, on Amount
            (open_pp, "not an invoice", None),  # 422 too, on Destination
        ):
            with pytest.raises(GreenfieldValidationError) as caught:
                await anonymous.claim_payout(pp_id, destination, amount=amount)
            refusals.append(caught.value)

    assert [refused_for_invoice_expiry(e) for e in refusals] == [True, False, False]
    assert [e.status for e in refusals] == [422, 422, 422]


def test_permissions_follow_btcpay_implications_and_store_scopes() -> None:
    assert permission_granted(["unrestricted"], CAN_VIEW_PAYOUTS, "S1")
    assert permission_granted(["btcpay.store.canmodifystoresettings"], CAN_VIEW_PAYOUTS, "S1")
    assert permission_granted(["btcpay.store.canviewstoresettings:S1"], CAN_VIEW_PAYOUTS, "S1")
    assert not permission_granted(["btcpay.store.canviewstoresettings:S2"], CAN_VIEW_PAYOUTS, "S1")
    assert not permission_granted(["btcpay.store.canmanagepullpayments"], CAN_VIEW_PAYOUTS, "S1")


async def test_idempotent_calls_are_retried_through_503s() -> None:
    calls = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return web.json_response({"code": "down", "message": "busy"}, status=503)
        return web.json_response({"synchronized": True})

    app = web.Application()
    app.router.add_get("/api/v1/health", flaky)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        async with GreenfieldClient(url, timeout=2, retries=3, backoff=0.01) as client:
            assert await client.health() == {"synchronized": True}
    assert calls == 3


async def test_claims_are_never_retried() -> None:
    calls = 0

    async def down(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"code": "down", "message": "busy"}, status=503)

    app = web.Application()
    app.router.add_post("/api/v1/pull-payments/{pp}/payouts", down)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        async with GreenfieldClient(url, timeout=2, retries=5, backoff=0.01) as client:
            with pytest.raises(GreenfieldUnavailable):
                await client.claim_payout("pp", "lnbc1...")
    assert calls == 1


async def test_a_hanging_server_times_out_as_unavailable() -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/api/v1/health", hang)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        async with GreenfieldClient(url, timeout=0.2, retries=1, backoff=0.01) as client:
            with pytest.raises(GreenfieldUnavailable, match="timed out"):
                await client.health()


async def test_nothing_listening_is_unavailable() -> None:
    async with GreenfieldClient("http://127.0.0.1:9", timeout=1, retries=0) as client:
        with pytest.raises(GreenfieldUnavailable):
            await client.health()


async def _serve_bytes(payload: bytes, chunk: int) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start_at in range(0, len(payload), chunk):
            await response.write(payload[start_at : start_at + chunk])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/stores/{store}/payouts", handler)
    return app


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
async def test_payout_list_is_parsed_identically_whatever_the_chunking(chunk: int) -> None:
    items = [
        {"id": f"p{i}", "metadata": {"note": "caf\u00e9 \u26a1 [x], {y}", "n": i}, "v": "1.5"}
        for i in range(50)
    ]
    payload = json.dumps(items, indent=2, ensure_ascii=False).encode()
    async with TestServer(await _serve_bytes(payload, chunk)) as server:
        url = str(server.make_url("")).rstrip("/")
        async with GreenfieldClient(url, "k", timeout=5) as client:
            assert await client.list_payouts("S") == items


@pytest.mark.parametrize("payload", [b"[]", b" [ ] ", b"\n[\n]\n"])
async def test_empty_payout_list_is_empty(payload: bytes) -> None:
    async with TestServer(await _serve_bytes(payload, 1)) as server:
        url = str(server.make_url("")).rstrip("/")
        async with GreenfieldClient(url, "k", timeout=5) as client:
            assert await client.list_payouts("S") == []


@pytest.mark.parametrize(
    "payload", [b'[{"id": "a"}', b'[{"id": "a"} {"id": "b"}]', b'{"id": "a"}', b"[1, 2]", b"["]
)
async def test_malformed_payout_list_is_an_error(payload: bytes) -> None:
    async with TestServer(await _serve_bytes(payload, 3)) as server:
        url = str(server.make_url("")).rstrip("/")
        async with GreenfieldClient(url, "k", timeout=5) as client:
            with pytest.raises(GreenfieldError):
                await client.list_payouts("S")
