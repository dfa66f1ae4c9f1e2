"""Writing payouts and their audit trail: one transaction per fact, rollups included.

The rules that make BTCPay's unreliable delivery converge:
- a payout is keyed by BTCPay's payout id and its ``revision`` never moves backwards;
- a webhook delivery is recorded once, by BTCPay's (original) delivery id;
- a payout is linked to a card exactly once, whether the tap or the payout arrives first.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .rollups import (
    COMPLETION_BUCKETS,
    bump_card_rollup,
    bump_counter,
    bump_payout_rollup,
    dialect_insert,
)
from .schema import Boltcard, CardTap, Payout, PayoutEvent
from .status import COMPLETED, FAILED, status_of

payouts_t = Payout.__table__
events_t = PayoutEvent.__table__
taps_t = CardTap.__table__
cards_t = Boltcard.__table__


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PayoutRecord:
    """BTCPay's view of one payout, already normalised from the 1.x or 2.x JSON shape."""

    id: str
    store_id: str
    state: str
    revision: int
    created_at: datetime
    pull_payment_id: str | None = None
    original_amount: Decimal | None = None
    original_currency: str | None = None
    payout_amount: Decimal | None = None
    payout_currency: str | None = None
    payout_method_id: str | None = None
    destination: str | None = None
    payment_hash: str | None = None
    # The value in whole satoshis when it is known (payout amount in BTC, or the invoice's).
    amount_sats: int | None = None
    transaction_id: str | None = None
    payment_proof: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    error_message: str | None = None

    @property
    def status(self) -> str:
        return status_of(self.state)

    def columns(self) -> dict[str, Any]:
        return {
            "store_id": self.store_id,
            "pull_payment_id": self.pull_payment_id,
            "revision": self.revision,
            "state": self.state,
            "status": self.status,
            "original_amount": self.original_amount,
            "original_currency": self.original_currency,
            "payout_amount": self.payout_amount,
            "payout_currency": self.payout_currency,
            "amount_sats": self.amount_sats,
            "payout_method_id": self.payout_method_id,
            "destination": self.destination,
            "payment_hash": self.payment_hash,
            "transaction_id": self.transaction_id,
            "payment_proof": self.payment_proof,
            "metadata": self.metadata,
            "error_message": self.error_message,
        }


@dataclass
class CardLink:
    card_id: str
    card_uid: str | None
    tap_id: int | None = None


@dataclass
class UpsertResult:
    payout_id: str
    created: bool
    changed: bool
    previous_status: str | None
    status: str
    linked: bool = False
    event_id: int | None = None
    notes: list[str] = field(default_factory=list)


# Columns compared to decide whether a same-revision write changes anything.
_COMPARED = (
    "state",
    "original_amount",
    "original_currency",
    "payout_amount",
    "payout_currency",
    "amount_sats",
    "payout_method_id",
    "destination",
    "payment_hash",
    "transaction_id",
    "payment_proof",
    "pull_payment_id",
)


async def lock_payment_hash(conn: AsyncConnection, payment_hash: str | None) -> None:
    """Serialise the two sides that may link a payment hash (tap and payout) on PostgreSQL.

    Without it, a payout inserted while its tap is being recorded could each miss the other's
    uncommitted row, and neither would link. SQLite writers are serialised already.
    """
    if payment_hash and conn.dialect.name == "postgresql":
        key = zlib.crc32(payment_hash.encode()) - 2**31
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


async def record_event(
    conn: AsyncConnection,
    *,
    store_id: str,
    payout_id: str,
    source: str,
    event_type: str,
    state: str | None = None,
    revision: int | None = None,
    delivery_id: str | None = None,
    payload: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
    enrich_pending: bool = False,
    now: datetime | None = None,
) -> int | None:
    """Add an audit-trail row. Returns its id, or None when this delivery id is already in.

    The once-per-delivery rule is the unique index on ``delivery_id``: concurrent deliveries
    of the same event race on one INSERT and only one wins.
    """
    now = now or utcnow()
    stmt = (
        dialect_insert(conn, events_t)
        .values(
            store_id=store_id,
            payout_id=payout_id,
            source=source,
            event_type=event_type,
            state=state,
            revision=revision,
            delivery_id=delivery_id,
            payload=payload,
            occurred_at=occurred_at,
            enrich_pending=enrich_pending,
            enrich_attempts=0,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["delivery_id"])
        .returning(events_t.c.id)
    )
    event_id = (await conn.execute(stmt)).scalar_one_or_none()
    if event_id is not None and source == "webhook":
        await bump_counter(conn, store_id, "webhook_events", event_type)
    return event_id


async def upsert_payout(
    conn: AsyncConnection,
    record: PayoutRecord,
    *,
    source: str,
    event_type: str | None = None,
    event_id: int | None = None,
    card: CardLink | None = None,
    now: datetime | None = None,
) -> UpsertResult:
    """Insert or update a payout from BTCPay's view of it, never moving ``revision`` backwards.

    Rollups and counters move in the same transaction. When the write changes the payout an
    audit row is written (or, with ``event_id``, the webhook's own row is completed).
    """
    now = now or utcnow()
    await lock_payment_hash(conn, record.payment_hash)
    values = record.columns()
    inserted = (
        await conn.execute(
            dialect_insert(conn, payouts_t)
            .values(
                id=record.id,
                created_at=record.created_at,
                updated_at=now,
                completed_at=now if record.status == COMPLETED else None,
                **values,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(payouts_t.c.id)
        )
    ).scalar_one_or_none()

    if inserted is not None:
        result = UpsertResult(record.id, True, True, None, record.status)
        await _count_payout(conn, record, +1)
        await bump_counter(conn, record.store_id, "payouts_created")
        await bump_counter(conn, record.store_id, "sats_created", by=record.amount_sats or 0)
        if record.original_currency and record.original_amount is not None:
            await bump_counter(
                conn,
                record.store_id,
                "original_amount_created",
                record.original_currency,
                by=record.original_amount,
            )
        await _count_transition(conn, record, None, record.created_at, now)
    else:
        current = (
            (
                await conn.execute(
                    select(payouts_t).where(payouts_t.c.id == record.id).with_for_update()
                )
            )
            .mappings()
            .one()
        )
        result = UpsertResult(record.id, False, False, current["status"], current["status"])
        newer = record.revision > current["revision"]
        same = record.revision == current["revision"]
        differs = any(_differs(current[c], values[c]) for c in _COMPARED)
        if newer or (same and differs):
            old = _as_record(current)
            await _count_payout(conn, old, -1)
            await _count_payout(conn, record, +1)
            completed_at = current["completed_at"]
            if record.status == COMPLETED and completed_at is None:
                completed_at = now
            await conn.execute(
                update(payouts_t)
                .where(payouts_t.c.id == record.id)
                .values(
                    **{k: v for k, v in values.items() if k != "store_id"},
                    created_at=current["created_at"],
                    completed_at=completed_at,
                    updated_at=now,
                )
            )
            if current["status"] != record.status:
                await _count_transition(
                    conn,
                    record,
                    current["status"],
                    current["created_at"],
                    now,
                    already_completed=current["completed_at"] is not None,
                )
            result.changed = True
            result.status = record.status

    if result.changed:
        if event_id is not None:
            await conn.execute(
                update(events_t)
                .where(events_t.c.id == event_id)
                .values(state=record.state, revision=record.revision)
            )
            result.event_id = event_id
        else:
            result.event_id = await record_event(
                conn,
                store_id=record.store_id,
                payout_id=record.id,
                source=source,
                event_type=event_type or ("PayoutCreated" if result.created else "PayoutUpdated"),
                state=record.state,
                revision=record.revision,
                now=now,
            )

    if card is not None:
        result.linked = await link_payout_to_card(conn, record.id, card, now=now)
    elif result.created and record.payment_hash:
        result.linked = await _link_from_tap(conn, record.id, record.payment_hash, now=now)
    return result


async def link_payout_to_card(
    conn: AsyncConnection, payout_id: str, card: CardLink, *, now: datetime | None = None
) -> bool:
    """Attach a payout to the card that collected it, once. Returns whether this call linked it.

    The conditional UPDATE is the exactly-once rule: whichever side arrives second finds
    ``card_id`` set and changes nothing.
    """
    now = now or utcnow()
    row = (
        await conn.execute(
            update(payouts_t)
            .where(payouts_t.c.id == payout_id, payouts_t.c.card_id.is_(None))
            .values(
                card_id=card.card_id, card_uid=card.card_uid, tap_id=card.tap_id, updated_at=now
            )
            .returning(payouts_t.c.store_id, payouts_t.c.created_at, payouts_t.c.amount_sats)
        )
    ).one_or_none()
    if row is None:
        return False
    store_id, created_at, amount_sats = row
    await bump_card_rollup(
        conn,
        card_id=card.card_id,
        store_id=store_id,
        at=created_at,
        payouts=1,
        amount_sats=amount_sats or 0,
    )
    await conn.execute(
        update(cards_t)
        .where(cards_t.c.id == card.card_id)
        .values(last_payout_at=created_at)
        .where((cards_t.c.last_payout_at.is_(None)) | (cards_t.c.last_payout_at < created_at))
    )
    if card.tap_id is not None:
        await conn.execute(
            update(taps_t)
            .where(taps_t.c.id == card.tap_id, taps_t.c.payout_id.is_(None))
            .values(payout_id=payout_id, updated_at=now)
        )
    await record_event(
        conn,
        store_id=store_id,
        payout_id=payout_id,
        source="gateway",
        event_type="CardLinked",
        payload={"cardId": card.card_id},
        now=now,
    )
    return True


async def link_tap_to_payout(
    conn: AsyncConnection, tap_id: int, payment_hash: str, *, now: datetime | None = None
) -> bool:
    """From the tap's side: link the payout with this payment hash if it has arrived already.

    Call inside the transaction that records the tap's payment hash.
    """
    await lock_payment_hash(conn, payment_hash)
    tap = (
        await conn.execute(select(taps_t.c.card_id, taps_t.c.uid).where(taps_t.c.id == tap_id))
    ).one_or_none()
    if tap is None or tap.card_id is None:
        return False
    payout_id = (
        await conn.execute(
            select(payouts_t.c.id)
            .where(payouts_t.c.payment_hash == payment_hash, payouts_t.c.card_id.is_(None))
            .order_by(payouts_t.c.created_at.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if payout_id is None:
        return False
    return await link_payout_to_card(
        conn, payout_id, CardLink(tap.card_id, tap.uid, tap_id), now=now
    )


async def _link_from_tap(
    conn: AsyncConnection, payout_id: str, payment_hash: str, *, now: datetime
) -> bool:
    tap = (
        await conn.execute(
            select(taps_t.c.id, taps_t.c.card_id, taps_t.c.uid)
            .where(
                taps_t.c.payment_hash == payment_hash,
                taps_t.c.card_id.is_not(None),
                taps_t.c.payout_id.is_(None),
            )
            .order_by(taps_t.c.id.desc())
            .limit(1)
        )
    ).one_or_none()
    if tap is None:
        return False
    return await link_payout_to_card(
        conn, payout_id, CardLink(tap.card_id, tap.uid, tap.id), now=now
    )


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, Decimal) or isinstance(new, Decimal):
        if old is None or new is None:
            return old is not new
        return Decimal(old) != Decimal(new)
    return old != new


def _as_record(row: Any) -> PayoutRecord:
    return PayoutRecord(
        id=row["id"],
        store_id=row["store_id"],
        state=row["state"],
        revision=row["revision"],
        created_at=row["created_at"],
        original_amount=row["original_amount"],
        original_currency=row["original_currency"],
        payout_currency=row["payout_currency"],
        amount_sats=row["amount_sats"],
    )


async def _count_payout(conn: AsyncConnection, record: PayoutRecord, sign: int) -> None:
    await bump_payout_rollup(
        conn,
        store_id=record.store_id,
        day=record.created_at.date(),
        status=record.status,
        currency=record.original_currency or record.payout_currency or "",
        count=sign,
        amount=sign * (record.original_amount or Decimal(0)),
        amount_sats=sign * (record.amount_sats or 0),
    )


async def _count_transition(
    conn: AsyncConnection,
    record: PayoutRecord,
    previous: str | None,
    created_at: datetime,
    now: datetime,
    *,
    already_completed: bool = False,
) -> None:
    """Monotonic counters for a payout reaching Completed or Failed."""
    if record.status == COMPLETED and not already_completed:
        await bump_counter(conn, record.store_id, "payouts_completed")
        await bump_counter(conn, record.store_id, "sats_completed", by=record.amount_sats or 0)
        if previous is not None:
            seconds = max(0.0, (now - created_at).total_seconds())
            for bound in COMPLETION_BUCKETS:
                if seconds <= bound:
                    await bump_counter(
                        conn, record.store_id, "completion_seconds_bucket", _le(bound)
                    )
            await bump_counter(conn, record.store_id, "completion_seconds_bucket", "+Inf")
            await bump_counter(
                conn, record.store_id, "completion_seconds_sum", by=Decimal(str(seconds))
            )
            await bump_counter(conn, record.store_id, "completion_seconds_count")
    elif record.status == FAILED and previous != FAILED:
        await bump_counter(conn, record.store_id, "payouts_failed")


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)
