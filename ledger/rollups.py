"""Rollups and monotonic counters, always written inside the transaction of the fact they count.

Every write here is an atomic ``INSERT ... ON CONFLICT DO UPDATE SET x = x + delta``, so
concurrent writers never lose an increment and no reader ever has to scan the fact tables.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import CardRollup, Counter, PayoutRollup

# Buckets of the payout completion time histogram (created to completed), in seconds.
COMPLETION_BUCKETS: tuple[float, ...] = (5, 15, 30, 60, 300, 900, 3600, 6 * 3600, 86400)


def dialect_insert(conn: AsyncConnection, table: Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT on both PostgreSQL and SQLite."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


async def bump(
    conn: AsyncConnection, table: Table, keys: dict[str, Any], deltas: dict[str, Any]
) -> None:
    """Add ``deltas`` to the row named by ``keys``, creating it when it is not there yet."""
    stmt = dialect_insert(conn, table).values(**keys, **deltas)
    sets = {name: table.c[name] + stmt.excluded[name] for name in deltas}
    await conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=sets))


async def bump_counter(
    conn: AsyncConnection, store_id: str | None, name: str, label: str = "", by: Any = 1
) -> None:
    """Raise a monotonic counter. Counters are never lowered, whatever is erased or pruned."""
    await bump(
        conn,
        Counter.__table__,
        {"store_id": store_id or "", "name": name, "label": label},
        {"value": Decimal(by)},
    )


async def bump_payout_rollup(
    conn: AsyncConnection,
    *,
    store_id: str,
    day: date,
    status: str,
    currency: str,
    count: int,
    amount: Decimal,
    amount_sats: int,
) -> None:
    await bump(
        conn,
        PayoutRollup.__table__,
        {"store_id": store_id, "day": day, "status": status, "currency": currency},
        {"count": count, "amount": amount, "amount_sats": amount_sats},
    )


# A card rollup's upsert widens the day's first and last use to take in the new row's
# (PostgreSQL's spelling, for the statements written in SQL; ``bump_card_rollup`` builds it).
WIDEN_CARD_USE = (
    "first_used_at = LEAST(COALESCE(card_rollups.first_used_at, excluded.first_used_at),"
    " excluded.first_used_at),"
    " last_used_at = GREATEST(COALESCE(card_rollups.last_used_at, excluded.last_used_at),"
    " excluded.last_used_at)"
)


async def bump_card_rollup(
    conn: AsyncConnection,
    *,
    card_id: str,
    store_id: str,
    at: datetime,
    payouts: int = 0,
    amount_sats: int = 0,
    taps: int = 0,
    refused_taps: int = 0,
) -> None:
    """Count a card's payout or tap on the day of ``at``, and widen its first/last use."""
    table = CardRollup.__table__
    stmt = dialect_insert(conn, table).values(
        card_id=card_id,
        day=at.date(),
        store_id=store_id,
        payouts=payouts,
        amount_sats=amount_sats,
        taps=taps,
        refused_taps=refused_taps,
        first_used_at=at,
        last_used_at=at,
    )
    ex = stmt.excluded
    lo, hi = (
        (func.least, func.greatest) if conn.dialect.name == "postgresql" else (func.min, func.max)
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["card_id", "day"],
            set_={
                "payouts": table.c.payouts + ex.payouts,
                "amount_sats": table.c.amount_sats + ex.amount_sats,
                "taps": table.c.taps + ex.taps,
                "refused_taps": table.c.refused_taps + ex.refused_taps,
                "first_used_at": lo(
                    func.coalesce(table.c.first_used_at, ex.first_used_at), ex.first_used_at
                ),
                "last_used_at": hi(
                    func.coalesce(table.c.last_used_at, ex.last_used_at), ex.last_used_at
                ),
            },
        )
    )


class RollupDeltas:
    """Rollup and counter changes of one transaction, summed in memory and applied at its end.

    ``apply`` writes every touched row once, payout rollups then counters, each in sorted key
    order. Rollup and counter rows are shared by every writer, and a transaction holds each
    row's lock from its upsert to its commit: two transactions that lock several of them in
    different orders can wait on each other for ever (PostgreSQL then aborts one). When every
    transaction takes them in the same order, one of any two always gets all it needs first.
    """

    def __init__(self) -> None:
        self.counters: dict[tuple[str, str, str], Decimal] = {}
        self.payout_rollups: dict[tuple[str, date, str, str], list[Any]] = {}

    def counter(self, store_id: str | None, name: str, label: str = "", by: Any = 1) -> None:
        key = (store_id or "", name, label)
        self.counters[key] = self.counters.get(key, Decimal(0)) + Decimal(by)

    def payout_rollup(
        self,
        *,
        store_id: str,
        day: date,
        status: str,
        currency: str,
        count: int,
        amount: Decimal,
        amount_sats: int,
    ) -> None:
        key = (store_id, day, status, currency)
        row = self.payout_rollups.setdefault(key, [0, Decimal(0), 0])
        row[0] += count
        row[1] += amount
        row[2] += amount_sats

    def __bool__(self) -> bool:
        return bool(self.counters or self.payout_rollups)

    async def apply(self, conn: AsyncConnection) -> None:
        """Write the sums (one statement, executed for many rows) and start afresh."""
        if self.payout_rollups:
            await _bump_many(
                conn,
                PayoutRollup.__table__,
                ("store_id", "day", "status", "currency"),
                ("count", "amount", "amount_sats"),
                [(*key, *self.payout_rollups[key]) for key in sorted(self.payout_rollups)],
            )
        if self.counters:
            await _bump_many(
                conn,
                Counter.__table__,
                ("store_id", "name", "label"),
                ("value",),
                [(*key, self.counters[key]) for key in sorted(self.counters)],
            )
        self.counters, self.payout_rollups = {}, {}


async def _bump_many(
    conn: AsyncConnection,
    table: Table,
    keys: tuple[str, ...],
    deltas: tuple[str, ...],
    rows: list[tuple[Any, ...]],
) -> None:
    # An executemany runs its rows in the order given, which is what keeps the lock order.
    stmt = dialect_insert(conn, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + stmt.excluded[name] for name in deltas},
    )
    names = (*keys, *deltas)
    await conn.execute(stmt, [dict(zip(names, row, strict=True)) for row in rows])
