"""Wiring the Boltcard gateway into an aiohttp application.

``setup_boltcard`` adds the tap and callback routes, the LUD-03 error middleware and the
lifecycle of the Greenfield HTTP session to an existing application (the gateway listener also
serves BTCPay's webhooks); ``create_app`` makes a stand-alone one for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.secretbox import SecretBox

from .greenfield import GreenfieldClient
from .handlers import (
    GATEWAY,
    BoltcardGateway,
    GatewaySettings,
    callback_handler,
    lud03_errors,
    network_of,
    tap_handler,
)
from .registry import REFRESH_INTERVAL, CardRegistry, KeyRing

TAP_PATH = "/boltcard"
CALLBACK_PATH = "/boltcard/callback"

REGISTRY = web.AppKey("boltcard_registry", CardRegistry)


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's options (each comes from a ``flash-payouts`` setting of the same name)."""

    public_url: str  # where wallets reach this gateway, e.g. https://pay.example.com
    k1_ttl: float = 300.0
    network: str = "bitcoin"  # bitcoin, testnet, signet, regtest (or a BOLT11 prefix)
    min_withdrawable_sats: int = 1
    default_tx_limit_sats: int = 100_000
    default_day_limit_sats: int = 1_000_000
    btcpay_timeout: float = 10.0
    default_description: str = "Boltcard withdrawal"
    # Least seconds between loads of new card keys prompted by taps no known key can read.
    key_refresh_interval: float = REFRESH_INTERVAL

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def callback_url(self) -> str:
        return self.base_url + CALLBACK_PATH

    @property
    def lnurlw_base(self) -> str:
        """What a card is programmed with: ``lnurlw://HOST[/PREFIX]/boltcard``."""
        parts = urlsplit(self.base_url)
        return f"lnurlw://{parts.netloc}{parts.path.rstrip('/')}{TAP_PATH}"

    def gateway_settings(self) -> GatewaySettings:
        return GatewaySettings(
            callback_url=self.callback_url,
            k1_ttl=self.k1_ttl,
            network=network_of(self.network),
            min_withdrawable_sats=self.min_withdrawable_sats,
            default_tx_limit_sats=self.default_tx_limit_sats,
            default_day_limit_sats=self.default_day_limit_sats,
            btcpay_timeout=self.btcpay_timeout,
            default_description=self.default_description,
        )


def make_registry(engine: AsyncEngine, box: SecretBox, config: GatewayConfig) -> CardRegistry:
    return CardRegistry(
        engine,
        box,
        lnurlw_base=config.lnurlw_base,
        default_tx_limit_sats=config.default_tx_limit_sats,
        default_day_limit_sats=config.default_day_limit_sats,
        ring=KeyRing(box, refresh_interval=config.key_refresh_interval),
    )


class _Clients:
    """One Greenfield client per BTCPay URL, all on one HTTP session opened with the app."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.session: aiohttp.ClientSession | None = None
        self._clients: dict[str, GreenfieldClient] = {}

    def __call__(self, base_url: str) -> GreenfieldClient:
        client = self._clients.get(base_url)
        if client is None:
            if self.session is None:
                raise RuntimeError("the gateway's HTTP session is not open")
            client = GreenfieldClient(base_url, timeout=self.timeout, session=self.session)
            self._clients[base_url] = client
        return client


def setup_boltcard(
    app: web.Application, *, engine: AsyncEngine, box: SecretBox, config: GatewayConfig
) -> None:
    """Add ``GET /boltcard`` and ``GET /boltcard/callback`` to ``app``."""
    registry = make_registry(engine, box, config)
    clients = _Clients(config.btcpay_timeout)
    gateway = BoltcardGateway(engine, box, config.gateway_settings(), registry.ring, clients)
    app[GATEWAY] = gateway
    app[REGISTRY] = registry
    app.middlewares.append(lud03_errors)
    app.router.add_get(TAP_PATH, tap_handler)
    app.router.add_get(CALLBACK_PATH, callback_handler)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        clients.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200), raise_for_status=False
        )
        async with engine.connect() as conn:
            await registry.ring.load(conn)
        try:
            yield
        finally:
            await clients.session.close()

    app.cleanup_ctx.append(lifecycle)


def create_app(engine: AsyncEngine, box: SecretBox, config: GatewayConfig) -> web.Application:
    """A stand-alone gateway application (tests, benchmarks, ``python -m`` runners)."""
    app = web.Application()
    setup_boltcard(app, engine=engine, box=box, config=config)
    return app
