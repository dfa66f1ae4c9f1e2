"""Scheduled reports: their schedules, and the deliveries that claim each period exactly once.

A period is claimed by inserting one ``report_deliveries`` row per channel with ``ON CONFLICT
DO NOTHING``: however many processes find the period due at the same moment, one row exists.
Sending takes a lease with one conditional UPDATE (pending, due, and no live lease), so exactly
one process works on a delivery at a time; a process that dies mid-send leaves a lease that
expires, and another process retries. ``attempts`` rises with every lease and serves as its
fencing token: a process whose lease expired cannot record a result over its successor's.

The outcome of each attempt is counted in the monotonic ``counters`` in the same transaction
(``report_sends``, ``report_send_failures``, ``report_abandoned``, labelled by channel), so the
metrics listener of any process exports them.

Secrets arrive here already sealed by the caller's SecretBox.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .rollups import bump_counter, dialect_insert
from .schema import ReportDelivery, ReportSchedule

schedules_t = ReportSchedule.__table__
deliveries_t = ReportDelivery.__table__

FREQUENCIES = ("daily", "weekly", "monthly")
CHANNELS = ("email", "webhook")
SMTP_SECURITY = ("starttls", "tls", "none")
PENDING, SENT, FAILED = "pending", "sent", "failed"

# Counter names (labelled by channel), shared with the exporter.
SENDS_COUNTER = "report_sends"
FAILURES_COUNTER = "report_send_failures"
ABANDONED_COUNTER = "report_abandoned"


def new_schedule_id() -> str:
    return secrets.token_hex(8)


def sealing_context(schedule_id: str, column: str) -> bytes:
    """The associated data a schedule's secret is sealed with: its column and its row."""
    return f"report_schedules.{column}:{schedule_id}".encode()


@dataclass(frozen=True)
class Schedule:
    id: str
    store_id: str
    frequency: str
    time_zone: str
    send_at: int
    email_to: str | None
    mail_from: str | None
    smtp_host: str | None
    smtp_port: int | None
    smtp_security: str | None
    smtp_username: str | None
    smtp_password_sealed: str | None
    webhook_url: str | None
    webhook_secret_sealed: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(
            c
            for c, on in (("email", bool(self.email_to)), ("webhook", bool(self.webhook_url)))
            if on
        )

    @property
    def recipients(self) -> list[str]:
        return [a.strip() for a in (self.email_to or "").split(",") if a.strip()]

    def __repr__(self) -> str:  # sealed values stay out of logs even though they are sealed
        return (
            f"Schedule(id={self.id!r}, store_id={self.store_id!r}, "
            f"frequency={self.frequency!r}, channels={self.channels!r})"
        )


def _schedule(row: Any) -> Schedule:
    return Schedule(**{f: row[f] for f in Schedule.__dataclass_fields__})


async def add_schedule(conn: AsyncConnection, schedule: Schedule) -> None:
    values = {f: getattr(schedule, f) for f in Schedule.__dataclass_fields__}
    await conn.execute(schedules_t.insert().values(**values))


async def get_schedule(conn: AsyncConnection, schedule_id: str) -> Schedule | None:
    row = (
        (await conn.execute(select(schedules_t).where(schedules_t.c.id == schedule_id)))
        .mappings()
        .one_or_none()
    )
    return _schedule(row) if row is not None else None


async def list_schedules(conn: AsyncConnection, store_id: str | None = None) -> list[Schedule]:
    stmt = select(schedules_t).order_by(schedules_t.c.store_id, schedules_t.c.created_at)
    if store_id is not None:
        stmt = stmt.where(schedules_t.c.store_id == store_id)
    return [_schedule(r) for r in (await conn.execute(stmt)).mappings()]


async def remove_schedule(conn: AsyncConnection, schedule_id: str) -> bool:
    """Remove a schedule and its deliveries (a pending one is then never sent)."""
    await conn.execute(delete(deliveries_t).where(deliveries_t.c.schedule_id == schedule_id))
    result = await conn.execute(delete(schedules_t).where(schedules_t.c.id == schedule_id))
    return result.rowcount == 1


# --- claiming periods ----------------------------------------------------------------------------


async def claimed_periods(conn: AsyncConnection, schedule_id: str, since: date) -> set[date]:
    """The starts of the periods already claimed for a schedule, from ``since`` on."""
    d = deliveries_t.c
    rows = await conn.execute(
        select(d.period_start)
        .where(d.schedule_id == schedule_id, d.period_start >= since)
        .distinct()
    )
    return {r[0] for r in rows}


async def claim_period(
    conn: AsyncConnection,
    schedule: Schedule,
    *,
    period_start: date,
    period_end: date,
    due_at: datetime,
    late: bool,
    now: datetime,
) -> int:
    """Claim a period for every channel of the schedule; returns how many rows this call made
    (0 when another process claimed it first)."""
    made = 0
    for channel in schedule.channels:
        stmt = (
            dialect_insert(conn, deliveries_t)
            .values(
                schedule_id=schedule.id,
                period_start=period_start,
                channel=channel,
                store_id=schedule.store_id,
                period_end=period_end,
                due_at=due_at,
                late=late,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                claimed_at=now,
            )
            .on_conflict_do_nothing(index_elements=["schedule_id", "period_start", "channel"])
        )
        made += (await conn.execute(stmt)).rowcount or 0
    return made


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A delivery as leased: ``attempts`` is this attempt's number (and the lease's token)."""

    schedule_id: str
    period_start: date
    channel: str
    store_id: str
    period_end: date
    due_at: datetime
    late: bool
    attempts: int
    claimed_at: datetime


def _free_and_due(now: datetime) -> list[Any]:
    d = deliveries_t.c
    return [
        d.status == PENDING,
        d.next_attempt_at <= now,
        or_(d.lease_until.is_(None), d.lease_until < now),
    ]


async def due_deliveries(
    conn: AsyncConnection, now: datetime, *, limit: int = 100
) -> list[tuple[str, date, str]]:
    """Keys of the pending deliveries that may be tried now, oldest due first."""
    d = deliveries_t.c
    rows = await conn.execute(
        select(d.schedule_id, d.period_start, d.channel)
        .where(*_free_and_due(now))
        .order_by(d.next_attempt_at, d.schedule_id, d.period_start, d.channel)
        .limit(limit)
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def lease_delivery(
    conn: AsyncConnection,
    key: tuple[str, date, str],
    *,
    holder: str,
    now: datetime,
    lease: timedelta,
) -> Delivery | None:
    """Take the delivery for one attempt, or None when another process holds or sent it."""
    d = deliveries_t.c
    schedule_id, period_start, channel = key
    row = (
        (
            await conn.execute(
                update(deliveries_t)
                .where(
                    d.schedule_id == schedule_id,
                    d.period_start == period_start,
                    d.channel == channel,
                    *_free_and_due(now),
                )
                .values(
                    lease_until=now + lease,
                    leased_by=holder[:64],
                    attempts=d.attempts + 1,
                )
                .returning(
                    d.schedule_id,
                    d.period_start,
                    d.channel,
                    d.store_id,
                    d.period_end,
                    d.due_at,
                    d.late,
                    d.attempts,
                    d.claimed_at,
                )
            )
        )
        .mappings()
        .one_or_none()
    )
    return Delivery(**row) if row is not None else None


def _this_lease(delivery: Delivery, holder: str) -> list[Any]:
    d = deliveries_t.c
    return [
        d.schedule_id == delivery.schedule_id,
        d.period_start == delivery.period_start,
        d.channel == delivery.channel,
        d.status == PENDING,
        d.leased_by == holder[:64],
        d.attempts == delivery.attempts,
    ]


async def record_sent(
    conn: AsyncConnection, delivery: Delivery, *, holder: str, now: datetime
) -> bool:
    """Mark the delivery sent and count it; False when the lease was lost meanwhile."""
    result = await conn.execute(
        update(deliveries_t)
        .where(*_this_lease(delivery, holder))
        .values(status=SENT, sent_at=now, lease_until=None, last_error=None)
    )
    if result.rowcount != 1:
        return False
    await bump_counter(conn, delivery.store_id, SENDS_COUNTER, delivery.channel)
    return True


async def record_failure(
    conn: AsyncConnection,
    delivery: Delivery,
    *,
    holder: str,
    error: str,
    retry_at: datetime | None,
) -> bool:
    """Count a failed attempt; retry at ``retry_at``, or give up when it is None."""
    values: dict[str, Any] = {"lease_until": None, "last_error": error[:500]}
    if retry_at is None:
        values["status"] = FAILED
    else:
        values["next_attempt_at"] = retry_at
    result = await conn.execute(
        update(deliveries_t).where(*_this_lease(delivery, holder)).values(**values)
    )
    if result.rowcount != 1:
        return False
    await bump_counter(conn, delivery.store_id, FAILURES_COUNTER, delivery.channel)
    if retry_at is None:
        await bump_counter(conn, delivery.store_id, ABANDONED_COUNTER, delivery.channel)
    return True


async def count_manual_send(
    conn: AsyncConnection, store_id: str, channel: str, *, ok: bool
) -> None:
    """Count a send asked for by an operator (not a claimed period) in the same counters."""
    await bump_counter(conn, store_id, SENDS_COUNTER if ok else FAILURES_COUNTER, channel)


async def next_attempt_at(conn: AsyncConnection) -> datetime | None:
    """About when the next pending delivery may be tried: the earliest, among the pending
    deliveries due soonest, of their next attempt (or the end of a lease that holds one)."""
    d = deliveries_t.c
    rows = await conn.execute(
        select(d.next_attempt_at, d.lease_until)
        .where(d.status == PENDING)
        .order_by(d.next_attempt_at)
        .limit(50)
    )
    times = [max(n, lease) if lease is not None else n for n, lease in rows]
    return min(times) if times else None


@dataclass(frozen=True)
class DeliveryState:
    period_start: date
    channel: str
    status: str
    attempts: int
    late: bool
    last_error: str | None
    sent_at: datetime | None


async def recent_deliveries(
    conn: AsyncConnection, schedule_id: str, *, limit: int = 10
) -> list[DeliveryState]:
    """A schedule's latest deliveries, newest period first (for `reports list`)."""
    d = deliveries_t.c
    rows = await conn.execute(
        select(d.period_start, d.channel, d.status, d.attempts, d.late, d.last_error, d.sent_at)
        .where(d.schedule_id == schedule_id)
        .order_by(d.period_start.desc(), d.channel)
        .limit(limit)
    )
    return [DeliveryState(*r) for r in rows]
