"""The one-statement claim record (PostgreSQL) writes exactly what the general path writes.

``record_claim`` is ``flash_record_claim`` on the server; ``record_claims`` is the batch path
in Python that SQLite and every other case use. Each runs on the same ledger inside a
transaction that is then rolled back, and every row either touched is compared.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger import taps
from ledger.payouts import CardLink, PayoutRecord
from ledger.schema import (
    Boltcard,
    CardDaySpend,
    CardRollup,
    CardTap,
    Counter,
    Payout,
    PayoutEvent,
    PayoutRollup,
)
from ledger.secretbox import SecretBox
from ledger.stores import upsert_store
from lnurl_gateway.registry import CardRegistry

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
HASH = "ab" * 32


async def _held_tap(engine: AsyncEngine, master_key_hex: str) -> tuple[str, int]:
    async with engine.begin() as conn:
        await upsert_store(conn, "S", name="shop", btcpay_url="http://btcpay.invalid")
    registry = CardRegistry(engine, SecretBox.from_text(master_key_hex), lnurlw_base="lnurlw://x")
    card = (await registry.add_card("S", pull_payment_id="PP", uid="04112233445566"))["card"]
    async with engine.begin() as conn:
        tap_id = await taps.record_tap(
            conn,
            outcome=taps.ACCEPTED,
            store_id="S",
            card_id=card["id"],
            uid="04112233445566",
            counter=1,
            k1_hash="cd" * 32,
            k1_expires_at=NOW + timedelta(minutes=5),
            max_withdrawable_msat=10**9,
            now=NOW,
        )
        assert await taps.hold_invoice(
            conn,
            tap_id,
            bolt11="lnbcrt1...",
            payment_hash=HASH,
            lock_hash=HASH,
            amount_msat=2_100_000,
            reserved_day=NOW.date(),
            now=NOW,
        )
        assert await taps.reserve_day_spend(conn, card["id"], NOW.date(), 2_100_000, 10**12)
    return card["id"], tap_id


async def _written(conn: AsyncConnection) -> dict[str, Any]:
    async def rows(*columns: Any) -> list[tuple[Any, ...]]:
        return sorted(tuple(r) for r in (await conn.execute(select(*columns))).all())

    payout_columns = [c for c in Payout.__table__.c]
    event_columns = [c for c in PayoutEvent.__table__.c if c.name != "id"]
    return {
        "payouts": await rows(*payout_columns),
        "events": await rows(*event_columns),
        "card_rollups": await rows(*CardRollup.__table__.c),
        "cards": await rows(Boltcard.id, Boltcard.last_payout_at),
        "taps": await rows(*CardTap.__table__.c),
        "spend": await rows(*CardDaySpend.__table__.c),
        "payout_rollups": await rows(*PayoutRollup.__table__.c),
        "counters": await rows(*Counter.__table__.c),
    }


@pytest.mark.parametrize("state", ["AwaitingPayment", "Completed"])
@pytest.mark.parametrize("linked", [True, False])
async def test_one_statement_record_writes_what_the_batch_path_writes(
    pg_engine: AsyncEngine, master_key_hex: str, state: str, linked: bool
) -> None:
    card_id, tap_id = await _held_tap(pg_engine, master_key_hex)
    record = PayoutRecord(
        id="payout-1",
        store_id="S",
        state=state,
        revision=1,
        created_at=NOW - timedelta(seconds=3),
        pull_payment_id="PP",
        original_amount=Decimal("0.000021"),
        original_currency="BTC",
        payout_amount=Decimal("0.000021"),
        payout_currency="BTC",
        payout_method_id="BTC-LN",
        destination="lnbcrt1...",
        payment_hash=HASH,
        amount_sats=2100,
        payment_proof={"preimage": "00" * 32} if state == "Completed" else None,
    )
    link = CardLink(card_id, "04112233445566", tap_id) if linked else None
    claim = taps.Claim(record, tap_id, link)
    written = {}
    for way in ("one statement", "batch"):
        async with pg_engine.connect() as conn:
            transaction = await conn.begin()
            if way == "one statement":
                assert await taps.record_claim(conn, claim, now=NOW) is True
                # Once stored, the statement leaves a second report to the general path.
                assert await taps.record_claim(conn, claim, now=NOW) is False
            else:
                await taps.record_claims(conn, [claim], now=NOW)
            written[way] = await _written(conn)
            await transaction.rollback()
    assert written["one statement"] == written["batch"]
    payout = dict(zip(Payout.__table__.c.keys(), written["batch"]["payouts"][0], strict=True))
    expected = (card_id, "04112233445566", tap_id) if linked else (None, None, None)
    assert (payout["card_id"], payout["card_uid"], payout["tap_id"]) == expected
