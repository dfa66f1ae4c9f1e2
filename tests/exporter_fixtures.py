"""Ledger contents for the exporter tests, written through the ledger's own write functions.

Taps and cards have no ledger write function of their own yet, so cards are inserted as rows
and taps counted with the ledger's counter and card-rollup functions, as the gateway does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from prometheus_client import CollectorRegistry
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exporter.app import ExporterConfig, ExporterState, build_registry, read_ledger
from ledger.payouts import CardLink, PayoutRecord, upsert_payout
from ledger.rollups import bump_card_rollup, bump_counter
from ledger.schema import Boltcard
from ledger.stores import set_card_tracking, upsert_store


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def payout(pid: str, store_id: str, state: str, sats: int, created_at: datetime, **kw):
    fields = dict(
        id=pid,
        store_id=store_id,
        state=state,
        revision=0,
        created_at=created_at,
        pull_payment_id="pp1",
        original_amount=Decimal(sats) / Decimal(100_000_000),
        original_currency="BTC",
        payout_currency="BTC",
        payout_method_id="BTC-LN",
        amount_sats=sats,
    )
    fields.update(kw)
    return PayoutRecord(**fields)


async def add_store(engine: AsyncEngine, store_id: str, *, tracking: bool = True) -> None:
    async with engine.begin() as conn:
        await upsert_store(conn, store_id, name=f"Store {store_id}")
        if not tracking:
            await set_card_tracking(conn, store_id, False)


async def add_card(
    conn: AsyncConnection,
    card_id: str,
    store_id: str,
    *,
    uid: str = "04a1b2c3d4e5f6",
    alias: str | None = None,
) -> None:
    now = utcnow()
    await conn.execute(
        insert(Boltcard.__table__).values(
            id=card_id,
            store_id=store_id,
            origin="issued",
            uid=uid,
            alias=alias,
            key_version=1,
            last_counter=-1,
            enabled=True,
            created_at=now,
            updated_at=now,
        )
    )


async def card_payout(
    engine: AsyncEngine,
    pid: str,
    store_id: str,
    card_id: str,
    sats: int,
    created_at: datetime,
    *,
    state: str = "Completed",
) -> None:
    """A tap accepted for a card and the payout it became, linked to the card."""
    async with engine.begin() as conn:
        await bump_counter(conn, store_id, "taps", "accepted")
        await bump_card_rollup(conn, card_id=card_id, store_id=store_id, at=created_at, taps=1)
        await upsert_payout(
            conn,
            payout(pid, store_id, state, sats, created_at),
            source="gateway",
            card=CardLink(card_id, "04a1b2c3d4e5f6"),
            now=created_at,
        )


async def refused_tap(
    engine: AsyncEngine, store_id: str | None, outcome: str, card_id: str | None = None
) -> None:
    async with engine.begin() as conn:
        await bump_counter(conn, store_id, "taps", outcome)
        if card_id is not None and store_id is not None:
            await bump_card_rollup(
                conn, card_id=card_id, store_id=store_id, at=utcnow(), taps=1, refused_taps=1
            )


async def scrape(engine: AsyncEngine, config: ExporterConfig | None = None) -> CollectorRegistry:
    """What one scrape would expose, as a registry for ``get_sample_value``."""
    config = config or ExporterConfig()
    snapshot = await read_ledger(engine, config, deadline=10)
    return build_registry(snapshot, ExporterState(engine, config), duration=0.0)


HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
