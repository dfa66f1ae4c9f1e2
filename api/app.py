"""The API application: routes, the rate limit and credential check, and the error shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import readonly

from . import cards, events, export, payouts
from .auth import Authenticator, credential_text, fingerprint
from .context import (
    AUTH,
    CONFIG,
    CREDENTIAL,
    ENGINE,
    LIMITER,
    PREFIX,
    READER,
    READS,
    STOPPING,
    WRITER,
    ApiConfig,
)
from .errors import ApiError, error_response, json_response
from .openapi import document
from .ratelimit import RateLimiter, retry_after
from .reading import RequestReader, request_reads

log = logging.getLogger("api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The health answer is added by the process that runs the listener; it holds no data.
PUBLIC = {PREFIX + "/openapi.json", "/health"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as ``{"code", "message"}`` JSON; nothing internal is shown."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(
            exc.status, "http-error"
        )
        response = error_response(ApiError(exc.status, code, exc.reason))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(ApiError(500, "internal", "internal error"))


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Rate limit first (by credential, or by address without one), then identify the caller."""
    parsed = credential_text(request.headers.get("Authorization"))
    key = "c:" + fingerprint(parsed[1]) if parsed else "a:" + (request.remote or "")
    wait = request.app[LIMITER].take(key)
    if wait > 0:
        raise ApiError(
            429,
            "rate-limited",
            "too many requests for this credential; retry later",
            {"Retry-After": retry_after(wait)},
        )
    if request.path in PUBLIC:
        return await handler(request)
    reader = request[READER] = RequestReader(request.app[READS])
    try:
        header = request.headers.get("Authorization")
        request[CREDENTIAL] = await request.app[AUTH].identify(header, reader)
        return await handler(request)
    finally:
        await reader.close()


async def openapi_handler(request: web.Request) -> web.Response:
    return json_response(document())


def create_app(engine: AsyncEngine, config: ApiConfig | None = None) -> web.Application:
    config = config or ApiConfig()
    app = web.Application(middlewares=[error_middleware, access_middleware])
    app[ENGINE] = readonly(engine)
    app[READS] = request_reads(app[ENGINE])
    app[WRITER] = engine
    app[CONFIG] = config
    app[LIMITER] = RateLimiter(config.rate, config.burst)
    app[AUTH] = Authenticator(
        engine,
        timeout=config.btcpay_timeout,
        cache_seconds=config.auth_cache_seconds,
        default_btcpay_url=config.default_btcpay_url,
    )
    app[STOPPING] = asyncio.Event()

    async def http_client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app[AUTH].session = session
            yield
            app[AUTH].session = None

    async def stop_streams(app: web.Application) -> None:
        app[STOPPING].set()

    app.cleanup_ctx.append(http_client)
    app.on_shutdown.append(stop_streams)

    r = app.router
    # Fixed paths before the {payoutId} and {boltcardId} ones that would swallow them.
    r.add_get(PREFIX + "/openapi.json", openapi_handler)
    r.add_get(PREFIX + "/payouts", payouts.list_handler)
    r.add_get(PREFIX + "/payouts/export", export.payouts_export_handler)
    r.add_get(PREFIX + "/payouts/stats", payouts.stats_handler)
    r.add_get(PREFIX + "/payouts/{payoutId}", payouts.detail_handler)
    r.add_get(PREFIX + "/boltcards/usage", cards.usage_handler)
    r.add_get(PREFIX + "/boltcards/usage/export", export.usage_export_handler)
    r.add_get(PREFIX + "/boltcards/{boltcardId}", cards.card_handler)
    r.add_patch(PREFIX + "/boltcards/{boltcardId}", cards.update_card_handler)
    r.add_get(PREFIX + "/boltcards/{boltcardId}/data", cards.card_data_handler)
    r.add_delete(PREFIX + "/boltcards/{boltcardId}/personal-data", cards.erase_card_handler)
    r.add_put(PREFIX + "/stores/{storeId}/card-tracking", cards.card_tracking_handler)
    r.add_get(PREFIX + "/events", events.stream_handler)
    r.add_get(PREFIX + "/events/poll", events.poll_handler)
    return app
