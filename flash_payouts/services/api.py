"""The API listener, built from the shared settings."""

from __future__ import annotations

from aiohttp import web

from api.app import create_app
from api.context import ApiConfig

from .. import instrumentation
from ..serve import Context


async def build(ctx: Context) -> web.Application:
    s = ctx.settings
    app = create_app(
        ctx.engine,
        ApiConfig(
            rate=s.api_rate,
            burst=s.api_burst,
            btcpay_timeout=s.btcpay_timeout,
            default_btcpay_url=s.btcpay_url or None,
        ),
    )
    return instrumentation.instrument(app, "api")
