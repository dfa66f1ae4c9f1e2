"""The gateway listener as `serve` runs it: Boltcard taps and callbacks (and, when asked,
those of cards BTCPay issued), BTCPay webhooks, the enrichment worker and the reconciler."""

from __future__ import annotations

from aiohttp import web

from lnurl_gateway.app import GatewayConfig, setup_boltcard
from lnurl_gateway.btcpay_proxy import BtcpayProxyConfig, setup_btcpay_proxy
from lnurl_gateway.ingestion import setup_ingestion

from .. import instrumentation
from ..serve import Context


def config_from(ctx: Context) -> GatewayConfig:
    s = ctx.settings
    return GatewayConfig(
        public_url=s.gateway_base_url,
        k1_ttl=s.k1_ttl,
        network=s.network,
        min_withdrawable_sats=s.min_withdrawable_sats,
        default_tx_limit_sats=s.default_tx_limit_sats,
        default_day_limit_sats=s.default_day_limit_sats,
        btcpay_timeout=s.btcpay_timeout,
    )


async def build(ctx: Context) -> web.Application:
    assert ctx.box is not None, "the gateway needs the master key"
    app = web.Application()
    setup_boltcard(app, engine=ctx.engine, box=ctx.box, config=config_from(ctx))
    if ctx.settings.btcpay_card_proxy:
        setup_btcpay_proxy(
            app,
            engine=ctx.engine,
            box=ctx.box,
            config=BtcpayProxyConfig(
                public_url=ctx.settings.gateway_base_url,
                upstream_url=ctx.settings.btcpay_boltcard_url or None,
                callback_ttl=ctx.settings.k1_ttl,
            ),
        )
    setup_ingestion(
        app,
        engine=ctx.engine,
        box=ctx.box,
        reconcile_interval=ctx.settings.reconcile_interval,
        btcpay_timeout=ctx.settings.btcpay_timeout,
    )
    return instrumentation.instrument(app, "gateway")
