"""A card holder's data: export everything held about one card, or erase the personal part.

Erasure pseudonymises: the card id stays on taps and payouts, and no rollup or counter moves,
so aggregates, dashboards and metrics read the same before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .api_queries import payout_dict
from .schema import Boltcard, CardDaySpend, CardRollup, CardTap, Payout

cards_t = Boltcard.__table__
taps_t = CardTap.__table__
payouts_t = Payout.__table__
card_rollups_t = CardRollup.__table__
day_spend_t = CardDaySpend.__table__

# Card columns that are secrets or keyed lookups of secrets: their presence is reported,
# never their value.
_SECRET_CARD_COLUMNS = ("keys_sealed", "uid_hash", "k1_fingerprint")


async def card_store(conn: AsyncConnection, card_id: str) -> str | None:
    stmt = select(cards_t.c.store_id).where(cards_t.c.id == card_id)
    return (await conn.execute(stmt)).scalar_one_or_none()


async def export_card(conn: AsyncConnection, card_id: str) -> dict[str, Any] | None:
    """Every row held about a card (its keys excepted), or None when there is no such card."""
    card = (
        (await conn.execute(select(cards_t).where(cards_t.c.id == card_id)))
        .mappings()
        .one_or_none()
    )
    if card is None:
        return None
    t = taps_t.c
    taps = (
        (await conn.execute(select(taps_t).where(t.card_id == card_id).order_by(t.id)))
        .mappings()
        .all()
    )
    p = payouts_t.c
    payouts = (
        (
            await conn.execute(
                select(payouts_t).where(p.card_id == card_id).order_by(p.created_at, p.id)
            )
        )
        .mappings()
        .all()
    )
    r = card_rollups_t.c
    rollups = (
        (await conn.execute(select(card_rollups_t).where(r.card_id == card_id).order_by(r.day)))
        .mappings()
        .all()
    )
    d = day_spend_t.c
    spend = (
        (await conn.execute(select(day_spend_t).where(d.card_id == card_id).order_by(d.day)))
        .mappings()
        .all()
    )
    return {
        "boltcard": {
            "boltcardId": card["id"],
            "storeId": card["store_id"],
            "pullPaymentId": card["pull_payment_id"],
            "origin": card["origin"],
            "uid": card["uid"],
            "alias": card["alias"],
            "keyVersion": card["key_version"],
            "keysHeld": card["keys_sealed"] is not None,
            "lastCounter": card["last_counter"],
            "enabled": card["enabled"],
            "txLimitSats": card["tx_limit_sats"],
            "dayLimitSats": card["day_limit_sats"],
            "firstUsed": card["first_used_at"],
            "lastUsed": card["last_used_at"],
            "lastPayoutAt": card["last_payout_at"],
            "wipedAt": card["wiped_at"],
            "erasedAt": card["erased_at"],
            "createdAt": card["created_at"],
            "updatedAt": card["updated_at"],
        },
        "taps": [
            {
                "id": tap["id"],
                "uid": tap["uid"],
                "counter": tap["counter"],
                "source": tap["source"],
                "outcome": tap["outcome"],
                "reason": tap["reason"],
                "bolt11": tap["bolt11"],
                "paymentHash": tap["payment_hash"],
                "amountMsat": tap["amount_msat"],
                "payoutId": tap["payout_id"],
                "remoteAddr": tap["remote_addr"],
                "userAgent": tap["user_agent"],
                "createdAt": tap["created_at"],
                "updatedAt": tap["updated_at"],
            }
            for tap in taps
        ],
        "payouts": [payout_dict(row) for row in payouts],
        "dailyUsage": [
            {
                "day": row["day"],
                "payouts": row["payouts"],
                "amountSats": row["amount_sats"],
                "taps": row["taps"],
                "refusedTaps": row["refused_taps"],
                "firstUsed": row["first_used_at"],
                "lastUsed": row["last_used_at"],
            }
            for row in rollups
        ],
        "daySpend": [{"day": row["day"], "reservedMsat": row["reserved_msat"]} for row in spend],
    }


@dataclass(frozen=True)
class Erasure:
    card_id: str
    taps: int
    payouts: int
    erased_at: datetime


async def erase_card(
    conn: AsyncConnection, card_id: str, *, now: datetime | None = None
) -> Erasure | None:
    """Erase a card's personal data: its UID and alias, and the UID, remote address and user
    agent of its taps, and the UID copied onto its payouts. Call inside one transaction."""
    now = now or datetime.now(UTC)
    found = (
        await conn.execute(
            update(cards_t)
            .where(cards_t.c.id == card_id)
            .values(uid=None, alias=None, erased_at=now, updated_at=now)
            .returning(cards_t.c.id)
        )
    ).scalar_one_or_none()
    if found is None:
        return None
    taps = await conn.execute(
        update(taps_t)
        .where(taps_t.c.card_id == card_id)
        .values(uid=None, remote_addr=None, user_agent=None)
    )
    payouts = await conn.execute(
        update(payouts_t).where(payouts_t.c.card_id == card_id).values(card_uid=None)
    )
    return Erasure(card_id, taps.rowcount, payouts.rowcount, now)
