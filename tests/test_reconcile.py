"""The reconciler: full syncs against the simulator, and the lossy-webhook acceptance case."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from btcpay_sim import InvoiceMinter, SimConfig, start
from ledger.ingest import count_pending_events, sync_state
from ledger.schema import Payout, PayoutEvent
from ledger.secretbox import SecretBox
from ledger.stores import upsert_store
from lnurl_gateway.btcpay_stores import StoreClients, seal_api_key, seal_webhook_secret
from lnurl_gateway.greenfield import GreenfieldClient, GreenfieldError
from lnurl_gateway.ingestion import ENRICHER, RECONCILER, setup_ingestion
from lnurl_gateway.reconcile import reconcile_all, reconcile_store
from lnurl_gateway.webhooks import WEBHOOK_PATH

MINTER = InvoiceMinter()
SECRET = "reconcile-secret"
API_KEY = "greenfield-key"


@pytest.fixture
def box(master_key_hex: str) -> SecretBox:
    return SecretBox.from_text(master_key_hex)


class Sim:
    def __init__(self, url: str) -> None:
        self.url = url
        self.api = GreenfieldClient(url, API_KEY, timeout=30, retries=0)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return await self.api._json(method, path, body=body)

    async def new_store(self) -> str:
        return (await self.call("POST", "/api/v1/stores", {"name": "Shop"}))["id"]

    async def pull_payment(self, store_id: str) -> str:
        body = {"name": "c", "amount": "100000000", "currency": "SATS", "autoApproveClaims": True,
                "payoutMethods": ["BTC-LN"], "BOLT11Expiration": 0}  # fmt: skip
        return (await self.call("POST", f"/api/v1/stores/{store_id}/pull-payments", body))["id"]


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    running = await start(
        SimConfig(
            api_keys={API_KEY: ["unrestricted"]},
            auto_progress=False,
            redelivery_scale=0.001,
            seed=5,
        )
    )
    simulator = Sim(running.url)
    try:
        yield simulator
    finally:
        await simulator.api.close()
        await running.close()


@contextlib.asynccontextmanager
async def simulator_process(*flags: str) -> AsyncIterator[Sim]:
    """The simulator in a process of its own, as BTCPay would be: its webhooks then do not
    share an event loop with the receiver they are testing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "btcpay_sim",
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-key",
            API_KEY,
            "--redelivery-scale",
            "0.001",
            "--seed",
            "5",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
    )
    simulator = Sim(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await simulator.api.health()
                break
            except GreenfieldError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                await asyncio.sleep(0.1)
        yield simulator
    finally:
        await simulator.api.close()
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def sim_process() -> AsyncIterator[Sim]:
    async with simulator_process("--no-auto-progress") as simulator:
        yield simulator


async def connect(engine: AsyncEngine, box: SecretBox, url: str, store_id: str) -> None:
    async with engine.begin() as conn:
        await upsert_store(
            conn,
            store_id,
            btcpay_url=url,
            api_key_sealed=seal_api_key(box, store_id, API_KEY),
            webhook_secret_sealed=seal_webhook_secret(box, store_id, SECRET),
        )


async def sync(engine: AsyncEngine, box: SecretBox, store_id: str | None = None):
    clients = StoreClients(engine, box, timeout=30)
    try:
        return await reconcile_all(engine, clients, store_id)
    finally:
        await clients.close()


async def ledger_payouts(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Payout))).mappings().all()
    return {r["id"]: dict(r) for r in rows}


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def mismatches(btcpay: list[dict[str, Any]], ledger: dict[str, dict[str, Any]]) -> list[str]:
    """Every difference between BTCPay's payouts and the ledger's, field by field."""
    found = []
    if {p["id"] for p in btcpay} != set(ledger):
        found.append(f"ids differ: {len(btcpay)} at BTCPay, {len(ledger)} in the ledger")
    for p in btcpay:
        row = ledger.get(p["id"])
        if row is None:
            continue
        expected = {
            "state": p["state"],
            "revision": p["revision"],
            "original_amount": _dec(p["originalAmount"]),
            "original_currency": p["originalCurrency"],
            "payout_amount": _dec(p["payoutAmount"]),
            "payout_currency": p["payoutCurrency"],
            "destination": p["destination"],
            "payout_method_id": p["payoutMethodId"],
            "pull_payment_id": p["pullPaymentId"],
            "created_at": p["date"],
        }
        actual = {k: row[k] for k in expected}
        actual["created_at"] = int(row["created_at"].timestamp())
        if actual != expected:
            found.append(f"{p['id']}: ledger {actual} != BTCPay {expected}")
    return found


async def test_full_sync_brings_an_empty_ledger_to_btcpay_state_and_a_second_changes_nothing(
    engine: AsyncEngine, box: SecretBox, sim: Sim
) -> None:
    store_id = await sim.new_store()
    await sim.call("POST", "/_sim/bulk-payouts", {"storeId": store_id, "count": 300})
    await connect(engine, box, sim.url, store_id)

    [first] = await sync(engine, box)
    btcpay = await sim.api.list_payouts(store_id)
    ledger = await ledger_payouts(engine)
    assert mismatches(btcpay, ledger) == []
    assert (first.seen, first.created, first.changed) == (300, 300, 300)
    # The payment hash comes from the BOLT11 destination.
    some = btcpay[0]
    assert ledger[some["id"]]["payment_hash"] == _hash_of(some["destination"])

    [second] = await sync(engine, box)
    assert (second.seen, second.changed) == (300, 0)
    async with engine.connect() as conn:
        state = await sync_state(conn, store_id)
        reconcile_events = (
            await conn.execute(
                select(func.count())
                .select_from(PayoutEvent)
                .where(PayoutEvent.source == "reconcile")
            )
        ).scalar_one()
    assert state is not None and state["payouts_seen"] == 300 and state["last_error"] is None
    assert reconcile_events == 300


def _hash_of(bolt11: str) -> str:
    from lnurl_gateway.invoices import decode_invoice

    return decode_invoice(bolt11).payment_hash


async def test_sync_sees_a_cancel_that_sent_no_webhook(
    engine: AsyncEngine, box: SecretBox, sim: Sim
) -> None:
    store_id = await sim.new_store()
    pp = await sim.pull_payment(store_id)
    await connect(engine, box, sim.url, store_id)
    await sim.call("POST", "/_sim/settings", {"silent_cancel_rate": 1.0, "auto_progress": True})
    await sim.call("POST", "/_sim/settings", {"progress_delays": {"start": 0, "settle": 0}})
    claimed = await sim.api.claim_payout(pp, MINTER.mint(7_000_000).bolt11)
    for _ in range(100):
        if (await sim.api.get_payout(store_id, claimed["id"]))["state"] == "Cancelled":
            break
        await asyncio.sleep(0.02)
    await sync(engine, box)
    row = (await ledger_payouts(engine))[claimed["id"]]
    assert (row["state"], row["status"]) == ("Cancelled", "Failed")
    assert row["amount_sats"] == 7_000


async def test_unreachable_btcpay_is_recorded_in_sync_state(
    engine: AsyncEngine, box: SecretBox, sim: Sim
) -> None:
    store_id = await sim.new_store()
    await connect(engine, box, sim.url, store_id)
    await sim.api._json("POST", "/_sim/faults", body={"fail_rate": 1.0}, auth=False)
    clients = StoreClients(engine, box, timeout=2, retries=0)
    try:
        [result] = await reconcile_all(engine, clients)
    finally:
        await clients.close()
    assert not result.ok and "503" in (result.error or "")
    async with engine.connect() as conn:
        state = await sync_state(conn, store_id)
    assert state is not None and state["last_error_at"] is not None
    assert state["last_success_at"] is None


async def test_pages_are_written_while_the_list_is_still_arriving(
    engine: AsyncEngine, box: SecretBox
) -> None:
    """Memory stays at a page: the first pages reach the ledger before the list has ended."""
    first = [_payout(i) for i in range(1_000)]
    rest = [_payout(i) for i in range(1_000, 1_200)]
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b"[" + b",".join(json.dumps(p).encode() for p in first))
        await release.wait()
        await response.write(b"," + b",".join(json.dumps(p).encode() for p in rest) + b"]")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/v1/stores/{store}/payouts", stream)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        # The stall is the point: a read timeout longer than the test lets it last.
        async with GreenfieldClient(url, "k", timeout=300) as client:
            task = asyncio.create_task(reconcile_store(engine, client, "S", page_size=250))
            deadline = time.monotonic() + 120
            while len(await ledger_payouts(engine)) < 750 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert 750 <= len(await ledger_payouts(engine)) <= 1_000
            assert not task.done()
            release.set()
            result = await task
    assert result.ok and result.seen == 1_200
    assert len(await ledger_payouts(engine)) == 1_200


def _payout(index: int) -> dict[str, Any]:
    return {
        "id": f"P{index:05d}",
        "revision": 0,
        "pullPaymentId": "PP",
        "date": 1767225600 + index,
        "destination": f"bc1qexample{index}",
        "originalAmount": "0.0001",
        "originalCurrency": "BTC",
        "payoutAmount": "0.0001",
        "payoutCurrency": "BTC",
        "payoutMethodId": "BTC-CHAIN",
        "state": "Completed",
        "paymentProof": {"proofType": "PayoutTransactionOnChainBlob", "transactionId": "ab" * 32},
        "metadata": {},
    }


@pytest.mark.postgres
@pytest.mark.slow
async def test_lossy_webhooks_then_one_reconcile_leave_the_ledger_equal_to_btcpay(
    pg_engine: AsyncEngine, box: SecretBox, sim_process: Sim
) -> None:
    """Acceptance: 10,000 payouts, webhooks 20% duplicated, 20% reordered, 10% dropped."""
    engine, sim = pg_engine, sim_process
    store_id = await sim.new_store()
    await connect(engine, box, sim.url, store_id)
    app = web.Application()
    setup_ingestion(app, engine=engine, box=box, reconcile_interval=3600, btcpay_timeout=10)
    app[RECONCILER].first_delay = 3600  # the one reconcile pass is the test's own, below
    async with TestServer(app) as gateway:
        await sim.api.create_webhook(store_id, str(gateway.make_url(WEBHOOK_PATH)), SECRET)
        await sim.api._json(
            "POST",
            "/_sim/faults",
            body={
                "webhook_drop_rate": 0.10,
                "webhook_duplicate_rate": 0.20,
                "webhook_reorder_rate": 0.20,
                "webhook_reorder_delay": 0.05,
            },
            auth=False,
        )
        await sim.call(
            "POST",
            "/_sim/bulk-payouts",
            {"storeId": store_id, "count": 10_000, "deliverEvents": True},
        )
        # A second event for some payouts, so reordering can put a newer state first.
        payouts = await sim.api.list_payouts(store_id)
        movable = [p for p in payouts if p["state"] == "AwaitingPayment"][:300]
        for p in movable:
            await sim.call("POST", f"/api/v1/stores/{store_id}/payouts/{p['id']}/mark-paid")

        stats = await _wait_until_delivered_and_enriched(sim, engine)
        before = await ledger_payouts(engine)
        assert stats["dropped"] > 0 and stats["duplicated"] > 0 and stats["reordered"] > 0
        assert len(before) < 10_000  # dropped creations are missing until the reconcile

        [result] = await sync(engine, box, store_id)
    assert result.ok and result.seen == 10_000
    assert result.changed > 0

    btcpay = await sim.api.list_payouts(store_id)
    assert mismatches(btcpay, await ledger_payouts(engine)) == []
    async with engine.connect() as conn:
        webhook_events = (
            await conn.execute(
                select(func.count())
                .select_from(PayoutEvent)
                .where(PayoutEvent.source == "webhook", PayoutEvent.delivery_id.is_not(None))
            )
        ).scalar_one()
        assert await count_pending_events(conn) == 0
    # Exactly once per delivery: every duplicate was recognised.
    assert webhook_events == stats["sent"] - stats["duplicated"]


async def _wait_until_delivered_and_enriched(sim: Sim, engine: AsyncEngine) -> dict[str, int]:
    """Until the simulator has nothing left to send and the enrichment queue is empty, twice
    in a row (a delivery in flight is in neither count)."""
    deadline = time.monotonic() + 600
    previous: dict[str, int] | None = None
    while time.monotonic() < deadline:
        stats = await sim.api._json("GET", "/_sim/stats", auth=False)
        deliveries = {k: int(v) for k, v in stats["deliveries"].items()}
        async with engine.connect() as conn:
            pending = await count_pending_events(conn)
        if deliveries.get("pending") == 0 and pending == 0 and deliveries == previous:
            return {k: deliveries.get(k, 0) for k in ("sent", "duplicated", "dropped", "reordered")}
        previous = deliveries
        await asyncio.sleep(0.3)
    raise AssertionError("webhooks were not delivered and enriched in time")


# Payouts of the convergence run: a few hundred in CI; the full acceptance run is
# FLASH_CONVERGENCE_PAYOUTS=10000 (see docs/ingestion.md).
CONVERGENCE_PAYOUTS = int(os.environ.get("FLASH_CONVERGENCE_PAYOUTS", "300"))
_RANK = {"Pending": 0, "Processing": 1, "Completed": 2, "Failed": 2}


class LedgerSampler:
    """Reads every payout's status and state from the ledger every ``interval`` seconds and
    keeps, per payout, the sequence of distinct (status, state) it was seen in."""

    def __init__(self, engine: AsyncEngine, interval: float = 0.1) -> None:
        self.engine = engine
        self.interval = interval
        self.seen: dict[str, list[tuple[str, str]]] = {}
        self.samples = 0
        self._stop = asyncio.Event()

    async def sample(self) -> None:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(Payout.id, Payout.status, Payout.state))).all()
        self.samples += 1
        for payout_id, status, state in rows:
            history = self.seen.setdefault(payout_id, [])
            if not history or history[-1] != (status, state):
                history.append((status, state))

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
        await self.sample()

    def stop(self) -> None:
        self._stop.set()

    def backward_moves(self) -> list[str]:
        """Completed and Cancelled that changed, and any status that went back (this run's
        BTCPay never moves a payout back to AwaitingApproval)."""
        found = []
        for payout_id, history in self.seen.items():
            for (status, state), (next_status, next_state) in itertools.pairwise(history):
                if state in ("Completed", "Cancelled") or _RANK[next_status] < _RANK[status]:
                    found.append(f"{payout_id}: {state} ({status}) -> {next_state} ({next_status})")
        return found


@pytest.mark.postgres
@pytest.mark.slow
async def test_realistic_payouts_under_lossy_blocking_webhooks_never_move_backwards(
    pg_engine: AsyncEngine, box: SecretBox, record_property: Any
) -> None:
    """Acceptance: payouts claimed and paid by BTCPay's own rules (revision constant, failed
    payments retried, silent cancels) in four stores, webhooks 20% duplicated, 20% reordered,
    10% dropped and 5% failing in transit (retried in place, blocking their webhook's queue),
    a tenth of Greenfield's answers late. Two gateway replicas write at once: one takes the
    webhooks, both enrich, the other also reconciles every second; so views read earlier keep
    reaching the ledger after newer ones. Sampled every 100 ms, no payout's status ever moves
    backwards; after one reconcile the ledger equals BTCPay."""
    engine = pg_engine
    flags = ("--start-delay", "0.5", "--settle-delay", "1.0", "--payment-failure-rate", "0.3",
             "--cancel-rate", "0.02", "--silent-cancel-rate", "0.01")  # fmt: skip
    async with simulator_process(*flags) as sim:
        stores = [await sim.new_store() for _ in range(4)]
        pull_payments = [await sim.pull_payment(store_id) for store_id in stores]
        for store_id in stores:
            await connect(engine, box, sim.url, store_id)
        app, replica = web.Application(), web.Application()
        setup_ingestion(app, engine=engine, box=box, reconcile_interval=3600, btcpay_timeout=10)
        app[RECONCILER].first_delay = 3600
        setup_ingestion(replica, engine=engine, box=box, reconcile_interval=1, btcpay_timeout=10)
        replica[RECONCILER].first_delay = 0.5
        replica[ENRICHER].poll_interval = 0.2
        sampler = LedgerSampler(engine)
        sampling = asyncio.create_task(sampler.run())
        async with TestServer(app) as gateway, TestServer(replica):
            for store_id in stores:
                url = str(gateway.make_url(WEBHOOK_PATH))
                await sim.api.create_webhook(store_id, url, SECRET)
            faults = {"webhook_drop_rate": 0.10, "webhook_duplicate_rate": 0.20,
                      "webhook_reorder_rate": 0.20, "webhook_reorder_delay": 0.05,
                      "webhook_fail_rate": 0.05,
                      # A tenth of Greenfield's answers arrive 0.3 s after BTCPay read them.
                      "slow_answer_rate": 0.10, "slow_answer_delay": 0.3}  # fmt: skip
            await sim.api._json("POST", "/_sim/faults", body=faults, auth=False)
            await _claim_many(sim.url, pull_payments, CONVERGENCE_PAYOUTS)
            stats = await _wait_until_settled(sim, engine)
            sampler.stop()
            await sampling
            results = [(await sync(engine, box, store_id))[0] for store_id in stores]
        btcpay = [p for store_id in stores for p in await sim.api.list_payouts(store_id)]
        counters = (await sim.api._json("GET", "/_sim/stats", auth=False))["payoutCounters"]

    # The run's figures, for a report (pytest --junitxml keeps them).
    before_reconcile = sum(r.changed for r in results)
    for name, value in {**stats, **counters, "samples": sampler.samples,
                        "reconcile_changed": before_reconcile}.items():  # fmt: skip
        record_property(name, value)
    assert len(btcpay) == CONVERGENCE_PAYOUTS
    assert {p["revision"] for p in btcpay} == {0}
    assert stats["dropped"] and stats["duplicated"] and stats["reordered"]
    assert stats["redeliveries"] and counters["failed_payments"]
    assert sampler.samples > 10
    assert sampler.backward_moves() == []
    assert all(r.ok for r in results)
    assert sum(r.seen for r in results) == CONVERGENCE_PAYOUTS
    assert mismatches(btcpay, await ledger_payouts(engine)) == []


async def _claim_many(sim_url: str, pull_payments: list[str], count: int) -> None:
    """``count`` claims, round robin over the pull payments, about 20 a second: payouts are
    still moving at BTCPay while their events are delivered and enriched."""
    minter = InvoiceMinter()
    started = time.monotonic()
    async with GreenfieldClient(sim_url, timeout=30) as anonymous:

        async def claim(i: int) -> None:
            await asyncio.sleep(max(0.0, started + i / 20 - time.monotonic()))
            invoice = minter.mint((1_000 + i) * 1000, expiry=3600)
            await anonymous.claim_payout(pull_payments[i % len(pull_payments)], invoice.bolt11)

        limit = asyncio.Semaphore(8)

        async def limited(i: int) -> None:
            async with limit:
                await claim(i)

        await asyncio.gather(*(limited(i) for i in range(count)))


async def _wait_until_settled(sim: Sim, engine: AsyncEngine) -> dict[str, int]:
    """Until every payout at BTCPay is Completed or Cancelled, nothing is left to deliver and
    the enrichment queue is empty, twice in a row."""
    deadline = time.monotonic() + 3600
    previous = None
    while time.monotonic() < deadline:
        stats = await sim.api._json("GET", "/_sim/stats", auth=False)
        states = stats["payoutsByState"]
        moving = sum(states[s] for s in ("AwaitingApproval", "AwaitingPayment", "InProgress"))
        deliveries = {k: int(v) for k, v in stats["deliveries"].items()}
        async with engine.connect() as conn:
            pending = await count_pending_events(conn)
        now = (moving, deliveries, pending)
        if moving == 0 and deliveries.get("pending") == 0 and pending == 0 and now == previous:
            kinds = ("dropped", "duplicated", "reordered", "redeliveries", "sent",
                     "failed_in_transit", "abandoned")  # fmt: skip
            return {k: deliveries.get(k, 0) for k in kinds}
        previous = now
        await asyncio.sleep(0.5)
    raise AssertionError("payouts did not settle in time")
