"""What a metrics scrape reads: rollups, counters and a few small indexed queries.

Nothing here scans a fact table. Each query is bounded by the number of stores, the label enums,
the days the rollups cover or K (the per-card series), never by the number of payouts or taps:

- payout gauges sum ``payout_rollups`` (stores x days x statuses x currencies rows);
- counters are the ``counters`` table as written (stores x names x enum labels);
- active cards count a range of the (store_id, last_payout_at) index, per store;
- the newest event is one max() on the (store_id, received_at) index, per store;
- the top cards are chosen among the (store_id, last_payout_at) index with a LIMIT per store,
  then their figures read from ``card_rollups`` by primary key for those few cards.

The wide active-card windows and the choice of the top cards are the costly part (an index
entry per card paid in the window; a few hundred candidates ranked), and move slowly: they
form a ``SlowReading`` that a caller may keep and pass back to later snapshots for a while.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import Boltcard, CardRollup, Counter, PayoutEvent, PayoutRollup, Store, SyncState

stores_t = Store.__table__
cards_t = Boltcard.__table__
card_rollups_t = CardRollup.__table__
counters_t = Counter.__table__
events_t = PayoutEvent.__table__
payout_rollups_t = PayoutRollup.__table__
sync_t = SyncState.__table__

# How many recently paid cards per store are ranked for the top K, as a multiple of K, and over
# how many days their activity is compared. Ranking a bounded candidate set keeps the cost
# independent of the number of cards while still preferring busy cards over merely recent ones.
CANDIDATES_PER_K = 5
RANKING_DAYS = 7


@dataclass(frozen=True)
class StoreReading:
    id: str
    name: str
    card_tracking: bool


@dataclass(frozen=True)
class PayoutTotal:
    store_id: str
    status: str
    currency: str
    count: int
    amount: Decimal
    amount_sats: int


@dataclass(frozen=True)
class CounterReading:
    store_id: str
    name: str
    label: str
    value: Decimal


@dataclass(frozen=True)
class CardReading:
    """One of the top cards. ``card_id`` is for labelling only; the UID is never read."""

    card_id: str
    store_id: str
    alias: str | None
    payouts: int
    amount_sats: int
    taps: int
    refused_taps: int
    last_used_at: datetime | None
    recent_payouts: int


@dataclass(frozen=True)
class SlowReading:
    """Readings that may be reused for a while: active cards over the wide ``windows`` and
    the ids of the top cards (their figures are read afresh each time). ``at``: when read."""

    at: datetime
    windows: tuple[str, ...]
    active_cards: dict[str, dict[str, int]]
    top_card_ids: list[str]


@dataclass
class Snapshot:
    """Everything one scrape exports from the ledger, read in one transaction."""

    now: datetime
    stores: list[StoreReading] = field(default_factory=list)
    payouts: list[PayoutTotal] = field(default_factory=list)
    counters: list[CounterReading] = field(default_factory=list)
    active_cards: dict[str, dict[str, int]] = field(default_factory=dict)  # store -> window -> n
    last_reconcile: dict[str, datetime | None] = field(default_factory=dict)
    newest_event: dict[str, datetime | None] = field(default_factory=dict)
    top_cards: list[CardReading] = field(default_factory=list)
    slow: SlowReading | None = None


async def read_stores(conn: AsyncConnection) -> list[StoreReading]:
    rows = await conn.execute(
        select(stores_t.c.id, stores_t.c.name, stores_t.c.card_tracking).order_by(stores_t.c.id)
    )
    return [StoreReading(r.id, r.name or "", bool(r.card_tracking)) for r in rows]


async def read_payout_totals(conn: AsyncConnection) -> list[PayoutTotal]:
    """Payouts now per store, status and currency, from the day rollups."""
    r = payout_rollups_t.c
    rows = await conn.execute(
        select(
            r.store_id,
            r.status,
            r.currency,
            func.sum(r.count),
            func.sum(r.amount),
            func.sum(r.amount_sats),
        ).group_by(r.store_id, r.status, r.currency)
    )
    return [
        PayoutTotal(
            store_id,
            status,
            currency or "",
            int(count or 0),
            Decimal(amount or 0),
            int(sats or 0),
        )
        for store_id, status, currency, count, amount, sats in rows
    ]


async def read_counters(conn: AsyncConnection) -> list[CounterReading]:
    c = counters_t.c
    rows = await conn.execute(select(c.store_id, c.name, c.label, c.value))
    return [CounterReading(s or "", n, lab or "", Decimal(v or 0)) for s, n, lab, v in rows]


async def read_active_cards(
    conn: AsyncConnection, store_ids: list[str], now: datetime, windows: dict[str, int]
) -> dict[str, dict[str, int]]:
    """Per store and window: cards whose last payout is within the window.

    One correlated count per store and window, each a range of the (store_id, last_payout_at)
    index, so no query reads cards outside its window.
    """
    if not store_ids:
        return {}
    c = cards_t.c
    s = stores_t.c
    columns = [
        select(func.count())
        .select_from(cards_t)
        .where(c.store_id == s.id, c.last_payout_at >= now - timedelta(seconds=seconds))
        .scalar_subquery()
        .label(f"w{i}")
        for i, seconds in enumerate(windows.values())
    ]
    rows = await conn.execute(select(s.id, *columns).where(s.id.in_(store_ids)))
    names = list(windows)
    return {row[0]: {names[i]: int(row[i + 1] or 0) for i in range(len(names))} for row in rows}


async def read_last_reconcile(conn: AsyncConnection) -> dict[str, datetime | None]:
    rows = await conn.execute(select(sync_t.c.store_id, sync_t.c.last_success_at))
    return {store_id: at for store_id, at in rows}


async def read_newest_events(conn: AsyncConnection) -> dict[str, datetime | None]:
    """Per connected store, when its newest payout event reached the ledger (None: never)."""
    e = events_t.c
    newest = select(func.max(e.received_at)).where(e.store_id == stores_t.c.id).scalar_subquery()
    rows = await conn.execute(select(stores_t.c.id, newest.label("newest")))
    return {store_id: at for store_id, at in rows}


async def rank_top_cards(
    conn: AsyncConnection, store_ids: list[str], k: int, now: datetime
) -> list[str]:
    """The ids of the ``k`` most active cards of the given stores, busiest first.

    Candidates are the most recently paid cards of each store (an index range with a LIMIT);
    they are ranked by payouts over the last ``RANKING_DAYS`` days, then by recency. One
    statement, whatever the store count. Erased cards are never candidates.
    """
    if k <= 0 or not store_ids:
        return []
    c = cards_t.c
    r = card_rollups_t.c
    per_store = [
        select(c.id, c.last_payout_at)
        .where(c.store_id == store_id, c.last_payout_at.is_not(None), c.erased_at.is_(None))
        .order_by(c.last_payout_at.desc())
        .limit(k * CANDIDATES_PER_K)
        .subquery()
        for store_id in store_ids
    ]
    parts = [select(*sub.c) for sub in per_store]
    cand = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("cand")
    since: date = (now - timedelta(days=RANKING_DAYS)).date()
    recent = (
        select(func.coalesce(func.sum(r.payouts), 0))
        .where(r.card_id == cand.c.id, r.day >= since)
        .scalar_subquery()
    )
    rows = await conn.execute(
        select(cand.c.id)
        .order_by(recent.desc(), cand.c.last_payout_at.desc(), cand.c.id.desc())
        .limit(k)
    )
    return [card_id for (card_id,) in rows]


async def read_cards(
    conn: AsyncConnection, card_ids: list[str], now: datetime
) -> list[CardReading]:
    """Lifetime totals of the given cards, in the order given.

    Cards erased since they were chosen, and cards of stores that have since switched card
    tracking off, are left out: opting out takes effect at the next scrape, whatever chose them.
    """
    if not card_ids:
        return []
    c = cards_t.c
    r = card_rollups_t.c
    since_week: date = (now - timedelta(days=RANKING_DAYS)).date()

    # Correlated sums, not a join: each is a primary-key range of one card's days, where a join
    # could let the planner hash the whole card_rollups table.
    def total(column: Any, *where: Any) -> Any:
        return select(column).where(r.card_id == c.id, *where).scalar_subquery()

    rows = await conn.execute(
        select(
            c.id,
            c.store_id,
            c.alias,
            c.last_used_at,
            total(func.sum(r.payouts)),
            total(func.sum(r.amount_sats)),
            total(func.sum(r.taps)),
            total(func.sum(r.refused_taps)),
            total(func.max(r.last_used_at)),
            total(func.sum(r.payouts), r.day >= since_week),
        )
        .join(stores_t, stores_t.c.id == c.store_id)
        .where(c.id.in_(card_ids), c.erased_at.is_(None), stores_t.c.card_tracking)
    )
    found: dict[str, CardReading] = {}
    for row in rows:
        card_id, store_id, alias, last_used = row[:4]
        payouts, sats, taps, refused, rollup_last, recent_n = row[4:]
        last = max((t for t in (last_used, rollup_last) if t is not None), default=None)
        found[card_id] = CardReading(
            card_id=card_id,
            store_id=store_id,
            alias=alias,
            payouts=int(payouts or 0),
            amount_sats=int(sats or 0),
            taps=int(taps or 0),
            refused_taps=int(refused or 0),
            last_used_at=last,
            recent_payouts=int(recent_n or 0),
        )
    return [found[card_id] for card_id in card_ids if card_id in found]


async def read_top_cards(
    conn: AsyncConnection, store_ids: list[str], k: int, now: datetime
) -> list[CardReading]:
    """The ``k`` most active cards of the given stores, with their lifetime totals."""
    return await read_cards(conn, await rank_top_cards(conn, store_ids, k, now), now)


async def read_slow(
    conn: AsyncConnection,
    *,
    now: datetime,
    stores: list[StoreReading],
    top_cards: int,
    windows: dict[str, int],
) -> SlowReading:
    """The readings that cost most and move slowest: wide active-card windows, top-K choice."""
    return SlowReading(
        at=now,
        windows=tuple(windows),
        active_cards=await read_active_cards(conn, [s.id for s in stores], now, windows),
        top_card_ids=await rank_top_cards(
            conn, [s.id for s in stores if s.card_tracking], top_cards, now
        ),
    )


async def read_snapshot(
    conn: AsyncConnection,
    *,
    now: datetime,
    top_cards: int,
    windows: dict[str, int],
    slow: SlowReading | None = None,
    slow_windows: dict[str, int] | None = None,
) -> Snapshot:
    """Read everything a scrape exports. Call inside one (read-only) transaction.

    ``slow``, read earlier by ``read_slow``, stands in for its windows and the choice of top
    cards. Without it they are read here, as a ``SlowReading`` of ``slow_windows`` (default:
    every window) returned in ``Snapshot.slow`` for reuse. The top cards' figures and the
    windows outside the slow reading are always read here.
    """
    snap = Snapshot(now=now)
    snap.stores = await read_stores(conn)
    store_ids = [s.id for s in snap.stores]
    snap.payouts = await read_payout_totals(conn)
    snap.counters = await read_counters(conn)
    if slow is None:
        slow = await read_slow(
            conn,
            now=now,
            stores=snap.stores,
            top_cards=top_cards,
            windows=windows if slow_windows is None else slow_windows,
        )
    fresh = {name: seconds for name, seconds in windows.items() if name not in slow.windows}
    active = await read_active_cards(conn, store_ids, now, fresh)
    snap.active_cards = {
        store: {**slow.active_cards.get(store, {}), **active.get(store, {})} for store in store_ids
    }
    snap.last_reconcile = await read_last_reconcile(conn)
    snap.newest_event = await read_newest_events(conn)
    snap.top_cards = await read_cards(conn, slow.top_card_ids, now)
    snap.slow = slow
    return snap
