"""Cards issued by BTCPay Server itself: the simulator's Boltcard support and the gateway in front.

Everything goes over HTTP as in production: a wallet taps the gateway's ``/boltcard``, the
gateway forwards to the simulated BTCPay, and BTCPay's payout webhooks reach an ingester that
fetches each payout over Greenfield and writes it with ``ledger.payouts.upsert_payout``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from test_gateway_flow import count_loads
from yarl import URL

from btcpay_sim import InvoiceMinter, ProgressDelays, SimConfig, start
from btcpay_sim.app import RunningSimulator
from ledger.payouts import upsert_payout
from ledger.schema import Boltcard, CardTap, Counter, Payout
from ledger.secretbox import SecretBox
from ledger.stores import set_issuer_keys, upsert_store
from lnurl_gateway import btcpay_proxy
from lnurl_gateway.app import REGISTRY, GatewayConfig, setup_boltcard
from lnurl_gateway.boltcard import card_id, derive_card_keys, issuer_k1, make_tap
from lnurl_gateway.btcpay_proxy import BtcpayProxyConfig, seal_issuer_k1, seal_issuer_key
from lnurl_gateway.invoices import decode_invoice
from lnurl_gateway.payout_shape import normalise_payout

ADMIN_KEY = "admin-key"
AUTH = {"Authorization": f"token {ADMIN_KEY}"}
MINTER = InvoiceMinter(network="bcrt")
BOX = SecretBox(os.urandom(32))
SATS_PER_TAP = 1_000
# BOLT11 decoding costs milliseconds; a payout is fetched once per webhook event.
_decode = functools.lru_cache(maxsize=4096)(decode_invoice)


# --- the pieces: simulated BTCPay, webhook ingester, gateway, wallet ---------------------------


class Ingester:
    """BTCPay's webhooks in, payouts fetched over Greenfield, written with ``upsert_payout``.

    With the gate closed, deliveries are acknowledged and kept for later, so the payouts reach
    the ledger only after the wallet has had the callback's answer.
    """

    def __init__(self, engine: AsyncEngine, sim_url: str, secret: str) -> None:
        self.engine = engine
        self.sim_url = sim_url
        self.secret = secret
        self.gate = asyncio.Event()
        self.gate.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.errors: list[str] = []
        self.written = 0
        self.pending: dict[tuple[str, str], bool] = {}
        # A bounded worker pool, like the real enrichment worker: the taps need connections too.
        self.workers = asyncio.Semaphore(8)
        self.arrived: dict[str, asyncio.Event] = {}  # payment hash -> payout written

    async def wait_for(self, payment_hash: str) -> None:
        await self.arrived.setdefault(payment_hash, asyncio.Event()).wait()

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("BTCPay-Sig", "")):
            return web.Response(status=401)
        body = await request.json()
        key = (body["storeId"], body["payoutId"])
        # One fetch in flight per payout; events arriving meanwhile ask for one more fetch.
        if key in self.pending:
            self.pending[key] = True
        else:
            self.pending[key] = False
            task = asyncio.create_task(self._ingest(*key))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return web.Response(status=200)

    async def _ingest(self, store_id: str, payout_id: str) -> None:
        await self.gate.wait()
        try:
            while True:
                self.pending[(store_id, payout_id)] = False
                async with self.workers:
                    await self._fetch_and_write(store_id, payout_id)
                if not self.pending[(store_id, payout_id)]:
                    break
        except Exception as exc:  # the test reports every failed ingestion at the end
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        finally:
            del self.pending[(store_id, payout_id)]

    async def _fetch_and_write(self, store_id: str, payout_id: str) -> None:
        assert self.session is not None
        url = f"{self.sim_url}/api/v1/stores/{store_id}/payouts/{payout_id}"
        async with self.session.get(url, headers=AUTH) as response:
            data = await response.json()
        record = normalise_payout(data, store_id, decode=_decode)
        for attempt in range(5):
            try:
                async with self.engine.begin() as conn:
                    await upsert_payout(conn, record, source="webhook")
                break
            except OperationalError as exc:
                # Concurrent payouts bump shared rollup rows in different orders; PostgreSQL
                # breaks such a deadlock by failing one side, which BTCPay would redeliver.
                if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == 4:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        self.written += 1
        if record.payment_hash:
            self.arrived.setdefault(record.payment_hash, asyncio.Event()).set()

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))


class SlowAnswers:
    """In front of the simulated BTCPay: holds BTCPay's answer to a claiming callback until the
    payout is in the ledger, as a BTCPay waiting for its Lightning payment does in practice.

    While ``hold`` is set, the webhooks of a withdrawal reach the ledger before its answer.
    """

    def __init__(self, sim_url: str, ingester: Ingester, http: aiohttp.ClientSession) -> None:
        self.sim_url = sim_url
        self.ingester = ingester
        self.http = http
        self.hold = False
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        async with self.http.get(URL(self.sim_url + request.path_qs, encoded=True)) as r:
            status, content_type, body = r.status, r.content_type, await r.read()
        pr = request.query.get("pr")
        if pr and self.hold and status == 200:
            payment_hash = _decode(pr).payment_hash
            await asyncio.wait_for(self.ingester.wait_for(payment_hash), 80)
        return web.Response(status=status, body=body, content_type=content_type)


@dataclass
class Card:
    uid: bytes
    pull_payment_id: str
    k1: bytes
    k2: bytes
    version: int
    counter: int = 0

    def tap(self) -> tuple[str, str]:
        self.counter += 1
        return make_tap(self.k1, self.k2, self.uid, self.counter)


@dataclass
class Harness:
    engine: AsyncEngine
    sim: RunningSimulator
    gateway_url: str
    store_id: str
    issuer_key: bytes
    http: aiohttp.ClientSession
    ingester: Ingester
    proxy: btcpay_proxy.BtcpayProxy
    app: web.Application
    slow: SlowAnswers
    cards: list[Card] = field(default_factory=list)

    async def sim_json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.http.request(method, self.sim.url + path, headers=AUTH, **kwargs) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def new_card(self, amount_sats: int = 100_000, auto_approve: bool = True) -> Card:
        pp = await self.sim_json(
            "POST",
            f"/api/v1/stores/{self.store_id}/pull-payments",
            json={
                "name": "Card",
                "amount": str(amount_sats),
                "currency": "SATS",
                "autoApproveClaims": auto_approve,
                "payoutMethods": ["BTC-LN"],
                "BOLT11Expiration": 0,
            },
        )
        uid = b"\x04" + os.urandom(6)
        async with self.http.post(
            f"{self.sim.url}/api/v1/pull-payments/{pp['id']}/boltcards",
            json={"UID": uid.hex()},
        ) as response:
            assert response.status == 200
            keys = await response.json()
        card = Card(
            uid, pp["id"], bytes.fromhex(keys["K1"]), bytes.fromhex(keys["K2"]), keys["version"]
        )
        self.cards.append(card)
        return card

    async def get(self, url: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(URL(url, encoded=True)) as response:
            return response.status, await response.json(content_type=None)

    async def tap(self, p: str, c: str) -> tuple[int, dict[str, Any]]:
        return await self.get(f"{self.gateway_url}/boltcard?p={p}&c={c}")

    async def withdraw(self, card: Card, sats: int = SATS_PER_TAP) -> tuple[str, dict[str, Any]]:
        """A wallet's whole withdrawal: tap, invoice, callback. Returns the payment hash."""
        status, request = await self.tap(*card.tap())
        assert status == 200 and request.get("tag") == "withdrawRequest", request
        invoice = MINTER.mint(sats * 1000)
        callback = URL(request["callback"]).extend_query(k1=request["k1"], pr=invoice.bolt11)
        _, answer = await self.get(str(callback))
        return invoice.payment_hash, answer

    async def counter(self, name: str, label: str = "") -> int:
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(
                    select(Counter.value).where(Counter.name == name, Counter.label == label)
                )
            ).scalar_one_or_none()
        return int(value or 0)


async def _harness(
    engine: AsyncEngine,
    *,
    configure: str = "issuer_key",
    with_gateway: bool = False,
    **proxy_options: Any,
) -> AsyncIterator[Harness]:
    sim = await start(
        SimConfig(
            api_keys={ADMIN_KEY: ["unrestricted"]},
            progress_delays=ProgressDelays(start=0.01, settle=0.01),
            redelivery_scale=0.001,
        )
    )
    http = aiohttp.ClientSession()
    runners: list[web.AppRunner] = []
    try:
        issuer_key = os.urandom(16)
        async with http.post(f"{sim.url}/_sim/boltcards", json={"issuerKey": issuer_key.hex()}):
            pass
        async with http.post(f"{sim.url}/api/v1/stores", json={"name": "Shop"}, headers=AUTH) as r:
            store_id = (await r.json())["id"]

        secret = "webhook-secret-for-tests"
        ingester = Ingester(engine, sim.url, secret)
        ingester.session = http
        hook_app = web.Application()
        hook_app.router.add_post("/hook", ingester.handle)
        hook_runner = web.AppRunner(hook_app, access_log=None)
        await hook_runner.setup()
        runners.append(hook_runner)
        await web.TCPSite(hook_runner, "127.0.0.1", 0).start()
        hook_url = f"http://127.0.0.1:{hook_runner.addresses[0][1]}/hook"
        async with http.post(
            f"{sim.url}/api/v1/stores/{store_id}/webhooks",
            json={"url": hook_url, "secret": secret, "enabled": True},
            headers=AUTH,
        ) as r:
            assert r.status == 200

        # BTCPay's /boltcard, and the callbacks it hands out, are reached through SlowAnswers.
        slow = SlowAnswers(sim.url, ingester, http)
        slow_app = web.Application()
        slow_app.router.add_get("/boltcard", slow.handle)
        slow_runner = web.AppRunner(slow_app, access_log=None)
        await slow_runner.setup()
        runners.append(slow_runner)
        await web.TCPSite(slow_runner, "127.0.0.1", 0).start()
        slow_url = f"http://127.0.0.1:{slow_runner.addresses[0][1]}"
        sim.simulator.config.public_url = slow.url = slow_url

        async with engine.begin() as conn:
            await upsert_store(conn, store_id, name="Shop", btcpay_url=slow_url)
            if configure == "issuer_key":
                sealed = seal_issuer_key(BOX, store_id, issuer_key)
                await set_issuer_keys(conn, store_id, btcpay_issuer_key_sealed=sealed)
            elif configure == "k1":
                sealed = seal_issuer_k1(BOX, store_id, issuer_k1(issuer_key))
                await set_issuer_keys(conn, store_id, btcpay_issuer_k1_sealed=sealed)

        config = BtcpayProxyConfig(public_url="http://unset", **proxy_options)
        if with_gateway:
            # The gateway's own cards and BTCPay's share one /boltcard.
            app = web.Application()
            gateway_config = GatewayConfig(public_url="http://gateway.test", network="regtest")
            setup_boltcard(app, engine=engine, box=BOX, config=gateway_config)
            btcpay_proxy.setup_btcpay_proxy(app, engine=engine, box=BOX, config=config)
        else:
            app = btcpay_proxy.create_app(engine=engine, box=BOX, config=config)
        gateway_runner = web.AppRunner(app, access_log=None)
        await gateway_runner.setup()
        runners.append(gateway_runner)
        await web.TCPSite(gateway_runner, "127.0.0.1", 0).start()
        gateway_url = f"http://127.0.0.1:{gateway_runner.addresses[0][1]}"
        config.public_url = gateway_url
        yield Harness(
            engine,
            sim,
            gateway_url,
            store_id,
            issuer_key,
            http,
            ingester,
            app[btcpay_proxy.PROXY],
            app,
            slow,
        )
        ingester.gate.set()
        await ingester.drain()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await http.close()
        await sim.close()


@pytest.fixture
async def harness(engine: AsyncEngine) -> AsyncIterator[Harness]:
    async for h in _harness(engine):
        yield h


@pytest.fixture
async def k1_harness(engine: AsyncEngine) -> AsyncIterator[Harness]:
    async for h in _harness(engine, configure="k1"):
        yield h


@pytest.fixture
async def pg_harness(pg_engine: AsyncEngine) -> AsyncIterator[Harness]:
    # SlowAnswers holds BTCPay's answer until ingestion catches up: allow for a loaded machine.
    async for h in _harness(pg_engine, callback_timeout=90):
        yield h


@pytest.fixture
async def shared_harness(engine: AsyncEngine) -> AsyncIterator[Harness]:
    async for h in _harness(engine, with_gateway=True):
        yield h


@pytest.fixture
async def bare_harness(engine: AsyncEngine) -> AsyncIterator[Harness]:
    async for h in _harness(engine, configure="none"):
        yield h


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _payouts(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Payout))).mappings().all()
    return {row["payment_hash"]: dict(row) for row in rows}


async def _payout_known(engine: AsyncEngine, payment_hash: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(select(Payout.id).where(Payout.payment_hash == payment_hash))
        return found.first() is not None


async def _taps(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(CardTap).order_by(CardTap.id))).mappings().all()
    return [dict(r) for r in rows]


# --- the simulator's Boltcard support ---------------------------------------------------------


async def test_registration_answers_lnurlw_version_and_btcpays_deterministic_keys(
    harness: Harness,
) -> None:
    card = await harness.new_card()
    expected = derive_card_keys(harness.issuer_key, card.uid, 0, card.pull_payment_id)

    async with harness.http.post(
        f"{harness.sim.url}/api/v1/pull-payments/{card.pull_payment_id}/boltcards",
        json={"UID": card.uid.hex(), "OnExisting": "KeepVersion"},
    ) as response:
        kept = await response.json()
    async with harness.http.post(
        f"{harness.sim.url}/api/v1/pull-payments/{card.pull_payment_id}/boltcards",
        json={"UID": card.uid.hex(), "OnExisting": "UpdateVersion"},
    ) as response:
        updated = await response.json()

    assert card.version == 0 and kept["version"] == 0 and updated["version"] == 1
    host = URL(harness.slow.url).authority  # BTCPay names itself by its public URL
    assert kept["LNURLW"] == f"lnurlw://{host}/boltcard"
    assert {k.lower(): v.lower() for k, v in kept.items() if k.startswith("K")} == (
        expected.hex_keys()
    )
    bumped = derive_card_keys(harness.issuer_key, card.uid, 1, card.pull_payment_id)
    assert updated["K2"].lower() == bumped.k2.hex() != expected.k2.hex()
    assert updated["K1"] == kept["K1"]  # K1 belongs to the issuer, not the card


async def test_registration_refuses_a_bad_uid_and_an_unknown_pull_payment(
    harness: Harness,
) -> None:
    card = await harness.new_card()
    base = f"{harness.sim.url}/api/v1/pull-payments"
    async with harness.http.post(
        f"{base}/{card.pull_payment_id}/boltcards", json={"UID": "04"}
    ) as r:
        assert r.status == 422
    async with harness.http.post(f"{base}/nope/boltcards", json={"UID": "04" * 7}) as r:
        assert r.status == 404


async def test_btcpay_counter_moves_only_when_the_callback_claims(harness: Harness) -> None:
    card = await harness.new_card()
    p, c = card.tap()
    direct = f"{harness.slow.url}/boltcard?p={p}&c={c}"

    first = await harness.get(direct)
    again = await harness.get(direct)  # no claim yet: BTCPay answers the same tap again
    invoice = MINTER.mint(SATS_PER_TAP * 1000)
    callback = URL(first[1]["callback"]).extend_query(k1=first[1]["k1"], pr=invoice.bolt11)
    claimed = await harness.get(str(callback))
    after = await harness.get(direct)

    assert first[1]["tag"] == "withdrawRequest" and again[1]["tag"] == "withdrawRequest"
    assert first[1]["callback"] == direct
    assert first[1]["k1"] == f"{p}-{c}"
    assert first[1]["maxWithdrawable"] == 100_000_000
    assert claimed == (200, {"status": "OK"})
    assert after[0] == 400 and after[1] == {
        "status": "ERROR",
        "reason": "Replayed or expired query",
    }
    payouts = await harness.sim_json("GET", f"/api/v1/stores/{harness.store_id}/payouts")
    assert [p["destination"] for p in payouts] == [invoice.bolt11]
    assert payouts[0]["metadata"] == {}


async def test_btcpay_refuses_a_tap_with_a_wrong_mac(harness: Harness) -> None:
    card = await harness.new_card()
    p, _ = card.tap()
    status, answer = await harness.get(f"{harness.sim.url}/boltcard?p={p}&c={'00' * 8}")
    assert (status, answer["status"]) == (400, "ERROR")


# --- the gateway in front of BTCPay -----------------------------------------------------------


async def test_card_ids_derived_with_the_issuer_key_equal_btcpays(harness: Harness) -> None:
    for _ in range(3):
        card = await harness.new_card()
        await harness.withdraw(card)

    sim_state = await harness.sim_json("GET", "/_sim/boltcards")
    async with harness.engine.connect() as conn:
        rows = (
            (await conn.execute(select(Boltcard.id, Boltcard.uid, Boltcard.origin)))
            .mappings()
            .all()
        )
    ours = {r["id"]: r["uid"] for r in rows}
    assert ours == {c["id"]: c["uid"] for c in sim_state["cards"]}
    assert set(ours) == {card_id(harness.issuer_key, c.uid) for c in harness.cards}
    assert {r["origin"] for r in rows} == {"btcpay"}


async def test_withdrawal_through_the_gateway_links_the_payout_to_its_card(
    harness: Harness,
) -> None:
    card = await harness.new_card()
    payment_hash, answer = await harness.withdraw(card)
    assert answer == {"status": "OK"}

    async def linked() -> bool:
        payout = (await _payouts(harness.engine)).get(payment_hash)
        return payout is not None and payout["card_id"] is not None

    await eventually(linked)
    payout = (await _payouts(harness.engine))[payment_hash]
    assert payout["card_id"] == card_id(harness.issuer_key, card.uid)
    assert payout["card_uid"] == card.uid.hex()
    [tap] = await _taps(harness.engine)
    assert tap["payout_id"] == payout["id"] and tap["source"] == "btcpay_proxy"
    assert tap["outcome"] == "accepted" and tap["counter"] == 1


async def test_rewritten_callback_points_at_the_gateway_and_hides_btcpays(
    harness: Harness,
) -> None:
    card = await harness.new_card()
    p, c = card.tap()
    _, request = await harness.tap(p, c)
    assert request["callback"].startswith(harness.gateway_url + "/boltcard/btcpay-callback?t=")
    assert harness.slow.url not in request["callback"] and p not in request["callback"]
    assert request["k1"] == f"{p}-{c}"  # the rest of BTCPay's answer is left as it was


async def test_an_altered_callback_token_is_refused_and_not_forwarded(harness: Harness) -> None:
    card = await harness.new_card()
    _, request = await harness.tap(*card.tap())
    token = URL(request["callback"]).query["t"]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    invoice = MINTER.mint(SATS_PER_TAP * 1000)
    url = URL(harness.gateway_url + "/boltcard/btcpay-callback").with_query(
        t=forged, k1=request["k1"], pr=invoice.bolt11
    )

    status, answer = await harness.get(str(url))

    assert status == 200 and answer["status"] == "ERROR"
    assert await harness.sim_json("GET", f"/api/v1/stores/{harness.store_id}/payouts") == []


async def test_a_callback_btcpay_refuses_has_used_up_its_tap(harness: Harness) -> None:
    # BTCPay checks auto-approval at the callback, after storing the tap's counter.
    card = await harness.new_card(auto_approve=False)
    p, c = card.tap()
    _, request = await harness.tap(p, c)
    invoice = MINTER.mint(SATS_PER_TAP * 1000)
    callback = URL(request["callback"]).extend_query(k1=request["k1"], pr=invoice.bolt11)

    _, refused = await harness.get(str(callback))
    _, again = await harness.tap(p, c)

    assert request["tag"] == "withdrawRequest"
    assert refused["status"] == "ERROR"
    assert again == {"status": "ERROR", "reason": "Replayed or expired query"}
    assert await harness.counter("btcpay_callbacks", "btcpay_refused") == 1
    assert await harness.sim_json("GET", f"/api/v1/stores/{harness.store_id}/payouts") == []


async def test_replayed_tap_is_flagged_counted_and_still_forwarded(harness: Harness) -> None:
    card = await harness.new_card()
    p, c = card.tap()
    first = await harness.tap(p, c)
    replayed = await harness.tap(p, c)  # BTCPay has not seen a claim: it answers again
    older_p, older_c = make_tap(card.k1, card.k2, card.uid, 0)
    older = await harness.tap(older_p, older_c)

    assert first[1]["tag"] == replayed[1]["tag"] == "withdrawRequest"
    assert older[1]["status"] == "ERROR"  # BTCPay's own answer, relayed
    taps = await _taps(harness.engine)
    assert [t["outcome"] for t in taps] == ["accepted", "replay", "replay"]
    assert [t["counter"] for t in taps] == [1, 1, 0]
    assert await harness.counter("taps", "replay") == 2
    assert await harness.counter("taps", "accepted") == 1


async def test_concurrent_taps_with_one_counter_make_exactly_one_accepted(
    harness: Harness,
) -> None:
    card = await harness.new_card()
    p, c = card.tap()
    answers = await asyncio.gather(*(harness.tap(p, c) for _ in range(8)))
    assert all(a[1]["tag"] == "withdrawRequest" for a in answers)
    outcomes = sorted(t["outcome"] for t in await _taps(harness.engine))
    assert outcomes == ["accepted"] + ["replay"] * 7


async def test_with_only_k1_the_card_gets_a_stable_pseudonym(k1_harness: Harness) -> None:
    card = await k1_harness.new_card()
    await k1_harness.withdraw(card)
    await k1_harness.withdraw(card)

    taps = await _taps(k1_harness.engine)
    ids = {t["card_id"] for t in taps}
    assert len(ids) == 1
    [pseudo] = ids
    assert pseudo and pseudo != card_id(k1_harness.issuer_key, card.uid)
    assert card.uid.hex() not in pseudo
    assert [t["outcome"] for t in taps] == ["accepted", "accepted"]


async def test_tap_of_an_unknown_issuer_is_forwarded_untouched_and_counted_unidentified(
    bare_harness: Harness,
) -> None:
    card = await bare_harness.new_card()
    p, c = card.tap()

    status, answer = await bare_harness.tap(p, c)

    # BTCPay's answer, callback included, as BTCPay wrote it.
    assert status == 200 and answer["callback"] == f"{bare_harness.slow.url}/boltcard?p={p}&c={c}"
    assert await bare_harness.counter("taps", "unidentified") == 1
    [tap] = await _taps(bare_harness.engine)
    assert tap["card_id"] is None and tap["uid"] is None and tap["outcome"] == "unidentified"


async def test_unreachable_btcpay_gives_the_wallet_an_lnurl_error_within_the_timeout(
    harness: Harness,
) -> None:
    harness.proxy.config.tap_timeout = 0.5
    card = await harness.new_card()
    await harness.sim_json("POST", "/_sim/faults", json={"hang": True})
    started = time.monotonic()
    status, answer = await harness.tap(*card.tap())
    elapsed = time.monotonic() - started
    await harness.sim_json("POST", "/_sim/faults", json={"hang": False})

    assert status == 200 and answer["status"] == "ERROR" and answer["reason"]
    assert elapsed < 2.0
    assert await harness.counter("taps", "btcpay_error") == 1


async def test_gateway_cards_and_btcpay_cards_share_one_boltcard_endpoint(
    shared_harness: Harness,
) -> None:
    h = shared_harness
    btcpay_card = await h.new_card()
    pp_id = btcpay_card.pull_payment_id
    added = await h.app[REGISTRY].add_card(h.store_id, pull_payment_id=pp_id, uid="04112233445566")
    programmer = added["programmer"]
    own_p, own_c = make_tap(
        bytes.fromhex(programmer["k1"]),
        bytes.fromhex(programmer["k2"]),
        bytes.fromhex("04112233445566"),
        1,
    )

    _, own = await h.tap(own_p, own_c)
    payment_hash, answer = await h.withdraw(btcpay_card)

    assert own["tag"] == "withdrawRequest"
    assert own["callback"] == "http://gateway.test/boltcard/callback"
    assert answer == {"status": "OK"}
    taps = await _taps(h.engine)
    assert [(t["source"], t["outcome"]) for t in taps] == [
        ("gateway", "accepted"),
        ("btcpay_proxy", "accepted"),
    ]
    assert taps[1]["payment_hash"] == payment_hash
    assert taps[1]["card_id"] == card_id(h.issuer_key, btcpay_card.uid)


async def test_btcpay_card_taps_go_to_btcpay_without_waiting_for_new_keys_of_ours(
    shared_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tap no key of the gateway reads would wait for a load of its new card keys; a tap that
    # BTCPay's issuer reads is BTCPay's card, and goes on at once.
    h = shared_harness
    loads = count_loads(h.app[REGISTRY].ring, monkeypatch)
    card = await h.new_card()
    answers = [await h.tap(*card.tap()) for _ in range(5)]

    assert [(status, body.get("tag")) for status, body in answers] == [(200, "withdrawRequest")] * 5
    assert loads() == 0
    _, unreadable = await h.tap("11" * 16, "22" * 8)
    assert unreadable["status"] == "ERROR" and loads() == 1


async def test_malformed_tap_parameters_get_an_lnurl_error_not_a_500(harness: Harness) -> None:
    for query in ("p=zz&c=00", "p=" + "0" * 31 + "&c=" + "0" * 16, "", "k1=abc"):
        status, answer = await harness.get(f"{harness.gateway_url}/boltcard?{query}")
        assert status == 200 and answer["status"] == "ERROR"


# --- the acceptance: 1,000 taps from 50 cards, webhooks before and after the answer ----------


async def test_thousand_taps_from_fifty_cards_link_every_payout_to_its_card(
    pg_harness: Harness,
) -> None:
    h = pg_harness
    cards = [await h.new_card(amount_sats=10 * 20 * SATS_PER_TAP) for _ in range(50)]
    owner: dict[str, Card] = {}
    order: dict[str, str] = {}  # payment hash -> which side reached the ledger first

    async def run_card(card: Card, taps: int) -> None:
        for _ in range(taps):
            payment_hash, answer = await h.withdraw(card)
            assert answer["status"] == "OK", answer
            owner[payment_hash] = card
            order[payment_hash] = (
                "webhook first" if await _payout_known(h.engine, payment_hash) else "callback first"
            )

    # Half: BTCPay answers each callback only once its webhooks have reached the ledger.
    h.slow.hold = True
    await asyncio.gather(*(run_card(card, 10) for card in cards))
    h.slow.hold = False
    await h.ingester.drain()
    # Other half: every webhook is held until all callbacks have been answered.
    h.ingester.gate.clear()
    await asyncio.gather(*(run_card(card, 10) for card in cards))
    # Replays: each card's first tap presented again (BTCPay refuses it: it was claimed).
    for card in cards:
        p, c = make_tap(card.k1, card.k2, card.uid, 1)
        await h.tap(p, c)
    h.ingester.gate.set()
    await h.ingester.drain()

    async def all_in() -> bool:
        async with h.engine.connect() as conn:
            done = await conn.execute(
                select(func.count()).select_from(Payout).where(Payout.state == "Completed")
            )
            return done.scalar_one() == 1000

    await eventually(all_in, timeout=60)
    await h.ingester.drain()
    assert h.ingester.errors == []

    payouts = await _payouts(h.engine)
    assert set(payouts) == set(owner)
    for payment_hash, payout in payouts.items():
        card = owner[payment_hash]
        assert payout["card_id"] == card_id(h.issuer_key, card.uid), payment_hash
        assert payout["card_uid"] == card.uid.hex()
    orders = list(order.values())
    assert orders.count("callback first") == 500
    assert orders.count("webhook first") == 500

    taps = await _taps(h.engine)
    by_id = {t["id"]: t for t in taps}
    linked = [p for p in payouts.values()]
    assert len({p["tap_id"] for p in linked}) == 1000
    for payout in linked:
        assert by_id[payout["tap_id"]]["payout_id"] == payout["id"]
    async with h.engine.connect() as conn:
        link_events = (
            await conn.execute(select(Payout.id).where(Payout.card_id.is_not(None)))
        ).all()
    assert len(link_events) == 1000
    assert await h.counter("taps", "accepted") == 1000
    assert await h.counter("taps", "replay") == 50
    sim_cards = {c["id"] for c in (await h.sim_json("GET", "/_sim/boltcards"))["cards"]}
    async with h.engine.connect() as conn:
        ours = set((await conn.execute(select(Boltcard.id))).scalars())
    assert ours == sim_cards


# --- the command --------------------------------------------------------------------------------


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_")}
    return subprocess.run(
        [sys.executable, "-m", "flash_payouts", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=60,
    )


async def test_issuer_command_seals_the_key_and_the_gateway_reads_taps_with_it(
    sqlite_url: str, master_key_hex: str
) -> None:
    from ledger import migrate
    from ledger.db import create_engine
    from ledger.stores import get_store

    migrate.upgrade(sqlite_url)
    issuer_key = os.urandom(16)
    common = ["--database-url", sqlite_url, "--master-key", master_key_hex]

    missing = await asyncio.to_thread(
        _cli, "btcpay", "issuer", "--store", "S1", "--issuer-key", issuer_key.hex(), *common
    )
    stored = await asyncio.to_thread(
        _cli,
        "btcpay",
        "issuer",
        "--store",
        "S1",
        "--issuer-key",
        "-",
        "--btcpay-url",
        "http://btcpay.invalid",
        *common,
        stdin=issuer_key.hex() + "\n",
    )
    bad = await asyncio.to_thread(_cli, "btcpay", "issuer", "--store", "S1", "--k1", "abc", *common)

    assert missing.returncode != 0 and "not connected" in missing.stderr
    assert stored.returncode == 0, stored.stderr
    assert issuer_key.hex() not in stored.stdout + stored.stderr
    assert bad.returncode != 0 and "32 hex characters" in bad.stderr
    engine = create_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            store = await get_store(conn, "S1")
        assert store is not None and store.btcpay_issuer_key_sealed is not None
        assert issuer_key.hex() not in store.btcpay_issuer_key_sealed
        proxy = btcpay_proxy.BtcpayProxy(
            engine, SecretBox(bytes.fromhex(master_key_hex)), BtcpayProxyConfig("http://gw")
        )
        uid = bytes.fromhex("04a39493cc8680")
        keys = derive_card_keys(issuer_key, uid, 0, "pp")
        p, _ = make_tap(keys.k1, keys.k2, uid, 9)
        reading = await proxy.read(bytes.fromhex(p))
        assert reading is not None
        assert (reading.card_id, reading.uid, reading.counter) == (keys.card_id, uid, 9)
    finally:
        await engine.dispose()
