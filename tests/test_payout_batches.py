"""Many payouts in one transaction: the same ledger as writing them one at a time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.payouts import PayoutRecord, record_event, upsert_payout, upsert_payouts
from ledger.schema import (
    Boltcard,
    CardRollup,
    CardTap,
    Counter,
    Payout,
    PayoutEvent,
    PayoutRollup,
    Store,
)
from ledger.status import BTCPAY_STATES

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def random_records(seed: int, count: int, pool: int) -> list[dict[str, Any]]:
    """Facts about ``pool`` payouts in a random order: repeats, views read earlier than the
    ledger's, and views read at the same moment."""
    rng = random.Random(seed)
    facts = []
    for _ in range(count):
        n = rng.randrange(pool)
        currency = rng.choice(["BTC", "SATS", "USD", None])
        facts.append(
            dict(
                id=f"P{n:03d}",
                state=rng.choice(BTCPAY_STATES),
                revision=0,
                read_at=NOW - timedelta(seconds=rng.randrange(100)),
                created_at=DAY0 + timedelta(days=n % 3, seconds=n),
                pull_payment_id=rng.choice(["PP1", "PP2"]),
                original_amount=rng.choice([None, Decimal(rng.randrange(1, 5000)) / 100]),
                original_currency=currency,
                payout_amount=rng.choice([None, Decimal(rng.randrange(1, 900)) / 10**6]),
                payout_currency=rng.choice(["BTC", None]),
                payout_method_id=rng.choice(["BTC-LN", "BTC-CHAIN"]),
                destination=f"lnbcrt{n}",
                payment_hash=f"{n:064x}" if rng.random() < 0.8 else None,
                amount_sats=rng.choice([None, rng.randrange(1, 10**6)]),
                payment_proof=rng.choice([None, {"paymentHash": f"{n:064x}"}]),
                metadata=rng.choice([None, {}, {"source": "card"}]),
            )
        )
    return facts


def as_record(fact: dict[str, Any], store: str) -> PayoutRecord:
    return PayoutRecord(**{**fact, "id": f"{store}-{fact['id']}", "store_id": store})


async def ledger_of(engine: AsyncEngine, store: str) -> dict[str, Any]:
    """Everything the writes leave for a store, with the store's name taken out of ids."""

    def strip(pid: str) -> str:
        return pid.removeprefix(f"{store}-")

    async with engine.connect() as conn:
        payouts = {
            strip(r["id"]): {k: v for k, v in r.items() if k not in ("id", "store_id")}
            for r in (await conn.execute(select(Payout).where(Payout.store_id == store)))
            .mappings()
            .all()
        }
        rollups = {
            (r.day, r.status, r.currency): (r.count, Decimal(r.amount), r.amount_sats)
            for r in (
                await conn.execute(select(PayoutRollup).where(PayoutRollup.store_id == store))
            ).all()
        }
        counters = {
            (r.name, r.label): Decimal(r.value)
            for r in (await conn.execute(select(Counter).where(Counter.store_id == store))).all()
        }
        events = sorted(
            (strip(r.payout_id), r.source, r.event_type, r.state, r.revision, r.enrich_pending)
            for r in (
                await conn.execute(select(PayoutEvent).where(PayoutEvent.store_id == store))
            ).all()
        )
        # JSON's null and SQL's NULL read back alike: they must be written alike too.
        null_proofs = (
            await conn.execute(
                select(func.count()).where(Payout.store_id == store, Payout.payment_proof.is_(None))
            )
        ).scalar_one()
        null_payloads = (
            await conn.execute(
                select(func.count()).where(
                    PayoutEvent.store_id == store, PayoutEvent.payload.is_(None)
                )
            )
        ).scalar_one()
    return {
        "null_json": (null_proofs, null_payloads),
        "payouts": payouts,
        "rollups": rollups,
        "counters": counters,
        "events": events,
    }


def outcomes(results: list[Any], store: str) -> list[tuple[Any, ...]]:
    return [
        (r.payout_id.removeprefix(f"{store}-"), r.created, r.changed, r.previous_status, r.status)
        for r in results
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_batches_leave_the_ledger_that_one_at_a_time_leaves(
    engine: AsyncEngine, seed: int
) -> None:
    facts = random_records(seed, count=240, pool=60)
    one_by_one, batched = [], []
    async with engine.begin() as conn:
        for fact in facts:
            one_by_one.append(
                await upsert_payout(conn, as_record(fact, "one"), source="reconcile", now=NOW)
            )
    rng = random.Random(seed)
    start = 0
    while start < len(facts):
        size = rng.randint(1, 40)
        async with engine.begin() as conn:
            batch = [as_record(f, "many") for f in facts[start : start + size]]
            batched.extend(await upsert_payouts(conn, batch, source="reconcile", now=NOW))
        start += size

    assert outcomes(batched, "many") == outcomes(one_by_one, "one")
    one, many = await ledger_of(engine, "one"), await ledger_of(engine, "many")
    assert many["payouts"] == one["payouts"]
    assert many["rollups"] == one["rollups"]
    assert many["counters"] == one["counters"]
    assert many["events"] == one["events"]
    assert len(one["payouts"]) > 40 and any(
        k[0] == "completion_seconds_count" for k in one["counters"]
    )


async def test_webhook_batches_complete_their_events_like_one_at_a_time(
    engine: AsyncEngine,
) -> None:
    """The enrichment worker's case: each change completes the webhook's own event row."""
    facts = random_records(7, count=80, pool=25)
    results = {}
    for store in ("one", "many"):
        events = {}
        async with engine.begin() as conn:
            for fact in facts[::2]:
                pid = f"{store}-{fact['id']}"
                if pid not in events:
                    event_id = await record_event(
                        conn,
                        store_id=store,
                        payout_id=pid,
                        source="webhook",
                        event_type="PayoutApproved",
                        delivery_id=f"{store}-d-{fact['id']}",
                        enrich_pending=True,
                    )
                    events[pid] = ("PayoutApproved", event_id)
        records = [as_record(f, store) for f in facts]
        async with engine.begin() as conn:
            if store == "one":
                done = []
                for record in records:
                    kind, event_id = events.get(record.id, (None, None))
                    done.append(
                        await upsert_payout(
                            conn,
                            record,
                            source="webhook",
                            event_type=kind,
                            event_id=event_id,
                            now=NOW,
                        )
                    )
            else:
                done = await upsert_payouts(conn, records, source="webhook", events=events, now=NOW)
        results[store] = outcomes(done, store)
        assert all((r.event_id is not None) == r.changed for r in done)

    assert results["many"] == results["one"]
    one, many = await ledger_of(engine, "one"), await ledger_of(engine, "many")
    assert many == one
    assert ("webhook_events", "PayoutCreated") in one["counters"]


async def test_a_batch_links_a_new_payout_to_the_tap_waiting_for_its_hash(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            Store.__table__.insert().values(id="S", name="S", created_at=NOW, updated_at=NOW)
        )
        await conn.execute(
            Boltcard.__table__.insert().values(
                id="card1",
                store_id="S",
                origin="issued",
                uid="04996c6a926980",
                key_version=1,
                last_counter=3,
                enabled=True,
                created_at=NOW,
                updated_at=NOW,
            )
        )
        tap = (
            await conn.execute(
                CardTap.__table__.insert()
                .values(
                    store_id="S",
                    card_id="card1",
                    uid="04996c6a926980",
                    outcome="accepted",
                    payment_hash="aa" * 32,
                    created_at=NOW,
                    updated_at=NOW,
                )
                .returning(CardTap.id)
            )
        ).scalar_one()
    facts = random_records(3, count=30, pool=30)
    records = [as_record(f, "S") for f in facts]
    records.append(
        PayoutRecord(
            **{
                **facts[0],
                "id": "TAPPED",
                "store_id": "S",
                "payment_hash": "aa" * 32,
                "amount_sats": 21000,
            }
        )
    )
    async with engine.begin() as conn:
        results = await upsert_payouts(conn, records, source="reconcile", now=NOW)
    assert [r.payout_id for r in results if r.linked] == ["TAPPED"]
    async with engine.connect() as conn:
        linked = dict(
            (
                await conn.execute(
                    select(Payout.id, Payout.card_id).where(Payout.card_id.is_not(None))
                )
            ).all()
        )
        tapped = (
            await conn.execute(select(CardTap.payout_id).where(CardTap.id == tap))
        ).scalar_one()
        usage = (await conn.execute(select(CardRollup.payouts, CardRollup.amount_sats))).one()
    assert linked == {"TAPPED": "card1"} and tapped == "TAPPED"
    assert tuple(usage) == (1, 21000)
