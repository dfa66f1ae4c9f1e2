"""What a scheduled report reads: a period's payouts by status, its top cards and the cards
that alerted, between two instants.

A report's period runs from midnight to midnight in the store's time zone, which is not a
whole number of UTC days unless the zone is UTC. The rollups count whole UTC days, so a period
is read as the whole UTC days it contains, from the rollups, plus its two partial days at the
edges, from the fact tables (at most a day's rows each, through the (store, created_at)
indexes). A period aligned with UTC days reads the rollups alone, exactly as
``/payouts/stats`` does, and gives the same figures.

"Cards that alerted" are the cards with refused taps in the period (a replayed counter, a bad
MAC, a limit, a disabled or wiped card, a refusal by BTCPay), by outcome, from the taps
themselves through the (outcome, created_at) index: the alert rules fire on the same refusals,
and the ledger keeps no history of alerts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from .outcomes import TAP_OUTCOMES
from .schema import Boltcard, CardRollup, CardTap, Payout, PayoutRollup
from .status import STATUSES

payouts_t = Payout.__table__
cards_t = Boltcard.__table__
taps_t = CardTap.__table__
payout_rollups_t = PayoutRollup.__table__
card_rollups_t = CardRollup.__table__

REFUSED_OUTCOMES = tuple(o for o in TAP_OUTCOMES if o != "accepted")


@dataclass
class Totals:
    """Payouts created in a period, by current status and by currency, as the stats give them."""

    by_status: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: {"count": 0, "amountSats": 0} for s in STATUSES}
    )
    by_currency: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(v["count"] for v in self.by_status.values())

    @property
    def amount_sats(self) -> int:
        return sum(v["amountSats"] for v in self.by_status.values())

    def amount_by_currency(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for (currency, _status), v in sorted(self.by_currency.items()):
            out[currency] = out.get(currency, Decimal(0)) + v["amount"]
        return out

    def add(self, status: str, currency: str, count: int, amount: Decimal, sats: int) -> None:
        bucket = self.by_status.setdefault(status, {"count": 0, "amountSats": 0})
        bucket["count"] += count
        bucket["amountSats"] += sats
        if currency:
            cur = self.by_currency.setdefault(
                (currency, status), {"count": 0, "amount": Decimal(0)}
            )
            cur["count"] += count
            cur["amount"] += amount


@dataclass(frozen=True)
class Split:
    """A period as whole UTC days (``days``, first inclusive, last exclusive; empty when none)
    and the partial edges around them, as instant ranges."""

    first_day: date
    end_day: date
    edges: tuple[tuple[datetime, datetime], ...]


def split(start: datetime, end: datetime) -> Split:
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    first = start.date() if start.time() == time(0) else start.date() + timedelta(days=1)
    last = end.date()
    if first >= last:
        return Split(first, first, ((start, end),))
    edges = []
    if start < _midnight(first):
        edges.append((start, _midnight(first)))
    if _midnight(last) < end:
        edges.append((_midnight(last), end))
    return Split(first, last, tuple(edges))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _currency_key() -> Any:
    # The rollups' currency: the original currency, else the payout's (see ledger.payouts).
    c = payouts_t.c
    return func.coalesce(c.original_currency, c.payout_currency, "")


async def period_totals(
    conn: AsyncConnection, store_id: str, start: datetime, end: datetime
) -> Totals:
    """Payouts created in [start, end) by status and currency."""
    parts = split(start, end)
    totals = Totals()
    r = payout_rollups_t.c
    if parts.first_day < parts.end_day:
        rows = await conn.execute(
            select(r.status, r.currency, r.count, r.amount, r.amount_sats).where(
                r.store_id == store_id, r.day >= parts.first_day, r.day < parts.end_day
            )
        )
        for status, currency, count, amount, sats in rows:
            totals.add(status, currency, int(count), Decimal(amount or 0), int(sats or 0))
    c = payouts_t.c
    currency = _currency_key()
    for lo, hi in parts.edges:
        rows = await conn.execute(
            select(
                c.status,
                currency,
                func.count(),
                func.coalesce(func.sum(c.original_amount), 0),
                func.coalesce(func.sum(c.amount_sats), 0),
            )
            .where(c.store_id == store_id, c.created_at >= lo, c.created_at < hi)
            .group_by(c.status, currency)
        )
        for status, cur, count, amount, sats in rows:
            totals.add(status, cur, int(count), Decimal(amount or 0), int(sats or 0))
    return totals


async def period_top_cards(
    conn: AsyncConnection, store_id: str, start: datetime, end: datetime, *, limit: int = 10
) -> list[dict[str, Any]]:
    """The cards that collected the most (by sats) among the payouts created in [start, end)."""
    parts = split(start, end)
    pieces = []
    if parts.first_day < parts.end_day:
        cr = card_rollups_t.c
        pieces.append(
            select(cr.card_id, cr.payouts.label("payouts"), cr.amount_sats.label("sats")).where(
                cr.store_id == store_id, cr.day >= parts.first_day, cr.day < parts.end_day
            )
        )
    c = payouts_t.c
    for lo, hi in parts.edges:
        pieces.append(
            select(
                c.card_id,
                literal(1).label("payouts"),
                func.coalesce(c.amount_sats, 0).label("sats"),
            ).where(
                c.store_id == store_id,
                c.created_at >= lo,
                c.created_at < hi,
                c.card_id.is_not(None),
            )
        )
    both = union_all(*pieces).subquery() if len(pieces) > 1 else pieces[0].subquery()
    ranked = (
        select(
            both.c.card_id,
            func.sum(both.c.payouts).label("payouts"),
            func.sum(both.c.sats).label("sats"),
        )
        .group_by(both.c.card_id)
        .having(func.sum(both.c.payouts) > 0)
        .order_by(func.sum(both.c.sats).desc(), both.c.card_id)
        .limit(limit)
        .subquery()
    )
    rows = await conn.execute(
        select(ranked.c.card_id, cards_t.c.alias, ranked.c.payouts, ranked.c.sats)
        .select_from(ranked.outerjoin(cards_t, cards_t.c.id == ranked.c.card_id))
        .order_by(ranked.c.sats.desc(), ranked.c.card_id)
    )
    return [
        {"boltcardId": cid, "alias": alias, "totalPayouts": int(p), "totalAmount": int(s)}
        for cid, alias, p, s in rows
    ]


async def period_alerted_cards(
    conn: AsyncConnection, store_id: str, start: datetime, end: datetime, *, limit: int = 20
) -> list[dict[str, Any]]:
    """Cards with refused taps in [start, end): how many, by outcome, most refused first."""
    t = taps_t.c
    rows = (
        await conn.execute(
            select(t.card_id, t.outcome, func.count().label("n"), func.max(t.created_at))
            .where(
                t.outcome.in_(REFUSED_OUTCOMES),
                t.created_at >= start,
                t.created_at < end,
                t.store_id == store_id,
                t.card_id.is_not(None),
            )
            .group_by(t.card_id, t.outcome)
        )
    ).all()
    cards: dict[str, dict[str, Any]] = {}
    for card_id, outcome, n, last in rows:
        card = cards.setdefault(
            card_id,
            {"boltcardId": card_id, "alias": None, "refusedTaps": 0, "byOutcome": {}, "last": None},
        )
        card["refusedTaps"] += int(n)
        card["byOutcome"][outcome] = int(n)
        card["last"] = max(filter(None, (card["last"], last)), default=None)
    ranked = sorted(cards.values(), key=lambda c: (-c["refusedTaps"], c["boltcardId"]))[:limit]
    if ranked:
        aliases = dict(
            (
                await conn.execute(
                    select(cards_t.c.id, cards_t.c.alias).where(
                        cards_t.c.id.in_([c["boltcardId"] for c in ranked])
                    )
                )
            ).all()
        )
        for card in ranked:
            card["alias"] = aliases.get(card["boltcardId"])
            card["lastRefusedAt"] = card.pop("last")
            card["byOutcome"] = dict(sorted(card["byOutcome"].items()))
    return ranked
