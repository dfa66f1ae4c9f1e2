"""A report's text, HTML and JSON: every section, values escaped, and the balance section only
where the ledger has balances."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import openpyxl
from api_fixtures import summary_tables

from api.spreadsheet import Spreadsheet
from flash_payouts.reports.compose import Report
from flash_payouts.reports.periods import period_of
from flash_payouts.reports.render import email_message, html_body, spreadsheet_summary, text_body
from ledger.report_figures import Totals
from ledger.reports import Schedule

NOW = datetime(2024, 6, 4, 6, tzinfo=UTC)


def report(**changes) -> Report:
    schedule = Schedule(
        id="sched1",
        store_id="shop<1>",
        frequency="daily",
        time_zone="UTC",
        send_at=0,
        email_to="a@shop.test",
        mail_from="r@monitor.test",
        smtp_host="localhost",
        smtp_port=25,
        smtp_security="none",
        smtp_username=None,
        smtp_password_sealed=None,
        webhook_url=None,
        webhook_secret_sealed=None,
        created_at=NOW,
        updated_at=NOW,
    )
    totals, previous = Totals(), Totals()
    totals.add("Completed", "USD", 3, Decimal("12.50"), 30_000)
    totals.add("Failed", "USD", 1, Decimal("1.25"), 5_000)
    previous.add("Completed", "USD", 2, Decimal("5"), 10_000)
    period = period_of("daily", date(2024, 6, 3))
    start, end = period.bounds(ZoneInfo("UTC"))
    values = dict(
        schedule=schedule,
        store_name="<script>alert(1)</script>",
        period=period,
        start=start,
        end=end,
        totals=totals,
        previous=previous,
        top_cards=[
            {"boltcardId": "c1", "alias": "<b>till</b>", "totalPayouts": 3, "totalAmount": 30_000}
        ],
        alerted_cards=[
            {
                "boltcardId": "c2",
                "alias": None,
                "refusedTaps": 2,
                "byOutcome": {"replay": 2},
                "lastRefusedAt": start,
            }
        ],
        boards_url="https://grafana.test/d/x?var-store=shop%3C1%3E&a=1",
        generated_at=NOW,
    )
    values.update(changes)
    return Report(**values)


def test_text_and_html_carry_every_section_and_escape_ledger_values():
    r = report()
    text, html = text_body(r), html_body(r)
    for needle in ("<b>till</b> (c1): 3 payouts, 30,000 sats", "c2: 2 (replay 2)", "75.0%"):
        assert needle in text
    assert "Amounts: 13.75 USD." in text
    assert "Change from the previous period: +2 payouts (+100.0%), +25,000 sats (+250.0%)." in text
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;till&lt;/b&gt;" in html
    assert 'href="https://grafana.test/d/x?var-store=shop%3C1%3E&amp;a=1"' in html
    assert "Cards near the end of their balance" not in text + html
    assert "lowBalanceCards" not in r.payload()


def test_the_balance_section_appears_when_the_report_has_balances():
    r = report(low_balance_cards=[{"boltcardId": "c3", "alias": "kiosk", "balanceSats": 1_200}])
    assert "Cards near the end of their balance\n  kiosk (c3): 1,200 sats left" in text_body(r)
    assert "Cards near the end of their balance" in html_body(r)
    assert r.payload()["lowBalanceCards"] == [
        {"boltcardId": "c3", "alias": "kiosk", "balanceSats": 1_200}
    ]
    titles = [s.title for s in spreadsheet_summary(r).sections]
    assert "Cards near the end of their balance" in titles


def test_json_payload_speaks_the_stats_vocabulary():
    data = json.loads(report().payload_bytes())
    assert data["totals"]["totalCount"] == 4
    assert data["totals"]["totalAmountSats"] == 35_000
    assert data["totals"]["totalAmountByCurrency"] == {"USD": "13.75"}
    assert data["totals"]["byStatus"]["Completed"] == {"count": 3, "amountSats": 30_000}
    assert data["totals"]["successRate"] == 0.75
    assert data["change"]["totalCount"] == 2 and data["change"]["totalCountPercent"] == 100.0
    assert data["period"] == {
        "start": "2024-06-03",
        "end": "2024-06-04",
        "startAt": "2024-06-03T00:00:00Z",
        "endAt": "2024-06-04T00:00:00Z",
        "label": "2024-06-03",
    }
    assert data["deliveryId"] == "sched1:2024-06-03" and data["late"] is False


def test_late_report_says_so_in_subject_text_and_json():
    r = report(late=True, due_at=datetime(2024, 6, 4, 0, tzinfo=UTC))
    msg = email_message(r, attachment=None)
    assert msg["Subject"].endswith("(late)")
    assert "fell due at 2024-06-04 00:00 UTC" in text_body(r)
    assert r.payload()["note"].startswith("This report is late")


def test_report_summary_sheet_holds_the_change_and_the_alerted_cards(tmp_path):
    r = report()
    book = Spreadsheet(tmp_path / "r.xlsx", "payouts", ())
    book.close(spreadsheet_summary(r))
    tables = summary_tables(openpyxl.load_workbook(tmp_path / "r.xlsx")["Summary"])
    change = {row["Status"]: row for row in tables["Change from the previous period"]}
    assert (change["Completed"]["Payouts"], change["Completed"]["Previous period"]) == (3, 2)
    assert change["Total"]["Change"] == 2
    [alerted] = tables["Cards that alerted"]
    assert alerted["Card"] == "c2" and alerted["By outcome"] == "replay 2"
