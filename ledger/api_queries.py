"""What the REST API reads: payout lists with keyset paging, details, stats and card usage.

Stats and usage read the rollups only. A list's total comes from the rollups too when the
filter is one the rollups can answer exactly (store, whole UTC days, statuses); any other filter
counts the matching rows.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from .schema import Boltcard, CardRollup, CardTap, Payout, PayoutEvent, PayoutRollup
from .status import COMPLETED, FAILED, STATUSES

payouts_t = Payout.__table__
events_t = PayoutEvent.__table__
cards_t = Boltcard.__table__
taps_t = CardTap.__table__
payout_rollups_t = PayoutRollup.__table__
card_rollups_t = CardRollup.__table__

# An absent amount sorts as the smallest value on both databases (amounts are never negative).
_AMOUNT_KEY = func.coalesce(
    payouts_t.c.original_amount, literal(Decimal(-1), payouts_t.c.original_amount.type)
)

# Each sort is a key tuple ending in the unique id, so keyset paging never skips or repeats.
PAYOUT_SORTS: dict[str, tuple[ColumnElement[Any], ...]] = {
    "createdAt": (payouts_t.c.created_at, payouts_t.c.id),
    "amount": (_AMOUNT_KEY, payouts_t.c.id),
    "status": (payouts_t.c.status, payouts_t.c.created_at, payouts_t.c.id),
}
USAGE_SORTS = ("totalAmount", "totalPayouts", "firstUsed", "lastUsed", "boltcardId")


@dataclass(frozen=True)
class PayoutFilter:
    store_id: str
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive
    statuses: tuple[str, ...] = ()
    card_id: str | None = None
    q: str | None = None
    min_amount: Decimal | None = None
    max_amount: Decimal | None = None


@dataclass
class PayoutPage:
    items: list[dict[str, Any]]
    total: int
    # The sort key values of the last row, to continue after; None on the last page.
    next_after: tuple[Any, ...] | None = None


def _is_midnight(value: datetime | None) -> bool:
    return value is None or value.astimezone(UTC).time() == time(0)


def _conditions(f: PayoutFilter) -> list[ColumnElement[bool]]:
    c = payouts_t.c
    where: list[ColumnElement[bool]] = [c.store_id == f.store_id]
    if f.start is not None:
        where.append(c.created_at >= f.start)
    if f.end is not None:
        where.append(c.created_at < f.end)
    if f.statuses:
        where.append(c.status.in_(f.statuses))
    if f.card_id is not None:
        where.append(c.card_id == f.card_id)
    if f.min_amount is not None:
        where.append(c.original_amount >= f.min_amount)
    if f.max_amount is not None:
        where.append(c.original_amount <= f.max_amount)
    if f.q:
        where.append(_search(f.q))
    return where


# What ``q`` matches, the same as the boards' search box (dashboards/sql.py): a payout id by
# its prefix, or an exact amount in the payout's own currency or in sats.
_PLAIN_AMOUNT = re.compile(r"^[0-9]{1,16}(\.[0-9]{1,12})?$")
_PLAIN_SATS = re.compile(r"^[0-9]{1,18}$")


def _search(q: str) -> ColumnElement[bool]:
    c = payouts_t.c
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    match: ColumnElement[bool] = c.id.like(escaped + "%", escape="\\")
    if _PLAIN_AMOUNT.fullmatch(q):
        match = or_(match, c.original_amount == Decimal(q))
    if _PLAIN_SATS.fullmatch(q):
        match = or_(match, c.amount_sats == int(q))
    return match


def _after(
    keys: tuple[ColumnElement[Any], ...], values: tuple[Any, ...], descending: bool
) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the (k1, k2, ...) order, spelled so indexes apply."""
    terms = []
    for i, key in enumerate(keys):
        beyond = key < values[i] if descending else key > values[i]
        terms.append(and_(*[keys[j] == values[j] for j in range(i)], beyond))
    first = keys[0] <= values[0] if descending else keys[0] >= values[0]
    return and_(first, or_(*terms))


async def count_payouts(conn: AsyncConnection, f: PayoutFilter) -> int:
    """The true number of payouts matching ``f``."""
    return int((await conn.execute(_count(f))).scalar_one())


def _count(f: PayoutFilter) -> Any:
    """The SELECT of the number of payouts matching ``f``."""
    rollup_exact = (
        f.card_id is None
        and not f.q
        and f.min_amount is None
        and f.max_amount is None
        and _is_midnight(f.start)
        and _is_midnight(f.end)
    )
    if rollup_exact:
        r = payout_rollups_t.c
        stmt = select(func.coalesce(func.sum(r.count), 0)).where(r.store_id == f.store_id)
        if f.start is not None:
            stmt = stmt.where(r.day >= f.start.astimezone(UTC).date())
        if f.end is not None:
            stmt = stmt.where(r.day < f.end.astimezone(UTC).date())
        if f.statuses:
            stmt = stmt.where(r.status.in_(f.statuses))
        return stmt
    return select(func.count()).select_from(payouts_t).where(*_conditions(f))


async def list_payouts(
    conn: AsyncConnection,
    f: PayoutFilter,
    *,
    sort: str = "createdAt",
    descending: bool = True,
    limit: int = 50,
    offset: int = 0,
    after: tuple[Any, ...] | None = None,
    with_total: bool = True,
) -> PayoutPage:
    """One page of payouts. ``after`` (sort key values of the previous page's last row) pages
    by keyset, which costs the same on the ten-thousandth page as on the first."""
    keys = PAYOUT_SORTS[sort]
    if after is not None and len(after) != len(keys):
        raise ValueError("cursor does not match the sort")
    where = _conditions(f)
    if after is not None:
        where.append(_after(keys, after, descending))
    order = [k.desc() if descending else k.asc() for k in keys]
    columns = [payouts_t, *[k.label(f"_k{i}") for i, k in enumerate(keys)]]
    if with_total:
        # The total rides along with the page (one round trip); it is computed once, and never
        # correlated with the page's rows although it may read the same table.
        columns.append(_count(f).correlate(None).scalar_subquery().label("_total"))
    stmt = select(*columns).where(*where).order_by(*order).limit(limit + 1)
    if offset and after is None:
        stmt = stmt.offset(offset)
    rows = (await conn.execute(stmt)).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_after = None
    if more and rows:
        last = rows[-1]
        next_after = tuple(_key_value(last[f"_k{i}"]) for i in range(len(keys)))
    total = -1
    if with_total:
        total = int(rows[0]["_total"]) if rows else await count_payouts(conn, f)
    return PayoutPage([payout_dict(r) for r in rows], total, next_after)


async def top_cards(
    conn: AsyncConnection, f: PayoutFilter, *, limit: int = 10
) -> list[dict[str, Any]]:
    """The cards that collected the most (by sats) among the payouts matching ``f``.

    Grouped over the matching payouts themselves, so any filter is answered exactly; an export
    reads those rows anyway.
    """
    c = payouts_t.c
    ranked = (
        select(
            c.card_id,
            func.count().label("payouts"),
            func.coalesce(func.sum(c.amount_sats), 0).label("sats"),
        )
        .where(*_conditions(f), c.card_id.is_not(None))
        .group_by(c.card_id)
        .order_by(func.coalesce(func.sum(c.amount_sats), 0).desc(), c.card_id)
        .limit(limit)
        .subquery()
    )
    rows = (
        await conn.execute(
            select(ranked.c.card_id, cards_t.c.alias, ranked.c.payouts, ranked.c.sats)
            .select_from(ranked.outerjoin(cards_t, cards_t.c.id == ranked.c.card_id))
            .order_by(ranked.c.sats.desc(), ranked.c.card_id)
        )
    ).all()
    return [
        {"boltcardId": cid, "alias": alias, "totalPayouts": int(p), "totalAmount": int(s)}
        for cid, alias, p, s in rows
    ]


def _key_value(value: Any) -> Any:
    # SQLite hands back the coalesced amount as a float or int; keep it exact.
    if isinstance(value, float | int) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


def payout_dict(row: Any) -> dict[str, Any]:
    """A payout in the API's vocabulary (the requirements' FlashPayout plus BTCPay's raw state)."""
    return {
        "payoutId": row["id"],
        "pullPaymentId": row["pull_payment_id"],
        "storeId": row["store_id"],
        "amount": row["original_amount"],
        "currency": row["original_currency"],
        "payoutAmount": row["payout_amount"],
        "payoutCurrency": row["payout_currency"],
        "amountSats": row["amount_sats"],
        "status": row["status"],
        "state": row["state"],
        "revision": row["revision"],
        "createdAt": row["created_at"],
        "completedAt": row["completed_at"],
        "updatedAt": row["updated_at"],
        "boltcardId": row["card_id"],
        "boltcardNtag": row["card_uid"],
        "recipientAddress": row["destination"],
        "payoutMethodId": row["payout_method_id"],
        "paymentHash": row["payment_hash"],
        "transactionId": row["transaction_id"],
        "errorMessage": row["error_message"],
    }


async def payout_store(conn: AsyncConnection, payout_id: str) -> str | None:
    """The store a payout belongs to, or None when there is no such payout."""
    stmt = select(payouts_t.c.store_id).where(payouts_t.c.id == payout_id)
    return (await conn.execute(stmt)).scalar_one_or_none()


async def payout_row(conn: AsyncConnection, payout_id: str) -> Any | None:
    """A payout's row (a mapping), or None; ``payout_detail`` builds the full answer from it."""
    stmt = select(payouts_t).where(payouts_t.c.id == payout_id)
    return (await conn.execute(stmt)).mappings().one_or_none()


async def payout_detail(conn: AsyncConnection, row: Any) -> dict[str, Any]:
    """Everything known about one payout (its ``payout_row``): the row, its audit trail, and
    its card."""
    detail = payout_dict(row)
    detail["paymentProof"] = row["payment_proof"]
    detail["metadata"] = row["metadata"]
    e = events_t.c
    events = (
        await conn.execute(
            select(e.id, e.source, e.event_type, e.state, e.revision, e.occurred_at, e.received_at)
            .where(e.payout_id == row["id"])
            .order_by(e.id)
        )
    ).mappings()
    detail["events"] = [
        {
            "id": ev["id"],
            "source": ev["source"],
            "type": ev["event_type"],
            "state": ev["state"],
            "revision": ev["revision"],
            "occurredAt": ev["occurred_at"],
            "receivedAt": ev["received_at"],
        }
        for ev in events
    ]
    detail["boltcard"] = (
        await card_summary(conn, row["card_id"]) if row["card_id"] is not None else None
    )
    return detail


async def card_summary(conn: AsyncConnection, card_id: str) -> dict[str, Any]:
    """A card's public face and its lifetime usage (from the card rollups), in one statement."""
    r = card_rollups_t.c
    usage = (
        select(
            func.coalesce(func.sum(r.payouts), 0).label("payouts"),
            func.coalesce(func.sum(r.amount_sats), 0).label("sats"),
            func.coalesce(func.sum(r.taps), 0).label("taps"),
            func.min(r.first_used_at).label("first"),
            func.max(r.last_used_at).label("last"),
        )
        .where(r.card_id == card_id)
        .subquery()
    )
    # The usage row always exists (an aggregate without GROUP BY); the card may not.
    row = (
        (
            await conn.execute(
                select(
                    usage,
                    cards_t.c.id,
                    cards_t.c.store_id,
                    cards_t.c.alias,
                    cards_t.c.enabled,
                    cards_t.c.tx_limit_sats,
                    cards_t.c.day_limit_sats,
                    cards_t.c.erased_at,
                ).select_from(usage.outerjoin(cards_t, cards_t.c.id == card_id))
            )
        )
        .mappings()
        .one()
    )
    known = row["id"] is not None
    return {
        "boltcardId": card_id,
        "storeId": row["store_id"] if known else None,
        "alias": row["alias"] if known else None,
        "enabled": row["enabled"] if known else None,
        "txLimitSats": row["tx_limit_sats"] if known else None,
        "dayLimitSats": row["day_limit_sats"] if known else None,
        "erased": known and row["erased_at"] is not None,
        "totalPayouts": int(row["payouts"]),
        "totalAmount": int(row["sats"]),
        "totalTaps": int(row["taps"]),
        "firstUsed": row["first"],
        "lastUsed": row["last"],
    }


def _day_window(table: Any, start: date | None, end: date | None) -> list[ColumnElement[bool]]:
    where = []
    if start is not None:
        where.append(table.c.day >= start)
    if end is not None:
        where.append(table.c.day <= end)
    return where


@dataclass
class _Bucket:
    count: int = 0
    amount_sats: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))


async def payout_stats(
    conn: AsyncConnection, store_id: str, start: date | None, end: date | None, *, top: int = 10
) -> dict[str, Any]:
    """Counts and values for the days ``start``..``end`` (inclusive; None leaves that side
    open), from the rollups only."""
    r = payout_rollups_t.c
    rows = (
        await conn.execute(
            select(r.day, r.status, r.currency, r.count, r.amount, r.amount_sats).where(
                r.store_id == store_id, *_day_window(payout_rollups_t, start, end)
            )
        )
    ).all()
    total = _Bucket()
    amounts: dict[str, Decimal] = defaultdict(Decimal)
    by_status = {s: {"count": 0, "amountSats": 0} for s in STATUSES}
    series: dict[str, dict[date, _Bucket]] = {"day": {}, "week": {}, "month": {}}
    for day, status, currency, count, amount, sats in rows:
        count, sats = int(count), int(sats)
        if count == 0 and sats == 0:
            continue
        total.count += count
        total.amount_sats += sats
        if currency:
            amounts[currency] += Decimal(amount)
        by_status[status]["count"] += count
        by_status[status]["amountSats"] += sats
        for period, start_of in _PERIODS.items():
            bucket = series[period].setdefault(start_of(day), _Bucket())
            bucket.count += count
            bucket.amount_sats += sats
            bucket.by_status[status] += count
    finished = by_status[COMPLETED]["count"] + by_status[FAILED]["count"]
    c = card_rollups_t.c
    # Rank the cards first and name only the winners: joining the cards before grouping would
    # make the planner hash the whole boltcards table.
    ranked = (
        select(
            c.card_id,
            func.sum(c.payouts).label("payouts"),
            func.sum(c.amount_sats).label("sats"),
        )
        .where(c.store_id == store_id, *_day_window(card_rollups_t, start, end))
        .group_by(c.card_id)
        .having(func.sum(c.payouts) > 0)
        .order_by(func.sum(c.amount_sats).desc(), c.card_id)
        .limit(top)
        .subquery()
    )
    top_rows = (
        await conn.execute(
            select(ranked.c.card_id, cards_t.c.alias, ranked.c.payouts, ranked.c.sats)
            .select_from(ranked.outerjoin(cards_t, cards_t.c.id == ranked.c.card_id))
            .order_by(ranked.c.sats.desc(), ranked.c.card_id)
        )
    ).all()
    return {
        "storeId": store_id,
        "startDate": start,
        "endDate": end,
        "totalCount": total.count,
        "totalAmountSats": total.amount_sats,
        "totalAmountByCurrency": {k: v for k, v in sorted(amounts.items())},
        "byStatus": by_status,
        "successRate": (by_status[COMPLETED]["count"] / finished) if finished else None,
        "series": {
            period: [
                {
                    "start": key,
                    "count": b.count,
                    "amountSats": b.amount_sats,
                    "byStatus": b.by_status,
                }
                for key, b in sorted(buckets.items())
            ]
            for period, buckets in series.items()
        },
        "topCards": [
            {"boltcardId": cid, "alias": alias, "totalPayouts": int(p), "totalAmount": int(s)}
            for cid, alias, p, s in top_rows
        ],
    }


_PERIODS = {
    "day": lambda d: d,
    "week": lambda d: d - timedelta(days=d.weekday()),  # ISO weeks start on Monday
    "month": lambda d: d.replace(day=1),
}


async def card_usage(
    conn: AsyncConnection,
    store_id: str,
    start: date | None,
    end: date | None,
    *,
    sort: str = "totalAmount",
    descending: bool = True,
    limit: int | None = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """``BoltcardUsage`` per card with payouts or taps in the period, and how many cards that is."""
    stmt = usage_query(
        store_id, start, end, sort=sort, descending=descending, limit=limit, offset=offset
    )
    rows = (await conn.execute(stmt)).mappings().all()
    if rows and limit is not None:
        # Counted over the groups before the page was cut: no second pass over the period.
        total = int(rows[0]["total"])
    else:
        c = card_rollups_t.c
        total = (
            await conn.execute(
                select(func.count(func.distinct(c.card_id))).where(
                    c.store_id == store_id, *_day_window(card_rollups_t, start, end)
                )
            )
        ).scalar_one()
    return [usage_dict(r) for r in rows], int(total)


def _usage_sums(table: Any) -> dict[str, Any]:
    c = table.c
    return {
        "payouts": func.sum(c.payouts),
        "sats": func.sum(c.amount_sats),
        "taps": func.sum(c.taps),
        "refused": func.sum(c.refused_taps),
        "first": func.min(c.first_used_at),
        "last": func.max(c.last_used_at),
    }


def usage_query(
    store_id: str,
    start: date | None,
    end: date | None,
    *,
    sort: str = "totalAmount",
    descending: bool = True,
    limit: int | None = None,
    offset: int = 0,
) -> Any:
    """The usage SELECT, shared by the paged endpoint and the streamed export.

    The unpaged export groups the period by card once and streams the groups. A page
    (``limit`` given) ranks the cards by the sort key alone, cuts the page, and only then sums
    everything else for the page's own cards (through the rollups' primary key) and joins their
    aliases: the period's many cards cost one aggregate each instead of six. A page also
    carries ``total``, the number of cards in the period, counted in the ranking pass.
    """
    c = card_rollups_t.c
    window = [c.store_id == store_id, *_day_window(card_rollups_t, start, end)]
    sums = _usage_sums(card_rollups_t)
    key = {
        "totalAmount": sums["sats"],
        "totalPayouts": sums["payouts"],
        "firstUsed": sums["first"],
        "lastUsed": sums["last"],
        "boltcardId": c.card_id,
    }[sort]
    direction = (lambda k: k.desc()) if descending else (lambda k: k.asc())
    if limit is None:
        grouped = (
            select(c.card_id, *[value.label(name) for name, value in sums.items()])
            .where(*window)
            .group_by(c.card_id)
            .subquery()
        )
        sort_key = {
            "totalAmount": grouped.c.sats,
            "totalPayouts": grouped.c.payouts,
            "firstUsed": grouped.c.first,
            "lastUsed": grouped.c.last,
            "boltcardId": grouped.c.card_id,
        }[sort]
        return (
            select(grouped, cards_t.c.alias)
            .select_from(grouped.outerjoin(cards_t, cards_t.c.id == grouped.c.card_id))
            .order_by(direction(sort_key), direction(grouped.c.card_id))
        )
    ranked = (
        select(c.card_id, key.label("sort_key"), func.count().over().label("total"))
        .where(*window)
        .group_by(c.card_id)
        .order_by(direction(key), direction(c.card_id))
        .limit(limit)
        .offset(offset)
        .subquery()
    )
    r = card_rollups_t.alias("r")
    page_sums = _usage_sums(r)
    return (
        select(
            ranked.c.card_id,
            *[value.label(name) for name, value in page_sums.items()],
            ranked.c.total,
            cards_t.c.alias,
        )
        .select_from(
            ranked.join(
                r,
                and_(
                    r.c.card_id == ranked.c.card_id,
                    r.c.store_id == store_id,
                    *_day_window(r, start, end),
                ),
            ).outerjoin(cards_t, cards_t.c.id == ranked.c.card_id)
        )
        .group_by(ranked.c.card_id, ranked.c.sort_key, ranked.c.total, cards_t.c.alias)
        .order_by(direction(ranked.c.sort_key), direction(ranked.c.card_id))
    )


def usage_dict(row: Any) -> dict[str, Any]:
    return {
        "boltcardId": row["card_id"],
        "alias": row["alias"],
        "totalPayouts": int(row["payouts"] or 0),
        "totalAmount": int(row["sats"] or 0),
        "taps": int(row["taps"] or 0),
        "refusedTaps": int(row["refused"] or 0),
        "firstUsed": row["first"],
        "lastUsed": row["last"],
    }


# --- live updates ------------------------------------------------------------------------------


async def latest_ids(conn: AsyncConnection, store_id: str) -> tuple[int, int]:
    """The newest payout event id and tap id of a store (0 when none): where a stream starts."""
    ev = await conn.execute(
        select(func.coalesce(func.max(events_t.c.id), 0)).where(events_t.c.store_id == store_id)
    )
    tap = await conn.execute(
        select(func.coalesce(func.max(taps_t.c.id), 0)).where(taps_t.c.store_id == store_id)
    )
    return int(ev.scalar_one()), int(tap.scalar_one())


async def changes_after(
    conn: AsyncConnection, store_id: str, event_id: int, tap_id: int, *, limit: int = 200
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Payout events and taps of a store newer than the given ids, oldest first.

    Taps carry no personal data here (no UID, address or user agent).
    """
    e = events_t.c
    events = (
        (
            await conn.execute(
                select(
                    e.id,
                    e.payout_id,
                    e.source,
                    e.event_type,
                    e.state,
                    e.revision,
                    e.received_at,
                    payouts_t.c.status,
                )
                .select_from(events_t.outerjoin(payouts_t, payouts_t.c.id == e.payout_id))
                .where(e.store_id == store_id, e.id > event_id)
                .order_by(e.id)
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    t = taps_t.c
    taps = (
        (
            await conn.execute(
                select(
                    t.id,
                    t.card_id,
                    t.outcome,
                    t.reason,
                    t.amount_msat,
                    t.payout_id,
                    t.created_at,
                    t.updated_at,
                )
                .where(t.store_id == store_id, t.id > tap_id)
                .order_by(t.id)
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    return (
        [
            {
                "id": r["id"],
                "payoutId": r["payout_id"],
                "source": r["source"],
                "type": r["event_type"],
                "state": r["state"],
                "status": r["status"],
                "revision": r["revision"],
                "receivedAt": r["received_at"],
            }
            for r in events
        ],
        [
            {
                "id": r["id"],
                "boltcardId": r["card_id"],
                "outcome": r["outcome"],
                "reason": r["reason"],
                "amountSats": (r["amount_msat"] // 1000) if r["amount_msat"] is not None else None,
                "payoutId": r["payout_id"],
                "createdAt": r["created_at"],
            }
            for r in taps
        ],
    )


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)
