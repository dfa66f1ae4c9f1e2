"""The report schedule: periods in the store's time zone, each period claimed and sent once
however many processes run it, and a period missed while none ran sent once on the next start.

The multi-process cases run real `flash-payouts serve` processes on one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter as Tally
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from api_fixtures import add_tap, write_payout
from report_fixtures import free_port, make_schedule, start_hook
from sqlalchemy import select

from flash_payouts.reports.compose import compose_report
from flash_payouts.reports.periods import (
    due_periods,
    latest_due,
    parse_time_of_day,
    period_of,
    zone,
)
from flash_payouts.reports.scheduler import ReportConfig, ReportScheduler
from ledger.api_queries import PayoutFilter, list_payouts
from ledger.db import create_engine
from ledger.reports import remove_schedule
from ledger.schema import ReportDelivery
from ledger.secretbox import SecretBox
from ledger.stores import upsert_store

ROOT = Path(__file__).resolve().parent.parent
NY = zone("America/New_York")


# --- periods -------------------------------------------------------------------------------------


def test_days_weeks_and_months_run_from_local_midnight_through_daylight_saving():
    # 2024-03-10: New York springs forward, so that day lasts 23 hours.
    day = period_of("daily", date(2024, 3, 10))
    start, end = day.bounds(NY)
    assert (start, end) == (
        datetime(2024, 3, 10, 5, tzinfo=UTC),
        datetime(2024, 3, 11, 4, tzinfo=UTC),
    )
    week = period_of("weekly", date(2024, 3, 14))  # a Thursday
    assert (week.start, week.end) == (date(2024, 3, 11), date(2024, 3, 18))
    assert week.label == "week 2024-W11 (2024-03-11 to 2024-03-17)"
    month = period_of("monthly", date(2024, 2, 29))
    assert (month.start, month.end, month.label) == (
        date(2024, 2, 1),
        date(2024, 3, 1),
        "February 2024",
    )
    assert month.previous().start == date(2024, 1, 1) and month.following().start == date(
        2024, 3, 1
    )
    # Due on the day the period ends, at the local send time.
    assert day.due_at(NY, parse_time_of_day("08:30")) == datetime(2024, 3, 11, 12, 30, tzinfo=UTC)


def test_due_periods_start_after_the_schedule_and_catch_up_at_most_seven():
    now = datetime(2024, 6, 20, 9, 0, tzinfo=UTC)
    eight = parse_time_of_day("08:00")
    # Added yesterday at noon: yesterday's report is due today at 08:00 (New York: 12:00 UTC).
    since = datetime(2024, 6, 19, 12, tzinfo=UTC)
    assert due_periods("daily", zone("UTC"), eight, since=since, now=now) == [
        period_of("daily", date(2024, 6, 19))
    ]
    assert due_periods("daily", NY, eight, since=since, now=now) == []
    long_ago = datetime(2024, 1, 1, tzinfo=UTC)
    missed = due_periods("daily", zone("UTC"), eight, since=long_ago, now=now)
    assert [p.start for p in missed] == [date(2024, 6, 13) + timedelta(days=i) for i in range(7)]
    assert latest_due("monthly", zone("UTC"), 0, now).start == date(2024, 5, 1)
    with pytest.raises(ValueError, match="unknown time zone"):
        zone("Mars/Olympus")
    with pytest.raises(ValueError, match="not a time of day"):
        parse_time_of_day("25:00")


# --- figures in the store's time zone ------------------------------------------------------------


async def test_a_local_day_counts_exactly_the_payouts_between_its_local_midnights(
    engine, master_key_hex
):
    """A New York day is 05:00 to 05:00 UTC (04:00 after the spring change): its report reads
    whole UTC days from the rollups and the edges from the payouts, and must count exactly
    the payouts between the two local midnights."""
    box = SecretBox.from_text(master_key_hex)
    async with engine.begin() as conn:
        await upsert_store(conn, "ny", name="New York shop")
    local = period_of("daily", date(2024, 3, 10))
    start, end = local.bounds(NY)
    states = ("Completed", "Cancelled", "AwaitingPayment", "AwaitingApproval")
    moments = [start - timedelta(seconds=1), start, start + timedelta(hours=3)]
    moments += [end - timedelta(microseconds=1), end, end + timedelta(hours=2)]
    moments += [start + timedelta(hours=h) for h in range(1, 23, 4)]
    for i, at in enumerate(moments):
        await write_payout(engine, f"ny{i:02d}", "ny", states[i % 4], Decimal(100 + i), at)
    schedule = await make_schedule(engine, box, "ny", time_zone="America/New_York")
    report = await compose_report(engine, schedule, local, grafana_url="http://g")
    async with engine.connect() as conn:
        page = await list_payouts(conn, PayoutFilter("ny", start, end), limit=500)
    assert report.totals.count == page.total == len(page.items) == 9
    for status in ("Completed", "Failed", "Processing", "Pending"):
        mine = [p for p in page.items if p["status"] == status]
        assert report.totals.by_status[status] == {
            "count": len(mine),
            "amountSats": sum(p["amountSats"] for p in mine),
        }
    # The day before holds the one payout a second before midnight.
    assert report.previous.count == 1
    assert "from=1710046800000" in report.boards_url  # 2024-03-10T05:00:00Z


async def test_cards_that_alerted_are_those_with_refused_taps_by_outcome(engine, master_key_hex):
    from api_fixtures import add_card

    box = SecretBox.from_text(master_key_hex)
    async with engine.begin() as conn:
        await upsert_store(conn, "taps", name="Taps")
    await add_card(engine, "quiet", "taps", alias="quiet")
    await add_card(engine, "loud", "taps", alias="loud")
    day = period_of("daily", date(2024, 5, 2))
    at = datetime(2024, 5, 2, 10, tzinfo=UTC)
    for outcome in ("accepted", "accepted"):
        await add_tap(engine, "quiet", "taps", at, outcome=outcome)
    for outcome in ("replay", "replay", "limit", "bad_mac", "accepted"):
        await add_tap(engine, "loud", "taps", at, outcome=outcome)
    await add_tap(engine, "loud", "taps", at - timedelta(days=1), outcome="replay")  # before
    schedule = await make_schedule(engine, box, "taps")
    report = await compose_report(engine, schedule, day, grafana_url="http://g")
    [card] = report.alerted_cards
    assert card["boltcardId"] == "loud" and card["alias"] == "loud"
    assert card["refusedTaps"] == 4
    assert card["byOutcome"] == {"bad_mac": 1, "limit": 1, "replay": 2}


# --- exactly once --------------------------------------------------------------------------------


async def test_concurrent_schedulers_claim_and_send_each_period_once(pg_db_url, master_key_hex):
    """Four schedulers, each with its own engine, tick at the same instant over schedules with
    missed periods to catch up: every period and channel is leased and delivered once."""
    box = SecretBox.from_text(master_key_hex)
    hook = await start_hook()
    engines = [create_engine(pg_db_url) for _ in range(4)]
    try:
        async with engines[0].begin() as conn:
            await upsert_store(conn, "race", name="Race")
        created = datetime.now(UTC) - timedelta(days=4)
        expected = 0
        for tz in (
            "UTC",
            "Europe/Berlin",
            "Asia/Tokyo",
            "America/Los_Angeles",
            "Pacific/Kiritimati",
        ):
            await make_schedule(
                engines[0], box, "race", time_zone=tz, webhook=hook, created_at=created
            )
            missed = due_periods("daily", zone(tz), 0, since=created, now=datetime.now(UTC))
            assert len(missed) >= 3
            expected += len(missed)
        config = ReportConfig(interval=3600, retry_base=0.1)
        schedulers = [
            ReportScheduler(e, box, config, holder=f"p{i}") for i, e in enumerate(engines)
        ]
        for s in schedulers:
            await s.start()  # each ticks once at start; the hour-long interval keeps it at that
        try:
            await hook.wait_for(expected)
            await asyncio.sleep(1.0)  # a duplicate would arrive now
        finally:
            for s in schedulers:
                await s.stop()
        deliveries = Tally(h["Flash-Delivery"] for h, _ in hook.received)
        assert len(deliveries) == expected and set(deliveries.values()) == {1}
        async with engines[0].connect() as conn:
            rows = (await conn.execute(select(ReportDelivery.__table__))).mappings().all()
        assert len(rows) == expected
        assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)}
        assert len({r["leased_by"] for r in rows}) > 1  # the work was shared, not serialised
    finally:
        await hook.close()
        for e in engines:
            await e.dispose()


class ServeProcess:
    def __init__(self, db_url: str, master_key_hex: str) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_")}
        env.update(
            FLASH_DATABASE_URL=db_url,
            FLASH_MASTER_KEY=master_key_hex,
            FLASH_METRICS_LISTEN=f"127.0.0.1:{self.port}",
            FLASH_REPORT_INTERVAL="0.2",
            FLASH_REPORT_RETRY_BASE="0.2",
            PYTHONPATH=str(ROOT),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flash_payouts", "serve", "--services", "metrics,reports"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def ready(self, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/health") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, "serve did not start"
                await asyncio.sleep(0.1)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        assert self.proc.returncode == 0, err
        return err


async def start_two(db_url: str, master_key_hex: str) -> list[ServeProcess]:
    procs = [ServeProcess(db_url, master_key_hex) for _ in range(2)]
    try:
        await asyncio.gather(*(p.ready() for p in procs))
    except BaseException:
        for p in procs:
            p.proc.kill()
        raise
    return procs


def time_of_day_in(seconds: int) -> tuple[str, int]:
    """A time zone whose local time is mid-morning, and the local time of day ``seconds``
    from now there: a due time today that stays clear of midnight whenever the test runs."""
    now = datetime.now(UTC)
    offset = (9 - now.hour) % 24
    offset = offset - 24 if offset > 14 else offset
    # Etc/GMT zones count the other way round: Etc/GMT-3 is three hours ahead of UTC.
    name = "Etc/GMT" + (f"{-offset:+d}" if offset else "")
    local = (now + timedelta(seconds=seconds)).astimezone(zone(name))
    return name, local.hour * 3600 + local.minute * 60 + local.second


async def test_two_serve_processes_send_each_period_once(pg_db_url, master_key_hex):
    box = SecretBox.from_text(master_key_hex)
    hook = await start_hook()
    engine = create_engine(pg_db_url)
    procs = await start_two(pg_db_url, master_key_hex)
    try:
        async with engine.begin() as conn:
            for i in range(6):
                await upsert_store(conn, f"twin{i}", name=f"Twin {i}")
        # Both processes run when the six reports fall due, all at one moment.
        name, send_at = time_of_day_in(3)
        for i in range(6):
            await make_schedule(
                engine, box, f"twin{i}", time_zone=name, send_at=send_at, webhook=hook
            )
        await hook.wait_for(6)
        await asyncio.sleep(1.5)  # ten more checks by each process: a duplicate would come now
    finally:
        logs = [p.stop() for p in procs]
        await hook.close()
    try:
        deliveries = Tally(h["Flash-Delivery"] for h, _ in hook.received)
        assert len(deliveries) == 6 and set(deliveries.values()) == {1}
        assert not any(b["late"] for b in hook.bodies())
        async with engine.connect() as conn:
            rows = (await conn.execute(select(ReportDelivery.__table__))).mappings().all()
        assert {(r["status"], r["attempts"], r["late"]) for r in rows} == {("sent", 1, False)}
        # Both processes ran the schedule; which one sent what is up to the race.
        assert all("report schedule check failed" not in log for log in logs)
    finally:
        await engine.dispose()


async def test_a_period_missed_while_both_processes_were_stopped_is_sent_once_on_next_start(
    pg_db_url, master_key_hex
):
    box = SecretBox.from_text(master_key_hex)
    hook = await start_hook()
    engine = create_engine(pg_db_url)
    try:
        async with engine.begin() as conn:
            await upsert_store(conn, "gap", name="Gap")
        name, send_at = time_of_day_in(1)
        schedule = await make_schedule(
            engine, box, "gap", time_zone=name, send_at=send_at, webhook=hook
        )
        # Nothing runs when the report falls due, nor for a while after.
        await asyncio.sleep(1 + ReportConfig(interval=0.2).late_after.total_seconds() + 0.5)
        assert hook.received == []
        procs = await start_two(pg_db_url, master_key_hex)
        try:
            await hook.wait_for(1)
            await asyncio.sleep(1.5)
        finally:
            for p in procs:
                p.stop()
        [body] = hook.bodies()
        assert body["scheduleId"] == schedule.id and body["late"] is True
        assert body["note"].startswith("This report is late")
        async with engine.connect() as conn:
            [row] = (await conn.execute(select(ReportDelivery.__table__))).mappings().all()
        assert (row["status"], row["attempts"], row["late"]) == ("sent", 1, True)

        # A restart sends nothing again.
        procs = await start_two(pg_db_url, master_key_hex)
        await asyncio.sleep(1.5)
        for p in procs:
            p.stop()
        assert len(hook.received) == 1
    finally:
        await hook.close()
        await engine.dispose()


async def test_a_removed_schedule_sends_nothing_more(engine, master_key_hex):
    box = SecretBox.from_text(master_key_hex)
    hook = await start_hook([500] * 5)
    try:
        async with engine.begin() as conn:
            await upsert_store(conn, "gone", name="Gone")
        yesterday = datetime.combine(datetime.now(UTC).date(), time(0), tzinfo=UTC)
        schedule = await make_schedule(
            engine, box, "gone", webhook=hook, created_at=yesterday - timedelta(hours=1)
        )
        scheduler = ReportScheduler(engine, box, ReportConfig(interval=0.1, retry_base=0.3))
        await scheduler.start()
        try:
            await hook.wait_for(1)
            async with engine.begin() as conn:
                assert await remove_schedule(conn, schedule.id)
            await asyncio.sleep(1.5)  # the retry would have come by now
        finally:
            await scheduler.stop()
        assert len(hook.received) == 1
        async with engine.connect() as conn:
            assert (await conn.execute(select(ReportDelivery.__table__))).all() == []
    finally:
        await hook.close()
