"""A connected store's BTCPay secrets, sealed at rest, and the Greenfield clients made from them.

Sealing contexts (authenticated with the ciphertext, so a sealed value copied to another store
or column does not open):

- ``store:<store id>:api-key`` for the Greenfield API key (``stores.api_key_sealed``);
- ``store:<store id>:webhook-secret`` for the webhook secret (``stores.webhook_secret_sealed``).
"""

from __future__ import annotations

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.db import readonly
from ledger.ingest import SyncTarget, sync_targets
from ledger.secretbox import SecretBox

from .greenfield import GreenfieldClient


def api_key_context(store_id: str) -> bytes:
    return f"store:{store_id}:api-key".encode()


def webhook_secret_context(store_id: str) -> bytes:
    return f"store:{store_id}:webhook-secret".encode()


def seal_api_key(box: SecretBox, store_id: str, api_key: str) -> str:
    return box.seal_text(api_key, context=api_key_context(store_id))


def open_api_key(box: SecretBox, store_id: str, sealed: str) -> str:
    return box.open_text(sealed, context=api_key_context(store_id))


def seal_webhook_secret(box: SecretBox, store_id: str, secret: str) -> str:
    return box.seal_text(secret, context=webhook_secret_context(store_id))


def open_webhook_secret(box: SecretBox, store_id: str, sealed: str) -> str:
    return box.open_text(sealed, context=webhook_secret_context(store_id))


class StoreClients:
    """One Greenfield client per connected store, sharing one HTTP session.

    A client is rebuilt when the store's sealed key changes (``btcpay connect`` again), so a
    rotated key takes effect without a restart.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        *,
        timeout: float,
        session: aiohttp.ClientSession | None = None,
        retries: int = 2,
    ) -> None:
        self.engine = engine
        self.box = box
        self.timeout = timeout
        self.retries = retries
        self._session = session
        self._owns_session = session is None
        self._clients: dict[str, tuple[str, str, GreenfieldClient]] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self._session

    async def targets(self, store_id: str | None = None) -> list[SyncTarget]:
        async with readonly(self.engine).connect() as conn:
            return await sync_targets(conn, store_id)

    def client_for(self, target: SyncTarget) -> GreenfieldClient:
        cached = self._clients.get(target.id)
        if cached is not None and cached[:2] == (target.btcpay_url, target.api_key_sealed):
            return cached[2]
        api_key = open_api_key(self.box, target.id, target.api_key_sealed)
        client = GreenfieldClient(
            target.btcpay_url,
            api_key,
            timeout=self.timeout,
            session=self._http(),
            retries=self.retries,
        )
        self._clients[target.id] = (target.btcpay_url, target.api_key_sealed, client)
        return client

    async def get(self, store_id: str) -> GreenfieldClient | None:
        """The store's client, or None when the store has no BTCPay URL or key."""
        found = await self.targets(store_id)
        return self.client_for(found[0]) if found else None

    async def close(self) -> None:
        self._clients.clear()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
