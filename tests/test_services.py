"""What `serve` mounts on each listener, from the shared settings."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncEngine

from flash_payouts.serve import Context, build_app
from flash_payouts.settings import Settings
from ledger.secretbox import SecretBox


def paths(app) -> set[str]:
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


async def test_gateway_listener_serves_taps_webhooks_and_health(engine: AsyncEngine) -> None:
    ctx = Context(Settings(), engine, SecretBox(b"k" * 32))
    app = await build_app("gateway", ctx)
    assert {"/boltcard", "/boltcard/callback", "/webhooks/btcpay", "/health"} <= paths(app)
    assert not any("btcpay-callback" in p for p in paths(app))


async def test_btcpay_card_proxy_is_mounted_only_when_asked(engine: AsyncEngine) -> None:
    settings = replace(Settings(), btcpay_card_proxy=True)
    app = await build_app("gateway", Context(settings, engine, SecretBox(b"k" * 32)))
    assert any("btcpay-callback" in p for p in paths(app))


async def test_api_and_metrics_listeners_answer_health(engine: AsyncEngine) -> None:
    ctx = Context(Settings(), engine, SecretBox(b"k" * 32))
    assert "/health" in paths(await build_app("api", ctx))
    metrics = paths(await build_app("metrics", ctx))
    assert {"/metrics", "/", "/health"} <= metrics
