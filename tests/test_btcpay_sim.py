"""The BTCPay simulator, observed over HTTP the way the gateway and reconciler see BTCPay."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import bolt11
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from btcpay_sim import InvoiceMinter, ProgressDelays, SimConfig, create_app, start
from btcpay_sim.__main__ import add_arguments, config_from_args

PAYOUT_FIELDS = {
    "id",
    "revision",
    "pullPaymentId",
    "date",
    "destination",
    "originalAmount",
    "originalCurrency",
    "payoutAmount",
    "payoutCurrency",
    "payoutMethodId",
    "state",
    "paymentProof",
    "metadata",
}
WEBHOOK_FIELDS = [
    "deliveryId",
    "webhookId",
    "originalDeliveryId",
    "isRedelivery",
    "type",
    "timestamp",
    "storeId",
    "payoutId",
    "pullPaymentId",
    "payoutState",
]
ADMIN_KEY = "admin-key"
AUTH = {"Authorization": f"token {ADMIN_KEY}"}
# The key a store owner would have created in BTCPay: the simulator knows no other.
KEYS = {ADMIN_KEY: ["unrestricted"]}
MINTER = InvoiceMinter()

ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def config() -> SimConfig:
    return SimConfig(api_keys=KEYS, auto_progress=False, redelivery_scale=0.001, seed=7)


@pytest.fixture
async def sim(aiohttp_client: ClientFactory, config: SimConfig) -> TestClient:
    return await aiohttp_client(create_app(config))


class Receiver:
    """A webhook endpoint recording raw bodies; answers from a script, then 200."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.script: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        status = self.script.pop(0) if self.script else 200
        return web.Response(status=status)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.deliveries]


@pytest.fixture
async def receiver(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> tuple[Receiver, str]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    server = await aiohttp_server(app)
    return recv, str(server.make_url("/hook"))


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def make_store(sim: TestClient, name: str = "Shop") -> str:
    response = await sim.post("/api/v1/stores", json={"name": name}, headers=AUTH)
    assert response.status == 200
    return (await response.json())["id"]


async def make_pull_payment(
    sim: TestClient,
    store_id: str,
    amount: str = "1000000",
    currency: str = "SATS",
    auto_approve: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A card's pull payment as the guides create it: BOLT11Expiration 0, given explicitly."""
    response = await sim.post(
        f"/api/v1/stores/{store_id}/pull-payments",
        json={
            "name": "Cards",
            "description": "Boltcard spending",
            "amount": amount,
            "currency": currency,
            "autoApproveClaims": auto_approve,
            "payoutMethods": ["BTC-LN"],
            "BOLT11Expiration": 0,
            **extra,
        },
        headers=AUTH,
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def claim(sim: TestClient, pp_id: str, bolt11_text: str, **extra: Any) -> Any:
    body = {"destination": bolt11_text, "payoutMethodId": "BTC-LN", **extra}
    return await sim.post(f"/api/v1/pull-payments/{pp_id}/payouts", json=body)


async def add_webhook(sim: TestClient, store_id: str, url: str, **extra: Any) -> dict[str, Any]:
    body = {
        "enabled": True,
        "automaticRedelivery": True,
        "url": url,
        "authorizedEvents": {"everything": True, "specificEvents": []},
        **extra,
    }
    response = await sim.post(f"/api/v1/stores/{store_id}/webhooks", json=body, headers=AUTH)
    assert response.status == 200
    return await response.json()


# --- shapes ------------------------------------------------------------------------------------


async def test_claim_answers_payout_in_btcpay_2x_shape(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id)
    invoice = MINTER.mint(21_000_000)

    response = await claim(sim, pp["id"], invoice.bolt11)

    assert response.status == 200
    payout = await response.json()
    assert set(payout) == PAYOUT_FIELDS
    assert payout["state"] == "AwaitingApproval"
    assert payout["revision"] == 0
    assert payout["pullPaymentId"] == pp["id"]
    assert payout["destination"] == invoice.bolt11
    assert payout["originalAmount"] == "21000"
    assert payout["originalCurrency"] == "SATS"
    assert payout["payoutAmount"] is None
    assert payout["payoutCurrency"] == "BTC"
    assert payout["payoutMethodId"] == "BTC-LN"
    assert payout["paymentProof"] is None
    assert payout["metadata"] == {}
    assert abs(payout["date"] - time.time()) < 60


async def test_pull_payment_has_btcpay_fields_and_is_readable_anonymously(
    sim: TestClient,
) -> None:
    store_id = await make_store(sim)
    created = await make_pull_payment(sim, store_id, amount="0.5", currency="BTC")

    fetched = await (await sim.get(f"/api/v1/pull-payments/{created['id']}")).json()

    assert fetched == created
    for name in ("id", "name", "description", "currency", "amount", "period", "BOLT11Expiration"):
        assert name in fetched
    assert fetched["amount"] == "0.5"
    assert fetched["autoApproveClaims"] is False
    assert fetched["archived"] is False
    assert fetched["viewLink"].endswith(f"/pull-payments/{created['id']}")
    listed = await (await sim.get(f"/api/v1/stores/{store_id}/pull-payments", headers=AUTH)).json()
    assert [p["id"] for p in listed] == [created["id"]]


async def test_auto_approving_pull_payment_answers_awaiting_payment_with_payout_amount(
    sim: TestClient,
) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id, amount="0.01", currency="BTC", auto_approve=True)

    payout = await (await claim(sim, pp["id"], MINTER.mint(21_000_000).bolt11)).json()

    assert payout["state"] == "AwaitingPayment"
    assert payout["revision"] == 0
    assert payout["originalAmount"] == "0.00021"
    assert payout["payoutAmount"] == "0.00021"


async def test_health_and_store_endpoints(sim: TestClient) -> None:
    assert await (await sim.get("/api/v1/health")).json() == {"synchronized": True}
    store_id = await make_store(sim, "Coffee")

    store = await (await sim.get(f"/api/v1/stores/{store_id}", headers=AUTH)).json()
    stores = await (await sim.get("/api/v1/stores", headers=AUTH)).json()

    assert store["id"] == store_id and store["name"] == "Coffee"
    assert [s["id"] for s in stores] == [store_id]


# --- claim validation --------------------------------------------------------------------------


async def test_unreadable_destination_is_a_422_on_destination(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))

    response = await claim(sim, pp["id"], "lnbcrt1notaninvoice")

    assert response.status == 422
    assert await response.json() == [
        {
            "path": "Destination",
            "message": "A valid BOLT11 invoice or LNURL Pay or Lightning address was not provided.",
        }
    ]


async def test_expired_invoice_is_a_422_on_destination(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))
    stale = MINTER.mint(1_000_000, expiry=60, timestamp=int(time.time()) - 3600)

    response = await claim(sim, pp["id"], stale.bolt11)

    assert response.status == 422
    assert await response.json() == [
        {"path": "Destination", "message": "The BOLT11 invoice submitted has expired."}
    ]


async def test_invoice_for_another_network_is_a_422_on_destination(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))
    mainnet = InvoiceMinter(network="bc").mint(1_000_000)

    response = await claim(sim, pp["id"], mainnet.bolt11)

    assert response.status == 422
    assert (await response.json())[0]["path"] == "Destination"


async def test_default_pull_payment_refuses_a_one_hour_invoice_for_its_expiry(
    sim: TestClient,
) -> None:
    store_id = await make_store(sim)
    created = await sim.post(
        f"/api/v1/stores/{store_id}/pull-payments",
        json={"name": "defaults", "amount": "100000", "currency": "SATS",
              "payoutMethods": ["BTC-LN"]},
        headers=AUTH,
    )  # fmt: skip
    pp = await created.json()

    response = await claim(sim, pp["id"], MINTER.mint(1_000_000, expiry=3600).bolt11)

    assert pp["BOLT11Expiration"] == 30
    assert response.status == 422
    assert await response.json() == [
        {
            "path": "Destination",
            "message": "The BOLT11 invoice must have an expiry date of at least 30 days from "
            "submission (Provided was only 0).",
        }
    ]


async def test_bolt11_expiration_zero_accepts_short_invoices_and_longer_needs_longer(
    sim: TestClient,
) -> None:
    store_id = await make_store(sim)
    open_pp = await make_pull_payment(sim, store_id)
    week = await make_pull_payment(sim, store_id, BOLT11Expiration=7)

    short = await claim(sim, open_pp["id"], MINTER.mint(1_000_000, expiry=60).bolt11)
    too_short = await claim(sim, week["id"], MINTER.mint(1_000_000, expiry=6 * 86400).bolt11)
    long_enough = await claim(sim, week["id"], MINTER.mint(1_000_000, expiry=8 * 86400).bolt11)

    assert open_pp["BOLT11Expiration"] == 0
    assert short.status == 200
    assert too_short.status == 422
    assert (await too_short.json())[0]["message"].endswith("(Provided was only 5).")
    assert long_enough.status == 200


async def test_the_stores_refund_setting_is_the_default_bolt11_expiration(
    sim: TestClient,
) -> None:
    made = await sim.post(
        "/api/v1/stores", json={"name": "Refunds", "refundBOLT11Expiration": 2}, headers=AUTH
    )
    store = await made.json()

    created = await sim.post(
        f"/api/v1/stores/{store['id']}/pull-payments",
        json={"amount": "1000", "currency": "SATS", "payoutMethods": ["BTC-LN"]},
        headers=AUTH,
    )

    assert store["refundBOLT11Expiration"] == 2
    assert (await created.json())["BOLT11Expiration"] == 2


async def test_pull_payment_creation_lists_every_invalid_field_by_its_property_name(
    sim: TestClient,
) -> None:
    store_id = await make_store(sim)

    response = await sim.post(
        f"/api/v1/stores/{store_id}/pull-payments",
        json={"amount": "0", "BOLT11Expiration": -1},
        headers=AUTH,
    )
    unsupported = await sim.post(
        f"/api/v1/stores/{store_id}/pull-payments",
        json={"amount": "1", "currency": "BTC", "payoutMethods": ["BTC-LN", "XMR"]},
        headers=AUTH,
    )

    assert response.status == 422
    assert [e["path"] for e in await response.json()] == [
        "Amount",
        "Currency",
        "BOLT11Expiration",
        "PayoutMethods",
    ]
    assert unsupported.status == 422
    assert [e["path"] for e in await unsupported.json()] == ["PayoutMethods[1]"]


async def test_same_payment_hash_cannot_be_claimed_twice_until_cancelled(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id)
    invoice = MINTER.mint(5_000_000)
    first = await (await claim(sim, pp["id"], invoice.bolt11)).json()

    again = await claim(sim, pp["id"], invoice.bolt11)
    assert again.status == 400
    assert (await again.json())["code"] == "duplicate-destination"

    cancelled = await sim.delete(f"/api/v1/stores/{store_id}/payouts/{first['id']}", headers=AUTH)
    assert cancelled.status == 200
    after_cancel = await claim(sim, pp["id"], invoice.bolt11)
    assert after_cancel.status == 200
    assert (await after_cancel.json())["id"] != first["id"]


async def test_claims_beyond_the_pull_payment_limit_are_refused(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim), amount="30000")
    assert (await claim(sim, pp["id"], MINTER.mint(20_000_000).bolt11)).status == 200

    response = await claim(sim, pp["id"], MINTER.mint(20_000_000).bolt11)

    assert response.status == 400
    assert (await response.json())["code"] == "overdraft"
    assert (await claim(sim, pp["id"], MINTER.mint(10_000_000).bolt11)).status == 200


async def test_claim_amount_below_the_invoices_is_a_422_on_amount(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))

    response = await claim(sim, pp["id"], MINTER.mint(21_000_000).bolt11, amount="500")

    assert response.status == 422
    assert (await response.json())[0]["path"] == "Amount"


async def test_claim_amount_above_the_invoices_is_lowered_to_it(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))

    response = await claim(sim, pp["id"], MINTER.mint(21_000_000).bolt11, amount="50000")

    assert response.status == 200
    assert (await response.json())["originalAmount"] == "21000"


async def test_claim_without_a_payout_method_is_a_422_on_payout_method_id(
    sim: TestClient,
) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))

    response = await sim.post(
        f"/api/v1/pull-payments/{pp['id']}/payouts",
        json={"destination": MINTER.mint(1_000_000).bolt11},
    )

    assert response.status == 422
    assert await response.json() == [
        {"path": "PayoutMethodId", "message": "Invalid payment method"}
    ]


async def test_amountless_invoice_takes_the_claimed_amount(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))

    response = await claim(sim, pp["id"], MINTER.mint(None).bolt11, amount="1234")

    assert response.status == 200
    assert (await response.json())["originalAmount"] == "1234"


async def test_archived_pull_payment_refuses_claims(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id)
    archived = await sim.delete(f"/api/v1/stores/{store_id}/pull-payments/{pp['id']}", headers=AUTH)

    response = await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)

    assert archived.status == 200
    assert response.status == 400
    assert (await response.json())["code"] == "archived"


async def test_unknown_pull_payment_is_404(sim: TestClient) -> None:
    response = await claim(sim, "nope", MINTER.mint(1000).bolt11)

    assert response.status == 404
    assert (await response.json())["code"] == "pullpayment-not-found"


# --- permissions -------------------------------------------------------------------------------


async def restrict(sim: TestClient, key: str, permissions: list[str]) -> None:
    response = await sim.post("/_sim/api-keys", json={"apiKey": key, "permissions": permissions})
    assert response.status == 200


async def test_restricted_key_gets_403_naming_the_missing_permission(sim: TestClient) -> None:
    store_id = await make_store(sim)
    other_store = await make_store(sim, "Other")
    pp = await make_pull_payment(sim, store_id)
    payout = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()
    await restrict(sim, "viewer", [f"btcpay.store.canviewpayouts:{store_id}"])
    viewer = {"Authorization": "token viewer"}

    listed = await sim.get(f"/api/v1/stores/{store_id}/payouts", headers=viewer)
    cancel = await sim.delete(f"/api/v1/stores/{store_id}/payouts/{payout['id']}", headers=viewer)
    elsewhere = await sim.get(f"/api/v1/stores/{other_store}/payouts", headers=viewer)

    assert listed.status == 200
    assert [p["id"] for p in await listed.json()] == [payout["id"]]
    assert cancel.status == 403
    denied = await cancel.json()
    assert denied["code"] == "missing-permission"
    assert denied["missingPermission"] == "btcpay.store.canmanagepayouts"
    assert "btcpay.store.canmanagepayouts" in denied["message"]
    assert elsewhere.status == 403
    assert (await elsewhere.json())["missingPermission"] == "btcpay.store.canviewpayouts"


async def test_a_store_that_does_not_exist_is_a_403_not_a_404(sim: TestClient) -> None:
    for path in ("/api/v1/stores/nope/payouts", "/api/v1/stores/nope/webhooks"):
        response = await sim.get(path, headers=AUTH)

        assert response.status == 403
        assert (await response.json())["code"] == "missing-permission"
    store = await sim.get("/api/v1/stores/nope", headers=AUTH)
    assert (await store.json())["missingPermission"] == "btcpay.store.canviewstoresettings"


async def test_store_settings_permissions_imply_payout_permissions(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id)
    payout = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()
    await restrict(sim, "settings-viewer", ["btcpay.store.canviewstoresettings"])
    await restrict(sim, "settings-admin", [f"btcpay.store.canmodifystoresettings:{store_id}"])

    listed = await sim.get(
        f"/api/v1/stores/{store_id}/payouts", headers={"Authorization": "token settings-viewer"}
    )
    approved = await sim.post(
        f"/api/v1/stores/{store_id}/payouts/{payout['id']}",
        json={"revision": 0},
        headers={"Authorization": "token settings-admin"},
    )

    assert listed.status == 200
    assert approved.status == 200
    assert (await approved.json())["state"] == "AwaitingPayment"


async def test_pull_payment_permission_does_not_allow_listing_payouts(sim: TestClient) -> None:
    store_id = await make_store(sim)
    await restrict(sim, "pp-manager", ["btcpay.store.canmanagepullpayments"])

    response = await sim.get(
        f"/api/v1/stores/{store_id}/payouts", headers={"Authorization": "token pp-manager"}
    )

    assert response.status == 403
    assert (await response.json())["missingPermission"] == "btcpay.store.canviewpayouts"


async def test_missing_or_malformed_authorization_is_401(sim: TestClient) -> None:
    store_id = await make_store(sim)

    for headers in ({}, {"Authorization": "Bearer x"}, {"Authorization": "token "}):
        response = await sim.get(f"/api/v1/stores/{store_id}/payouts", headers=headers)
        assert response.status == 401
        assert (await response.json())["code"] == "unauthenticated"


async def test_current_api_key_reports_its_permissions(sim: TestClient) -> None:
    await restrict(sim, "scoped", ["btcpay.store.canviewpayouts:S1"])

    scoped = await (
        await sim.get("/api/v1/api-keys/current", headers={"Authorization": "token scoped"})
    ).json()
    default = await (await sim.get("/api/v1/api-keys/current", headers=AUTH)).json()

    assert scoped["apiKey"] == "scoped"
    assert scoped["permissions"] == ["btcpay.store.canviewpayouts:S1"]
    assert "label" in scoped
    assert default["permissions"] == ["unrestricted"]


async def test_unknown_key_is_401_unless_the_simulator_is_asked_to_be_permissive(
    aiohttp_client: ClientFactory,
) -> None:
    strict = await aiohttp_client(create_app(SimConfig(api_keys={"k1": ["unrestricted"]})))
    permissive = await aiohttp_client(create_app(SimConfig(permissive_keys=True)))
    other = {"Authorization": "token other"}

    refused = await strict.get("/api/v1/stores", headers=other)
    accepted = await strict.get("/api/v1/stores", headers={"Authorization": "token k1"})
    anyone = await permissive.get("/api/v1/api-keys/current", headers=other)

    assert refused.status == 401
    assert (await refused.json())["code"] == "unauthenticated"
    assert accepted.status == 200
    assert (await anyone.json())["permissions"] == ["unrestricted"]


# --- store payout operations -------------------------------------------------------------------


async def test_store_payout_list_hides_cancelled_unless_asked(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id)
    kept = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()
    gone = await (await claim(sim, pp["id"], MINTER.mint(2_000_000).bolt11)).json()
    await sim.delete(f"/api/v1/stores/{store_id}/payouts/{gone['id']}", headers=AUTH)
    url = f"/api/v1/stores/{store_id}/payouts"

    default = await (await sim.get(url, headers=AUTH)).json()
    without = await (await sim.get(url + "?includeCancelled=false", headers=AUTH)).json()
    with_cancelled = await (await sim.get(url + "?includeCancelled=true", headers=AUTH)).json()

    assert [p["id"] for p in default] == [kept["id"]]
    assert [p["id"] for p in without] == [kept["id"]]
    assert {p["id"]: p["state"] for p in with_cancelled} == {
        kept["id"]: "AwaitingApproval",
        gone["id"]: "Cancelled",
    }


async def test_revision_stays_put_through_state_changes_and_only_guards_approval(
    sim: TestClient,
) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id)
    payout = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()
    url = f"/api/v1/stores/{store_id}/payouts/{payout['id']}"
    proof = {"proofType": "ManualPayoutProof", "id": "tx-1", "link": None}

    missing = await sim.post(url, json={}, headers=AUTH)
    stale = await sim.post(url, json={"revision": 5}, headers=AUTH)
    approved = await sim.post(url, json={"revision": 0}, headers=AUTH)
    twice = await sim.post(url, json={"revision": 0}, headers=AUTH)
    marked = await sim.post(
        url + "/mark", json={"state": "InProgress", "paymentProof": proof}, headers=AUTH
    )
    in_progress = await (await sim.get(url, headers=AUTH)).json()
    paid = await sim.post(url + "/mark-paid", headers=AUTH)
    completed = await (await sim.get(url, headers=AUTH)).json()

    assert missing.status == 422 and (await missing.json())[0]["path"] == "Revision"
    assert stale.status == 400 and (await stale.json())["code"] == "old-revision"
    assert approved.status == 200
    assert (await approved.json())["payoutAmount"] == "0.00001"
    assert (await approved.json())["revision"] == 0
    assert twice.status == 400 and (await twice.json())["code"] == "invalid-state"
    assert marked.status == 200
    assert (in_progress["state"], in_progress["revision"]) == ("InProgress", 0)
    assert in_progress["paymentProof"] == proof
    assert paid.status == 200
    # mark-paid carries no proof, and BTCPay stores exactly that.
    assert (completed["state"], completed["revision"], completed["paymentProof"]) == (
        "Completed",
        0,
        None,
    )


async def test_mark_and_cancel_follow_btcpays_state_rules(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)

    async def payout() -> str:
        made = await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)
        return f"/api/v1/stores/{store_id}/payouts/{(await made.json())['id']}"

    async def state(url: str) -> str:
        return (await (await sim.get(url, headers=AUTH)).json())["state"]

    async def mark(url: str, body: dict[str, Any] | None) -> int:
        return (await sim.post(url + "/mark", json=body, headers=AUTH)).status

    done = await payout()
    assert await mark(done, {}) == 200  # an empty body means Completed
    assert await state(done) == "Completed"
    assert await mark(done, {"state": "InProgress"}) == 400  # Completed is final
    assert (await sim.delete(done, headers=AUTH)).status == 400

    paying = await payout()
    assert await mark(paying, {"state": "AwaitingPayment"}) == 400  # only back from InProgress
    assert await mark(paying, {"state": "InProgress"}) == 200
    assert (await sim.delete(paying, headers=AUTH)).status == 400  # money may be moving
    assert await mark(paying, {"state": "AwaitingPayment"}) == 200

    gone = await payout()
    assert (await sim.delete(gone, headers=AUTH)).status == 200
    again = await sim.delete(gone, headers=AUTH)
    assert again.status == 200 and await state(gone) == "Cancelled"
    assert await mark(gone, {"state": "Completed"}) == 400
    assert await mark(gone, {"state": "AwaitingApproval"}) == 200  # BTCPay lets it reopen
    refused = await sim.post(gone + "/mark", json={"state": "Completed"}, headers=AUTH)
    assert (await refused.json())["code"] == "invalid-state"


async def test_cancelling_a_cancelled_payout_sends_another_event(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    payout = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()
    payout_url = f"/api/v1/stores/{store_id}/payouts/{payout['id']}"

    await sim.delete(payout_url, headers=AUTH)
    await sim.delete(payout_url, headers=AUTH)

    await eventually(lambda: len(recv.deliveries) == 3)
    assert [(b["type"], b["payoutState"]) for b in recv.bodies] == [
        ("PayoutCreated", "AwaitingApproval"),
        ("PayoutUpdated", "Cancelled"),
        ("PayoutUpdated", "Cancelled"),
    ]


async def test_marking_an_unknown_state_is_a_validation_error(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id)
    payout = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()

    response = await sim.post(
        f"/api/v1/stores/{store_id}/payouts/{payout['id']}/mark",
        json={"state": "Failed"},
        headers=AUTH,
    )

    assert response.status == 422
    assert (await response.json())[0]["path"] == "State"


async def test_pull_payment_payout_routes_are_anonymous(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))
    payout = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()

    listed = await (await sim.get(f"/api/v1/pull-payments/{pp['id']}/payouts")).json()
    one = await (await sim.get(f"/api/v1/pull-payments/{pp['id']}/payouts/{payout['id']}")).json()

    assert [p["id"] for p in listed] == [payout["id"]]
    assert one == payout


async def test_btcpay_24_routes_without_the_store_check_the_payouts_store(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    store_id = await make_store(sim)
    other = await make_store(sim, "Other")
    pp = await make_pull_payment(sim, store_id)
    payout = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()
    hook = await add_webhook(sim, store_id, receiver[1])
    await restrict(sim, "other-viewer", [f"btcpay.store.canviewpayouts:{other}"])

    fetched = await sim.get(f"/api/v1/payouts/{payout['id']}", headers=AUTH)
    unknown = await sim.get("/api/v1/payouts/nope", headers=AUTH)
    elsewhere = await sim.get(
        f"/api/v1/payouts/{payout['id']}", headers={"Authorization": "token other-viewer"}
    )
    hook_read = await sim.get(f"/api/v1/webhooks/{hook['id']}", headers=AUTH)
    hook_put = await sim.put(
        f"/api/v1/webhooks/{hook['id']}", json={"enabled": False}, headers=AUTH
    )
    archived = await sim.delete(f"/api/v1/pull-payments/{pp['id']}", headers=AUTH)
    after = await (await sim.get(f"/api/v1/payouts/{payout['id']}", headers=AUTH)).json()
    hook_gone = await sim.delete(f"/api/v1/webhooks/{hook['id']}", headers=AUTH)

    assert fetched.status == 200 and await fetched.json() == payout
    assert unknown.status == 404 and (await unknown.json())["code"] == "payout-not-found"
    assert elsewhere.status == 403
    assert (await elsewhere.json())["missingPermission"] == "btcpay.store.canviewpayouts"
    assert hook_read.status == 200 and (await hook_read.json())["id"] == hook["id"]
    assert (await hook_put.json())["enabled"] is False
    assert archived.status == 200
    # Archiving cancels the pull payment's payouts that are not being paid.
    assert after["state"] == "Cancelled"
    assert hook_gone.status == 200
    assert (await sim.get(f"/api/v1/webhooks/{hook['id']}", headers=AUTH)).status == 404


async def test_lnurl_of_a_pull_payment_says_whether_it_pays_lightning(sim: TestClient) -> None:
    store_id = await make_store(sim)
    lightning = await make_pull_payment(sim, store_id)
    on_chain = await make_pull_payment(sim, store_id, currency="BTC", payoutMethods=["BTC-CHAIN"])

    ok = await sim.get(f"/api/v1/pull-payments/{lightning['id']}/lnurl")
    refused = await sim.get(f"/api/v1/pull-payments/{on_chain['id']}/lnurl")
    claimed = await claim(sim, on_chain["id"], MINTER.mint(1_000_000).bolt11)

    assert ok.status == 200
    body = await ok.json()
    assert body["lnurlUri"].startswith("lnurlw://")
    assert body["lnurlBech32"].startswith("lightning:LNURL1")
    assert refused.status == 400
    assert (await refused.json())["code"] == "lnurl-not-supported"
    assert claimed.status == 400
    assert (await claimed.json())["code"] == "payment-method-not-supported"


# --- BTCPay's own Boltcards --------------------------------------------------------------------


async def _btcpay_card(sim: TestClient, pp_id: str) -> str:
    uid = "04" + "a1b2c3d4e5f6"
    registered = await sim.post(f"/api/v1/pull-payments/{pp_id}/boltcards", json={"UID": uid})
    assert registered.status == 200
    cards = (await (await sim.get("/_sim/boltcards")).json())["cards"]
    return next(c["id"] for c in cards if c["uid"] == uid)


async def _tap(sim: TestClient, card_id: str) -> dict[str, Any]:
    return await (await sim.post(f"/_sim/boltcards/{card_id}/tap")).json()


async def test_boltcard_callback_stores_the_counter_before_claiming_so_a_refusal_uses_the_tap(
    sim: TestClient,
) -> None:
    store_id = await make_store(sim)
    # Not auto-approving: BTCPay answers the tap, and refuses only at the callback.
    pp = await make_pull_payment(sim, store_id, auto_approve=False)
    card_id = await _btcpay_card(sim, pp["id"])
    tap = await _tap(sim, card_id)
    query = f"p={tap['p']}&c={tap['c']}"

    offered = await sim.get(f"/boltcard?{query}")
    again = await sim.get(f"/boltcard?{query}")
    invoice = MINTER.mint(1_000_000)
    refused = await sim.get(f"/boltcard?{query}&pr={invoice.bolt11}")
    retried = await sim.get(f"/boltcard?{query}")
    cards = (await (await sim.get("/_sim/boltcards")).json())["cards"]

    assert offered.status == 200 and (await offered.json())["tag"] == "withdrawRequest"
    assert again.status == 200  # the tap alone never moves the counter
    assert refused.status == 400
    assert "auto-approve" in (await refused.json())["reason"]
    assert (await retried.json()) == {"status": "ERROR", "reason": "Replayed or expired query"}
    assert [c["counter"] for c in cards if c["id"] == card_id] == [tap["counter"]]


async def test_boltcard_claims_are_not_held_to_bolt11_expiration(sim: TestClient) -> None:
    store_id = await make_store(sim)
    created = await sim.post(
        f"/api/v1/stores/{store_id}/pull-payments",
        json={"name": "btcpay cards", "amount": "100000", "currency": "SATS",
              "autoApproveClaims": True, "payoutMethods": ["BTC-LN"]},
        headers=AUTH,
    )  # fmt: skip
    pp = await created.json()
    await sim.post("/_sim/settings", json={"auto_progress": True})  # a processor paying at once
    await sim.post("/_sim/boltcards", json={"paymentWait": 0})
    tap = await _tap(sim, await _btcpay_card(sim, pp["id"]))

    paid = await sim.get(
        f"/boltcard?p={tap['p']}&c={tap['c']}&pr={MINTER.mint(1_000_000, expiry=600).bolt11}"
    )

    assert pp["BOLT11Expiration"] == 30
    assert paid.status == 200 and (await paid.json())["status"] == "OK"


# --- webhooks ----------------------------------------------------------------------------------


async def test_webhook_body_is_indented_json_signed_over_raw_bytes(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    hook = await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    payout = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()

    await eventually(lambda: len(recv.deliveries) == 2)

    assert hook["secret"]
    for headers, raw in recv.deliveries:
        expected = hmac.new(hook["secret"].encode(), raw, hashlib.sha256).hexdigest()
        assert headers["BTCPay-Sig"] == f"sha256={expected}"
        assert raw.startswith(b'{\n  "deliveryId": ')
        assert list(json.loads(raw)) == WEBHOOK_FIELDS
    created, approved = recv.bodies
    assert (created["type"], created["payoutState"]) == ("PayoutCreated", "AwaitingApproval")
    assert (approved["type"], approved["payoutState"]) == ("PayoutApproved", "AwaitingPayment")
    for body in recv.bodies:
        assert body["webhookId"] == hook["id"]
        assert body["storeId"] == store_id
        assert body["payoutId"] == payout["id"]
        assert body["pullPaymentId"] == pp["id"]
        assert body["originalDeliveryId"] == body["deliveryId"]
        assert body["isRedelivery"] is False
        assert isinstance(body["timestamp"], int)


async def test_webhook_secret_is_shown_only_on_creation(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    store_id = await make_store(sim)
    hook = await add_webhook(sim, store_id, receiver[1], secret="chosen-secret")

    fetched = await (
        await sim.get(f"/api/v1/stores/{store_id}/webhooks/{hook['id']}", headers=AUTH)
    ).json()
    listed = await (await sim.get(f"/api/v1/stores/{store_id}/webhooks", headers=AUTH)).json()

    assert hook["secret"] == "chosen-secret"
    assert "secret" not in fetched
    assert [h["id"] for h in listed] == [hook["id"]]
    assert fetched["authorizedEvents"] == {"everything": True, "specificEvents": []}


async def test_failed_delivery_is_redelivered_with_new_id_and_same_original(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    recv.script = [500, 503]
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)

    await eventually(lambda: len(recv.deliveries) == 3)

    first, second, third = recv.bodies
    assert first["isRedelivery"] is False
    assert second["isRedelivery"] is True and third["isRedelivery"] is True
    assert len({first["deliveryId"], second["deliveryId"], third["deliveryId"]}) == 3
    assert second["originalDeliveryId"] == third["originalDeliveryId"] == first["deliveryId"]
    assert second["payoutId"] == first["payoutId"]


async def test_a_failed_delivery_is_retried_in_place_and_later_events_wait_behind_it(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    recv.script = [400, 503]  # any answer but a 2xx is a failure BTCPay retries
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    first = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()
    second = await (await claim(sim, pp["id"], MINTER.mint(2_000_000).bolt11)).json()

    await eventually(lambda: len(recv.deliveries) == 4)

    assert [(b["payoutId"], b["isRedelivery"]) for b in recv.bodies] == [
        (first["id"], False),
        (first["id"], True),
        (first["id"], True),
        (second["id"], False),
    ]
    originals = {b["originalDeliveryId"] for b in recv.bodies[:3]}
    assert originals == {recv.bodies[0]["deliveryId"]}


async def test_a_delivery_failing_every_retry_is_abandoned_after_btcpays_schedule(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    recv.script = [500] * 9
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)
    later = await (await claim(sim, pp["id"], MINTER.mint(2_000_000).bolt11)).json()

    await eventually(lambda: len(recv.deliveries) == 10, timeout=10)

    # The first delivery and its eight retries (10 s, 1 min, 6 x 10 min), then the next event.
    assert [b["isRedelivery"] for b in recv.bodies[:9]] == [False] + [True] * 8
    assert recv.bodies[9]["payoutId"] == later["id"]
    stats = await (await sim.get("/_sim/stats")).json()
    assert stats["deliveries"]["abandoned"] == 1


async def test_fail_fault_makes_deliveries_fail_in_transit_and_retry(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    await sim.post("/_sim/faults", json={"webhook_fail_rate": 1.0})
    await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)

    async def failed_twice() -> bool:
        stats = await (await sim.get("/_sim/stats")).json()
        return stats["deliveries"].get("failed_in_transit", 0) >= 2

    await eventually(failed_twice)
    await sim.post("/_sim/faults", json={"webhook_fail_rate": 0.0})
    await eventually(lambda: len(recv.deliveries) == 1)

    assert recv.bodies[0]["isRedelivery"] is True


async def test_deliveries_arrive_in_order_per_webhook(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    payout_ids = [
        (await (await claim(sim, pp["id"], MINTER.mint(1_000_000 + i).bolt11)).json())["id"]
        for i in range(20)
    ]

    await eventually(lambda: len(recv.deliveries) == 20)

    assert [b["payoutId"] for b in recv.bodies] == payout_ids


async def test_specific_events_filter_what_a_webhook_hears(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    await add_webhook(
        sim,
        store_id,
        url,
        authorizedEvents={"everything": False, "specificEvents": ["PayoutApproved"]},
    )
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)

    await eventually(lambda: len(recv.deliveries) == 1)
    await asyncio.sleep(0.05)

    assert [b["type"] for b in recv.bodies] == ["PayoutApproved"]


async def test_dropped_deliveries_never_arrive(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    await sim.post("/_sim/faults", json={"webhook_drop_rate": 1.0})
    await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)

    stats_url = "/_sim/stats"

    async def dropped() -> bool:
        return (await (await sim.get(stats_url)).json())["deliveries"].get("dropped") == 1

    await eventually(dropped)
    await asyncio.sleep(0.05)
    assert recv.deliveries == []


async def test_duplicated_delivery_arrives_twice_with_same_delivery_id(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    await sim.post("/_sim/faults", json={"webhook_duplicate_rate": 1.0})
    await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)

    await eventually(lambda: len(recv.deliveries) == 2)

    first, second = recv.deliveries
    assert first[1] == second[1]
    assert first[0]["BTCPay-Sig"] == second[0]["BTCPay-Sig"]


async def test_reordered_delivery_arrives_after_later_ones(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id)
    await sim.post("/_sim/faults", json={"webhook_reorder_rate": 1.0, "webhook_reorder_delay": 0.2})
    held = await (await claim(sim, pp["id"], MINTER.mint(1_000_000).bolt11)).json()
    await asyncio.sleep(0.05)
    await sim.post("/_sim/faults", json={"webhook_reorder_rate": 0.0})
    later = await (await claim(sim, pp["id"], MINTER.mint(2_000_000).bolt11)).json()

    await eventually(lambda: len(recv.deliveries) == 2)

    assert [b["payoutId"] for b in recv.bodies] == [later["id"], held["id"]]


# --- automatic progress ------------------------------------------------------------------------


@pytest.fixture
def progressing() -> SimConfig:
    return SimConfig(
        api_keys=KEYS,
        auto_progress=True,
        progress_delays=ProgressDelays(start=0.01, settle=0.01),
        redelivery_scale=0.001,
        seed=3,
    )


async def test_auto_progress_reaches_completed_with_a_lightning_proof(
    aiohttp_client: ClientFactory, progressing: SimConfig, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    sim = await aiohttp_client(create_app(progressing))
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    invoice = MINTER.mint(3_000_000)
    payout = await (await claim(sim, pp["id"], invoice.bolt11)).json()
    payout_url = f"/api/v1/stores/{store_id}/payouts/{payout['id']}"

    async def completed() -> bool:
        return (await (await sim.get(payout_url, headers=AUTH)).json())["state"] == "Completed"

    await eventually(completed)
    await eventually(lambda: len(recv.deliveries) == 4)

    final = await (await sim.get(payout_url, headers=AUTH)).json()
    proof = final["paymentProof"]
    assert proof["proofType"] == "PayoutLightningBlob"
    assert proof["paymentHash"] == invoice.payment_hash
    assert hashlib.sha256(bytes.fromhex(proof["preimage"])).hexdigest() == invoice.payment_hash
    assert (proof["id"], proof["link"]) == (invoice.payment_hash, None)
    assert final["revision"] == 0
    assert [(b["type"], b["payoutState"]) for b in recv.bodies] == [
        ("PayoutCreated", "AwaitingApproval"),
        ("PayoutApproved", "AwaitingPayment"),
        ("PayoutUpdated", "InProgress"),
        ("PayoutUpdated", "Completed"),
    ]


async def test_cancel_rate_ends_payouts_cancelled_with_an_event(
    aiohttp_client: ClientFactory, progressing: SimConfig, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    progressing.cancel_rate = 1.0
    sim = await aiohttp_client(create_app(progressing))
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    await claim(sim, pp["id"], MINTER.mint(3_000_000).bolt11)

    await eventually(lambda: len(recv.deliveries) == 4)

    assert recv.bodies[-1]["payoutState"] == "Cancelled"


async def test_a_failed_payment_goes_back_to_awaiting_payment_and_is_retried(
    aiohttp_client: ClientFactory, progressing: SimConfig, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    progressing.payment_failure_rate = 1.0
    sim = await aiohttp_client(create_app(progressing))
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    await claim(sim, pp["id"], MINTER.mint(3_000_000).bolt11)

    await eventually(lambda: len(recv.deliveries) >= 6)
    await sim.post("/_sim/settings", json={"payment_failure_rate": 0.0})
    await eventually(lambda: recv.bodies[-1]["payoutState"] == "Completed")

    states = [b["payoutState"] for b in recv.bodies]
    assert states[:6] == [
        "AwaitingApproval",
        "AwaitingPayment",
        "InProgress",
        "AwaitingPayment",
        "InProgress",
        "AwaitingPayment",
    ]
    assert "Cancelled" not in states


async def test_a_payout_whose_invoice_expired_before_payment_is_cancelled(
    aiohttp_client: ClientFactory, progressing: SimConfig, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    progressing.progress_delays = ProgressDelays(start=1.5, settle=0.01)
    sim = await aiohttp_client(create_app(progressing))
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    await claim(sim, pp["id"], MINTER.mint(3_000_000, expiry=1).bolt11)

    await eventually(lambda: len(recv.deliveries) == 3)

    assert [b["payoutState"] for b in recv.bodies] == [
        "AwaitingApproval",
        "AwaitingPayment",
        "Cancelled",
    ]


async def test_silent_cancel_changes_state_without_any_webhook(
    aiohttp_client: ClientFactory, progressing: SimConfig, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    progressing.silent_cancel_rate = 1.0
    sim = await aiohttp_client(create_app(progressing))
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    payout = await (await claim(sim, pp["id"], MINTER.mint(3_000_000).bolt11)).json()
    payout_url = f"/api/v1/stores/{store_id}/payouts/{payout['id']}"

    async def cancelled() -> bool:
        return (await (await sim.get(payout_url, headers=AUTH)).json())["state"] == "Cancelled"

    await eventually(cancelled)
    await asyncio.sleep(0.1)

    assert [b["payoutState"] for b in recv.bodies] == ["AwaitingApproval", "AwaitingPayment"]


async def test_without_auto_progress_approved_payouts_wait(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    payout = await (await claim(sim, pp["id"], MINTER.mint(3_000_000).bolt11)).json()
    await asyncio.sleep(0.1)

    fetched = await (
        await sim.get(f"/api/v1/stores/{store_id}/payouts/{payout['id']}", headers=AUTH)
    ).json()

    assert fetched["state"] == "AwaitingPayment"


async def test_settings_switch_auto_progress_on_at_run_time(sim: TestClient) -> None:
    store_id = await make_store(sim)
    pp = await make_pull_payment(sim, store_id, auto_approve=True)
    changed = await sim.post(
        "/_sim/settings",
        json={"auto_progress": True, "progress_delays": {"start": 0.01, "settle": 0.01}},
    )
    payout = await (await claim(sim, pp["id"], MINTER.mint(3_000_000).bolt11)).json()
    url = f"/api/v1/stores/{store_id}/payouts/{payout['id']}"

    async def completed() -> bool:
        return (await (await sim.get(url, headers=AUTH)).json())["state"] == "Completed"

    assert changed.status == 200
    assert (await changed.json())["auto_progress"] is True
    await eventually(completed)


# --- Greenfield faults -------------------------------------------------------------------------


async def test_fail_fault_answers_503_while_control_api_still_answers(sim: TestClient) -> None:
    store_id = await make_store(sim)
    await sim.post("/_sim/faults", json={"fail_rate": 1.0})

    failing = await sim.get(f"/api/v1/stores/{store_id}/payouts", headers=AUTH)
    faults = await sim.get("/_sim/faults")
    await sim.post("/_sim/faults", json={"fail_rate": 0})
    healed = await sim.get(f"/api/v1/stores/{store_id}/payouts", headers=AUTH)

    assert failing.status == 503
    assert faults.status == 200 and (await faults.json())["fail_rate"] == 1.0
    assert healed.status == 200


async def test_latency_fault_slows_every_answer(sim: TestClient) -> None:
    await sim.post("/_sim/faults", json={"latency": 0.2})

    started = time.monotonic()
    response = await sim.get("/api/v1/health")

    assert response.status == 200
    assert time.monotonic() - started >= 0.2


async def test_hang_fault_holds_calls_until_cleared(sim: TestClient) -> None:
    await sim.post("/_sim/faults", json={"hang": True})

    pending = asyncio.ensure_future(sim.get("/api/v1/health"))
    await asyncio.sleep(0.2)
    assert not pending.done()
    await sim.post("/_sim/faults", json={"hang": False})
    response = await asyncio.wait_for(pending, 2)

    assert response.status == 200


async def test_drop_fault_closes_connections_without_answer(sim: TestClient) -> None:
    await sim.post("/_sim/faults", json={"drop_connections": True})

    with pytest.raises(aiohttp.ClientError):
        await sim.get("/api/v1/health")


async def test_unknown_fault_knob_is_refused(sim: TestClient) -> None:
    response = await sim.post("/_sim/faults", json={"explode": True})

    assert response.status == 400
    assert "explode" in (await response.json())["message"]


async def test_reset_forgets_records_and_faults(sim: TestClient) -> None:
    await make_store(sim)
    await sim.post("/_sim/faults", json={"latency": 1.5})

    await sim.post("/_sim/reset")

    stats = await (await sim.get("/_sim/stats")).json()
    faults = await (await sim.get("/_sim/faults")).json()
    assert stats["stores"] == 0
    assert faults["latency"] == 0.0


# --- bulk seeding and invoices -----------------------------------------------------------------


async def test_bulk_payouts_spread_over_all_five_states(sim: TestClient) -> None:
    store_id = await make_store(sim)

    response = await sim.post("/_sim/bulk-payouts", json={"storeId": store_id, "count": 3000})
    result = await response.json()
    listed = await (
        await sim.get(f"/api/v1/stores/{store_id}/payouts?includeCancelled=true", headers=AUTH)
    ).json()

    assert response.status == 200
    assert result["created"] == 3000
    assert len(listed) == 3000
    states = {p["state"] for p in listed}
    assert states == {"AwaitingApproval", "AwaitingPayment", "InProgress", "Completed", "Cancelled"}
    assert len({p["destination"] for p in listed}) == 3000
    for payout in listed[:20]:
        decoded = bolt11.decode(payout["destination"])
        assert decoded.amount_msat == int(payout["originalAmount"]) * 1000
        assert (payout["payoutAmount"] is None) == (payout["state"] == "AwaitingApproval")
        if payout["state"] == "Completed":
            assert payout["paymentProof"]["paymentHash"] == decoded.payment_hash


async def test_bulk_payouts_can_deliver_their_events(
    sim: TestClient, receiver: tuple[Receiver, str]
) -> None:
    recv, url = receiver
    store_id = await make_store(sim)
    await add_webhook(sim, store_id, url)

    await sim.post(
        "/_sim/bulk-payouts", json={"storeId": store_id, "count": 50, "deliverEvents": True}
    )

    await eventually(lambda: len(recv.deliveries) == 50)


def test_minted_invoices_decode_with_the_bolt11_package() -> None:
    minter = InvoiceMinter()
    for msat in (1, 1000, 21_000_000, 123_456_789_000, None):
        invoice = minter.mint(msat, description="coffee", expiry=600)

        decoded = bolt11.decode(invoice.bolt11)

        assert decoded.currency == "bcrt"
        assert decoded.amount_msat == msat
        assert decoded.payment_hash == invoice.payment_hash
        assert decoded.description == "coffee"
        assert decoded.expiry == 600
        assert decoded.payee == minter.node_id
        assert hashlib.sha256(bytes.fromhex(invoice.preimage)).hexdigest() == decoded.payment_hash


async def test_control_api_mints_claimable_invoices(sim: TestClient) -> None:
    pp = await make_pull_payment(sim, await make_store(sim))
    minted = await (await sim.post("/_sim/invoices", json={"amountSats": 2100})).json()

    payout = await (await claim(sim, pp["id"], minted["bolt11"])).json()

    assert payout["originalAmount"] == "2100"
    assert bolt11.decode(payout["destination"]).payment_hash == minted["paymentHash"]


# --- entry points ------------------------------------------------------------------------------


async def test_started_simulator_answers_on_a_real_socket() -> None:
    running = await start(SimConfig(auto_progress=False))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{running.url}/api/v1/health") as response,
        ):
            assert response.status == 200
            assert await response.json() == {"synchronized": True}
    finally:
        await running.close()


def test_command_line_flags_and_environment_build_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLASH_BTCPAY_SIM_CANCEL_RATE", "0.25")
    monkeypatch.setenv("FLASH_BTCPAY_SIM_ADMIN_KEY", "owner-key")
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    config = config_from_args(
        parser.parse_args(
            ["--no-auto-progress", "--settle-delay", "0.1", "--seed", "4",
             "--payment-failure-rate", "0.1", "--refund-bolt11-expiration", "0"]
        )
    )  # fmt: skip
    default = config_from_args(parser.parse_args([]))

    assert config.cancel_rate == 0.25
    assert config.payment_failure_rate == 0.1
    assert config.refund_bolt11_expiration_days == 0
    assert config.api_keys == {"owner-key": ["unrestricted"]}
    assert config.permissive_keys is False
    assert config.auto_progress is False
    assert config.progress_delays.settle == 0.1
    assert config.seed == 4
    assert default.refund_bolt11_expiration_days == 30
    assert config_from_args(parser.parse_args(["--permissive-keys"])).permissive_keys
