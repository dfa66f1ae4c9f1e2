"""Boltcards: usage per card, management for managers, and the card holder's data rights."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ledger import cards as registry
from ledger.api_queries import USAGE_SORTS, card_summary, card_usage
from ledger.privacy import card_store, erase_card, export_card
from ledger.stores import set_card_tracking

from . import params
from .context import WRITER, authorize, reader, scoped_store
from .errors import ApiError, bad_parameter, json_response, not_found

MAX_LIMIT_SATS = 21_000_000 * 100_000_000


async def usage_handler(request: web.Request) -> web.Response:
    store_id = await scoped_store(request)
    q = request.query
    first, last = params.day_period(q, default_days=None)
    sort = params.choice(q, "sort", USAGE_SORTS, "totalAmount")
    desc = params.descending(q)
    limit, offset = params.limit(q), params.offset(q)
    items, total = await card_usage(
        await reader(request),
        store_id,
        first,
        last,
        sort=sort,
        descending=desc,
        limit=limit,
        offset=offset,
    )
    return json_response({"items": items, "total": total, "limit": limit, "offset": offset})


async def _card_for(request: web.Request, need: str) -> str:
    """The card named in the path, once the caller may ``need`` its store."""
    card_id = params.checked_text("boltcardId", request.match_info["boltcardId"])
    store_id = await card_store(await reader(request), card_id)
    if store_id is None:
        raise not_found(f"no card {card_id}")
    await authorize(request, store_id, need)  # type: ignore[arg-type]
    return card_id


async def card_handler(request: web.Request) -> web.Response:
    card_id = await _card_for(request, "view")
    return json_response(await card_summary(await reader(request), card_id))


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "invalid-body", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid-body", "the body must be a JSON object")
    return body


def _limit(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT_SATS:
        raise bad_parameter(name, "must be a whole number of satoshis, 0 or more")
    return value


async def update_card_handler(request: web.Request) -> web.Response:
    """PATCH a card: ``alias`` (null clears it), ``enabled``, ``txLimitSats``, ``dayLimitSats``."""
    card_id = await _card_for(request, "manage")
    body = await _json_body(request)
    unknown = set(body) - {"alias", "enabled", "txLimitSats", "dayLimitSats"}
    if unknown:
        raise bad_parameter(sorted(unknown)[0], "is not a card setting")
    if "alias" in body and body["alias"] is not None:
        if not isinstance(body["alias"], str) or len(body["alias"]) > 100:
            raise bad_parameter("alias", "must be text of at most 100 characters, or null")
        if not body["alias"].isprintable():
            raise bad_parameter("alias", "contains control characters")
    if "enabled" in body and not isinstance(body["enabled"], bool):
        raise bad_parameter("enabled", "must be true or false")
    tx_limit, day_limit = _limit(body, "txLimitSats"), _limit(body, "dayLimitSats")
    async with request.app[WRITER].begin() as conn:
        if "alias" in body:
            await registry.set_alias(conn, card_id, body["alias"] or None)
        if "enabled" in body:
            await registry.set_enabled(conn, card_id, body["enabled"])
        if tx_limit is not None or day_limit is not None:
            await registry.set_limits(
                conn, card_id, tx_limit_sats=tx_limit, day_limit_sats=day_limit
            )
        summary = await card_summary(conn, card_id)
    return json_response(summary)


async def card_tracking_handler(request: web.Request) -> web.Response:
    """PUT ``{"enabled": false}`` opts the store out of card tracking (and back in)."""
    store_id = params.checked_text("storeId", request.match_info["storeId"])
    await authorize(request, store_id, "manage")
    body = await _json_body(request)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise bad_parameter("enabled", "must be true or false")
    async with request.app[WRITER].begin() as conn:
        if not await set_card_tracking(conn, store_id, enabled):
            raise not_found(f"store {store_id} is not connected")
    return json_response({"storeId": store_id, "cardTracking": enabled})


async def card_data_handler(request: web.Request) -> web.Response:
    """Everything held about one card, for a data access request."""
    card_id = await _card_for(request, "manage")
    data = await export_card(await reader(request), card_id)
    if data is None:
        raise not_found(f"no card {card_id}")
    response = json_response(data)
    response.headers["Content-Disposition"] = f'attachment; filename="boltcard-{card_id}.json"'
    return response


async def erase_card_handler(request: web.Request) -> web.Response:
    """Erase the card's personal data; counts, rollups and metrics stay as they were."""
    card_id = await _card_for(request, "manage")
    async with request.app[WRITER].begin() as conn:
        erased = await erase_card(conn, card_id)
    if erased is None:
        raise not_found(f"no card {card_id}")
    return json_response(
        {
            "boltcardId": card_id,
            "erasedAt": erased.erased_at,
            "tapsErased": erased.taps,
            "payoutsErased": erased.payouts,
        }
    )
