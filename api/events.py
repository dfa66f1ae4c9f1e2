"""Live updates for one store: payout changes and card taps, as Server-Sent Events.

The stream is fed by polling the ledger's ``payout_events`` and ``card_taps`` ids for the store,
so every replica serves it without any broker. Each event's SSE id is the stream position
(``e<event id>.t<tap id>``): a reconnecting EventSource sends it back as ``Last-Event-ID`` and
misses nothing. Clients that cannot hold a stream poll ``/events/poll`` with the same positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from aiohttp import web

from ledger.api_queries import changes_after, latest_ids

from .context import CONFIG, ENGINE, READER, STOPPING, reader, scoped_store
from .errors import bad_parameter, dumps, json_response

_POSITION = re.compile(r"^e(\d{1,18})\.t(\d{1,18})$")


def position(event_id: int, tap_id: int) -> str:
    return f"e{event_id}.t{tap_id}"


def parse_position(name: str, raw: str) -> tuple[int, int]:
    match = _POSITION.match(raw)
    if match is None:
        raise bad_parameter(name, "must be a position such as e120.t45 from an earlier answer")
    return int(match[1]), int(match[2])


async def _start(request: web.Request, store_id: str) -> tuple[int, int]:
    raw = request.query.get("after") or request.headers.get("Last-Event-ID")
    if raw:
        return parse_position("after", raw)
    return await latest_ids(await reader(request), store_id)


def _merge(
    events: list[dict[str, Any]], taps: list[dict[str, Any]], event_id: int, tap_id: int
) -> tuple[list[tuple[str, str, dict[str, Any]]], int, int]:
    """The changes in arrival order, each with the stream position just after it."""
    tagged = [(e["receivedAt"], "payout", e) for e in events] + [
        (t["createdAt"], "tap", t) for t in taps
    ]
    tagged.sort(key=lambda item: item[0])
    out = []
    for _, kind, item in tagged:
        if kind == "payout":
            event_id = max(event_id, item["id"])
        else:
            tap_id = max(tap_id, item["id"])
        out.append((kind, position(event_id, tap_id), item))
    return out, event_id, tap_id


async def stream_handler(request: web.Request) -> web.StreamResponse:
    store_id = await scoped_store(request)
    event_id, tap_id = await _start(request, store_id)
    # The stream may last hours: it polls on connections of its own, not the request's.
    await request[READER].close()
    config, engine, stopping = request.app[CONFIG], request.app[ENGINE], request.app[STOPPING]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # proxies must pass events through as they come
        }
    )
    await response.prepare(request)
    await response.write(f"retry: 3000\nid: {position(event_id, tap_id)}\n\n".encode())
    idle = 0.0
    try:
        while not stopping.is_set():
            async with engine.connect() as conn:
                events, taps = await changes_after(conn, store_id, event_id, tap_id)
            changes, event_id, tap_id = _merge(events, taps, event_id, tap_id)
            for kind, pos, item in changes:
                await response.write(f"id: {pos}\nevent: {kind}\ndata: {dumps(item)}\n\n".encode())
            if changes:
                idle = 0.0
                continue  # there may be more behind a full batch
            if idle >= config.events_heartbeat:
                await response.write(b": keep-alive\n\n")
                idle = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), config.events_poll_interval)
            idle += config.events_poll_interval
    except ConnectionResetError:  # the client went away
        return response
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def poll_handler(request: web.Request) -> web.Response:
    """The polling fallback: changes after ``after`` (or none, and the current position)."""
    store_id = await scoped_store(request)
    raw = request.query.get("after")
    if not raw:
        event_id, tap_id = await latest_ids(await reader(request), store_id)
        return json_response({"changes": [], "next": position(event_id, tap_id)})
    event_id, tap_id = parse_position("after", raw)
    events, taps = await changes_after(await reader(request), store_id, event_id, tap_id)
    changes, event_id, tap_id = _merge(events, taps, event_id, tap_id)
    return json_response(
        {
            "changes": [
                {"type": kind, "position": pos, "data": item} for kind, pos, item in changes
            ],
            "next": position(event_id, tap_id),
        }
    )
