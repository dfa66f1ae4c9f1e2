"""Streamed exports of the payout list and of card usage, as CSV, JSON or a spreadsheet (.xlsx).

Payouts are read in keyset batches, each in its own short transaction, so a million rows cost
one batch of memory and hold no long transaction open. CSV cells that a spreadsheet would run as
a formula are neutralised. A spreadsheet is written in constant memory to a temporary file (the
format is a zip whose directory comes last, so it cannot be sent before it is finished) and
sent from there; the workbook's work runs in a thread, off the event loop.

The same exports serve the API, the `flash-payouts export` command and the scheduled reports.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.api_queries import (
    USAGE_SORTS,
    PayoutFilter,
    list_payouts,
    payout_stats,
    top_cards,
    usage_dict,
    usage_query,
)

from . import params
from .context import CONFIG, ENGINE, READER, scoped_store
from .errors import _default, dumps
from .payouts import payout_filter, sort_order
from .spreadsheet import (
    CURRENCY_COLUMNS,
    MEDIA_TYPE,
    TOP_CARD_COLUMNS,
    Column,
    Section,
    Spreadsheet,
    StatusTotals,
    Summary,
    formula_safe,
    status_sections,
)

FORMATS = ("csv", "json", "xlsx")
TOP_CARDS = 10

PAYOUT_SHEET = (
    Column("payoutId", "payoutId", width=26),
    Column("pullPaymentId", "pullPaymentId", width=26),
    Column("storeId", "storeId", width=16),
    Column("amount", "amount", "amount", currency="currency"),
    Column("currency", "currency", width=9),
    Column("payoutAmount", "payoutAmount", "amount", currency="payoutCurrency"),
    Column("payoutCurrency", "payoutCurrency", width=9),
    Column("amountSats", "amountSats", "sats"),
    Column("status", "status", width=11),
    Column("state", "state", width=16),
    Column("revision", "revision", "integer", width=9),
    Column("createdAt", "createdAt", "instant", width=20),
    Column("completedAt", "completedAt", "instant", width=20),
    Column("updatedAt", "updatedAt", "instant", width=20),
    Column("boltcardId", "boltcardId", width=20),
    Column("boltcardNtag", "boltcardNtag", width=16),
    Column("recipientAddress", "recipientAddress", width=30),
    Column("payoutMethodId", "payoutMethodId", width=12),
    Column("paymentHash", "paymentHash", width=30),
    Column("transactionId", "transactionId", width=30),
    Column("errorMessage", "errorMessage", width=30),
)
USAGE_SHEET = (
    Column("boltcardId", "boltcardId", width=20),
    Column("alias", "alias", width=20),
    Column("totalPayouts", "totalPayouts", "integer"),
    Column("totalAmount", "totalAmount", "sats"),
    Column("taps", "taps", "integer"),
    Column("refusedTaps", "refusedTaps", "integer"),
    Column("firstUsed", "firstUsed", "instant", width=20),
    Column("lastUsed", "lastUsed", "instant", width=20),
)
PAYOUT_COLUMNS = tuple(c.key for c in PAYOUT_SHEET)
USAGE_COLUMNS = tuple(c.key for c in USAGE_SHEET)


def csv_cell(value: Any) -> str:
    """One cell as text; a leading ``= + - @`` (or tab, CR) gets a quote mark so spreadsheets
    show it as text instead of running it."""
    if value is None:
        return ""
    return formula_safe(value if isinstance(value, str) else _text(value))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return str(_default(value))


def csv_lines(columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])
    return buf.getvalue()


Batches = AsyncIterator[list[dict[str, Any]]]


@dataclass
class Export:
    """What one export writes: its rows in batches, their columns, and (for a spreadsheet)
    the summary sheet, built once every row has been seen."""

    name: str  # file name stem and the data sheet's name
    sheet: tuple[Column, ...]
    batches: Batches
    summary: Callable[[StatusTotals | None], Awaitable[Summary]]
    count_statuses: bool = False  # whether rows are payouts to total by status

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.sheet)


def payouts_export(
    engine: AsyncEngine,
    f: PayoutFilter,
    *,
    sort: str = "createdAt",
    descending: bool = True,
    batch: int = 1000,
    title: str = "Payouts",
) -> Export:
    """Every payout matching ``f``; the spreadsheet's summary totals exactly the rows written."""

    async def batches() -> Batches:
        after = None
        while True:
            async with engine.connect() as conn:
                page = await list_payouts(
                    conn,
                    f,
                    sort=sort,
                    descending=descending,
                    limit=batch,
                    after=after,
                    with_total=False,
                )
            yield page.items
            if page.next_after is None:
                return
            after = page.next_after

    async def summary(totals: StatusTotals | None) -> Summary:
        assert totals is not None
        async with engine.connect() as conn:
            cards = await top_cards(conn, f, limit=TOP_CARDS)
        return Summary(
            title,
            facts=_filter_facts(f),
            sections=[*totals.sections(), Section("Top cards", TOP_CARD_COLUMNS, cards)],
        )

    return Export("payouts", PAYOUT_SHEET, batches(), summary, count_statuses=True)


def _filter_facts(f: PayoutFilter) -> list[tuple[str, Any]]:
    facts: list[tuple[str, Any]] = [("Store", f.store_id)]
    if f.start is not None:
        facts.append(("From (UTC)", f.start))
    if f.end is not None:
        facts.append(("Until (UTC, exclusive)", f.end))
    if f.statuses:
        facts.append(("Statuses", ", ".join(f.statuses)))
    for label, value in (
        ("Card", f.card_id),
        ("Search", f.q),
        ("Lowest amount", f.min_amount),
        ("Highest amount", f.max_amount),
    ):
        if value is not None:
            facts.append((label, value))
    facts.append(("Generated (UTC)", datetime.now(UTC)))
    return facts


def usage_export(
    engine: AsyncEngine,
    store_id: str,
    first_day: date | None,
    last_day: date | None,
    *,
    sort: str = "totalAmount",
    descending: bool = True,
    batch: int = 1000,
) -> Export:
    """Usage of every card with activity in the days ``first_day``..``last_day`` (inclusive);
    the summary holds the same days' payout statistics, as ``/payouts/stats`` gives them."""
    stmt = usage_query(store_id, first_day, last_day, sort=sort, descending=descending)

    async def batches() -> Batches:
        # One server-side cursor: the grouping is done once, rows arrive batch by batch.
        async with engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=batch))
            async for part in result.mappings().partitions(batch):
                yield [usage_dict(r) for r in part]

    async def summary(_totals: StatusTotals | None) -> Summary:
        async with engine.connect() as conn:
            # Days left open read every day the rollups hold.
            stats = await payout_stats(conn, store_id, first_day, last_day, top=TOP_CARDS)
        facts: list[tuple[str, Any]] = [
            ("Store", store_id),
            ("First day (UTC)", first_day or "first in the ledger"),
            ("Last day (UTC)", last_day or "last in the ledger"),
            ("Generated (UTC)", datetime.now(UTC)),
        ]
        amounts = [
            {"currency": cur, "amount": amount}
            for cur, amount in stats["totalAmountByCurrency"].items()
        ]
        sections = [
            *status_sections(stats["byStatus"]),
            Section("Amounts by currency", CURRENCY_COLUMNS, amounts),
            Section("Top cards", TOP_CARD_COLUMNS, stats["topCards"]),
        ]
        return Summary("Boltcard usage", facts=facts, sections=sections)

    return Export("boltcard-usage", USAGE_SHEET, batches(), summary)


# --- writing ------------------------------------------------------------------------------------


async def text_chunks(fmt: str, export: Export) -> AsyncIterator[bytes]:
    """The export as CSV or a JSON array, a batch at a time."""
    columns = export.columns
    if fmt == "csv":
        yield csv_lines(columns, [dict(zip(columns, columns, strict=True))]).encode()
    else:
        yield b"["
    first = True
    async for batch in export.batches:
        if not batch:
            continue
        if fmt == "csv":
            chunk = csv_lines(columns, batch)
        else:
            chunk = ("" if first else ",") + ",".join(dumps(row) for row in batch)
        first = False
        yield chunk.encode()
    if fmt == "json":
        yield b"]"


async def write_spreadsheet(path: str | Path, export: Export) -> int:
    """Write the export as an .xlsx file at ``path``; returns the number of data rows."""
    book = await asyncio.to_thread(Spreadsheet, path, export.name, export.sheet)
    totals = StatusTotals() if export.count_statuses else None
    async for batch in export.batches:
        if totals is not None:
            totals.add(batch)
        await asyncio.to_thread(book.write_rows, batch)
    summary = await export.summary(totals)
    await asyncio.to_thread(book.close, summary)
    return book.rows


async def write_file(fmt: str, export: Export, out: BinaryIO) -> None:
    """Write the export in ``fmt`` to an open binary file."""
    if fmt == "xlsx":
        with tempfile.TemporaryDirectory(prefix="flash-export-") as tmp:
            path = Path(tmp) / "export.xlsx"
            await write_spreadsheet(path, export)
            with path.open("rb") as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        return
    async for chunk in text_chunks(fmt, export):
        out.write(chunk)


# --- HTTP ---------------------------------------------------------------------------------------


async def _respond(request: web.Request, fmt: str, export: Export) -> web.StreamResponse:
    # A long export reads on connections of its own; the request's is not held meanwhile.
    await request[READER].close()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "Content-Disposition": f'attachment; filename="{export.name}-{stamp}.{fmt}"',
        "Cache-Control": "no-store",
    }
    if fmt == "xlsx":
        return await _send_spreadsheet(request, export, headers)
    headers["Content-Type"] = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    async for chunk in text_chunks(fmt, export):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _send_spreadsheet(
    request: web.Request, export: Export, headers: dict[str, str]
) -> web.StreamResponse:
    fd, name = tempfile.mkstemp(prefix="flash-export-", suffix=".xlsx")
    os.close(fd)
    try:
        await write_spreadsheet(name, export)
        response = web.StreamResponse(
            headers={
                **headers,
                "Content-Type": MEDIA_TYPE,
                "Content-Length": str(os.path.getsize(name)),
            }
        )
        await response.prepare(request)
        with open(name, "rb") as src:
            while chunk := await asyncio.to_thread(src.read, 1 << 18):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        os.unlink(name)


async def payouts_export_handler(request: web.Request) -> web.StreamResponse:
    fmt = params.choice(request.query, "format", FORMATS, "csv")
    f = await payout_filter(request)
    sort, desc = sort_order(request)
    export = payouts_export(
        request.app[ENGINE],
        f,
        sort=sort,
        descending=desc,
        batch=request.app[CONFIG].export_batch,
    )
    return await _respond(request, fmt, export)


async def usage_export_handler(request: web.Request) -> web.StreamResponse:
    fmt = params.choice(request.query, "format", FORMATS, "csv")
    store_id = await scoped_store(request)
    first_day, last_day = params.day_period(request.query, default_days=None)
    sort = params.choice(request.query, "sort", USAGE_SORTS, "totalAmount")
    desc = params.descending(request.query)
    export = usage_export(
        request.app[ENGINE],
        store_id,
        first_day,
        last_day,
        sort=sort,
        descending=desc,
        batch=request.app[CONFIG].export_batch,
    )
    return await _respond(request, fmt, export)
