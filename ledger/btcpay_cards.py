"""Cards issued by BTCPay Server itself, whose taps the gateway sees on their way to BTCPay.

Such a card has a ``boltcards`` row with ``origin = 'btcpay'`` created on its first tap, no keys
(BTCPay keeps them), and the counter of the last tap seen. Its taps are ``card_taps`` rows with
``source = 'btcpay_proxy'``; the invoice a wallet sends on the callback is recorded on the tap
and linked to its payout through ``ledger.payouts`` (whichever of the two arrives first).

The replay check is one conditional UPDATE (``last_counter < :counter``): of two taps racing
with one counter exactly one advances it, the other is a replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .payouts import link_tap_to_payout, lock_payment_hash
from .rollups import bump_counter, dialect_insert
from .schema import Boltcard, CardTap, Store
from .taps import ACCEPTED, record_tap

cards_t = Boltcard.__table__
taps_t = CardTap.__table__
stores_t = Store.__table__

ORIGIN = "btcpay"
SOURCE = "btcpay_proxy"

# Tap outcomes (the ``taps`` counter's label). ACCEPTED is the gateway's own word for a good tap.
REPLAY = "replay"  # counter not above the last one seen; forwarded all the same
UNIDENTIFIED = "unidentified"  # no configured issuer K1 reads p; forwarded untouched
BTCPAY_REFUSED = "btcpay_refused"  # BTCPay answered the tap with an LNURL error
BTCPAY_ERROR = "btcpay_error"  # BTCPay unreachable, too slow, or answered nonsense

# Callback outcomes (the ``btcpay_callbacks`` counter's label).
CALLBACK_OK = "ok"
CALLBACK_REFUSED = "btcpay_refused"
CALLBACK_ERROR = "btcpay_error"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class BtcpayIssuer:
    """A store's configuration for BTCPay-issued cards (sealed values, opened by the caller)."""

    store_id: str
    btcpay_url: str | None
    issuer_key_sealed: str | None
    k1_sealed: str | None
    card_tracking: bool

    def __repr__(self) -> str:  # sealed values stay out of logs even though they are sealed
        return f"BtcpayIssuer(store_id={self.store_id!r})"


@dataclass(frozen=True)
class ProxyTap:
    id: int
    outcome: str
    store_id: str | None
    card_id: str | None


async def btcpay_issuers(conn: AsyncConnection) -> list[BtcpayIssuer]:
    """Every store with BTCPay's issuer key (or its K1) configured, in a stable order."""
    rows = await conn.execute(
        select(
            stores_t.c.id,
            stores_t.c.btcpay_url,
            stores_t.c.btcpay_issuer_key_sealed,
            stores_t.c.btcpay_issuer_k1_sealed,
            stores_t.c.card_tracking,
        )
        .where(
            stores_t.c.btcpay_issuer_key_sealed.is_not(None)
            | stores_t.c.btcpay_issuer_k1_sealed.is_not(None)
        )
        .order_by(stores_t.c.created_at, stores_t.c.id)
    )
    return [BtcpayIssuer(*row) for row in rows.all()]


async def btcpay_urls(conn: AsyncConnection) -> list[str]:
    """The distinct BTCPay URLs of connected stores (where an unidentified tap may go)."""
    rows = await conn.execute(
        select(stores_t.c.btcpay_url).where(stores_t.c.btcpay_url.is_not(None)).distinct()
    )
    return sorted(r[0] for r in rows.all() if r[0])


async def card_store(conn: AsyncConnection, card_id: str) -> str | None:
    """The store of an already known card (a card id is global: BTCPay's id or a pseudonym)."""
    return (
        await conn.execute(select(cards_t.c.store_id).where(cards_t.c.id == card_id))
    ).scalar_one_or_none()


async def ensure_card(
    conn: AsyncConnection,
    *,
    card_id: str,
    store_id: str,
    uid: str,
    uid_hash: str,
    k1_fingerprint: str,
    now: datetime | None = None,
) -> str:
    """Create the card's row on first sight; returns the store the card belongs to.

    Concurrent first taps of one card race on one INSERT ... ON CONFLICT DO NOTHING. The card
    keeps the store it was first seen with.
    """
    now = now or utcnow()
    await conn.execute(
        dialect_insert(conn, cards_t)
        .values(
            id=card_id,
            store_id=store_id,
            origin=ORIGIN,
            uid=uid,
            uid_hash=uid_hash,
            k1_fingerprint=k1_fingerprint,
            key_version=0,
            last_counter=-1,
            enabled=True,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    owner = await card_store(conn, card_id)
    assert owner is not None
    return owner


async def _advance(conn: AsyncConnection, card_id: str, counter: int, now: datetime) -> bool:
    result = await conn.execute(
        update(cards_t)
        .where(cards_t.c.id == card_id, cards_t.c.last_counter < counter)
        .values(
            last_counter=counter,
            first_used_at=func.coalesce(cards_t.c.first_used_at, now),
            last_used_at=now,
            updated_at=now,
        )
        .returning(cards_t.c.id)
    )
    return result.scalar_one_or_none() is not None


async def _seen_above(conn: AsyncConnection, card_id: str, counter: int) -> bool:
    last = (
        await conn.execute(select(cards_t.c.last_counter).where(cards_t.c.id == card_id))
    ).scalar_one_or_none()
    return last is not None and last >= counter


async def record_proxy_tap(
    conn: AsyncConnection,
    *,
    store_id: str | None,
    card_id: str | None,
    uid: str | None,
    counter: int | None,
    btcpay_outcome: str,
    reason: str | None = None,
    card_rollup: bool = True,
    remote_addr: str | None = None,
    user_agent: str | None = None,
    now: datetime | None = None,
) -> ProxyTap:
    """Record a tap the gateway forwarded to BTCPay, deciding whether it is a replay.

    ``btcpay_outcome`` is what BTCPay's answer made of it (ACCEPTED, BTCPAY_REFUSED,
    BTCPAY_ERROR) or UNIDENTIFIED. A counter not above the last one seen is a REPLAY whatever
    BTCPay said. Only a tap BTCPay accepted moves the card's counter: a p made up by someone
    holding K1 but not the card's K2 cannot push the counter ahead of the real card.
    """
    now = now or utcnow()
    outcome = btcpay_outcome
    if card_id is not None and counter is not None:
        if btcpay_outcome == ACCEPTED:
            if not await _advance(conn, card_id, counter, now):
                outcome = REPLAY
        elif await _seen_above(conn, card_id, counter):
            outcome = REPLAY
    tap_id = await record_tap(
        conn,
        outcome=outcome,
        reason=reason,
        store_id=store_id,
        card_id=card_id,
        uid=uid,
        counter=counter,
        remote_addr=remote_addr,
        user_agent=user_agent,
        source=SOURCE,
        card_rollup=card_rollup,
        now=now,
    )
    return ProxyTap(tap_id, outcome, store_id, card_id)


async def record_callback_invoice(
    conn: AsyncConnection,
    tap_id: int,
    *,
    bolt11: str,
    payment_hash: str,
    amount_msat: int | None,
    now: datetime | None = None,
) -> bool:
    """Keep the invoice a wallet sent for a proxied tap, and link its payout if already known.

    Returns whether this call linked a payout. A tap already linked keeps its invoice (a wallet
    calling again must not move a made link); an unlinked one takes the newest invoice, since
    BTCPay may have refused the earlier one.
    """
    now = now or utcnow()
    await lock_payment_hash(conn, payment_hash)
    updated = (
        await conn.execute(
            update(taps_t)
            .where(taps_t.c.id == tap_id, taps_t.c.source == SOURCE, taps_t.c.payout_id.is_(None))
            .values(
                bolt11=bolt11, payment_hash=payment_hash, amount_msat=amount_msat, updated_at=now
            )
            .returning(taps_t.c.id)
        )
    ).scalar_one_or_none()
    if updated is None:
        return False
    return await link_tap_to_payout(conn, tap_id, payment_hash, now=now)


async def count_callback(conn: AsyncConnection, store_id: str | None, outcome: str) -> None:
    await bump_counter(conn, store_id, "btcpay_callbacks", outcome)


async def tap_store(conn: AsyncConnection, tap_id: int) -> str | None:
    return (
        await conn.execute(select(taps_t.c.store_id).where(taps_t.c.id == tap_id))
    ).scalar_one_or_none()


async def set_btcpay_issuer(
    conn: AsyncConnection,
    store_id: str,
    *,
    issuer_key_sealed: str | None,
    k1_sealed: str | None,
    now: datetime | None = None,
) -> bool:
    """Replace a store's BTCPay issuer configuration: the whole key, or only K1 (the other is
    cleared, so an old key cannot outlive the one configured now). False: no such store."""
    result = await conn.execute(
        update(stores_t)
        .where(stores_t.c.id == store_id)
        .values(
            btcpay_issuer_key_sealed=issuer_key_sealed,
            btcpay_issuer_k1_sealed=k1_sealed,
            updated_at=now or utcnow(),
        )
    )
    return result.rowcount == 1
