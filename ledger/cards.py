"""The card registry: Boltcards, their sealed keys, counters and limits.

Keys arrive here already sealed by the caller's SecretBox; the UID is looked up through its keyed
hash (``uid_hash``) and K1 through its fingerprint, both indexed, so finding the card of a tap never
scans the table. The counter check is one conditional UPDATE: two taps racing with the same
counter cannot both advance it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import Boltcard, CardDaySpend, Store

cards_t = Boltcard.__table__
stores_t = Store.__table__
spend_t = CardDaySpend.__table__


class CardExists(Exception):
    """A card with this id is already registered."""


@dataclass(frozen=True)
class CardRow:
    id: str
    store_id: str
    pull_payment_id: str | None
    origin: str
    uid: str | None
    uid_hash: str | None
    alias: str | None
    key_version: int
    keys_sealed: str | None
    k1_fingerprint: str | None
    last_counter: int
    enabled: bool
    tx_limit_sats: int | None
    day_limit_sats: int | None
    first_used_at: datetime | None
    last_used_at: datetime | None
    last_payout_at: datetime | None
    wiped_at: datetime | None
    erased_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def __repr__(self) -> str:  # sealed keys and the UID stay out of logs
        return f"CardRow(id={self.id!r}, store_id={self.store_id!r}, enabled={self.enabled})"


_FIELDS = tuple(CardRow.__dataclass_fields__)


def _row(mapping) -> CardRow:  # type: ignore[no-untyped-def]
    return CardRow(**{f: mapping[f] for f in _FIELDS})


def utcnow() -> datetime:
    return datetime.now(UTC)


async def insert_card(
    conn: AsyncConnection,
    *,
    card_id: str,
    store_id: str,
    pull_payment_id: str | None,
    origin: str,
    uid: str | None,
    uid_hash: str | None,
    keys_sealed: str,
    k1_fingerprint: str,
    alias: str | None = None,
    key_version: int = 1,
    last_counter: int = -1,
    tx_limit_sats: int | None = None,
    day_limit_sats: int | None = None,
    now: datetime | None = None,
) -> CardRow:
    """Register a card; CardExists when the id is taken (the caller decides what that means)."""
    now = now or utcnow()
    try:
        async with conn.begin_nested():
            await conn.execute(
                cards_t.insert().values(
                    id=card_id,
                    store_id=store_id,
                    pull_payment_id=pull_payment_id,
                    origin=origin,
                    uid=uid,
                    uid_hash=uid_hash,
                    alias=alias,
                    key_version=key_version,
                    keys_sealed=keys_sealed,
                    k1_fingerprint=k1_fingerprint,
                    last_counter=last_counter,
                    enabled=True,
                    tx_limit_sats=tx_limit_sats,
                    day_limit_sats=day_limit_sats,
                    created_at=now,
                    updated_at=now,
                )
            )
    except IntegrityError:
        raise CardExists(card_id) from None
    card = await get_card(conn, card_id)
    assert card is not None
    return card


async def get_card(conn: AsyncConnection, card_id: str) -> CardRow | None:
    row = (
        (await conn.execute(select(cards_t).where(cards_t.c.id == card_id)))
        .mappings()
        .one_or_none()
    )
    return _row(row) if row is not None else None


async def list_cards(conn: AsyncConnection, store_id: str | None = None) -> list[CardRow]:
    stmt = select(cards_t).order_by(cards_t.c.store_id, cards_t.c.created_at, cards_t.c.id)
    if store_id is not None:
        stmt = stmt.where(cards_t.c.store_id == store_id)
    return [_row(r) for r in (await conn.execute(stmt)).mappings().all()]


async def find_cards_by_uid_hash(
    conn: AsyncConnection, store_id: str, uid_hash: str
) -> list[CardRow]:
    """Cards of a store with this UID (a re-added UID finds its earlier registration)."""
    rows = (
        (
            await conn.execute(
                select(cards_t).where(
                    cards_t.c.uid_hash == uid_hash, cards_t.c.store_id == store_id
                )
            )
        )
        .mappings()
        .all()
    )
    return [_row(r) for r in rows]


def _tap_condition(candidates: Sequence[tuple[str, str]]):  # type: ignore[no-untyped-def]
    conds = [
        and_(cards_t.c.uid_hash == uid_hash, cards_t.c.k1_fingerprint == k1_fp)
        for uid_hash, k1_fp in candidates
    ]
    return conds[0] if len(conds) == 1 else or_(*conds)


async def find_tap_cards(
    conn: AsyncConnection, candidates: Sequence[tuple[str, str]]
) -> list[CardRow]:
    """Cards matching any (uid_hash, k1_fingerprint) pair, by index."""
    if not candidates:
        return []
    rows = (await conn.execute(select(cards_t).where(_tap_condition(candidates)))).mappings()
    return [_row(r) for r in rows.all()]


@dataclass(frozen=True)
class TapCard:
    """The card of a tap with what the tap needs of its store."""

    card: CardRow
    card_tracking: bool
    btcpay_url: str | None
    reserved_msat: int = 0  # reserved against the day limit on the day asked for


async def find_tap_card(
    conn: AsyncConnection, candidates: Sequence[tuple[str, str]], *, day: date | None = None
) -> TapCard | None:
    """The card for a tap's (uid_hash, k1_fingerprint) candidates, with its store's settings
    and, given ``day``, what is reserved against its day limit: one indexed query.

    A tap usually yields one candidate; a few more when another K1 happens to decrypt ``p``
    to the 0xC7 tag as well (one in 256 per wrong key), and those match no card.
    """
    if not candidates:
        return None
    columns = [cards_t, stores_t.c.card_tracking, stores_t.c.btcpay_url]
    stmt = select(*columns).join(stores_t, stores_t.c.id == cards_t.c.store_id)
    if day is not None:
        stmt = stmt.add_columns(spend_t.c.reserved_msat).outerjoin(
            spend_t, and_(spend_t.c.card_id == cards_t.c.id, spend_t.c.day == day)
        )
    row = (
        (await conn.execute(stmt.where(_tap_condition(candidates)).limit(1)))
        .mappings()
        .one_or_none()
    )
    if row is None:
        return None
    reserved = int(row.get("reserved_msat") or 0)
    return TapCard(_row(row), bool(row["card_tracking"]), row["btcpay_url"], reserved)


async def get_tap_card(conn: AsyncConnection, card_id: str) -> TapCard | None:
    row = (
        (
            await conn.execute(
                select(cards_t, stores_t.c.card_tracking, stores_t.c.btcpay_url)
                .join(stores_t, stores_t.c.id == cards_t.c.store_id)
                .where(cards_t.c.id == card_id)
            )
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        return None
    return TapCard(_row(row), bool(row["card_tracking"]), row["btcpay_url"])


async def advance_counter(
    conn: AsyncConnection, card_id: str, counter: int, *, now: datetime | None = None
) -> bool:
    """Accept ``counter`` only if it is above the last accepted one, in one atomic statement.

    Returns False for a replay (equal or lower counter), including the loser of a race.
    """
    now = now or utcnow()
    result = await conn.execute(
        update(cards_t)
        .where(cards_t.c.id == card_id, cards_t.c.last_counter < counter)
        .values(
            last_counter=counter,
            first_used_at=func.coalesce(cards_t.c.first_used_at, now),
            last_used_at=now,
        )
        .returning(cards_t.c.id)
    )
    return result.scalar_one_or_none() is not None


async def _update(conn: AsyncConnection, card_id: str, **values: object) -> CardRow | None:
    values.setdefault("updated_at", utcnow())
    result = await conn.execute(
        update(cards_t).where(cards_t.c.id == card_id).values(**values).returning(cards_t.c.id)
    )
    if result.scalar_one_or_none() is None:
        return None
    return await get_card(conn, card_id)


async def set_alias(conn: AsyncConnection, card_id: str, alias: str | None) -> CardRow | None:
    return await _update(conn, card_id, alias=alias)


async def set_enabled(conn: AsyncConnection, card_id: str, enabled: bool) -> CardRow | None:
    return await _update(conn, card_id, enabled=enabled)


async def set_limits(
    conn: AsyncConnection,
    card_id: str,
    *,
    tx_limit_sats: int | None = None,
    day_limit_sats: int | None = None,
) -> CardRow | None:
    """Change the limits given (None leaves a limit as it is)."""
    values = {
        k: v
        for k, v in {"tx_limit_sats": tx_limit_sats, "day_limit_sats": day_limit_sats}.items()
        if v is not None
    }
    return await _update(conn, card_id, **values)


async def mark_wiped(conn: AsyncConnection, card_id: str) -> CardRow | None:
    """Mark a card wiped and disabled; its first wipe time is kept on repeated wipes."""
    now = utcnow()
    return await _update(
        conn,
        card_id,
        enabled=False,
        wiped_at=func.coalesce(cards_t.c.wiped_at, now),
        updated_at=now,
    )


async def reprogram(
    conn: AsyncConnection,
    card_id: str,
    *,
    expected_version: int,
    keys_sealed: str,
    k1_fingerprint: str,
    pull_payment_id: str | None = None,
) -> CardRow | None:
    """Give a card new keys under the next key version, resetting its counter.

    A re-programmed card starts counting from zero again; the new K2 is what makes the old
    card's MACs worthless. Conditional on the version read, so two concurrent re-programmings
    cannot both win. Returns None when the card changed meanwhile.
    """
    values: dict[str, object] = {
        "key_version": expected_version + 1,
        "keys_sealed": keys_sealed,
        "k1_fingerprint": k1_fingerprint,
        "last_counter": -1,
        "enabled": True,
        "wiped_at": None,
        "updated_at": utcnow(),
    }
    if pull_payment_id is not None:
        values["pull_payment_id"] = pull_payment_id
    result = await conn.execute(
        update(cards_t)
        .where(cards_t.c.id == card_id, cards_t.c.key_version == expected_version)
        .values(**values)
        .returning(cards_t.c.id)
    )
    if result.scalar_one_or_none() is None:
        return None
    return await get_card(conn, card_id)


async def k1_holders(
    conn: AsyncConnection, *, changed_since: datetime | None = None
) -> list[tuple[str, str, str, datetime]]:
    """(k1_fingerprint, card id, sealed keys, updated_at) of cards, optionally only recent ones.

    The gateway opens one card per K1 it has not seen yet to learn the K1s it must try on a
    tap. Wiped cards are included: their taps should be refused as wiped, not as unknown.
    """
    stmt = select(
        cards_t.c.k1_fingerprint, cards_t.c.id, cards_t.c.keys_sealed, cards_t.c.updated_at
    ).where(cards_t.c.k1_fingerprint.is_not(None), cards_t.c.keys_sealed.is_not(None))
    if changed_since is not None:
        stmt = stmt.where(cards_t.c.updated_at >= changed_since)
    rows = await conn.execute(stmt)
    return [(r[0], r[1], r[2], r[3]) for r in rows.all()]


async def store_issuer_keys(conn: AsyncConnection) -> list[tuple[str, str]]:
    """(store id, sealed issuer key) for every store that issues its own cards."""
    rows = await conn.execute(
        select(stores_t.c.id, stores_t.c.issuer_key_sealed).where(
            stores_t.c.issuer_key_sealed.is_not(None)
        )
    )
    return [(r[0], r[1]) for r in rows.all()]


async def set_issuer_key_if_absent(conn: AsyncConnection, store_id: str, sealed: str) -> bool:
    """Set a store's issuer key unless it has one; True when this call set it.

    Two concurrent first cards of a store both try; the conditional UPDATE lets only one win
    and the other reads the winner's key.
    """
    result = await conn.execute(
        update(stores_t)
        .where(stores_t.c.id == store_id, stores_t.c.issuer_key_sealed.is_(None))
        .values(issuer_key_sealed=sealed, updated_at=utcnow())
        .returning(stores_t.c.id)
    )
    return result.scalar_one_or_none() is not None
