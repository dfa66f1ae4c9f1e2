"""A report as people read it: an email of plain text and HTML, with the period's payouts
attached as a spreadsheet (its summary sheet holds the report's figures).

Every value from the ledger (store names, aliases, card ids) is escaped in the HTML; the
spreadsheet writes text as text, as the exports do.
"""

from __future__ import annotations

import html
import tempfile
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from api.export import payouts_export, write_spreadsheet
from api.spreadsheet import (
    MEDIA_TYPE,
    TOP_CARD_COLUMNS,
    Column,
    Section,
    StatusTotals,
    Summary,
    currency_decimals,
    status_sections,
)
from ledger.api_queries import PayoutFilter
from ledger.db import readonly

from .compose import Report, change_json, success_rate

ALERTED_COLUMNS = (
    Column("boltcardId", "Card"),
    Column("alias", "Alias"),
    Column("refusedTaps", "Refused taps", "integer"),
    Column("outcomes", "By outcome"),
    Column("lastRefusedAt", "Last refused (UTC)", "instant"),
)
CHANGE_COLUMNS = (
    Column("status", "Status"),
    Column("count", "Payouts", "integer"),
    Column("previous", "Previous period", "integer"),
    Column("change", "Change", "integer"),
    Column("amountSats", "Value (sats)", "sats"),
    Column("previousSats", "Previous (sats)", "sats"),
)
LOW_BALANCE_COLUMNS = (
    Column("boltcardId", "Card"),
    Column("alias", "Alias"),
    Column("balanceSats", "Balance (sats)", "sats"),
)


def _signed(n: int) -> str:
    return f"{n:+,}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _money(currency: str, amount: Any) -> str:
    return f"{amount:,.{currency_decimals(currency)}f} {currency}"


def _card_name(card: dict[str, Any]) -> str:
    alias = (card.get("alias") or "").strip()
    return f"{alias} ({card['boltcardId']})" if alias else card["boltcardId"]


def _outcomes(card: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in card["byOutcome"].items())


def _status_rows(report: Report) -> list[dict[str, Any]]:
    change = change_json(report.totals, report.previous)["byStatus"]
    rows = []
    for status, now in report.totals.by_status.items():
        before = report.previous.by_status.get(status, {"count": 0, "amountSats": 0})
        rows.append(
            {
                "status": status,
                "count": now["count"],
                "previous": before["count"],
                "change": change[status]["count"],
                "amountSats": now["amountSats"],
                "previousSats": before["amountSats"],
            }
        )
    rows.append(
        {
            "status": "Total",
            "count": report.totals.count,
            "previous": report.previous.count,
            "change": report.totals.count - report.previous.count,
            "amountSats": report.totals.amount_sats,
            "previousSats": report.previous.amount_sats,
        }
    )
    return rows


def _period_line(report: Report) -> str:
    return (
        f"{report.period.label} in {report.schedule.time_zone} "
        f"({report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC)"
    )


# --- plain text ----------------------------------------------------------------------------------


def text_body(report: Report) -> str:
    change = change_json(report.totals, report.previous)
    lines = [report.title, "", f"Period: {_period_line(report)}", ""]
    if report.late_note:
        lines += [report.late_note, ""]
    lines += [
        f"{'Status':<12}{'Payouts':>10}{'Previous':>10}{'Change':>10}{'Value (sats)':>16}",
    ]
    for row in _status_rows(report):
        lines.append(
            f"{row['status']:<12}{row['count']:>10,}{row['previous']:>10,}"
            f"{_signed(row['change']):>10}{row['amountSats']:>16,}"
        )
    lines += [
        "",
        f"Change from the previous period: {_signed(change['totalCount'])} payouts "
        f"({_percent(change['totalCountPercent'])}), {_signed(change['totalAmountSats'])} sats "
        f"({_percent(change['totalAmountSatsPercent'])}).",
        f"Success rate (completed of finished): {_rate(success_rate(report.totals))}, "
        f"previous period {_rate(success_rate(report.previous))}.",
    ]
    amounts = report.totals.amount_by_currency()
    if amounts:
        lines.append("Amounts: " + "; ".join(_money(c, a) for c, a in amounts.items()) + ".")
    lines += ["", "Top cards"]
    lines += [
        f"  {_card_name(c)}: {c['totalPayouts']:,} payouts, {c['totalAmount']:,} sats"
        for c in report.top_cards
    ] or ["  none"]
    lines += ["", "Cards that alerted (refused taps)"]
    lines += [
        f"  {_card_name(c)}: {c['refusedTaps']:,} ({_outcomes(c)})" for c in report.alerted_cards
    ] or ["  none"]
    if report.low_balance_cards is not None:
        lines += ["", "Cards near the end of their balance"]
        lines += [
            f"  {_card_name(c)}: {c['balanceSats']:,} sats left" for c in report.low_balance_cards
        ] or ["  none"]
    lines += ["", f"Boards: {report.boards_url}"]
    for note in report.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


# --- HTML ----------------------------------------------------------------------------------------

_CELL = 'style="padding:4px 10px;border-bottom:1px solid #ddd;text-align:{align}"'


def _table(headers: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    def cell(tag: str, i: int, value: Any) -> str:
        align = "right" if i >= numeric_from else "left"
        return f"<{tag} {_CELL.format(align=align)}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f'<table style="border-collapse:collapse"><tr>{head}</tr>{body}</table>'


def html_body(report: Report) -> str:
    e = html.escape
    change = change_json(report.totals, report.previous)
    parts = [
        '<!DOCTYPE html><html><body style="font-family:sans-serif">',
        f"<h2>{e(report.title)}</h2>",
        f"<p>Period: {e(_period_line(report))}</p>",
    ]
    if report.late_note:
        parts.append(f'<p style="color:#a15c00"><strong>{e(report.late_note)}</strong></p>')
    parts.append(
        _table(
            ["Status", "Payouts", "Previous", "Change", "Value (sats)"],
            [
                [
                    r["status"],
                    f"{r['count']:,}",
                    f"{r['previous']:,}",
                    _signed(r["change"]),
                    f"{r['amountSats']:,}",
                ]
                for r in _status_rows(report)
            ],
        )
    )
    parts.append(
        "<p>"
        + e(
            f"Change from the previous period: {_signed(change['totalCount'])} payouts "
            f"({_percent(change['totalCountPercent'])}), {_signed(change['totalAmountSats'])} "
            f"sats ({_percent(change['totalAmountSatsPercent'])}). Success rate: "
            f"{_rate(success_rate(report.totals))} (previous "
            f"{_rate(success_rate(report.previous))})."
        )
        + "</p>"
    )
    amounts = report.totals.amount_by_currency()
    if amounts:
        parts.append(
            "<p>Amounts: " + e("; ".join(_money(c, a) for c, a in amounts.items())) + "</p>"
        )
    parts.append("<h3>Top cards</h3>")
    parts.append(
        _table(
            ["Card", "Payouts", "Value (sats)"],
            [
                [_card_name(c), f"{c['totalPayouts']:,}", f"{c['totalAmount']:,}"]
                for c in report.top_cards
            ],
        )
        if report.top_cards
        else "<p>none</p>"
    )
    parts.append("<h3>Cards that alerted (refused taps)</h3>")
    parts.append(
        _table(
            ["Card", "Refused taps", "By outcome"],
            [[_card_name(c), f"{c['refusedTaps']:,}", _outcomes(c)] for c in report.alerted_cards],
            numeric_from=1,
        )
        if report.alerted_cards
        else "<p>none</p>"
    )
    if report.low_balance_cards is not None:
        parts.append("<h3>Cards near the end of their balance</h3>")
        parts.append(
            _table(
                ["Card", "Balance (sats)"],
                [[_card_name(c), f"{c['balanceSats']:,}"] for c in report.low_balance_cards],
            )
            if report.low_balance_cards
            else "<p>none</p>"
        )
    parts.append(f'<p><a href="{e(report.boards_url, quote=True)}">Open the boards</a></p>')
    for note in report.notes:
        parts.append(f"<p>{e(note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --- the spreadsheet -----------------------------------------------------------------------------


def spreadsheet_summary(report: Report) -> Summary:
    facts: list[tuple[str, Any]] = [
        ("Store", report.schedule.store_id),
        ("Store name", report.store_name),
        ("Period", report.period.label),
        ("Time zone", report.schedule.time_zone),
        ("From (UTC)", report.start),
        ("Until (UTC, exclusive)", report.end),
        ("Success rate", success_rate(report.totals)),
        ("Generated (UTC)", report.generated_at),
    ]
    notes = [n for n in (report.late_note, *report.notes) if n]
    sections = [
        *status_sections(report.totals.by_status, report.totals.by_currency),
        Section("Change from the previous period", CHANGE_COLUMNS, _status_rows(report)),
        Section("Top cards", TOP_CARD_COLUMNS, report.top_cards),
        Section(
            "Cards that alerted",
            ALERTED_COLUMNS,
            [{**c, "outcomes": _outcomes(c)} for c in report.alerted_cards],
        ),
    ]
    if report.low_balance_cards is not None:
        sections.append(
            Section(
                "Cards near the end of their balance", LOW_BALANCE_COLUMNS, report.low_balance_cards
            )
        )
    return Summary(report.title, facts=facts, sections=sections, notes=notes)


def attachment_name(report: Report) -> str:
    return f"payouts-{report.schedule.store_id}-{report.period.start.isoformat()}.xlsx"


async def spreadsheet_bytes(engine: AsyncEngine, report: Report, *, max_rows: int) -> bytes | None:
    """The period's payouts as a spreadsheet, or None (with a note on the report) when there
    are more than ``max_rows`` of them: mail servers refuse large messages."""
    if report.totals.count > max_rows:
        report.notes.append(
            f"The period's {report.totals.count:,} payouts are more than the {max_rows:,} a "
            "report attaches; export them with `flash-payouts export payouts --store "
            f"{report.schedule.store_id} --start {report.start.isoformat()} --end "
            f"{report.end.isoformat()} --format xlsx` or the API's /payouts/export."
        )
        return None
    export = payouts_export(
        readonly(engine),
        PayoutFilter(store_id=report.schedule.store_id, start=report.start, end=report.end),
        descending=False,
    )

    async def summary(_totals: StatusTotals | None) -> Summary:
        return spreadsheet_summary(report)

    export.summary = summary
    with tempfile.TemporaryDirectory(prefix="flash-report-") as tmp:
        path = Path(tmp) / "report.xlsx"
        await write_spreadsheet(path, export)
        return path.read_bytes()


# --- the email -----------------------------------------------------------------------------------


def email_message(
    report: Report, *, attachment: bytes | None, message_id: str | None = None
) -> EmailMessage:
    """The report as a multipart email: plain text and HTML alternatives, the spreadsheet."""
    schedule = report.schedule
    msg = EmailMessage()
    subject = report.title + (" (late)" if report.late else "")
    msg["Subject"] = subject
    msg["From"] = schedule.mail_from or ""
    msg["To"] = ", ".join(schedule.recipients)
    msg["Date"] = format_datetime(report.generated_at)
    domain = parseaddr(schedule.mail_from or "")[1].rpartition("@")[2] or "flash-payouts"
    # The same id on every attempt at one period's report lets mail clients drop a duplicate.
    msg["Message-ID"] = message_id or (
        f"<report.{schedule.id}.{report.period.start.isoformat()}@{domain}>"
    )
    msg["X-Flash-Report"] = report.delivery_id
    msg.set_content(text_body(report))
    msg.add_alternative(html_body(report), subtype="html")
    if attachment is not None:
        maintype, subtype = MEDIA_TYPE.split("/")
        msg.add_attachment(
            attachment, maintype=maintype, subtype=subtype, filename=attachment_name(report)
        )
    return msg
