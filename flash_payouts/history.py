"""`demo --history N`: months of realistic payouts and taps, written through the ledger's own
write functions so every rollup and counter is what live traffic would have left."""

from __future__ import annotations

import hashlib
import random
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.payouts import CardLink, PayoutRecord, upsert_payout
from ledger.taps import record_tap

BATCH = 200
REFUSALS = ("replay", "bad_mac", "unknown_card", "limit")


async def load_history(
    engine: AsyncEngine,
    store_id: str,
    card_ids: list[str],
    count: int,
    *,
    days: int = 180,
    rng: random.Random | None = None,
) -> None:
    """Write ``count`` payouts spread over the last ``days``, each collected by a card tap."""
    rng = rng or random.Random()
    now = datetime.now(UTC)
    # Activity grows over the months, with weekly rhythm, as a shop's adoption would.
    weights = [
        (1 + d / days) * (0.6 if (now - timedelta(days=d)).weekday() >= 5 else 1.0)
        for d in range(days)
    ]
    for start in range(0, count, BATCH):
        async with engine.begin() as conn:
            for _ in range(min(BATCH, count - start)):
                age = rng.choices(range(days), weights=weights[::-1])[0]
                created = now - timedelta(days=age, seconds=rng.randint(0, 86_399))
                card_id = rng.choice(card_ids) if card_ids else None
                if rng.random() < 0.04:
                    await record_tap(
                        conn,
                        outcome=rng.choice(REFUSALS),
                        store_id=store_id,
                        card_id=card_id,
                        now=created,
                    )
                tap_id = await record_tap(
                    conn, outcome="accepted", store_id=store_id, card_id=card_id, now=created
                )
                sats = rng.choice([1_000, 2_100, 5_000, 10_000, 21_000]) * rng.randint(1, 5)
                preimage = secrets.token_bytes(32)
                record = PayoutRecord(
                    id=secrets.token_hex(12),
                    store_id=store_id,
                    state="AwaitingPayment",
                    revision=0,  # BTCPay's revision stays 0 whatever the state
                    created_at=created,
                    pull_payment_id="history",
                    original_amount=Decimal(sats) / Decimal(100_000_000),
                    original_currency="BTC",
                    payout_amount=Decimal(sats) / Decimal(100_000_000),
                    payout_currency="BTC",
                    payout_method_id="BTC-LN",
                    payment_hash=hashlib.sha256(preimage).hexdigest(),
                    amount_sats=sats,
                    read_at=created,
                )
                link = CardLink(card_id, None, tap_id) if card_id else None
                await upsert_payout(conn, record, source="reconcile", card=link, now=created)
                final = rng.random()
                if age == 0 and final < 0.1:
                    continue  # some of today's payouts are still on their way
                record.state = "Completed" if final < 0.93 else "Cancelled"
                if record.state == "Completed":
                    record.payment_proof = {
                        "proofType": "PayoutLightningBlob",
                        "paymentHash": record.payment_hash,
                        "preimage": preimage.hex(),
                    }
                else:
                    record.error_message = "Lightning payment failed"
                done = created + timedelta(seconds=rng.lognormvariate(2.5, 1.0))
                record.read_at = done
                await upsert_payout(conn, record, source="reconcile", now=done)
