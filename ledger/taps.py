"""Card taps and their callbacks: every tap a row, single-use k1s, day-limit reservations.

Each security check that touches the database is one atomic statement:
- a k1 is consumed by ``UPDATE ... WHERE k1_used_at IS NULL AND k1_expires_at > now RETURNING``,
  so of any number of concurrent callbacks with one k1 exactly one gets the tap back;
- a day-limit reservation is ``INSERT ... ON CONFLICT DO UPDATE ... WHERE reserved + new <= limit``,
  so concurrent callbacks can never reserve more than the limit between them;
- an invoice is held by one tap at a time, under the payment hash's lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from . import status
from .payouts import (
    CardLink,
    PayoutRecord,
    UpsertResult,
    count_created,
    json_rows,
    lock_payment_hash,
    payment_hash_lock_key,
    release_reservations,
    upsert_payouts,
)
from .rollups import (
    WIDEN_CARD_USE,
    RollupDeltas,
    bump_card_rollup,
    bump_counter,
    dialect_insert,
)
from .schema import CardDaySpend, CardTap

taps_t = CardTap.__table__
spend_t = CardDaySpend.__table__

ACCEPTED = "accepted"
# The tap's row moves on as its callback proceeds; "claiming" and "paid" hold their invoice.
CLAIMING = "claiming"
PAID = "paid"
HOLDING_INVOICE = (CLAIMING, PAID)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class IssuedTap:
    """What a consumed k1 gives back: the tap it was issued for."""

    id: int
    store_id: str | None
    card_id: str | None
    uid: str | None
    counter: int | None
    max_withdrawable_msat: int | None
    created_at: datetime


async def record_tap(
    conn: AsyncConnection,
    *,
    outcome: str,
    reason: str | None = None,
    store_id: str | None = None,
    card_id: str | None = None,
    uid: str | None = None,
    counter: int | None = None,
    k1_hash: str | None = None,
    k1_expires_at: datetime | None = None,
    max_withdrawable_msat: int | None = None,
    remote_addr: str | None = None,
    user_agent: str | None = None,
    source: str = "gateway",
    card_rollup: bool = True,
    now: datetime | None = None,
) -> int:
    """Write one tap row and count it (``taps`` by outcome, the card's day rollup).

    ``k1_hash`` is the SHA-256 of the k1 handed to the wallet: the k1 itself is never stored.
    ``card_rollup`` False keeps an opted-out store's cards out of the per-card rollups.
    """
    now = now or utcnow()
    tap_id = (
        await conn.execute(
            taps_t.insert()
            .values(
                store_id=store_id,
                card_id=card_id,
                uid=uid,
                counter=counter,
                source=source,
                outcome=outcome,
                reason=reason,
                k1_hash=k1_hash,
                k1_expires_at=k1_expires_at,
                max_withdrawable_msat=max_withdrawable_msat,
                remote_addr=(remote_addr or None) and remote_addr[:64],
                user_agent=(user_agent or None) and user_agent[:300],
                created_at=now,
                updated_at=now,
            )
            .returning(taps_t.c.id)
        )
    ).scalar_one()
    if card_id is not None and store_id is not None and card_rollup:
        await bump_card_rollup(
            conn,
            card_id=card_id,
            store_id=store_id,
            at=now,
            taps=1,
            refused_taps=0 if outcome == ACCEPTED else 1,
        )
    # Last: every tap of a store bumps this one row, so its lock is held the shortest time.
    await bump_counter(conn, store_id, "taps", outcome)
    return int(tap_id)


async def day_reserved_msat(conn: AsyncConnection, card_id: str, day: date) -> int:
    value = (
        await conn.execute(
            select(spend_t.c.reserved_msat).where(
                spend_t.c.card_id == card_id, spend_t.c.day == day
            )
        )
    ).scalar_one_or_none()
    return int(value or 0)


async def consume_k1(
    conn: AsyncConnection, k1_hash: str, *, now: datetime | None = None
) -> IssuedTap | None:
    """Use a k1 once: the tap it belongs to, or None when it is unknown, used or expired."""
    now = now or utcnow()
    row = (
        await conn.execute(
            update(taps_t)
            .where(
                taps_t.c.k1_hash == k1_hash,
                taps_t.c.k1_used_at.is_(None),
                taps_t.c.k1_expires_at > now,
            )
            .values(k1_used_at=now, updated_at=now)
            .returning(
                taps_t.c.id,
                taps_t.c.store_id,
                taps_t.c.card_id,
                taps_t.c.uid,
                taps_t.c.counter,
                taps_t.c.max_withdrawable_msat,
                taps_t.c.created_at,
            )
        )
    ).one_or_none()
    if row is None:
        return None
    return IssuedTap(
        id=int(row.id),
        store_id=row.store_id,
        card_id=row.card_id,
        uid=row.uid,
        counter=row.counter,
        max_withdrawable_msat=row.max_withdrawable_msat,
        created_at=row.created_at,
    )


async def k1_state(conn: AsyncConnection, k1_hash: str, *, now: datetime | None = None) -> str:
    """Why a k1 could not be consumed: ``unknown``, ``used`` or ``expired``."""
    now = now or utcnow()
    row = (
        await conn.execute(
            select(taps_t.c.k1_used_at, taps_t.c.k1_expires_at).where(taps_t.c.k1_hash == k1_hash)
        )
    ).one_or_none()
    if row is None:
        return "unknown"
    if row.k1_used_at is not None:
        return "used"
    if row.k1_expires_at is not None and row.k1_expires_at <= now:
        return "expired"
    return "unknown"


async def reserve_day_spend(
    conn: AsyncConnection, card_id: str, day: date, amount_msat: int, limit_msat: int | None
) -> bool:
    """Reserve ``amount_msat`` of the card's day, unless that would pass ``limit_msat``.

    The limit is in the conflict branch's WHERE, so the check and the addition are one
    statement: concurrent reservations serialise on the row and each sees the others' sums.
    """
    if limit_msat is not None and amount_msat > limit_msat:
        return False
    stmt = dialect_insert(conn, spend_t).values(card_id=card_id, day=day, reserved_msat=amount_msat)
    total = spend_t.c.reserved_msat + stmt.excluded.reserved_msat
    stmt = stmt.on_conflict_do_update(
        index_elements=["card_id", "day"],
        set_={"reserved_msat": total},
        where=(total <= limit_msat) if limit_msat is not None else None,
    ).returning(spend_t.c.reserved_msat)
    return (await conn.execute(stmt)).scalar_one_or_none() is not None


async def release_day_spend(
    conn: AsyncConnection, card_id: str, day: date, amount_msat: int
) -> None:
    """Give back a reservation whose payout did not happen."""
    await conn.execute(
        update(spend_t)
        .where(spend_t.c.card_id == card_id, spend_t.c.day == day)
        .values(reserved_msat=spend_t.c.reserved_msat - amount_msat)
    )


async def hold_invoice(
    conn: AsyncConnection,
    tap_id: int,
    *,
    bolt11: str,
    payment_hash: str,
    lock_hash: str,
    amount_msat: int,
    reserved_day: date | None,
    now: datetime | None = None,
) -> bool:
    """Record the invoice a tap is about to claim; False when another tap already holds it.

    ``payment_hash`` is what the row keeps (the ledger links payouts to taps by it);
    ``lock_hash`` is the invoice's real payment hash, whose lock serialises the check and
    the write across gateway processes.
    """
    now = now or utcnow()
    await lock_payment_hash(conn, lock_hash)
    holder = (
        await conn.execute(
            select(taps_t.c.id)
            .where(
                taps_t.c.payment_hash == payment_hash,
                taps_t.c.outcome.in_(HOLDING_INVOICE),
                taps_t.c.id != tap_id,
            )
            .limit(1)
        )
    ).scalar_one_or_none()
    if holder is not None:
        return False
    await conn.execute(
        update(taps_t)
        .where(taps_t.c.id == tap_id)
        .values(
            bolt11=bolt11,
            payment_hash=payment_hash,
            amount_msat=amount_msat,
            reserved_day=reserved_day,
            outcome=CLAIMING,
            reason=None,
            updated_at=now,
        )
    )
    return True


async def finish_tap(
    conn: AsyncConnection,
    tap_id: int,
    *,
    store_id: str | None,
    outcome: str,
    reason: str | None = None,
    payout_id: str | None = None,
    now: datetime | None = None,
) -> None:
    """Mark what became of a tap's callback and count it (``callbacks`` by outcome)."""
    now = now or utcnow()
    values: dict[str, object] = {"outcome": outcome, "reason": reason, "updated_at": now}
    if payout_id is not None:
        values["payout_id"] = payout_id
    await conn.execute(update(taps_t).where(taps_t.c.id == tap_id).values(**values))
    await bump_counter(conn, store_id, "callbacks", outcome)


async def get_tap(conn: AsyncConnection, tap_id: int) -> dict | None:
    row = (await conn.execute(select(taps_t).where(taps_t.c.id == tap_id))).mappings().one_or_none()
    return dict(row) if row is not None else None


# --- the tap step in one statement (PostgreSQL) ------------------------------------------------


async def _one_row(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> Any:
    """One statement sent by psycopg itself, on the connection SQLAlchemy checked out.

    The gateway's two hot statements skip SQLAlchemy's execution layer, whose per-statement
    context and greenlet switch cost more CPU than the statement's own round trip; the
    connection, its transaction and the pool stay SQLAlchemy's. Errors are raised as
    SQLAlchemy's, as for any other statement.
    """
    raw = await conn.get_raw_connection()
    try:
        cursor = await raw.driver_connection.execute(sql, params)
        return await cursor.fetchone()
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, params, exc, psycopg.Error) from exc


# Advance the counter, read what is left of the day, write the tap row, its card rollup and the
# ``taps`` counter: one statement, so one round trip and one implicit transaction. The counter
# check stays the conditional UPDATE at its head; the key version, enabled and wiped conditions
# make it refuse whenever the caller's cached view of the card is stale, and the caller then
# takes the step by step path, which finds and records the precise reason.
_TAP_SQL = f"""
WITH adv AS (
    UPDATE boltcards AS b
       SET last_counter = %(counter)s,
           first_used_at = COALESCE(b.first_used_at, %(now)s),
           last_used_at = %(now)s
      FROM stores AS s
     WHERE b.id = %(card_id)s AND s.id = b.store_id
       AND b.last_counter < %(counter)s AND b.key_version = %(key_version)s
       AND b.enabled AND b.wiped_at IS NULL
 RETURNING b.id, b.store_id, s.card_tracking, b.tx_limit_sats, b.day_limit_sats
), lim AS (
    SELECT adv.id, adv.store_id, adv.card_tracking,
           GREATEST(0, LEAST(COALESCE(adv.tx_limit_sats, %(default_tx_sats)s) * 1000,
                             COALESCE(adv.day_limit_sats, %(default_day_sats)s) * 1000
                             - COALESCE(d.reserved_msat, 0))) AS max_msat
      FROM adv
      LEFT JOIN card_day_spend AS d ON d.card_id = adv.id AND d.day = %(day)s
), tap AS (
    INSERT INTO card_taps (store_id, card_id, uid, counter, source, outcome, reason, k1_hash,
                           k1_expires_at, max_withdrawable_msat, remote_addr, user_agent,
                           created_at, updated_at)
    SELECT lim.store_id, lim.id, CASE WHEN lim.card_tracking THEN %(uid)s END, %(counter)s,
           'gateway',
           CASE WHEN lim.max_msat >= %(min_msat)s THEN 'accepted' ELSE 'limit' END,
           CASE WHEN lim.max_msat >= %(min_msat)s THEN NULL ELSE %(limit_reason)s END,
           CASE WHEN lim.max_msat >= %(min_msat)s THEN %(k1_hash)s END,
           CASE WHEN lim.max_msat >= %(min_msat)s THEN %(k1_expires_at)s END,
           CASE WHEN lim.max_msat >= %(min_msat)s THEN lim.max_msat END,
           %(remote_addr)s, %(user_agent)s, %(now)s, %(now)s
      FROM lim
 RETURNING id, store_id, card_id, outcome, max_withdrawable_msat
), roll AS (
    INSERT INTO card_rollups (card_id, day, store_id, payouts, amount_sats, taps, refused_taps,
                              first_used_at, last_used_at)
    SELECT tap.card_id, %(day)s, tap.store_id, 0, 0, 1,
           CASE WHEN tap.outcome = 'accepted' THEN 0 ELSE 1 END, %(now)s, %(now)s
      FROM tap JOIN lim ON lim.id = tap.card_id
     WHERE lim.card_tracking
    ON CONFLICT (card_id, day) DO UPDATE SET
           taps = card_rollups.taps + excluded.taps,
           refused_taps = card_rollups.refused_taps + excluded.refused_taps,
           {WIDEN_CARD_USE}
), cnt AS (
    INSERT INTO counters (store_id, name, label, value)
    SELECT tap.store_id, 'taps', tap.outcome, 1 FROM tap
    ON CONFLICT (store_id, name, label) DO UPDATE SET value = counters.value + excluded.value
)
SELECT id, outcome, max_withdrawable_msat FROM tap
"""


@dataclass(frozen=True)
class TapStep:
    """What the one-statement tap step wrote: the tap row and its outcome."""

    tap_id: int
    outcome: str  # ACCEPTED, or "limit" when nothing is left of the day
    max_withdrawable_msat: int | None


async def tap_step(
    conn: AsyncConnection,
    *,
    card_id: str,
    key_version: int,
    counter: int,
    uid: str,
    k1_hash: str,
    k1_expires_at: datetime,
    min_msat: int,
    default_tx_limit_sats: int,
    default_day_limit_sats: int,
    limit_reason: str,
    remote_addr: str | None,
    user_agent: str | None,
    now: datetime,
) -> TapStep | None:
    """The whole tap step for a card whose keys the caller already checked, on PostgreSQL.

    None when the counter did not advance: a replay, or the card changed (disabled, wiped,
    re-keyed) since the caller looked; nothing was written then.
    """
    row = await _one_row(
        conn,
        _TAP_SQL,
        {
            "card_id": card_id,
            "key_version": key_version,
            "counter": counter,
            "uid": uid,
            "k1_hash": k1_hash,
            "k1_expires_at": k1_expires_at,
            "min_msat": min_msat,
            "default_tx_sats": default_tx_limit_sats,
            "default_day_sats": default_day_limit_sats,
            "limit_reason": limit_reason,
            "remote_addr": (remote_addr or None) and remote_addr[:64],
            "user_agent": (user_agent or None) and user_agent[:300],
            "day": now.date(),
            "now": now,
        },
    )
    if row is None:
        return None
    max_msat = row[2]
    return TapStep(int(row[0]), row[1], int(max_msat) if max_msat is not None else None)


# --- the callback's checks and holds in one statement (PostgreSQL) ----------------------------

# What a refused callback says, in the order of ``flash_callback_hold``'s ``p_reasons``
# (migration 0003); ``%s`` is filled in the same way by Python and by PostgreSQL's format().
CALLBACK_REASONS = (
    "card no longer registered",
    "card has been wiped",
    "card is disabled",
    "invoice amount %s msat is outside %s..%s msat",
    "BTCPay unavailable: the card's store is not connected",
    "invoice already claimed through another tap",
    "over the card's day limit of %s sats",
)
(
    REASON_CARD_GONE,
    REASON_CARD_WIPED,
    REASON_CARD_DISABLED,
    REASON_AMOUNT,
    REASON_NOT_CONNECTED,
    REASON_DUPLICATE,
    REASON_OVER_LIMIT,
) = CALLBACK_REASONS
_HOLD_SQL = (
    "SELECT * FROM flash_callback_hold(%(k1_hash)s, %(now)s, %(amount)s, %(min_msat)s,"
    " %(default_day_sats)s, %(bolt11)s, %(payment_hash)s, %(hash_fingerprint)s, %(lock_key)s,"
    " %(day)s, %(reasons)s)"
)


@dataclass(frozen=True)
class CallbackHold:
    """What ``callback_hold`` did: ``verdict`` ``held``, a refusal outcome, or ``k1_*``."""

    verdict: str
    reason: str | None
    tap_id: int | None
    tap_uid: str | None
    store_id: str | None
    card_id: str | None
    pull_payment_id: str | None
    btcpay_url: str | None
    card_tracking: bool


async def callback_hold(
    conn: AsyncConnection,
    *,
    k1_hash: str,
    amount_msat: int,
    min_msat: int,
    default_day_limit_sats: int,
    bolt11: str,
    payment_hash: str,
    hash_fingerprint: str,
    now: datetime,
) -> CallbackHold:
    """The callback's whole database step on PostgreSQL, in one statement and one round trip.

    ``held``: the k1 is used, the invoice held by this tap and the amount reserved. A refusal
    verdict (``card_unusable``, ``invoice_refused``, ...): the k1 is used and the tap finished
    with ``reason``. ``k1_unknown``, ``k1_used``, ``k1_expired``: nothing was written.
    ``hash_fingerprint`` is kept instead of the payment hash when the store opted out.
    """
    row = await _one_row(
        conn,
        _HOLD_SQL,
        {
            "k1_hash": k1_hash,
            "now": now,
            "amount": amount_msat,
            "min_msat": min_msat,
            "default_day_sats": default_day_limit_sats,
            "bolt11": bolt11,
            "payment_hash": payment_hash,
            "hash_fingerprint": hash_fingerprint,
            "lock_key": payment_hash_lock_key(payment_hash),
            "day": now.date(),
            "reasons": list(CALLBACK_REASONS),
        },
    )
    assert row is not None
    return CallbackHold(
        verdict=row[0],
        reason=row[1],
        tap_id=int(row[2]) if row[2] is not None else None,
        tap_uid=row[3],
        store_id=row[4],
        card_id=row[5],
        pull_payment_id=row[6],
        btcpay_url=row[7],
        card_tracking=bool(row[8]),
    )


# --- payouts BTCPay created for held taps -------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A payout BTCPay created for a tap's held invoice; ``link`` None for an opted-out store."""

    record: PayoutRecord
    tap_id: int
    link: CardLink | None


async def record_claims(
    conn: AsyncConnection, claims: Sequence[Claim], *, now: datetime | None = None
) -> list[UpsertResult]:
    """Store each claimed payout under BTCPay's id, linked to its card and tap, and finish
    each tap as paid; what ``upsert_payout`` and ``finish_tap`` do one claim at a time, in a
    handful of statements whatever the number of claims. Results in the order of ``claims``.
    """
    now = now or utcnow()
    deltas = RollupDeltas()
    # The taps first: the card links below then find their tap's payout set already, and
    # each tap row is written once.
    await conn.execute(
        update(taps_t)
        .where(taps_t.c.id == bindparam("_id"))
        .values(outcome=PAID, reason=None, payout_id=bindparam("_payout_id"), updated_at=now),
        [{"_id": c.tap_id, "_payout_id": c.record.id} for c in sorted(claims, key=_tap_order)],
    )
    results = await upsert_payouts(
        conn,
        [claim.record for claim in claims],
        source="gateway",
        event_type="PayoutCreated",
        links={c.record.id: c.link for c in claims if c.link is not None},
        deltas=deltas,
        now=now,
    )
    # A payout BTCPay reported failed before this write (its webhook came first) gives its
    # reservation back now that its tap is known to be its.
    already_failed = [r.payout_id for r in results if r.status == status.FAILED and not r.changed]
    await release_reservations(conn, already_failed, now=now)
    for claim in claims:
        deltas.counter(claim.record.store_id, "callbacks", PAID)
    await deltas.apply(conn)
    return results


def _tap_order(claim: Claim) -> int:
    return claim.tap_id


_RECORD_CLAIM_SQL = (
    "SELECT flash_record_claim(CAST(%(payout)s AS json), %(tap_id)s, %(linked)s, %(now)s,"
    " CAST(%(rollups)s AS json), CAST(%(counters)s AS json))"
)


async def record_claim(conn: AsyncConnection, claim: Claim, *, now: datetime | None = None) -> bool:
    """``record_claims`` for one payout new to the ledger, in one statement (PostgreSQL).

    False when the payout is in the ledger already (its webhook came first): nothing was
    written then, and ``record_claims`` is the way to store it. The rollup and counter changes
    are computed here, as ``upsert_payouts`` computes them, and applied by the statement in
    their sorted order.
    """
    now = now or utcnow()
    record, link = claim.record, claim.link
    deltas = RollupDeltas()
    count_created(deltas, record, now)
    deltas.counter(record.store_id, "callbacks", PAID)
    payout = {
        "id": record.id,
        "created_at": record.created_at,
        "updated_at": now,
        "completed_at": now if record.status == status.COMPLETED else None,
        **record.columns(),
        "card_id": link.card_id if link else None,
        "card_uid": link.card_uid if link else None,
        "tap_id": link.tap_id if link else None,
    }
    rollups = [
        {"store_id": k[0], "day": k[1], "status": k[2], "currency": k[3],
         "count": v[0], "amount": v[1], "amount_sats": v[2]}
        for k, v in sorted(deltas.payout_rollups.items())
    ]  # fmt: skip
    counters = [
        {"store_id": k[0], "name": k[1], "label": k[2], "value": v}
        for k, v in sorted(deltas.counters.items())
    ]
    row = await _one_row(
        conn,
        _RECORD_CLAIM_SQL,
        {
            "payout": json_rows(payout),
            "tap_id": claim.tap_id,
            "linked": link is not None,
            "now": now,
            "rollups": json_rows(rollups),
            "counters": json_rows(counters),
        },
    )
    return bool(row[0])
