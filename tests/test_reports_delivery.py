"""Scheduled reports as the merchant receives them: an email from a real SMTP server (aiosmtpd)
whose figures are those of ``/payouts/stats``, with the spreadsheet attached, and a webhook
target that fails and is retried with backoff, every failure counted in the metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import re
import ssl
from datetime import UTC, datetime, time, timedelta

import aiohttp
import openpyxl
import pytest
import trustme
from api_fixtures import summary_tables
from prometheus_client.parser import text_string_to_metric_families
from report_fixtures import (
    free_port,
    make_schedule,
    parts,
    start_hook,
    start_smtp,
    store_with_a_known_day,
)
from sqlalchemy import select

from exporter.app import ExporterConfig
from exporter.app import create_app as exporter_app
from flash_payouts.reports.scheduler import ReportConfig, ReportScheduler
from flash_payouts.serve import run_services
from flash_payouts.settings import Settings
from ledger.schema import Counter, ReportDelivery
from ledger.secretbox import SecretBox
from ledger.tokens import create_token

STATUS_ROW = re.compile(
    r"^(Pending|Processing|Completed|Failed|Total)\s+([\d,]+)\s+([\d,]+)\s+([+-][\d,]+)\s+([\d,]+)$"
)


def number(text: str) -> int:
    return int(text.replace(",", ""))


async def away_from_midnight(margin: float = 60) -> None:
    """Wait out the last moments of a UTC day, so "yesterday" stays one day for the test."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=UTC)
    if (midnight - now).total_seconds() < margin:
        await asyncio.sleep((midnight - now).total_seconds() + 1)


def yesterday() -> datetime:
    return datetime.combine(datetime.now(UTC).date() - timedelta(days=1), time(0), tzinfo=UTC)


def seconds_from_now(seconds: int) -> int:
    """The UTC time of day ``seconds`` ahead."""
    ahead = datetime.now(UTC) + timedelta(seconds=seconds)
    return ahead.hour * 3600 + ahead.minute * 60 + ahead.second


async def deliveries(engine) -> list:
    async with engine.connect() as conn:
        return (await conn.execute(select(ReportDelivery.__table__))).mappings().all()


async def counters(engine, store_id: str) -> dict[tuple[str, str], int]:
    c = Counter.__table__.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.name, c.label, c.value).where(c.store_id == store_id, c.name.like("report_%"))
        )
        return {(n, lbl): int(v) for n, lbl, v in rows}


async def test_daily_report_by_email_has_the_stats_of_its_day_and_parses(
    db_url, engine, master_key_hex
):
    box = SecretBox.from_text(master_key_hex)
    await away_from_midnight()
    day, store = yesterday(), "shop1"
    await store_with_a_known_day(engine, store, day)
    async with engine.begin() as conn:
        _, token = await create_token(conn, store, "viewer", "report check")
    smtp = start_smtp()
    try:
        # Due in two seconds, at today's send time: the report of yesterday.
        await make_schedule(engine, box, store, send_at=seconds_from_now(2), smtp=smtp)
        api_port = free_port()
        settings = Settings(
            database_url=db_url,
            master_key=master_key_hex,
            api_listen=f"127.0.0.1:{api_port}",
            report_interval=0.2,
            grafana_url="https://grafana.shop.test",
        ).validate()
        stop = asyncio.Event()
        served = asyncio.create_task(run_services(settings, ["api", "reports"], stop=stop))
        try:
            [msg] = await smtp.wait_for(1)
            await asyncio.sleep(0.5)  # a second copy would come now, if one were sent
            async with aiohttp.ClientSession() as http:
                r = await http.get(
                    f"http://127.0.0.1:{api_port}/plugins/flash/api/payouts/stats",
                    params={
                        "storeId": store,
                        "startDate": day.date().isoformat(),
                        "endDate": day.date().isoformat(),
                    },
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status == 200
                stats = await r.json()
        finally:
            stop.set()
            await served
        assert len(smtp.messages) == 1
    finally:
        smtp.stop()

    assert stats["totalCount"] == 17
    assert msg["Subject"] == f"Daily payout report: Shop <{store}>, {day.date().isoformat()}"
    assert msg["From"] == "reports@monitor.test"
    assert smtp.inbox.envelopes == [
        ("reports@monitor.test", ["merchant@shop.test", "books@shop.test"])
    ]
    body = parts(msg)

    # The plain text's table: the day's figures by status, as the stats give them.
    table = {}
    for line in body["text"].splitlines():
        m = STATUS_ROW.match(line.strip())
        if m:
            table[m.group(1)] = (number(m.group(2)), number(m.group(5)))
    for status, want in stats["byStatus"].items():
        assert table[status] == (want["count"], want["amountSats"])
    assert table["Total"] == (stats["totalCount"], stats["totalAmountSats"])
    assert "=evil() (" + store + "-c2): 3 (bad_mac 1, replay 2)" in body["text"]
    assert "https://grafana.shop.test/d/flash-payouts-overview/" in body["text"]
    assert "late" not in body["text"]
    assert "Cards near the end of their balance" not in body["text"]

    # The HTML shows the same, escaped.
    assert f"Shop &lt;{store}&gt;" in body["html"] and f"Shop <{store}>" not in body["html"]
    assert "till &lt;1&gt;" in body["html"]

    # The attachment parses: the day's payouts, and a summary equal to the stats.
    [(name, data)] = body["attachments"]
    assert name == f"payouts-{store}-{day.date().isoformat()}.xlsx"
    book = openpyxl.load_workbook(io.BytesIO(data))
    assert book.sheetnames == ["Summary", "payouts"]
    rows = list(book["payouts"].iter_rows(min_row=2, values_only=True))
    assert len(rows) == stats["totalCount"]
    assert sum(r[7] for r in rows if r[7] is not None) == stats["totalAmountSats"]
    tables = summary_tables(book["Summary"])
    by_status = {r["Status"]: r for r in tables["Totals by status"]}
    for status, want in stats["byStatus"].items():
        assert (by_status[status]["Payouts"], by_status[status]["Value (sats)"]) == (
            want["count"],
            want["amountSats"],
        )
    assert [r["Card"] for r in tables["Top cards"]] == [c["boltcardId"] for c in stats["topCards"]]
    assert [r["Refused taps"] for r in tables["Cards that alerted"]] == [3]

    [row] = await deliveries(engine)
    assert (row["channel"], row["status"], row["attempts"], row["late"]) == (
        "email",
        "sent",
        1,
        False,
    )
    assert await counters(engine, store) == {("report_sends", "email"): 1}


async def scrape(aiohttp_client, engine) -> dict[tuple[str, str, str], float]:
    client = await aiohttp_client(exporter_app(engine, ExporterConfig(slow_max_age=0)))
    text = await (await client.get("/metrics")).text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("flash_report_"):
                out[s.name, s.labels["store"], s.labels["channel"]] = s.value
    return out


async def run_until(scheduler: ReportScheduler, engine, done, timeout: float = 20) -> None:
    await scheduler.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done(await deliveries(engine)):
            assert asyncio.get_running_loop().time() < deadline, await deliveries(engine)
            await asyncio.sleep(0.05)
    finally:
        await scheduler.stop()


async def test_webhook_failing_twice_gets_the_report_on_the_third_try_failures_counted(
    pg_engine, master_key_hex, aiohttp_client
):
    box = SecretBox.from_text(master_key_hex)
    await away_from_midnight()
    day = yesterday()
    await store_with_a_known_day(pg_engine, "shop2", day)
    hook = await start_hook([503, 503])
    try:
        # Added yesterday after midnight: yesterday's report is the one due (at 00:00 today).
        schedule = await make_schedule(
            pg_engine, box, "shop2", webhook=hook, created_at=day + timedelta(minutes=30)
        )
        scheduler = ReportScheduler(
            pg_engine, box, ReportConfig(interval=0.1, retry_base=0.2, attempts=6)
        )
        await run_until(scheduler, pg_engine, lambda rows: rows and rows[0]["status"] == "sent")
    finally:
        await hook.close()

    assert [h.get("Flash-Delivery") for h, _ in hook.received] == [
        f"{schedule.id}:{day.date().isoformat()}"
    ] * 3
    # Every attempt sends the same report (composed again, so only its generation time moves).
    reports = [{k: v for k, v in b.items() if k != "generatedAt"} for b in hook.bodies()]
    assert reports[0] == reports[1] == reports[2]
    headers, body = hook.received[-1]
    want = "sha256=" + hmac.new(b"hook secret", body, hashlib.sha256).hexdigest()
    assert headers["Flash-Signature"] == want
    report = hook.bodies()[-1]
    assert report["totals"]["totalCount"] == 17
    assert report["period"]["start"] == day.date().isoformat()

    [row] = await deliveries(pg_engine)
    assert (row["status"], row["attempts"]) == ("sent", 3)
    assert await counters(pg_engine, "shop2") == {
        ("report_send_failures", "webhook"): 2,
        ("report_sends", "webhook"): 1,
    }
    metrics = await scrape(aiohttp_client, pg_engine)
    assert metrics["flash_report_send_failures_total", "shop2", "webhook"] == 2
    assert metrics["flash_report_sends_total", "shop2", "webhook"] == 1
    assert metrics["flash_report_abandoned_total", "shop2", "webhook"] == 0
    assert metrics["flash_report_sends_total", "shop2", "email"] == 0


async def test_retries_back_off_and_a_report_is_given_up_after_its_last_attempt(
    engine, master_key_hex, aiohttp_client
):
    box = SecretBox.from_text(master_key_hex)
    await away_from_midnight()
    day = yesterday()
    await store_with_a_known_day(engine, "shop3", day)
    hook = await start_hook([500] * 10)
    try:
        await make_schedule(
            engine, box, "shop3", webhook=hook, created_at=day + timedelta(minutes=30)
        )
        scheduler = ReportScheduler(
            engine, box, ReportConfig(interval=0.1, retry_base=0.3, attempts=3)
        )
        await run_until(scheduler, engine, lambda rows: rows and rows[0]["status"] == "failed")
    finally:
        await hook.close()
    assert len(hook.received) == 3
    gaps = [b - a for a, b in zip(hook.times, hook.times[1:], strict=False)]
    assert gaps[0] >= 0.3 * 0.9 - 0.05 and gaps[1] >= 0.9 * 0.9 - 0.05, gaps
    [row] = await deliveries(engine)
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert row["last_error"].endswith("answered HTTP 500")
    assert "token=abc" not in row["last_error"]
    assert await counters(engine, "shop3") == {
        ("report_send_failures", "webhook"): 3,
        ("report_abandoned", "webhook"): 1,
    }
    metrics = await scrape(aiohttp_client, engine)
    assert metrics["flash_report_abandoned_total", "shop3", "webhook"] == 1


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_email_over_starttls_or_tls_logs_in_with_the_sealed_password(
    engine, master_key_hex, security, tmp_path, monkeypatch
):
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    box = SecretBox.from_text(master_key_hex)
    await away_from_midnight()
    day = yesterday()
    await store_with_a_known_day(engine, "shop4", day)
    smtp = start_smtp(tls=server_ctx, implicit_tls=security == "tls", auth=True)
    try:
        await make_schedule(
            engine,
            box,
            "shop4",
            smtp=smtp,
            smtp_security=security,
            smtp_login=("reports", "s3cret pass"),
            created_at=day + timedelta(minutes=30),
        )
        scheduler = ReportScheduler(engine, box, ReportConfig(interval=0.1, retry_base=0.2))
        await run_until(scheduler, engine, lambda rows: rows and rows[0]["status"] == "sent")
    finally:
        smtp.stop()
    assert smtp.inbox.logins == [("reports", "s3cret pass")]
    [msg] = smtp.messages
    text = parts(msg)["text"]
    # Claimed long after its due time (00:00 today): the report says it is late.
    assert "This report is late" in text and msg["Subject"].endswith("(late)")
