"""Payout lookups: the paged list, one payout in full, and the period's statistics."""

from __future__ import annotations

from aiohttp import web

from ledger.api_queries import (
    PAYOUT_SORTS,
    PayoutFilter,
    list_payouts,
    payout_detail,
    payout_row,
    payout_stats,
)

from . import params
from .context import authorize, credential, reader, scoped_store
from .errors import bad_parameter, json_response, not_found

SORTS = tuple(PAYOUT_SORTS)


async def payout_filter(request: web.Request) -> PayoutFilter:
    """The filters shared by the list and its export (the store authorised first)."""
    store_id = await scoped_store(request)
    q = request.query
    start, end = params.period(q)
    f = PayoutFilter(
        store_id=store_id,
        start=start,
        end=end,
        statuses=params.statuses(q),
        card_id=params.text(q, "boltcardId"),
        q=params.text(q, "q"),
        min_amount=params.amount(q, "minAmount"),
        max_amount=params.amount(q, "maxAmount"),
    )
    if f.min_amount is not None and f.max_amount is not None and f.max_amount < f.min_amount:
        raise bad_parameter("maxAmount", "must not be below minAmount")
    return f


def sort_order(request: web.Request) -> tuple[str, bool]:
    return params.choice(request.query, "sort", SORTS, "createdAt"), params.descending(
        request.query
    )


async def list_handler(request: web.Request) -> web.Response:
    f = await payout_filter(request)
    sort, desc = sort_order(request)
    limit = params.limit(request.query)
    offset = params.offset(request.query)
    after = None
    raw_cursor = request.query.get("cursor")
    if raw_cursor:
        if offset:
            raise bad_parameter("offset", "cannot be combined with cursor")
        after = params.decode_cursor(raw_cursor, sort, desc)
    conn = await reader(request)
    page = await list_payouts(
        conn, f, sort=sort, descending=desc, limit=limit, offset=offset, after=after
    )
    return json_response(
        {
            "items": page.items,
            "total": page.total,
            "limit": limit,
            "offset": offset if after is None else None,
            "nextCursor": (
                params.encode_cursor(sort, desc, page.next_after) if page.next_after else None
            ),
        }
    )


async def detail_handler(request: web.Request) -> web.Response:
    payout_id = params.checked_text("payoutId", request.match_info["payoutId"])
    conn = await reader(request)
    row = await payout_row(conn, payout_id)
    if row is None:
        # Checking credentials before answering keeps 404 from telling strangers anything.
        await _any_store(request)
        raise not_found(f"no payout {payout_id}")
    # The row is read once, but nothing of it leaves before the caller may see its store.
    await authorize(request, row["store_id"])
    return json_response(await payout_detail(conn, row))


async def _any_store(request: web.Request) -> None:
    store_id = params.text(request.query, "storeId")
    if store_id is not None or credential(request).store_id is not None:
        await scoped_store(request)


async def stats_handler(request: web.Request) -> web.Response:
    store_id = await scoped_store(request)
    first, last = params.day_period(request.query, default_days=30)
    assert first is not None and last is not None
    top = params.integer(request.query, "top", 10, 1, 100)
    stats = await payout_stats(await reader(request), store_id, first, last, top=top)
    return json_response(stats)
