"""A report of one period: composed from the ledger's reads, and its JSON (the webhook body).

The JSON speaks the API's vocabulary: ``totals`` has the fields of ``/payouts/stats``
(``totalCount``, ``totalAmountSats``, ``totalAmountByCurrency``, ``byStatus``, ``successRate``),
amounts are decimal strings and instants ISO 8601 in UTC.

"Cards near the end of their balance" needs a balance per card, which the ledger does not keep
yet: ``lowBalanceCards`` is left out of the JSON, and its section out of the email, until it
does. The renderers show the section whenever a report carries the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import dumps
from dashboards.common import OVERVIEW_UID, board_path
from ledger.db import readonly
from ledger.report_figures import (
    Totals,
    period_alerted_cards,
    period_top_cards,
    period_totals,
)
from ledger.reports import Schedule
from ledger.status import COMPLETED, FAILED
from ledger.stores import get_store

from .periods import Period, zone

TOP_CARDS = 10
ALERTED_CARDS = 20


@dataclass
class Report:
    schedule: Schedule
    store_name: str
    period: Period
    start: datetime  # UTC
    end: datetime  # UTC
    totals: Totals
    previous: Totals
    top_cards: list[dict[str, Any]]
    alerted_cards: list[dict[str, Any]]
    boards_url: str
    generated_at: datetime
    due_at: datetime | None = None
    late: bool = False
    low_balance_cards: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def delivery_id(self) -> str:
        """The same for every attempt at this period's report: receivers dedupe by it."""
        return f"{self.schedule.id}:{self.period.start.isoformat()}"

    @property
    def title(self) -> str:
        name = self.store_name or self.schedule.store_id
        return f"{self.schedule.frequency.capitalize()} payout report: {name}, {self.period.label}"

    @property
    def late_note(self) -> str | None:
        if not self.late or self.due_at is None:
            return None
        return (
            f"This report is late: it fell due at {self.due_at:%Y-%m-%d %H:%M} UTC, when no "
            "monitor process could send it (none was running, or the ledger was out of "
            "reach); it was sent as soon as one could. The figures are as the ledger holds "
            "them now."
        )

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": "FlashPayoutReport",
            "deliveryId": self.delivery_id,
            "scheduleId": self.schedule.id,
            "storeId": self.schedule.store_id,
            "storeName": self.store_name,
            "frequency": self.schedule.frequency,
            "timeZone": self.schedule.time_zone,
            "period": _period_json(self.period, self.start, self.end),
            "previousPeriod": _period_json(
                self.period.previous(),
                *self.period.previous().bounds(zone(self.schedule.time_zone)),
            ),
            "late": self.late,
            "note": self.late_note,
            "totals": totals_json(self.totals),
            "previous": totals_json(self.previous),
            "change": change_json(self.totals, self.previous),
            "topCards": self.top_cards,
            "alertedCards": self.alerted_cards,
            "boardsUrl": self.boards_url,
            "generatedAt": self.generated_at,
        }
        if self.low_balance_cards is not None:
            data["lowBalanceCards"] = self.low_balance_cards
        return data

    def payload_bytes(self) -> bytes:
        return dumps(self.payload()).encode()


def _period_json(period: Period, start: datetime, end: datetime) -> dict[str, Any]:
    return {
        "start": period.start,
        "end": period.end,
        "startAt": start,
        "endAt": end,
        "label": period.label,
    }


def success_rate(totals: Totals) -> float | None:
    finished = totals.by_status[COMPLETED]["count"] + totals.by_status[FAILED]["count"]
    return totals.by_status[COMPLETED]["count"] / finished if finished else None


def totals_json(totals: Totals) -> dict[str, Any]:
    return {
        "totalCount": totals.count,
        "totalAmountSats": totals.amount_sats,
        "totalAmountByCurrency": totals.amount_by_currency(),
        "byStatus": {s: dict(v) for s, v in totals.by_status.items()},
        "successRate": success_rate(totals),
    }


def _percent(now: int, before: int) -> float | None:
    return round(100 * (now - before) / before, 1) if before else None


def change_json(now: Totals, before: Totals) -> dict[str, Any]:
    """The period against the one before: differences, and percentages where defined."""
    return {
        "totalCount": now.count - before.count,
        "totalCountPercent": _percent(now.count, before.count),
        "totalAmountSats": now.amount_sats - before.amount_sats,
        "totalAmountSatsPercent": _percent(now.amount_sats, before.amount_sats),
        "byStatus": {
            s: {
                "count": now.by_status[s]["count"] - before.by_status.get(s, {"count": 0})["count"],
                "amountSats": now.by_status[s]["amountSats"]
                - before.by_status.get(s, {"amountSats": 0})["amountSats"],
            }
            for s in now.by_status
        },
    }


def boards_link(grafana_url: str, store_id: str, start: datetime, end: datetime) -> str:
    """The payouts overview board for the store, over the report's period."""
    query = urlencode(
        {
            "var-store": store_id,
            "from": int(start.timestamp() * 1000),
            "to": int(end.timestamp() * 1000),
        }
    )
    return f"{grafana_url.rstrip('/')}{board_path(OVERVIEW_UID)}?{query}"


async def compose_report(
    engine: AsyncEngine,
    schedule: Schedule,
    period: Period,
    *,
    grafana_url: str,
    due_at: datetime | None = None,
    late: bool = False,
    now: datetime | None = None,
) -> Report:
    """The report of ``period`` for ``schedule``, read in one transaction."""
    tz = zone(schedule.time_zone)
    start, end = period.bounds(tz)
    before_start, before_end = period.previous().bounds(tz)
    store_id = schedule.store_id
    async with readonly(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            # One snapshot for every figure, so the totals and the cards agree.
            await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        store = await get_store(conn, store_id)
        totals = await period_totals(conn, store_id, start, end)
        previous = await period_totals(conn, store_id, before_start, before_end)
        top = await period_top_cards(conn, store_id, start, end, limit=TOP_CARDS)
        alerted = await period_alerted_cards(conn, store_id, start, end, limit=ALERTED_CARDS)
    return Report(
        schedule=schedule,
        store_name=store.name if store is not None else "",
        period=period,
        start=start,
        end=end,
        totals=totals,
        previous=previous,
        top_cards=top,
        alerted_cards=alerted,
        boards_url=boards_link(grafana_url, store_id, start, end),
        generated_at=now or datetime.now(UTC),
        due_at=due_at,
        late=late,
    )
