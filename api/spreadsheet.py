"""Spreadsheets (.xlsx) of the exports and the scheduled reports, written in constant memory.

XlsxWriter's constant-memory mode writes each row to a temporary file as soon as the next one
starts, and writes strings inline instead of into a shared table, so a sheet of a million rows
costs one row of memory; the file is assembled when the workbook closes. Cells are typed:
instants are Excel date-times in UTC (Excel keeps no time zone), amounts are numbers shown with
their currency's decimals, sats and counts are integers. Text always goes in as text, never as
a formula; a text that starts like a formula also gets the CSV's leading quote, so a copy saved
back to CSV from a spreadsheet program stays as safe as our own CSV.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import xlsxwriter
from babel.numbers import get_currency_precision
from xlsxwriter.format import Format
from xlsxwriter.worksheet import Worksheet

from ledger.status import STATUSES

Kind = Literal["text", "instant", "date", "amount", "sats", "integer", "ratio"]

# Bitcoin's units are not ISO 4217 currencies; BTCPay Server gives them these divisibilities.
_CRYPTO_DECIMALS = {"BTC": 8, "SATS": 0, "SAT": 0, "LBTC": 8, "LTC": 8}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Excel's limit on one cell's text.
_MAX_CELL_TEXT = 32_767
# Day 0 of Excel's date serials (as XlsxWriter and every spreadsheet count them after 1900-03-01).
_EXCEL_EPOCH = datetime(1899, 12, 30, tzinfo=UTC)

MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def formula_safe(text: str) -> str:
    """``text``, with a leading quote when a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


@functools.lru_cache(maxsize=256)
def currency_decimals(code: str | None) -> int:
    """Decimals an amount in ``code`` is shown with: BTCPay's for bitcoin units, ISO 4217's
    (from CLDR) for the rest, 2 for a code neither knows."""
    if not code:
        return 2
    upper = code.upper()
    if upper in _CRYPTO_DECIMALS:
        return _CRYPTO_DECIMALS[upper]
    return int(get_currency_precision(upper))


@dataclass(frozen=True)
class Column:
    """One column: the row key it reads, its header, how its cells are typed and its width.

    An ``amount`` column names the row key holding its currency in ``currency``.
    """

    key: str
    header: str
    kind: Kind = "text"
    currency: str | None = None
    width: float = 14


@dataclass
class Section:
    """A titled table of the summary sheet."""

    title: str
    columns: Sequence[Column]
    rows: list[Mapping[str, Any]]


@dataclass
class Summary:
    """The summary sheet: a title, facts (label and value) and tables beneath."""

    title: str
    facts: list[tuple[str, Any]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Spreadsheet:
    """A workbook with a summary sheet first and one data sheet written row by row.

    Not thread-safe; the async callers hand it to one worker thread at a time.
    """

    def __init__(self, path: str | Path, data_sheet: str, columns: Sequence[Column]) -> None:
        self._book = xlsxwriter.Workbook(
            str(path),
            {
                "constant_memory": True,
                "strings_to_formulas": False,
                "strings_to_urls": False,
                "strings_to_numbers": False,
                "remove_timezone": True,
            },
        )
        self._formats: dict[str, Format] = {}
        self._instant = self._format("instant", {"num_format": "yyyy-mm-dd hh:mm:ss"})
        self._date = self._format("date", {"num_format": "yyyy-mm-dd"})
        self._integer = self._format("integer", {"num_format": "#,##0"})
        self._ratio = self._format("ratio", {"num_format": "0.0%"})
        self._summary = self._book.add_worksheet("Summary")
        self._sheet = self._book.add_worksheet(data_sheet)
        self._columns = tuple(columns)
        self._row = 0
        bold = self._format("bold", {"bold": True})
        for i, col in enumerate(self._columns):
            self._sheet.set_column(i, i, col.width)
            self._sheet.write_string(0, i, col.header, bold)
        self._sheet.freeze_panes(1, 0)

    @property
    def rows(self) -> int:
        """Data rows written so far."""
        return self._row

    def write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self._row += 1
            for i, col in enumerate(self._columns):
                self._cell(self._sheet, self._row, i, col, row)

    def close(self, summary: Summary) -> None:
        """Write the summary sheet, set the data sheet's filter, and assemble the file."""
        last = len(self._columns) - 1
        self._sheet.autofilter(0, 0, self._row, last)
        self._write_summary(summary)
        self._book.close()

    # --- cells

    def _format(self, name: str, props: dict[str, Any]) -> Format:
        fmt = self._formats.get(name)
        if fmt is None:
            fmt = self._formats[name] = self._book.add_format(props)
        return fmt

    def _amount_format(self, decimals: int) -> Format:
        pattern = "#,##0" + ("." + "0" * decimals if decimals else "")
        return self._format(f"amount{decimals}", {"num_format": pattern})

    def _cell(self, sheet: Worksheet, r: int, c: int, col: Column, row: Mapping[str, Any]) -> None:
        value = row.get(col.key)
        if value is None:
            return
        kind = col.kind
        if kind == "text" or isinstance(value, str):
            text = value if isinstance(value, str) else str(value)
            sheet.write_string(r, c, formula_safe(text)[:_MAX_CELL_TEXT])
        elif kind == "instant":
            # A date-time cell is a serial number of days with a date format; computing the
            # serial here is a third of the cost of XlsxWriter's general conversion.
            serial = (value - _EXCEL_EPOCH).total_seconds() / 86400
            sheet.write_number(r, c, serial, self._instant)
        elif kind == "date":
            day = value if isinstance(value, date) else value.date()
            sheet.write_datetime(r, c, datetime(day.year, day.month, day.day), self._date)
        elif kind == "amount":
            currency = row.get(col.currency) if col.currency else None
            fmt = self._amount_format(currency_decimals(currency))
            sheet.write_number(r, c, float(value), fmt)
        elif kind in ("sats", "integer"):
            sheet.write_number(r, c, int(value), self._integer)
        else:  # ratio
            sheet.write_number(r, c, float(value), self._ratio)

    # --- summary

    def _write_summary(self, summary: Summary) -> None:
        sheet = self._summary
        bold = self._format("bold", {"bold": True})
        title = self._format("title", {"bold": True, "font_size": 14})
        widths = [24, 22, 16, 20, 16, 16]
        for i, width in enumerate(widths):
            sheet.set_column(i, i, width)
        sheet.write_string(0, 0, summary.title, title)
        r = 1
        for label, value in summary.facts:
            r += 1
            sheet.write_string(r, 0, label, bold)
            self._cell(sheet, r, 1, Column("v", label, _kind_of(value)), {"v": value})
        for note in summary.notes:
            r += 1
            sheet.write_string(r, 0, formula_safe(note))
        for section in summary.sections:
            r += 2
            sheet.write_string(r, 0, section.title, title)
            r += 1
            for i, col in enumerate(section.columns):
                sheet.write_string(r, i, col.header, bold)
            if not section.rows:
                r += 1
                sheet.write_string(r, 0, "none")
            for row in section.rows:
                r += 1
                for i, col in enumerate(section.columns):
                    self._cell(sheet, r, i, col, row)


def _kind_of(value: Any) -> Kind:
    if isinstance(value, datetime):
        return "instant"
    if isinstance(value, date):
        return "date"
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return "text"
    return "integer" if isinstance(value, int) else "ratio"


# --- the summary's standard tables ---------------------------------------------------------------

STATUS_COLUMNS = (
    Column("status", "Status"),
    Column("count", "Payouts", "integer"),
    Column("amountSats", "Value (sats)", "sats"),
)
AMOUNT_COLUMNS = (
    Column("currency", "Currency"),
    Column("status", "Status"),
    Column("count", "Payouts", "integer"),
    Column("amount", "Amount", "amount", currency="currency"),
)
CURRENCY_COLUMNS = (
    Column("currency", "Currency"),
    Column("amount", "Amount", "amount", currency="currency"),
)
TOP_CARD_COLUMNS = (
    Column("boltcardId", "Card"),
    Column("alias", "Alias"),
    Column("totalPayouts", "Payouts", "integer"),
    Column("totalAmount", "Value (sats)", "sats"),
)


class StatusTotals:
    """Payouts counted by status (and by currency and status) as rows stream past.

    Its size is bounded by the statuses and currencies, whatever the number of rows.
    """

    def __init__(self) -> None:
        self.by_status = {s: {"count": 0, "amountSats": 0} for s in STATUSES}
        self.by_currency: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            status = row["status"]
            bucket = self.by_status.setdefault(status, {"count": 0, "amountSats": 0})
            bucket["count"] += 1
            bucket["amountSats"] += row.get("amountSats") or 0
            currency = row.get("currency")
            if currency:
                cur = self.by_currency.setdefault(
                    (currency, status), {"count": 0, "amount": Decimal(0)}
                )
                cur["count"] += 1
                cur["amount"] += row.get("amount") or Decimal(0)

    def sections(self) -> list[Section]:
        return status_sections(self.by_status, self.by_currency)


def status_sections(
    by_status: Mapping[str, Mapping[str, int]],
    by_currency: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> list[Section]:
    """The "by status" table (with a total row) and, given amounts by currency and status,
    their table."""
    rows: list[Mapping[str, Any]] = [{"status": s, **v} for s, v in by_status.items()]
    rows.append(
        {
            "status": "Total",
            "count": sum(v["count"] for v in by_status.values()),
            "amountSats": sum(v["amountSats"] for v in by_status.values()),
        }
    )
    sections = [Section("Totals by status", STATUS_COLUMNS, rows)]
    if by_currency is not None:
        amounts = [
            {"currency": cur, "status": status, **v}
            for (cur, status), v in sorted(by_currency.items())
        ]
        sections.append(Section("Amounts by currency", AMOUNT_COLUMNS, amounts))
    return sections
