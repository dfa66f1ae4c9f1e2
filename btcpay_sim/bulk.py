"""Seeding a store with many payouts at once, for reconcile tests and benchmarks."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal

from . import ids, money
from .models import (
    AWAITING_APPROVAL,
    AWAITING_PAYMENT,
    CANCELLED,
    COMPLETED,
    IN_PROGRESS,
    PAYOUT_STATES,
    Payout,
    PullPayment,
)
from .sim import Simulator

# A settled shop: most payouts done, some in flight, a few refused or cancelled.
DEFAULT_STATE_WEIGHTS = {
    COMPLETED: 0.70,
    CANCELLED: 0.08,
    AWAITING_APPROVAL: 0.07,
    AWAITING_PAYMENT: 0.08,
    IN_PROGRESS: 0.07,
}
_YIELD_EVERY = 2000


@dataclass(slots=True)
class BulkRequest:
    store_id: str
    count: int
    pull_payment_id: str | None = None
    state_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STATE_WEIGHTS))
    min_sats: int = 100
    max_sats: int = 250_000
    days: float = 30.0  # payout dates spread over this many past days
    deliver_events: bool = False

    def validate(self) -> None:
        if not 0 < self.count <= 1_000_000:
            raise ValueError("count must be between 1 and 1000000")
        unknown = set(self.state_weights) - set(PAYOUT_STATES)
        if unknown:
            raise ValueError(f"unknown payout states: {sorted(unknown)}")
        if not self.state_weights or sum(self.state_weights.values()) <= 0:
            raise ValueError("state weights must add up to more than 0")
        if not 0 < self.min_sats <= self.max_sats:
            raise ValueError("need 0 < min_sats <= max_sats")


async def seed_payouts(sim: Simulator, request: BulkRequest) -> dict[str, object]:
    request.validate()
    store = sim.state.store(request.store_id)
    pull_payment = _pull_payment_for(sim, store.id, request)
    states = list(request.state_weights)
    weights = [request.state_weights[s] for s in states]
    rng = sim.rng
    now = time.time()
    started = time.perf_counter()
    counts: dict[str, int] = dict.fromkeys(states, 0)
    log_min, log_max = math.log(request.min_sats), math.log(request.max_sats)
    for index in range(request.count):
        state = rng.choices(states, weights)[0]
        # Log-uniform sats: many small taps, a long tail of larger payouts.
        sats = round(math.exp(rng.uniform(log_min, log_max)))
        date = int(now - rng.uniform(0, request.days * 86400))
        invoice = sim.minter.mint(sats * 1000, timestamp=date)
        amount = money.from_msat(sats * 1000, pull_payment.currency)
        payout = Payout(
            id=ids.payout_id(),
            store_id=store.id,
            pull_payment_id=pull_payment.id,
            date=date,
            destination=invoice.bolt11,
            payment_hash=invoice.payment_hash,
            original_amount=amount,
            original_currency=pull_payment.currency,
            state=state,
        )
        if state != AWAITING_APPROVAL:
            payout.payout_amount = money.to_btc(amount, pull_payment.currency)
        if state == COMPLETED:
            payout.payment_proof = {
                "proofType": "PayoutLightningBlob",
                "paymentHash": invoice.payment_hash,
                "preimage": invoice.preimage,
                "id": invoice.payment_hash,
                "link": None,
            }
        sim.book.insert(payout, announce=request.deliver_events)
        counts[state] += 1
        if index % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep(0)  # let webhook senders and other requests breathe
    sim.state.counters["bulk_payouts"] += request.count
    return {
        "storeId": store.id,
        "pullPaymentId": pull_payment.id,
        "created": request.count,
        "states": counts,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _pull_payment_for(sim: Simulator, store_id: str, request: BulkRequest) -> PullPayment:
    if request.pull_payment_id is not None:
        pull_payment = sim.state.pull_payment(request.pull_payment_id)
        if pull_payment.store_id != store_id:
            raise ValueError("the pull payment belongs to another store")
        return pull_payment
    # Bulk payouts ignore limits; this pull payment only gives them a plausible parent.
    pull_payment = PullPayment(
        id=ids.pull_payment_id(),
        store_id=store_id,
        name="Bulk payouts",
        description="Seeded by the simulator",
        amount=Decimal(request.count) * request.max_sats,
        currency="SATS",
        auto_approve_claims=True,
        payout_methods=["BTC-LN"],
        starts_at=int(time.time() - request.days * 86400),
        bolt11_expiration_days=0,
    )
    sim.state.add_pull_payment(pull_payment)
    return pull_payment
