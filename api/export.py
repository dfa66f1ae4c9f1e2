"""Streamed exports of the payout list and of card usage, as CSV or JSON.

Payouts are read in keyset batches, each in its own short transaction, so a million rows cost
one batch of memory and hold no long transaction open. CSV cells that a spreadsheet would run as a
formula are neutralised.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ledger.api_queries import USAGE_SORTS, list_payouts, usage_dict, usage_query

from . import params
from .context import CONFIG, ENGINE, READER, scoped_store
from .errors import _default, dumps
from .payouts import payout_filter, sort_order

PAYOUT_COLUMNS = (
    "payoutId",
    "pullPaymentId",
    "storeId",
    "amount",
    "currency",
    "payoutAmount",
    "payoutCurrency",
    "amountSats",
    "status",
    "state",
    "revision",
    "createdAt",
    "completedAt",
    "updatedAt",
    "boltcardId",
    "boltcardNtag",
    "recipientAddress",
    "payoutMethodId",
    "paymentHash",
    "transactionId",
    "errorMessage",
)
USAGE_COLUMNS = (
    "boltcardId",
    "alias",
    "totalPayouts",
    "totalAmount",
    "taps",
    "refusedTaps",
    "firstUsed",
    "lastUsed",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """One cell as text; a leading ``= + - @`` (or tab, CR) gets a quote mark so spreadsheets
    show it as text instead of running it."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else _text(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


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


async def _stream(
    request: web.Request,
    fmt: str,
    name: str,
    columns: tuple[str, ...],
    batches: AsyncIterator[list[dict[str, Any]]],
) -> web.StreamResponse:
    # A long export reads on connections of its own; the request's is not held meanwhile.
    await request[READER].close()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if fmt == "csv" else "application/json",
            "Content-Disposition": f'attachment; filename="{name}-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    if fmt == "csv":
        await response.write(
            csv_lines(columns, [dict(zip(columns, columns, strict=True))]).encode()
        )
    else:
        await response.write(b"[")
    first = True
    async for batch in batches:
        if not batch:
            continue
        if fmt == "csv":
            chunk = csv_lines(columns, batch)
        else:
            chunk = ("" if first else ",") + ",".join(dumps(row) for row in batch)
        first = False
        await response.write(chunk.encode())
    if fmt == "json":
        await response.write(b"]")
    await response.write_eof()
    return response


async def payouts_export_handler(request: web.Request) -> web.StreamResponse:
    fmt = params.choice(request.query, "format", ("csv", "json"), "csv")
    f = await payout_filter(request)
    sort, desc = sort_order(request)
    engine, batch = request.app[ENGINE], request.app[CONFIG].export_batch

    async def batches() -> AsyncIterator[list[dict[str, Any]]]:
        after = None
        while True:
            async with engine.connect() as conn:
                page = await list_payouts(
                    conn,
                    f,
                    sort=sort,
                    descending=desc,
                    limit=batch,
                    after=after,
                    with_total=False,
                )
            yield page.items
            if page.next_after is None:
                return
            after = page.next_after

    return await _stream(request, fmt, "payouts", PAYOUT_COLUMNS, batches())


async def usage_export_handler(request: web.Request) -> web.StreamResponse:
    fmt = params.choice(request.query, "format", ("csv", "json"), "csv")
    store_id = await scoped_store(request)
    first_day, last_day = params.day_period(request.query, default_days=None)
    sort = params.choice(request.query, "sort", USAGE_SORTS, "totalAmount")
    desc = params.descending(request.query)
    engine, batch = request.app[ENGINE], request.app[CONFIG].export_batch
    stmt = usage_query(store_id, first_day, last_day, sort=sort, descending=desc)

    async def batches() -> AsyncIterator[list[dict[str, Any]]]:
        # One server-side cursor: the grouping is done once, rows arrive batch by batch.
        async with engine.connect() as conn:
            result = await conn.stream(stmt.execution_options(yield_per=batch))
            async for part in result.mappings().partitions(batch):
                yield [usage_dict(r) for r in part]

    return await _stream(request, fmt, "boltcard-usage", USAGE_COLUMNS, batches())
