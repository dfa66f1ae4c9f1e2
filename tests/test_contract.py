"""The Greenfield contract (tests/contract): the client's requests, the simulator's answers and
its webhook deliveries, each validated against the JSON Schemas written from BTCPay's models.

The checker stands in front of the simulator, so the same run checks both sides: a field the
client renames fails its request's schema, a field the simulator renames fails its answer's.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from greenfield_contract import CONTRACT as CONTRACT_DIR
from greenfield_contract import Contract, Exchange, violations

from btcpay_sim import InvoiceMinter, SimConfig, create_app
from lnurl_gateway.greenfield import (
    GreenfieldAuthError,
    GreenfieldClient,
    GreenfieldError,
    GreenfieldNotFound,
    GreenfieldUnavailable,
    GreenfieldValidationError,
)

ADMIN = "contract-admin"
WEAK = "contract-weak"
MINTER = InvoiceMinter()
CONTRACT = Contract()
# Each public call of the client, and the operation it makes.
CLIENT_CALLS = {
    "health": "health",
    "current_api_key": "current-api-key",
    "get_store": "get-store",
    "get_payout": "get-store-payout",
    "list_payouts": "list-store-payouts",
    "iter_payouts": "list-store-payouts",
    "get_pull_payment": "get-pull-payment",
    "pull_payment_pays_lightning": "get-pull-payment-lnurl",
    "claim_payout": "claim-payout",
    "create_webhook": "create-webhook",
    "list_webhooks": "list-webhooks",
    "delete_webhook": "delete-store-webhook",
}


@dataclass
class Checked:
    url: str
    seen: list[Exchange]
    app: web.Application


@pytest.fixture
async def checked() -> AsyncIterator[Checked]:
    """The simulator behind the contract's checker, on a real socket."""
    seen: list[Exchange] = []
    keys = {ADMIN: ["unrestricted"], WEAK: ["btcpay.store.canviewpullpayments"]}
    app = create_app(SimConfig(api_keys=keys, auto_progress=False, redelivery_scale=0.001))
    app.middlewares.insert(0, CONTRACT.middleware(seen))
    async with TestServer(app) as server:
        yield Checked(str(server.make_url("")).rstrip("/"), seen, app)


def seen_operations(seen: list[Exchange]) -> set[str]:
    return {e.operation for e in seen if e.operation}


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    key: str | None = ADMIN,
    **kwargs: Any,
) -> tuple[int, Any]:
    headers = {"Authorization": f"token {key}"} if key else {}
    async with http.request(method, url, json=body, headers=headers, **kwargs) as response:
        raw = await response.read()
        return response.status, json.loads(raw) if raw.strip() else None


async def store_and_pull_payments(http: aiohttp.ClientSession, url: str) -> tuple[str, str, str]:
    """A store, a card pull payment (BOLT11Expiration 0) and one made with BTCPay's defaults."""
    _, store = await call(http, "POST", f"{url}/api/v1/stores", {"name": "Contract shop"})
    pull_payments = f"{url}/api/v1/stores/{store['id']}/pull-payments"
    body = {"name": "cards", "amount": "100000", "currency": "SATS", "payoutMethods": ["BTC-LN"]}
    _, cards = await call(
        http, "POST", pull_payments, {**body, "autoApproveClaims": True, "BOLT11Expiration": 0}
    )
    _, defaults = await call(http, "POST", pull_payments, body)
    return store["id"], cards["id"], defaults["id"]


# --- the contract itself ------------------------------------------------------------------------


def test_every_greenfield_route_of_the_simulator_is_an_operation_of_the_contract() -> None:
    app = create_app(SimConfig())
    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "HEAD"
    }
    assert routes == set(CONTRACT.operations)


def test_every_schema_is_used_and_every_schema_named_exists() -> None:
    # Common answers, and the body of a webhook delivery (which BTCPay sends, not answers).
    named = {"common.json", "Unauthenticated.json", "MissingPermission.json", "WebhookEvent.json"}
    for op in CONTRACT.operations.values():
        named |= {op.request} if op.request else set()
        named |= set(op.responses.values())
    text = "".join(p.read_text() for p in (CONTRACT_DIR / "schemas").glob("*.json"))
    named |= set(re.findall(r'"\$ref": "([A-Za-z]+\.json)', text))
    assert named == CONTRACT.schema_names


def test_every_public_call_of_the_client_is_mapped_to_an_operation() -> None:
    calls = {
        name
        for name, member in inspect.getmembers(GreenfieldClient)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
    }
    assert calls - {"close"} == set(CLIENT_CALLS)
    for operation in CLIENT_CALLS.values():
        CONTRACT.by_id(operation)


# --- the client's requests and the simulator's answers to them ----------------------------------


async def test_the_clients_requests_and_the_simulators_answers_keep_the_contract(
    checked: Checked,
) -> None:
    url = checked.url
    async with aiohttp.ClientSession() as http:
        store_id, cards, defaults = await store_and_pull_payments(http, url)
    invoice = MINTER.mint(21_000, expiry=3600)
    try:
        async with (
            GreenfieldClient(url, ADMIN, timeout=5, retries=0) as admin,
            GreenfieldClient(url, WEAK, timeout=5, retries=0) as weak,
            GreenfieldClient(url, "unknown-key", timeout=5, retries=0) as stranger,
            GreenfieldClient(url, timeout=5, retries=0) as anonymous,
        ):
            assert (await admin.health())["synchronized"] is True
            assert (await admin.current_api_key()).permissions == ("unrestricted",)
            with pytest.raises(GreenfieldAuthError):
                await stranger.current_api_key()
            assert (await admin.get_store(store_id))["id"] == store_id
            with pytest.raises(GreenfieldAuthError):
                await admin.get_store("no-such-store")

            assert (await anonymous.get_pull_payment(cards))["BOLT11Expiration"] == 0
            with pytest.raises(GreenfieldNotFound):
                await anonymous.get_pull_payment("no-such-pull-payment")
            assert await anonymous.pull_payment_pays_lightning(cards) is True

            claimed = await anonymous.claim_payout(cards, invoice.bolt11)
            await anonymous.claim_payout(cards, MINTER.mint(5_000).bolt11, amount="5")
            for pull_payment, destination in (
                (defaults, MINTER.mint(21_000, expiry=3600).bolt11),  # 422: expires too soon
                (cards, invoice.bolt11),  # 400: duplicate-destination
                ("no-such-pull-payment", invoice.bolt11),  # 404
            ):
                with pytest.raises(GreenfieldError):
                    await anonymous.claim_payout(pull_payment, destination)

            assert (await admin.get_payout(store_id, claimed["id"]))["id"] == claimed["id"]
            with pytest.raises(GreenfieldNotFound):
                await admin.get_payout(store_id, "no-such-payout")
            assert len(await admin.list_payouts(store_id)) == 2
            assert len([p async for p in admin.iter_payouts(store_id, False)]) == 2
            with pytest.raises(GreenfieldAuthError):
                await weak.list_payouts(store_id)

            hook = await admin.create_webhook(store_id, "http://127.0.0.1:9/hook", "s3cret")
            assert [h["id"] for h in await admin.list_webhooks(store_id)] == [hook["id"]]
            await admin.delete_webhook(store_id, hook["id"])

            async with aiohttp.ClientSession() as http:
                await call(http, "POST", f"{url}/_sim/faults", {"fail_rate": 1.0}, key=None)
                with pytest.raises(GreenfieldUnavailable):
                    await anonymous.health()
    finally:
        # The client's requests are all well-formed, whatever BTCPay made of them: checked
        # even when a call failed, so a drift names the field rather than BTCPay's refusal.
        assert violations(checked.seen, strict_requests=True) == []

    assert set(CLIENT_CALLS.values()) <= seen_operations(checked.seen)
    statuses = {e.status for e in checked.seen}
    assert {200, 400, 401, 403, 404, 422, 503} <= statuses


async def test_a_claim_refused_for_its_invoices_expiry_is_a_422_on_destination_by_contract(
    checked: Checked,
) -> None:
    async with aiohttp.ClientSession() as http:
        _, _, defaults = await store_and_pull_payments(http, checked.url)
    async with GreenfieldClient(checked.url, timeout=5, retries=0) as anonymous:
        with pytest.raises(GreenfieldValidationError) as refused:
            await anonymous.claim_payout(defaults, MINTER.mint(21_000, expiry=3600).bolt11)
    assert violations(checked.seen) == []
    assert [e["path"] for e in refused.value.errors] == ["Destination"]


# --- the simulator's other operations -----------------------------------------------------------


async def test_every_operation_of_the_simulator_answers_by_the_contract(
    checked: Checked,
) -> None:
    url = checked.url
    api = f"{url}/api/v1"
    async with aiohttp.ClientSession() as http:
        store_id, cards, defaults = await store_and_pull_payments(http, url)
        store = f"{api}/stores/{store_id}"
        assert (await call(http, "POST", f"{api}/stores", {"name": ""}))[0] == 422
        assert (await call(http, "GET", f"{api}/stores"))[0] == 200
        assert (await call(http, "GET", f"{api}/health", key=None))[0] == 200
        assert (await call(http, "GET", f"{api}/api-keys/current"))[0] == 200
        assert (await call(http, "GET", store))[0] == 200
        assert (await call(http, "GET", f"{store}/webhooks"))[0] == 200
        assert (await call(http, "POST", f"{store}/pull-payments", {"amount": "0"}))[0] == 422
        assert (await call(http, "GET", f"{store}/pull-payments?includeArchived=true"))[0] == 200
        _, on_chain = await call(
            http,
            "POST",
            f"{store}/pull-payments",
            {"amount": "1", "currency": "BTC", "payoutMethods": ["BTC-CHAIN"]},
        )
        assert (await call(http, "GET", f"{api}/pull-payments/{on_chain['id']}/lnurl"))[0] == 400
        assert (await call(http, "GET", f"{api}/pull-payments/{cards}/lnurl"))[0] == 200

        # Payouts of a pull payment that does not approve by itself, through their life.
        _, manual = await call(
            http,
            "POST",
            f"{store}/pull-payments",
            {"amount": "100000", "currency": "SATS", "payoutMethods": ["BTC-LN"],
             "BOLT11Expiration": 0},
        )  # fmt: skip
        claims = f"{api}/pull-payments/{manual['id']}/payouts"
        ids = []
        for sats in (1_000, 2_000, 3_000):
            body = {"destination": MINTER.mint(sats * 1000).bolt11, "payoutMethodId": "BTC-LN"}
            ids.append((await call(http, "POST", claims, body, key=None))[1]["id"])
        assert (await call(http, "POST", claims, {"destination": "x"}, key=None))[0] == 422
        assert (await call(http, "GET", f"{claims}?includeCancelled=true", key=None))[0] == 200
        assert (await call(http, "GET", f"{claims}/{ids[0]}", key=None))[0] == 200
        assert (await call(http, "GET", f"{claims}/nope", key=None))[0] == 404
        first, second = (f"{store}/payouts/{i}" for i in ids[:2])
        assert (await call(http, "POST", first, {}))[0] == 422  # no revision
        assert (await call(http, "POST", first, {"revision": 3}))[0] == 400  # old-revision
        assert (await call(http, "POST", first, {"revision": 0}))[0] == 200
        assert (await call(http, "POST", f"{first}/mark", {"state": "InProgress"}))[0] == 200
        assert (await call(http, "POST", f"{first}/mark", {"state": "Nope"}))[0] == 422
        assert (await call(http, "DELETE", first))[0] == 400  # money may be moving
        assert (await call(http, "POST", f"{first}/mark-paid"))[0] == 200
        assert (await call(http, "POST", f"{first}/mark-paid"))[0] == 400  # Completed is final
        assert (await call(http, "POST", f"{store}/payouts/nope/mark-paid"))[0] == 404
        assert (await call(http, "POST", f"{store}/payouts/nope/mark", {}))[0] == 404
        assert (await call(http, "DELETE", second))[0] == 200
        assert (await call(http, "DELETE", f"{store}/payouts/nope"))[0] == 404
        assert (await call(http, "POST", f"{store}/payouts/nope", {"revision": 0}))[0] == 404
        assert (await call(http, "GET", f"{api}/payouts/{ids[0]}"))[0] == 200
        assert (await call(http, "GET", first))[0] == 200
        assert (await call(http, "GET", f"{api}/payouts/nope"))[0] == 404
        assert (await call(http, "GET", f"{store}/payouts?includeCancelled=true"))[0] == 200
        assert (await call(http, "GET", f"{api}/pull-payments/{defaults}"))[0] == 200

        # Webhooks, by their store and by their id alone.
        hook = {
            "url": "http://127.0.0.1:9/hook",
            "authorizedEvents": {"everything": True, "specificEvents": []},
        }
        assert (await call(http, "POST", f"{store}/webhooks", {"url": "ftp://x"}))[0] == 422
        _, made = await call(http, "POST", f"{store}/webhooks", hook)
        by_store, by_id = f"{store}/webhooks/{made['id']}", f"{api}/webhooks/{made['id']}"
        assert (await call(http, "GET", by_store))[0] == 200
        assert (await call(http, "PUT", by_store, {"enabled": False}))[0] == 200
        assert (await call(http, "PUT", by_store, {"url": "nope"}))[0] == 422
        assert (await call(http, "GET", by_id))[0] == 200
        assert (await call(http, "PUT", by_id, {"enabled": True}))[0] == 200
        assert (await call(http, "PUT", f"{api}/webhooks/nope", {}))[0] == 404
        assert (await call(http, "PUT", f"{store}/webhooks/nope", {}))[0] == 404
        assert (await call(http, "DELETE", by_id))[0] == 200
        assert (await call(http, "GET", by_id))[0] == 404
        assert (await call(http, "GET", by_store))[0] == 404
        _, again = await call(http, "POST", f"{store}/webhooks", hook)
        assert (await call(http, "DELETE", f"{store}/webhooks/{again['id']}"))[0] == 200
        assert (await call(http, "DELETE", f"{store}/webhooks/{again['id']}"))[0] == 404
        assert (await call(http, "DELETE", f"{api}/webhooks/{again['id']}"))[0] == 404

        # BTCPay's own Boltcards: registration on a pull payment.
        boltcards = f"{api}/pull-payments/{cards}/boltcards"
        assert (await call(http, "POST", boltcards, {"UID": "04a1b2c3d4e5f6"}, key=None))[0] == 200
        assert (
            await call(
                http, "POST", f"{boltcards}?onExisting=KeepVersion", {"UID": "04a1b2c3d4e5f6"},
                key=None,
            )
        )[0] == 200  # fmt: skip
        assert (await call(http, "POST", boltcards, {"UID": "04"}, key=None))[0] == 422
        missing = f"{api}/pull-payments/nope/boltcards"
        assert (await call(http, "POST", missing, {"UID": "04a1b2c3d4e5f6"}, key=None))[0] == 404

        # Archiving, by the store and by the id alone.
        assert (await call(http, "DELETE", f"{store}/pull-payments/{on_chain['id']}"))[0] == 200
        assert (await call(http, "DELETE", f"{store}/pull-payments/nope"))[0] == 404
        assert (await call(http, "DELETE", f"{api}/pull-payments/{manual['id']}"))[0] == 200
        assert (await call(http, "DELETE", f"{api}/pull-payments/nope"))[0] == 404

    assert violations(checked.seen) == []
    succeeded = {e.operation for e in checked.seen if e.status == 200}
    assert succeeded == {op.id for op in CONTRACT.operations.values()}


# --- webhook deliveries -------------------------------------------------------------------------


async def test_webhook_deliveries_and_their_redeliveries_keep_the_contract(
    checked: Checked, aiohttp_server: Any
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    script = [500]

    async def receive(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=script.pop(0) if script else 200)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    server = await aiohttp_server(receiver)
    async with aiohttp.ClientSession() as http:
        store_id, cards, _ = await store_and_pull_payments(http, checked.url)
        hook = {"url": str(server.make_url("/hook")), "secret": "contract-secret"}
        await call(http, "POST", f"{checked.url}/api/v1/stores/{store_id}/webhooks", hook)
        async with GreenfieldClient(checked.url, timeout=5) as anonymous:
            await anonymous.claim_payout(cards, MINTER.mint(21_000).bolt11)
        for _ in range(200):
            if len(received) >= 3:
                break
            await asyncio.sleep(0.02)

    assert len(received) == 3  # created (failed, then redelivered), approved
    bodies = [json.loads(raw) for _, raw in received]
    for headers, raw in received:
        assert CONTRACT.errors("WebhookEvent.json", json.loads(raw)) == []
        expected = hmac.new(b"contract-secret", raw, hashlib.sha256).hexdigest()
        assert headers["BTCPay-Sig"] == f"sha256={expected}"
    assert [b["isRedelivery"] for b in bodies] == [False, True, False]
    assert bodies[1]["originalDeliveryId"] == bodies[0]["deliveryId"] != bodies[1]["deliveryId"]
