"""The report schedule as `serve` runs it: claim the periods that are due, send, retry.

Every ``interval`` seconds (and sooner when a retry is due) a tick:

1. claims, for each schedule, the periods due now that nobody claimed (one row per channel in
   the ledger, inserted with ON CONFLICT DO NOTHING, so any number of processes claim each
   period once); a period claimed more than two intervals after it fell due was missed while
   no process ran, and its report carries a note saying so;
2. leases the deliveries that may be tried now (one conditional UPDATE each: one process wins)
   and sends each in a task of its own, so a slow mail server does not hold up the ticks;
3. records the outcome with the lease's fencing token: sent, or failed and retried after
   ``retry_base`` x 3^(attempt - 1) seconds (+-10%), until ``attempts`` attempts, then given up.
   Sends, failed attempts and reports given up are counted in the ledger's counters, which
   the metrics listener exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.db import in_transaction, readonly
from ledger.reports import (
    Delivery,
    Schedule,
    claim_period,
    claimed_periods,
    count_manual_send,
    due_deliveries,
    get_schedule,
    lease_delivery,
    list_schedules,
    next_attempt_at,
    record_failure,
    record_sent,
    sealing_context,
)
from ledger.secretbox import SecretBox, SecretBoxError

from .compose import Report, compose_report
from .deliver import DeliveryError, send_email, send_webhook
from .periods import CATCH_UP, Period, due_periods, period_of, zone
from .render import email_message, spreadsheet_bytes

log = logging.getLogger("flash_payouts.reports")


@dataclass(frozen=True)
class ReportConfig:
    interval: float = 60.0  # seconds between checks of the schedules
    retry_base: float = 60.0  # seconds before the first retry of a failed send
    attempts: int = 6  # attempts per report and channel before it is given up
    send_timeout: float = 30.0  # seconds one send may take
    grafana_url: str = "http://localhost:3000"
    attachment_max_rows: int = 100_000
    catch_up: int = CATCH_UP
    concurrency: int = 4  # sends in flight per process

    @property
    def late_after(self) -> timedelta:
        """A period claimed later than this after it fell due was missed (no process ran)."""
        return timedelta(seconds=max(2 * self.interval, 5.0))

    @property
    def lease(self) -> timedelta:
        """How long one attempt holds its delivery: composing, the spreadsheet and the send."""
        return timedelta(seconds=max(300.0, 4 * self.send_timeout))

    def retry_delay(self, attempt: int) -> float:
        return self.retry_base * 3 ** (attempt - 1) * random.uniform(0.9, 1.1)


def holder_name() -> str:
    """Who holds a lease: host and process, and a random part for a reused pid."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class ReportSender:
    """Composes a report and sends it on one channel (one attempt); shared by the schedule
    and `reports send-now`."""

    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        config: ReportConfig,
        session: aiohttp.ClientSession,
    ) -> None:
        self.engine, self.box, self.config, self.session = engine, box, config, session

    async def compose(
        self, schedule: Schedule, period: Period, *, due_at: datetime | None, late: bool
    ) -> Report:
        return await compose_report(
            self.engine,
            schedule,
            period,
            grafana_url=self.config.grafana_url,
            due_at=due_at,
            late=late,
        )

    def _open(self, schedule: Schedule, column: str, sealed: str | None) -> str | None:
        if sealed is None:
            return None
        try:
            return self.box.open_text(sealed, context=sealing_context(schedule.id, column))
        except SecretBoxError:
            raise DeliveryError(
                f"the schedule's {column.removesuffix('_sealed').replace('_', ' ')} does not "
                "open with this master key"
            ) from None

    async def send(
        self, schedule: Schedule, report: Report, channel: str, *, message_id: str | None = None
    ) -> None:
        """One attempt; raises DeliveryError with a reason fit for the ledger."""
        timeout = self.config.send_timeout
        if channel == "email":
            password = self._open(schedule, "smtp_password_sealed", schedule.smtp_password_sealed)
            attachment = await spreadsheet_bytes(
                self.engine, report, max_rows=self.config.attachment_max_rows
            )
            message = email_message(report, attachment=attachment, message_id=message_id)
            await send_email(schedule, message, password=password, timeout=timeout)
        elif channel == "webhook":
            secret = self._open(schedule, "webhook_secret_sealed", schedule.webhook_secret_sealed)
            assert schedule.webhook_url is not None
            await send_webhook(
                self.session,
                schedule.webhook_url,
                report.payload_bytes(),
                secret=secret or "",
                delivery_id=report.delivery_id,
                timeout=timeout,
            )
        else:
            raise DeliveryError(f"unknown channel {channel!r}")

    async def send_now(self, schedule: Schedule, period: Period) -> dict[str, str | None]:
        """The period's report on every channel of the schedule, one attempt each, outside
        the schedule (no period is claimed); counted like scheduled sends. Channel -> None
        when sent, else the reason it was not."""
        report = await self.compose(schedule, period, due_at=None, late=False)
        results: dict[str, str | None] = {}
        for channel in schedule.channels:
            try:
                # A fresh Message-ID: this is a second copy, not a retry of the scheduled one.
                await self.send(schedule, report, channel, message_id=_fresh_message_id())
                results[channel] = None
            except DeliveryError as exc:
                results[channel] = str(exc)

            async def count(conn: AsyncConnection, channel: str = channel) -> None:
                await count_manual_send(
                    conn, schedule.store_id, channel, ok=results[channel] is None
                )

            await in_transaction(self.engine, count)
        return results


def _fresh_message_id() -> str:
    return f"<report.{secrets.token_hex(12)}@flash-payouts>"


class ReportScheduler:
    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        config: ReportConfig | None = None,
        *,
        holder: str | None = None,
    ) -> None:
        self.engine = engine
        # Reads take no write lock on SQLite (see ledger.db.readonly).
        self.reader = readonly(engine)
        self.box = box
        self.config = config or ReportConfig()
        self.holder = holder or holder_name()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # stopping, or a send finished: check again now
        self._loop_task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._sender: ReportSender | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._sender = ReportSender(self.engine, self.box, self.config, self._session)
        self._loop_task = asyncio.create_task(self._run(), name="report-schedule")

    async def stop(self, grace: float | None = None) -> None:
        """Stop checking; let sends in flight finish (up to ``grace`` seconds), then cancel."""
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._sends:
            grace = self.config.send_timeout + 5 if grace is None else grace
            _done, pending = await asyncio.wait(self._sends, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self.tick()
                wait = await self._until_next()
            except Exception:  # a ledger outage must not end the schedule; the next tick retries
                log.exception("report schedule check failed")
                wait = self.config.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _until_next(self) -> float:
        if len(self._sends) >= self.config.concurrency:
            return self.config.interval  # a finishing send wakes the loop
        async with self.reader.connect() as conn:
            soonest = await next_attempt_at(conn)
        if soonest is None:
            return self.config.interval
        seconds = (soonest - datetime.now(UTC)).total_seconds()
        return min(self.config.interval, max(0.05, seconds))

    async def tick(self, now: datetime | None = None) -> int:
        """Claim what is due and start sending; returns the number of sends started."""
        now = now or datetime.now(UTC)
        async with self.reader.connect() as conn:
            schedules = await list_schedules(conn)
        for schedule in schedules:
            await self._claim(schedule, now)
        started = 0
        async with self.reader.connect() as conn:
            keys = await due_deliveries(conn, now)
        for key in keys:
            if len(self._sends) >= self.config.concurrency or self._stopping.is_set():
                break

            async def lease(conn: AsyncConnection, key=key) -> Delivery | None:  # type: ignore[no-untyped-def]
                return await lease_delivery(
                    conn, key, holder=self.holder, now=now, lease=self.config.lease
                )

            delivery = await in_transaction(self.engine, lease)
            if delivery is None:
                continue  # another process took it
            task = asyncio.create_task(self._deliver(delivery))
            self._sends.add(task)
            task.add_done_callback(self._send_done)
            started += 1
        return started

    def _send_done(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._wake.set()

    async def _claim(self, schedule: Schedule, now: datetime) -> None:
        if not schedule.channels:
            return
        try:
            tz = zone(schedule.time_zone)
        except ValueError:
            log.error("report schedule %s: unknown time zone; skipped", schedule.id)
            return
        periods = due_periods(
            schedule.frequency,
            tz,
            schedule.send_at,
            since=schedule.created_at,
            now=now,
            catch_up=self.config.catch_up,
        )
        if not periods:
            return
        async with self.reader.connect() as conn:
            if {p.start for p in periods} <= await claimed_periods(
                conn, schedule.id, periods[0].start
            ):
                return  # the usual case: nothing new, and no write transaction taken

        async def claim(conn: AsyncConnection) -> int:
            taken = await claimed_periods(conn, schedule.id, periods[0].start)
            made = 0
            for period in periods:
                if period.start in taken:
                    continue
                due_at = period.due_at(tz, schedule.send_at)
                late = now - due_at > self.config.late_after
                made += await claim_period(
                    conn,
                    schedule,
                    period_start=period.start,
                    period_end=period.end,
                    due_at=due_at,
                    late=late,
                    now=now,
                )
                if late:
                    log.warning(
                        "report %s for %s was missed at %s; sending it now",
                        schedule.id,
                        period.start,
                        due_at.isoformat(),
                    )
            return made

        await in_transaction(self.engine, claim)

    async def _deliver(self, delivery: Delivery) -> None:
        assert self._sender is not None
        error: str | None = None
        try:
            async with self.reader.connect() as conn:
                schedule = await get_schedule(conn, delivery.schedule_id)
            if schedule is None:
                return  # removed meanwhile, with its deliveries
            period = period_of(schedule.frequency, delivery.period_start)
            report = await self._sender.compose(
                schedule, period, due_at=delivery.due_at, late=delivery.late
            )
            await self._sender.send(schedule, report, delivery.channel)
        except DeliveryError as exc:
            error = str(exc)
        except Exception as exc:  # counted and retried like any failed send, and logged in full
            log.exception("report %s: sending failed", delivery.schedule_id)
            error = f"internal error: {type(exc).__name__}"
        try:
            await self._record(delivery, error)
        except Exception:  # the lease runs out and another attempt records it
            log.exception("report %s: recording the outcome failed", delivery.schedule_id)

    async def _record(self, delivery: Delivery, error: str | None) -> None:
        now = datetime.now(UTC)
        what = f"report {delivery.schedule_id} for {delivery.period_start} by {delivery.channel}"
        if error is None:

            async def sent(conn: AsyncConnection) -> bool:
                return await record_sent(conn, delivery, holder=self.holder, now=now)

            if await in_transaction(self.engine, sent):
                log.info("%s sent (attempt %d)", what, delivery.attempts)
            return
        give_up = delivery.attempts >= self.config.attempts
        retry_at = None
        if not give_up:
            retry_at = now + timedelta(seconds=self.config.retry_delay(delivery.attempts))

        async def failed(conn: AsyncConnection) -> bool:
            return await record_failure(
                conn, delivery, holder=self.holder, error=error, retry_at=retry_at
            )

        await in_transaction(self.engine, failed)
        if give_up:
            log.error("%s given up after %d attempts: %s", what, delivery.attempts, error)
        else:
            log.warning(
                "%s failed (attempt %d, retry at %s): %s", what, delivery.attempts, retry_at, error
            )
