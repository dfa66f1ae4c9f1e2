"""Races the reference servers lose: concurrent taps, callbacks, invoices and day limits.

Each check in the gateway is one atomic statement; these tests fire the requests at once and
count what the simulator and the ledger end up with.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from test_gateway_flow import (
    REAL_TAPS,
    Setup,
    import_real_card,
    invoice,
    issue_card,
    running_gateway,
    tap_of,
)

from ledger.schema import CardDaySpend, CardTap, Payout

UID = "04112233445566"


@pytest.fixture
async def gw(engine: AsyncEngine, master_key_hex: str) -> AsyncIterator[Setup]:
    async for setup in running_gateway(engine, master_key_hex):
        yield setup


async def test_fifty_identical_taps_at_once_accept_exactly_one(gw: Setup) -> None:
    await import_real_card(gw)
    p, c, _ = REAL_TAPS[0]
    answers = await asyncio.gather(*(gw.tap(p, c) for _ in range(50)))
    accepted = [a for a in answers if a.get("tag") == "withdrawRequest"]
    assert len(accepted) == 1
    assert all("replayed" in a["reason"] for a in answers if a not in accepted)
    outcomes = Tally(r["outcome"] for r in await gw.rows(select(CardTap.outcome)))
    assert outcomes == {"accepted": 1, "replay": 49}


async def test_fifty_callbacks_with_one_k1_make_one_payout(gw: Setup) -> None:
    added = await issue_card(gw)
    request = await gw.tap(*tap_of(added["programmer"], UID, 1))
    # Distinct invoices, so only the k1 stands between them and fifty payouts.
    invoices = [invoice(100 + i) for i in range(50)]
    answers = await asyncio.gather(*(gw.callback(request["k1"], pr) for pr in invoices))
    statuses = Tally(a["status"] for a in answers)
    assert statuses == {"OK": 1, "ERROR": 49}
    assert {a["reason"] for a in answers if a["status"] == "ERROR"} == {"k1 already used"}
    assert len(await gw.sim_payouts()) == 1
    assert await gw.scalar(select(func.count()).select_from(Payout)) == 1


async def test_same_invoice_fired_on_many_k1s_makes_one_payout(gw: Setup) -> None:
    added = await issue_card(gw)
    requests = [await gw.tap(*tap_of(added["programmer"], UID, n)) for n in range(1, 11)]
    pr = invoice(1234)
    answers = await asyncio.gather(*(gw.callback(r["k1"], pr) for r in requests))
    assert Tally(a["status"] for a in answers) == {"OK": 1, "ERROR": 9}
    assert len(await gw.sim_payouts()) == 1
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 1_234_000


async def test_day_limit_holds_under_twenty_concurrent_callbacks(gw: Setup) -> None:
    # 20 callbacks of 1,000 sats against a 7,500-sat day: at most 7 can be paid.
    added = await issue_card(gw, tx_limit_sats=5_000, day_limit_sats=7_500)
    requests = [await gw.tap(*tap_of(added["programmer"], UID, n)) for n in range(1, 21)]
    assert all(r["tag"] == "withdrawRequest" for r in requests)
    answers = await asyncio.gather(*(gw.callback(r["k1"], invoice(1000)) for r in requests))
    paid = [a for a in answers if a["status"] == "OK"]
    assert len(paid) == 7
    refused = {a["reason"] for a in answers if a["status"] == "ERROR"}
    assert refused == {"over the card's day limit of 7500 sats"}
    live = [p for p in await gw.sim_payouts() if p["state"] != "Cancelled"]
    assert len(live) == 7
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 7_000_000
    assert sum(r["amount_sats"] for r in await gw.rows(select(Payout.amount_sats))) == 7_000


async def test_failed_claims_give_their_reservation_back_under_concurrency(gw: Setup) -> None:
    added = await issue_card(gw, tx_limit_sats=5_000, day_limit_sats=5_000)
    requests = [await gw.tap(*tap_of(added["programmer"], UID, n)) for n in range(1, 11)]
    await gw.sim_faults(fail_rate=1.0)
    answers = await asyncio.gather(*(gw.callback(r["k1"], invoice(1000)) for r in requests[:5]))
    assert all(a["reason"].startswith("BTCPay unavailable") for a in answers)
    assert await gw.scalar(select(CardDaySpend.reserved_msat)) == 0
    await gw.sim_faults(fail_rate=0.0)
    answers = await asyncio.gather(*(gw.callback(r["k1"], invoice(1000)) for r in requests[5:]))
    assert Tally(a["status"] for a in answers) == {"OK": 5}
