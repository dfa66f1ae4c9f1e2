"""Connected BTCPay stores: their Greenfield credentials, webhook secret and card settings.

Secrets arrive here already sealed by the caller's SecretBox; this module stores and returns the
sealed text and never sees a key in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .rollups import dialect_insert
from .schema import Store

stores_t = Store.__table__


@dataclass(frozen=True)
class StoreRow:
    id: str
    name: str
    btcpay_url: str | None
    api_key_sealed: str | None
    webhook_id: str | None
    webhook_secret_sealed: str | None
    issuer_key_sealed: str | None
    btcpay_issuer_key_sealed: str | None
    btcpay_issuer_k1_sealed: str | None
    card_tracking: bool
    created_at: datetime
    updated_at: datetime

    def __repr__(self) -> str:  # sealed values stay out of logs even though they are sealed
        return f"StoreRow(id={self.id!r}, name={self.name!r}, card_tracking={self.card_tracking})"


def _row(mapping) -> StoreRow:  # type: ignore[no-untyped-def]
    return StoreRow(**{f: mapping[f] for f in StoreRow.__dataclass_fields__})


async def upsert_store(
    conn: AsyncConnection,
    store_id: str,
    *,
    name: str | None = None,
    btcpay_url: str | None = None,
    api_key_sealed: str | None = None,
    webhook_id: str | None = None,
    webhook_secret_sealed: str | None = None,
    now: datetime | None = None,
) -> StoreRow:
    """Create the store or update the given fields (None leaves a field as it is)."""
    now = now or datetime.now(UTC)
    given = {
        k: v
        for k, v in {
            "name": name,
            "btcpay_url": btcpay_url,
            "api_key_sealed": api_key_sealed,
            "webhook_id": webhook_id,
            "webhook_secret_sealed": webhook_secret_sealed,
        }.items()
        if v is not None
    }
    stmt = dialect_insert(conn, stores_t).values(
        id=store_id, card_tracking=True, created_at=now, updated_at=now, **{"name": "", **given}
    )
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={**given, "updated_at": now})
    await conn.execute(stmt)
    store = await get_store(conn, store_id)
    assert store is not None
    return store


async def get_store(conn: AsyncConnection, store_id: str) -> StoreRow | None:
    row = (
        (await conn.execute(select(stores_t).where(stores_t.c.id == store_id)))
        .mappings()
        .one_or_none()
    )
    return _row(row) if row is not None else None


async def list_stores(conn: AsyncConnection) -> list[StoreRow]:
    rows = (await conn.execute(select(stores_t).order_by(stores_t.c.id))).mappings().all()
    return [_row(r) for r in rows]


async def set_card_tracking(conn: AsyncConnection, store_id: str, enabled: bool) -> bool:
    """Opt a store in or out of card tracking; returns False when there is no such store."""
    result = await conn.execute(
        update(stores_t)
        .where(stores_t.c.id == store_id)
        .values(card_tracking=enabled, updated_at=datetime.now(UTC))
    )
    return result.rowcount == 1


async def set_issuer_keys(
    conn: AsyncConnection,
    store_id: str,
    *,
    issuer_key_sealed: str | None = None,
    btcpay_issuer_key_sealed: str | None = None,
    btcpay_issuer_k1_sealed: str | None = None,
) -> bool:
    """Store sealed issuer keys (ours, or BTCPay's for the cards BTCPay issued)."""
    values = {
        k: v
        for k, v in {
            "issuer_key_sealed": issuer_key_sealed,
            "btcpay_issuer_key_sealed": btcpay_issuer_key_sealed,
            "btcpay_issuer_k1_sealed": btcpay_issuer_k1_sealed,
        }.items()
        if v is not None
    }
    result = await conn.execute(
        update(stores_t)
        .where(stores_t.c.id == store_id)
        .values(**values, updated_at=datetime.now(UTC))
    )
    return result.rowcount == 1
