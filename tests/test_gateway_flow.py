"""The Boltcard gateway over HTTP: public vectors, refusals with their reasons, payouts, privacy.

Arranged with real parts: the ledger on SQLite and PostgreSQL, the BTCPay simulator over HTTP,
and the gateway app on a test server. Assertions are on what a wallet sees (the LUD-03 JSON),
what the simulator holds, and the ledger's rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_fixtures import api_client
from exporter_fixtures import scrape
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from btcpay_sim import SimConfig, start
from ledger.schema import (
    Boltcard,
    CardDaySpend,
    CardRollup,
    CardTap,
    Counter,
    Payout,
    PayoutEvent,
    Store,
)
from ledger.secretbox import SecretBox
from ledger.stores import set_card_tracking, upsert_store
from ledger.tokens import create_token
from lnurl_gateway.app import REGISTRY, GatewayConfig, create_app
from lnurl_gateway.boltcard import make_tap
from lnurl_gateway.claim_refusals import REASON_INVOICE_EXPIRY
from lnurl_gateway.greenfield import GreenfieldClient, GreenfieldValidationError
from lnurl_gateway.invoices import encode_invoice
from lnurl_gateway.reconcile import reconcile_store
from lnurl_gateway.registry import CardRegistry, KeyRing

REAL_K1 = "0c3b25d92b38ae443229dd59ad34b85d"
REAL_K2 = "b45775776cb224c75bcde7ca3704e933"
REAL_UID = "04996c6a926980"
REAL_TAPS = [
    ("4E2E289D945A66BB13377A728884E867", "E19CCB1FED8892CE", 3),
    ("00F48C4F8E386DED06BCDC78FA92E2FE", "66B4826EA4C155B4", 5),
    ("0DBF3C59B59B0638D60B5842A997D4D1", "CC61660C020B4D96", 7),
]
NXP_TAP = ("EF963FF7828658A599F3041510671E88", "94EED9EE65337086", 61)
NXP_UID = "04de5f1eacc040"
DERIVED_ISSUER = "00000000000000000000000000000001"
DERIVED_UID = "04a39493cc8680"
DERIVED_KEYS = {
    "k0": "a29119fcb48e737d1591d3489557e49b",
    "k1": "55da174c9608993dc27bb3f30a4a7314",
    "k2": "f4b404be700ab285e333e32348fa3d3b",
    "k3": "73610ba4afe45b55319691cb9489142f",
    "k4": "addd03e52964369be7f2967736b7bdb5",
}
DERIVED_ID = "e07ce1279d980ecb892a81924b67bf18"
UNKNOWN_UID = bytes.fromhex("04000000000001")
ADMIN_KEY = "admin-key"
ADMIN = {"Authorization": f"token {ADMIN_KEY}"}
PUBLIC_URL = "https://pay.example.test"


@dataclass
class Setup:
    """A running simulator with one store and pull payment, the ledger, and the gateway."""

    engine: AsyncEngine
    box: SecretBox
    sim_url: str
    store_id: str
    pull_payment_id: str
    client: TestClient
    registry: CardRegistry
    http: aiohttp.ClientSession

    async def tap(self, p: str, c: str) -> dict[str, Any]:
        resp = await self.client.get("/boltcard?" + urlencode({"p": p, "c": c}))
        assert resp.status == 200
        return await resp.json()

    async def callback(self, k1: str, pr: str) -> dict[str, Any]:
        resp = await self.client.get("/boltcard/callback?" + urlencode({"k1": k1, "pr": pr}))
        assert resp.status == 200
        return await resp.json()

    async def sim_payouts(self) -> list[dict[str, Any]]:
        url = f"{self.sim_url}/api/v1/pull-payments/{self.pull_payment_id}/payouts"
        async with self.http.get(url, params={"includeCancelled": "true"}) as resp:
            return await resp.json()

    async def sim_faults(self, **faults: Any) -> None:
        async with self.http.post(f"{self.sim_url}/_sim/faults", json=faults) as resp:
            assert resp.status == 200

    async def scalar(self, stmt: Any) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).scalar()

    async def rows(self, stmt: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).mappings().all())


def invoice(sats: int, **kw: Any) -> str:
    return encode_invoice(sats * 1000, network=kw.pop("network", "bcrt"), **kw)


async def sim_store_and_pull_payment(
    http: aiohttp.ClientSession, sim_url: str, amount_btc: str = "10"
) -> tuple[str, str]:
    async with http.post(f"{sim_url}/api/v1/stores", json={"name": "cards"}, headers=ADMIN) as r:
        store_id = (await r.json())["id"]
    # As the guides create a card's pull payment: BOLT11Expiration 0, explicitly.
    body = {
        "name": "card pull payment",
        "amount": amount_btc,
        "currency": "BTC",
        "autoApproveClaims": True,
        "payoutMethods": ["BTC-LN"],
        "BOLT11Expiration": 0,
    }
    url = f"{sim_url}/api/v1/stores/{store_id}/pull-payments"
    async with http.post(url, json=body, headers=ADMIN) as r:
        assert r.status == 200, await r.text()
        pull_payment_id = (await r.json())["id"]
    return store_id, pull_payment_id


def gateway_config(**kw: Any) -> GatewayConfig:
    values: dict[str, Any] = dict(
        public_url=PUBLIC_URL,
        network="regtest",
        btcpay_timeout=2.0,
        default_tx_limit_sats=100_000,
        default_day_limit_sats=1_000_000,
    )
    values.update(kw)
    return GatewayConfig(**values)


@pytest.fixture
async def gw(engine: AsyncEngine, master_key_hex: str) -> AsyncIterator[Setup]:
    async for setup in running_gateway(engine, master_key_hex):
        yield setup


async def running_gateway(
    engine: AsyncEngine, master_key_hex: str, **config: Any
) -> AsyncIterator[Setup]:
    box = SecretBox.from_text(master_key_hex)
    sim = await start(
        SimConfig(network="bcrt", api_keys={ADMIN_KEY: ["unrestricted"]}, auto_progress=False)
    )
    http = aiohttp.ClientSession()
    try:
        store_id, pp_id = await sim_store_and_pull_payment(http, sim.url)
        async with engine.begin() as conn:
            await upsert_store(conn, store_id, name="cards", btcpay_url=sim.url)
        app = create_app(engine, box, gateway_config(**config))
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            yield Setup(engine, box, sim.url, store_id, pp_id, client, app[REGISTRY], http)
        finally:
            await client.close()
    finally:
        await http.close()
        await sim.close()


async def import_real_card(gw: Setup, **kw: Any) -> dict[str, Any]:
    return await gw.registry.import_card(
        gw.store_id,
        pull_payment_id=gw.pull_payment_id,
        uid=REAL_UID,
        k1=REAL_K1,
        k2=REAL_K2,
        **kw,
    )


async def issue_card(gw: Setup, uid: str = "04112233445566", **kw: Any) -> dict[str, Any]:
    return await gw.registry.add_card(
        gw.store_id, pull_payment_id=gw.pull_payment_id, uid=uid, **kw
    )


def tap_of(programmer: dict[str, Any], uid: str, counter: int) -> tuple[str, str]:
    return make_tap(
        bytes.fromhex(programmer["k1"]),
        bytes.fromhex(programmer["k2"]),
        bytes.fromhex(uid),
        counter,
    )


# --- public vectors through the endpoint ------------------------------------------------------


async def test_every_real_card_vector_gets_a_withdraw_request(gw: Setup) -> None:
    card = await import_real_card(gw, alias="vector card")
    for p, c, _counter in REAL_TAPS:
        answer = await gw.tap(p, c)
        assert answer["tag"] == "withdrawRequest", answer
        assert answer["callback"] == PUBLIC_URL + "/boltcard/callback"
        assert len(answer["k1"]) >= 32
        assert answer["minWithdrawable"] == 1000
        assert answer["maxWithdrawable"] == 100_000_000
    # Lower case works as well as the card's upper case (the next vector's counter is higher).
    shown = await gw.registry.show(card["id"])
    assert shown["last_counter"] == 7
    taps = await gw.rows(select(CardTap.__table__).order_by(CardTap.id))
    assert [t["outcome"] for t in taps] == ["accepted"] * 3
    assert [t["counter"] for t in taps] == [3, 5, 7]
    assert {t["card_id"] for t in taps} == {card["id"]}


async def test_lower_case_hex_is_accepted(gw: Setup) -> None:
    await import_real_card(gw)
    p, c, _ = REAL_TAPS[0]
    assert (await gw.tap(p.lower(), c.lower()))["tag"] == "withdrawRequest"


async def test_nxp_application_note_vector_gets_a_withdraw_request(gw: Setup) -> None:
    await gw.registry.import_card(
        gw.store_id,
        pull_payment_id=gw.pull_payment_id,
        uid=NXP_UID,
        k1="00" * 16,
        k2="00" * 16,
    )
    answer = await gw.tap(*NXP_TAP[:2])
    assert answer["tag"] == "withdrawRequest", answer


async def test_deterministic_vector_card_is_programmed_and_taps(gw: Setup) -> None:
    await gw.registry.set_issuer_key(gw.store_id, DERIVED_ISSUER)
    added = await issue_card(gw, uid=DERIVED_UID, alias="derived")
    programmer = added["programmer"]
    assert programmer["protocol_name"] == "create_bolt_card_response"
    assert programmer["lnurlw_base"] == "lnurlw://pay.example.test/boltcard"
    assert {k: programmer[k] for k in DERIVED_KEYS} == DERIVED_KEYS
    assert added["card"]["id"] == DERIVED_ID
    answer = await gw.tap(*tap_of(programmer, DERIVED_UID, 1))
    assert answer["tag"] == "withdrawRequest", answer


# --- refusals -----------------------------------------------------------------------------------


async def test_replayed_counter_is_rejected(gw: Setup) -> None:
    await import_real_card(gw)
    p, c, _ = REAL_TAPS[1]
    assert (await gw.tap(p, c))["tag"] == "withdrawRequest"
    replay = await gw.tap(p, c)
    assert replay["status"] == "ERROR"
    assert "replayed" in replay["reason"]
    older = await gw.tap(*REAL_TAPS[0][:2])
    assert "replayed" in older["reason"]
    outcomes = await gw.rows(select(CardTap.outcome).order_by(CardTap.id))
    assert [r["outcome"] for r in outcomes] == ["accepted", "replay", "replay"]


def flip(hex_text: str, bit: int) -> str:
    data = bytearray(bytes.fromhex(hex_text))
    data[bit // 8] ^= 1 << (bit % 8)
    return data.hex().upper()


async def test_flipped_bit_in_c_gives_the_mac_reason(gw: Setup) -> None:
    await import_real_card(gw)
    p, c, _ = REAL_TAPS[0]
    for bit in range(0, 64, 7):
        answer = await gw.tap(p, flip(c, bit))
        assert answer == {"status": "ERROR", "reason": "c is not this card's MAC (bad MAC)"}
    # The refused taps did not use the counter up.
    assert (await gw.tap(p, c))["tag"] == "withdrawRequest"


async def test_flipped_bit_in_p_gives_the_p_reason(gw: Setup) -> None:
    from Crypto.Cipher import AES

    await import_real_card(gw)
    p, c, _ = REAL_TAPS[0]
    for bit in range(0, 128, 5):
        bad = flip(p, bit)
        answer = await gw.tap(bad, c)
        assert answer["status"] == "ERROR"
        plain = AES.new(bytes.fromhex(REAL_K1), AES.MODE_ECB).decrypt(bytes.fromhex(bad))
        if plain[0] == 0xC7:  # one flip in 256 still decrypts to the tag, with another UID
            assert answer["reason"] == "unknown card"
        else:
            assert answer["reason"].startswith("p is not a Boltcard message")


async def test_each_refusal_has_its_own_reason_and_row(gw: Setup) -> None:
    real = await import_real_card(gw)
    other = await issue_card(gw)
    reasons = {}
    reasons["malformed"] = (await gw.tap("zz", "00"))["reason"]
    reasons["missing"] = (await gw.tap("", ""))["reason"]
    # A K1 nobody registered; the issuer's K1 is random, so skip the one tap in 256 it reads.
    unknown_key = next(
        tap
        for n in range(1, 1000)
        if not gw.registry.ring.candidates(
            bytes.fromhex((tap := make_tap(b"\x01" * 16, b"\x02" * 16, UNKNOWN_UID, n))[0])
        )
    )
    reasons["bad_p"] = (await gw.tap(*unknown_key))["reason"]
    # Right K1 (the issuer's), a UID never registered.
    stranger = tap_of(other["programmer"], "04999999999999", 1)
    reasons["unknown"] = (await gw.tap(*stranger))["reason"]
    await gw.registry.disable(real["id"])
    reasons["disabled"] = (await gw.tap(*REAL_TAPS[0][:2]))["reason"]
    await gw.registry.wipe(other["card"]["id"])
    reasons["wiped"] = (await gw.tap(*tap_of(other["programmer"], "04112233445566", 1)))["reason"]
    assert len(set(reasons.values())) == len(reasons)
    assert reasons["malformed"].startswith("malformed tap") and "missing" in reasons["missing"]
    assert reasons["disabled"] == "card is disabled"
    assert reasons["wiped"] == "card has been wiped"
    assert reasons["unknown"] == "unknown card"
    rows = await gw.rows(select(CardTap.outcome, CardTap.store_id).order_by(CardTap.id))
    assert [r["outcome"] for r in rows] == [
        "malformed",
        "malformed",
        "bad_p",
        "unknown_card",
        "disabled",
        "wiped",
    ]
    counted = await gw.rows(
        select(Counter.label, Counter.value).where(Counter.name == "taps").order_by(Counter.label)
    )
    assert {r["label"]: int(r["value"]) for r in counted} == {
        "bad_p": 1,
        "disabled": 1,
        "malformed": 2,
        "unknown_card": 1,
        "wiped": 1,
    }


async def test_card_disabled_then_enabled_taps_again(gw: Setup) -> None:
    card = await import_real_card(gw)
    await gw.registry.disable(card["id"])
    assert (await gw.tap(*REAL_TAPS[0][:2]))["reason"] == "card is disabled"
    await gw.registry.enable(card["id"])
    assert (await gw.tap(*REAL_TAPS[0][:2]))["tag"] == "withdrawRequest"


# --- callback -----------------------------------------------------------------------------------


async def test_tap_and_callback_create_one_payout_linked_to_the_card(gw: Setup) -> None:
    added = await issue_card(gw, alias="shop card")
    card_id = added["card"]["id"]
    request = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
    pr = invoice(2100)
    assert await gw.callback(request["k1"], pr) == {"status": "OK"}
    at_sim = await gw.sim_payouts()
    assert len(at_sim) == 1 and at_sim[0]["destination"] == pr
    payouts = await gw.rows(select(Payout.__table__))
    assert len(payouts) == 1
    payout = payouts[0]
    assert payout["id"] == at_sim[0]["id"]
    assert payout["card_id"] == card_id
    assert payout["card_uid"] == "04112233445566"
    assert payout["amount_sats"] == 2100
    tap = (await gw.rows(select(CardTap.__table__)))[0]
    assert tap["outcome"] == "paid"
    assert tap["payout_id"] == payout["id"]
    assert payout["tap_id"] == tap["id"]
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 2_100_000
    # The k1 is single use.
    again = await gw.callback(request["k1"], invoice(2100))
    assert again == {"status": "ERROR", "reason": "k1 already used"}


async def test_concurrent_flows_are_each_stored_and_linked_to_their_card(gw: Setup) -> None:
    """Callbacks answered together are stored together: each payout still gets its own card,
    tap, rollups, audit rows and counters, as one at a time would give."""
    uids = ["04000000000001", "04000000000002", "04000000000003"]
    cards = [await issue_card(gw, uid=uid) for uid in uids]
    flows = []
    for counter in range(1, 5):
        for card, uid in zip(cards, uids, strict=True):
            request = await gw.tap(*tap_of(card["programmer"], uid, counter))
            flows.append((card["card"]["id"], uid, request["k1"], 1000 * counter + len(flows)))
    answers = await asyncio.gather(*(gw.callback(k1, invoice(sats)) for _, _, k1, sats in flows))
    assert answers == [{"status": "OK"}] * len(flows)

    at_sim = {p["destination"]: p["id"] for p in await gw.sim_payouts()}
    assert len(at_sim) == len(flows)
    payouts = {p["id"]: p for p in await gw.rows(select(Payout.__table__))}
    taps = {t["id"]: t for t in await gw.rows(select(CardTap.__table__))}
    assert set(payouts) == set(at_sim.values())
    for payout in payouts.values():
        tap = taps[payout["tap_id"]]
        assert (tap["outcome"], tap["payout_id"]) == ("paid", payout["id"])
        assert (payout["card_id"], payout["card_uid"]) == (tap["card_id"], tap["uid"])
        assert payout["amount_sats"] * 1000 == tap["amount_msat"]
    rollups = {
        r["card_id"]: r
        for r in await gw.rows(
            select(CardRollup.card_id, CardRollup.payouts, CardRollup.amount_sats)
        )
    }
    for card_id, _, _, _ in flows:
        mine = [sats for c, _, _, sats in flows if c == card_id]
        assert (rollups[card_id]["payouts"], rollups[card_id]["amount_sats"]) == (4, sum(mine))
    assert await gw.scalar(select(func.count()).where(Boltcard.last_payout_at.is_(None))) == 0
    events = await gw.rows(
        select(PayoutEvent.event_type, func.count()).group_by(PayoutEvent.event_type)
    )
    assert {e["event_type"]: e["count"] for e in events} == {"PayoutCreated": 12, "CardLinked": 12}
    counted = await gw.rows(select(Counter.name, Counter.label, Counter.value))
    values = {(c["name"], c["label"]): int(c["value"]) for c in counted}
    assert values[("callbacks", "paid")] == 12 and values[("payouts_created", "")] == 12
    assert values[("sats_created", "")] == sum(sats for *_, sats in flows)


async def test_callback_refusals_have_their_own_reasons(gw: Setup) -> None:
    added = await issue_card(gw, tx_limit_sats=5000)
    request = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
    k1 = request["k1"]
    assert request["maxWithdrawable"] == 5_000_000
    answers = {
        "unknown": await gw.callback("ab" * 32, invoice(100)),
        "unreadable": await gw.callback(k1, "lnbcrt1garbage"),
        "network": await gw.callback(k1, invoice(100, network="bc")),
        "expired": await gw.callback(
            k1, invoice(100, timestamp=int(time.time()) - 7200, expiry=60)
        ),
        "no_amount": await gw.callback(k1, encode_invoice(None, network="bcrt")),
    }
    assert answers["unknown"]["reason"] == "unknown k1"
    assert answers["unreadable"]["reason"].startswith("unreadable invoice")
    assert "wrong network" in answers["network"]["reason"]
    assert answers["expired"]["reason"] == "invoice has expired"
    assert answers["no_amount"]["reason"] == "invoice has no amount"
    # None of those used the k1 up; an amount over the limit does.
    over = await gw.callback(k1, invoice(5001))
    assert "outside" in over["reason"]
    assert (await gw.callback(k1, invoice(100)))["reason"] == "k1 already used"
    assert await gw.sim_payouts() == []


async def test_a_card_changed_after_its_tap_is_refused_at_the_callback(gw: Setup) -> None:
    """Each k1 was issued while the card was fine; what happened since decides the callback."""
    added = await issue_card(gw, tx_limit_sats=5000)
    card_id = added["card"]["id"]
    k1s = [
        (await gw.tap(*tap_of(added["programmer"], "04112233445566", n)))["k1"] for n in range(1, 5)
    ]
    answers = {"outside": await gw.callback(k1s[0], invoice(5001))}
    await gw.registry.disable(card_id)
    answers["disabled"] = await gw.callback(k1s[1], invoice(100))
    await gw.registry.enable(card_id)
    async with gw.engine.begin() as conn:
        await conn.execute(update(Store).values(btcpay_url=None))
    answers["disconnected"] = await gw.callback(k1s[2], invoice(100))
    await gw.registry.wipe(card_id)
    answers["wiped"] = await gw.callback(k1s[3], invoice(100))
    assert {k: a["reason"] for k, a in answers.items()} == {
        "outside": "invoice amount 5001000 msat is outside 1000..5000000 msat",
        "disabled": "card is disabled",
        "disconnected": "BTCPay unavailable: the card's store is not connected",
        "wiped": "card has been wiped",
    }
    rows = await gw.rows(select(CardTap.outcome, CardTap.reason).order_by(CardTap.id))
    assert [r["outcome"] for r in rows] == [
        "invoice_refused",
        "card_unusable",
        "btcpay_unavailable",
        "card_unusable",
    ]
    assert [r["reason"] for r in rows] == [a["reason"] for a in answers.values()]
    counted = await gw.rows(select(Counter.label, Counter.value).where(Counter.name == "callbacks"))
    assert {r["label"]: int(r["value"]) for r in counted} == {
        "invoice_refused": 1,
        "card_unusable": 2,
        "btcpay_unavailable": 1,
    }
    # Every k1 is used up, and nothing was reserved or claimed.
    assert (await gw.callback(k1s[0], invoice(100)))["reason"] == "k1 already used"
    assert await gw.scalar(select(func.count()).select_from(CardDaySpend)) == 0
    assert await gw.sim_payouts() == []


async def test_expired_k1_is_refused(engine: AsyncEngine, master_key_hex: str) -> None:
    async for gw in running_gateway(engine, master_key_hex, k1_ttl=0.2):
        added = await issue_card(gw)
        request = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
        await asyncio.sleep(0.4)
        assert (await gw.callback(request["k1"], invoice(10)))["reason"] == "k1 has expired"


async def test_same_invoice_on_two_k1s_of_the_card_gives_one_payout(gw: Setup) -> None:
    added = await issue_card(gw)
    first = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
    second = await gw.tap(*tap_of(added["programmer"], "04112233445566", 2))
    pr = invoice(1000)
    answers = await asyncio.gather(gw.callback(first["k1"], pr), gw.callback(second["k1"], pr))
    assert sorted(a["status"] for a in answers) == ["ERROR", "OK"]
    refused = next(a for a in answers if a["status"] == "ERROR")
    assert refused["reason"] == "invoice already claimed through another tap"
    assert len(await gw.sim_payouts()) == 1
    assert await gw.scalar(select(func.count()).select_from(Payout)) == 1
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 1_000_000


async def test_btcpay_refusal_releases_the_reservation(gw: Setup) -> None:
    added = await issue_card(gw)
    request = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
    # A pull payment BTCPay does not know: the claim is refused.
    async with gw.engine.begin() as conn:
        await conn.execute(
            Boltcard.__table__.update().values(pull_payment_id="no-such-pull-payment")
        )
    answer = await gw.callback(request["k1"], invoice(500))
    assert answer["status"] == "ERROR"
    assert answer["reason"].startswith("BTCPay refused")
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 0
    tap = (await gw.rows(select(CardTap.__table__)))[0]
    assert tap["outcome"] == "btcpay_refused"
    assert (await gw.callback(request["k1"], invoice(500)))["reason"] == "k1 already used"


async def test_a_one_hour_invoice_on_a_default_pull_payment_is_refused_for_its_expiry(
    gw: Setup, aiohttp_client: Any
) -> None:
    # A pull payment made with BTCPay's defaults: BOLT11Expiration is the store's 30 days.
    body = {"name": "defaults", "amount": "1", "currency": "BTC", "autoApproveClaims": True,
            "payoutMethods": ["BTC-LN"]}  # fmt: skip
    url = f"{gw.sim_url}/api/v1/stores/{gw.store_id}/pull-payments"
    async with gw.http.post(url, json=body, headers=ADMIN) as resp:
        pull_payment = await resp.json()
    uid = "04112233445566"
    added = await gw.registry.add_card(gw.store_id, pull_payment_id=pull_payment["id"], uid=uid)
    async with gw.engine.begin() as conn:
        _, token = await create_token(conn, gw.store_id, "viewer")
    api = await api_client(aiohttp_client, gw.engine)
    poll = "/plugins/flash/api/events/poll"
    viewer = {"Authorization": f"Bearer {token}"}
    since = (await (await api.get(poll, headers=viewer)).json())["next"]
    request = await gw.tap(*tap_of(added["programmer"], uid, 1))

    async with GreenfieldClient(gw.sim_url, timeout=5) as anonymous:
        with pytest.raises(GreenfieldValidationError) as direct:
            await anonymous.claim_payout(pull_payment["id"], invoice(500, expiry=3600))
    answer = await gw.callback(request["k1"], invoice(500, expiry=3600))

    # BTCPay's own answer, as the simulator gives it ...
    assert direct.value.status == 422
    assert direct.value.errors == [
        {
            "path": "Destination",
            "message": "The BOLT11 invoice must have an expiry date of at least 30 days from "
            "submission (Provided was only 0).",
        }
    ]
    # ... and what the wallet is told: the invoice's expiry, none of BTCPay's text.
    assert answer == {"status": "ERROR", "reason": REASON_INVOICE_EXPIRY}
    tap = (await gw.rows(select(CardTap.__table__)))[0]
    assert (tap["outcome"], tap["reason"]) == ("btcpay_refused_expiry", REASON_INVOICE_EXPIRY)
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 0
    assert await gw.scalar(select(func.count()).select_from(Payout)) == 0
    # Counted under its own outcome: in the metrics ...
    registry = await scrape(gw.engine)
    expiry = {"store": gw.store_id, "outcome": "btcpay_refused_expiry"}
    other = {**expiry, "outcome": "btcpay_refused"}
    assert registry.get_sample_value("flash_callbacks_total", expiry) == 1
    assert registry.get_sample_value("flash_callbacks_total", other) == 0
    # ... and in the API's view of the store's taps.
    polled = await api.get(poll, params={"after": since}, headers=viewer)
    taps = [c["data"] for c in (await polled.json())["changes"] if c["type"] == "tap"]
    assert [(t["outcome"], t["reason"]) for t in taps] == [
        ("btcpay_refused_expiry", REASON_INVOICE_EXPIRY)
    ]


async def test_a_payout_cancelled_later_gives_its_day_reservation_back(gw: Setup) -> None:
    added = await issue_card(gw, day_limit_sats=3000)
    uid = "04112233445566"
    first = await gw.tap(*tap_of(added["programmer"], uid, 1))
    assert first["maxWithdrawable"] == 3_000_000
    assert await gw.callback(first["k1"], invoice(2500)) == {"status": "OK"}
    assert (await gw.tap(*tap_of(added["programmer"], uid, 2)))["maxWithdrawable"] == 500_000
    # The merchant cancels the payout in BTCPay; the ledger learns it from a reconcile, twice.
    payout_id = (await gw.sim_payouts())[0]["id"]
    url = f"{gw.sim_url}/api/v1/stores/{gw.store_id}/payouts/{payout_id}"
    async with gw.http.delete(url, headers=ADMIN) as resp:
        assert resp.status == 200
    client = GreenfieldClient(gw.sim_url, ADMIN_KEY, timeout=5, retries=0)
    try:
        for _ in range(2):
            await reconcile_store(gw.engine, client, gw.store_id)
    finally:
        await client.close()
    assert await gw.scalar(select(Payout.status)) == "Failed"
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 0
    assert (await gw.tap(*tap_of(added["programmer"], uid, 3)))["maxWithdrawable"] == 3_000_000


async def test_btcpay_down_answers_error_in_time_then_a_new_tap_goes_through(gw: Setup) -> None:
    added = await issue_card(gw)
    request = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
    await gw.sim_faults(hang=True, hang_timeout=30)
    started = time.monotonic()
    answer = await gw.callback(request["k1"], invoice(700))
    elapsed = time.monotonic() - started
    assert answer["status"] == "ERROR"
    assert answer["reason"].startswith("BTCPay unavailable")
    assert elapsed < 2.0 + 1.0  # the configured timeout, plus slack for a loaded machine
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 0
    assert (await gw.rows(select(CardTap.outcome)))[0]["outcome"] == "btcpay_unavailable"
    await gw.sim_faults(hang=False)
    assert [p for p in await gw.sim_payouts() if p["state"] != "Cancelled"] == []
    # The old k1 can never produce a payout; a new tap can.
    assert (await gw.callback(request["k1"], invoice(700)))["reason"] == "k1 already used"
    fresh = await gw.tap(*tap_of(added["programmer"], "04112233445566", 2))
    assert await gw.callback(fresh["k1"], invoice(700)) == {"status": "OK"}


async def test_btcpay_stopped_answers_error_then_back_a_new_tap_goes_through(
    engine: AsyncEngine, master_key_hex: str
) -> None:
    async for gw in running_gateway(engine, master_key_hex):
        added = await issue_card(gw)
        # Point the store at a port nobody listens on: BTCPay is down.
        async with engine.begin() as conn:
            await upsert_store(conn, gw.store_id, btcpay_url="http://127.0.0.1:9")
        request = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
        started = time.monotonic()
        answer = await gw.callback(request["k1"], invoice(300))
        assert time.monotonic() - started < 3.0
        assert answer["reason"].startswith("BTCPay unavailable")
        async with engine.begin() as conn:
            await upsert_store(conn, gw.store_id, btcpay_url=gw.sim_url)
        fresh = await gw.tap(*tap_of(added["programmer"], "04112233445566", 2))
        assert await gw.callback(fresh["k1"], invoice(300)) == {"status": "OK"}
        assert len(await gw.sim_payouts()) == 1


async def test_day_limit_shrinks_max_withdrawable_and_then_refuses_taps(gw: Setup) -> None:
    added = await issue_card(gw, tx_limit_sats=4000, day_limit_sats=6000)
    prog = added["programmer"]
    first = await gw.tap(*tap_of(prog, "04112233445566", 1))
    assert first["maxWithdrawable"] == 4_000_000
    assert await gw.callback(first["k1"], invoice(4000)) == {"status": "OK"}
    second = await gw.tap(*tap_of(prog, "04112233445566", 2))
    assert second["maxWithdrawable"] == 2_000_000
    assert await gw.callback(second["k1"], invoice(2000)) == {"status": "OK"}
    third = await gw.tap(*tap_of(prog, "04112233445566", 3))
    assert third["status"] == "ERROR"
    assert third["reason"].startswith("card limit reached")


async def test_repeat_taps_of_a_card_write_the_same_rows_as_its_first(gw: Setup) -> None:
    # The first tap finds the card the long way; later ones (one statement on PostgreSQL) must
    # leave the same facts: tap rows, counter, rollups, the store's choice on tracking.
    added = await issue_card(gw, tx_limit_sats=4000, day_limit_sats=6000)
    prog = added["programmer"]
    answers = [await gw.tap(*tap_of(prog, "04112233445566", n)) for n in (1, 2)]
    assert [a["maxWithdrawable"] for a in answers] == [4_000_000, 4_000_000]
    assert await gw.callback(answers[1]["k1"], invoice(4000)) == {"status": "OK"}
    async with gw.engine.begin() as conn:
        await set_card_tracking(conn, gw.store_id, False)
    untracked = await gw.tap(*tap_of(prog, "04112233445566", 3))
    assert untracked["maxWithdrawable"] == 2_000_000
    async with gw.engine.begin() as conn:
        await set_card_tracking(conn, gw.store_id, True)
    await gw.registry.set_limits(added["card"]["id"], day_limit_sats=4000)
    limited = await gw.tap(*tap_of(prog, "04112233445566", 4))
    assert limited["reason"].startswith("card limit reached")

    taps = await gw.rows(select(CardTap.__table__).order_by(CardTap.id))
    assert [(t["counter"], t["uid"], t["outcome"]) for t in taps] == [
        (1, "04112233445566", "accepted"),
        (2, "04112233445566", "paid"),
        (3, None, "accepted"),
        (4, "04112233445566", "limit"),
    ]
    assert all(t["card_id"] == added["card"]["id"] for t in taps)
    assert all(t["store_id"] == gw.store_id for t in taps)
    assert [t["k1_hash"] is not None for t in taps] == [True, True, True, False]
    assert taps[3]["reason"].startswith("card limit reached")
    assert await gw.scalar(select(Boltcard.last_counter)) == 4
    counted = await gw.rows(
        select(Counter.label, Counter.value).where(Counter.name == "taps").order_by(Counter.label)
    )
    assert {r["label"]: int(r["value"]) for r in counted} == {"accepted": 3, "limit": 1}
    # The opted-out tap is kept out of the card's rollup.
    rollup = (await gw.rows(select(CardRollup.taps, CardRollup.refused_taps)))[0]
    assert (rollup["taps"], rollup["refused_taps"]) == (3, 1)


# --- privacy ------------------------------------------------------------------------------------


async def test_opted_out_store_pays_but_keeps_no_card_link_or_uid(gw: Setup) -> None:
    async with gw.engine.begin() as conn:
        await set_card_tracking(conn, gw.store_id, False)
    added = await issue_card(gw)
    request = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
    assert request["tag"] == "withdrawRequest"
    pr = invoice(1500)
    assert await gw.callback(request["k1"], pr) == {"status": "OK"}
    payout = (await gw.rows(select(Payout.__table__)))[0]
    assert payout["card_id"] is None and payout["card_uid"] is None
    assert payout["tap_id"] is None
    taps = await gw.rows(select(CardTap.__table__))
    assert all(t["uid"] is None for t in taps)
    # Still verified: a replay is refused, and the replay's row keeps no UID either.
    replay = await gw.tap(*tap_of(added["programmer"], "04112233445566", 1))
    assert "replayed" in replay["reason"]
    assert all(t["uid"] is None for t in await gw.rows(select(CardTap.__table__)))


# --- keys at rest -----------------------------------------------------------------------------


async def test_card_keys_are_sealed_at_rest_and_absent_from_listings(gw: Setup) -> None:
    await import_real_card(gw)
    sealed = await gw.scalar(select(Boltcard.keys_sealed))
    assert REAL_K1 not in sealed and REAL_K2 not in sealed
    listing = repr(await gw.registry.list(gw.store_id))
    assert REAL_K1 not in listing and REAL_K2 not in listing


async def test_card_added_by_another_registry_is_found_on_its_first_tap(gw: Setup) -> None:
    # A second registry (as the command line would be) shares only the database.
    other = CardRegistry(gw.engine, gw.box, lnurlw_base="lnurlw://x/boltcard")
    await other.import_card(
        gw.store_id, pull_payment_id=gw.pull_payment_id, uid=REAL_UID, k1=REAL_K1, k2=REAL_K2
    )
    assert (await gw.tap(*REAL_TAPS[0][:2]))["tag"] == "withdrawRequest"


UNREADABLE = "p is not a Boltcard message under any key this gateway knows"


async def test_card_added_elsewhere_just_after_a_key_load_is_read_on_its_first_tap(
    gw: Setup,
) -> None:
    # An unreadable tap has just made the gateway load new keys; a card imported by another
    # process a moment later is still read on its first tap, not refused until a later load.
    junk = await gw.tap("11" * 16, "22" * 8)
    assert junk == {"status": "ERROR", "reason": UNREADABLE}
    other = CardRegistry(gw.engine, gw.box, lnurlw_base="lnurlw://x/boltcard")
    await other.import_card(
        gw.store_id, pull_payment_id=gw.pull_payment_id, uid=REAL_UID, k1=REAL_K1, k2=REAL_K2
    )
    assert (await gw.tap(*REAL_TAPS[0][:2]))["tag"] == "withdrawRequest"


def count_loads(ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Counts the key ring's loads from now on: the returned function says how many so far."""
    loads = 0
    load = ring.load

    async def counted(conn: Any) -> None:
        nonlocal loads
        loads += 1
        await load(conn)

    monkeypatch.setattr(ring, "load", counted)
    return lambda: loads


async def test_a_flood_of_unreadable_taps_shares_a_few_key_loads(
    gw: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = gw.registry.ring
    loads = count_loads(ring, monkeypatch)
    started = time.monotonic()
    answers = await asyncio.gather(*(gw.tap(f"{i:032x}", "00" * 8) for i in range(1, 61)))
    elapsed = time.monotonic() - started

    assert answers == [{"status": "ERROR", "reason": UNREADABLE}] * 60
    # Loads start at least one interval apart, and every tap waiting shares the next one.
    assert 1 <= loads() <= elapsed / ring.refresh_interval + 1, (loads(), elapsed)
    refused = select(func.count()).select_from(CardTap).where(CardTap.outcome == "bad_p")
    assert await gw.scalar(refused) == 60
