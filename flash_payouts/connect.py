"""Connecting a BTCPay store and reconciling it: shared by `btcpay connect`, `btcpay sync` and the
demo, so the demo goes through exactly the path an operator's store does."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.secretbox import SecretBox
from ledger.stores import get_store, upsert_store
from lnurl_gateway.btcpay_stores import StoreClients, seal_api_key, seal_webhook_secret
from lnurl_gateway.greenfield import GreenfieldAuthError, GreenfieldClient, GreenfieldError
from lnurl_gateway.reconcile import Progress, ReconcileResult, reconcile_all
from lnurl_gateway.webhooks import PAYOUT_EVENTS


class StoreNotVisible(GreenfieldAuthError):
    """BTCPay refused, for this store, a permission the key holds: the store does not exist,
    or the key's user cannot see it. BTCPay answers both alike (403, not 404)."""


@dataclass(frozen=True)
class Connected:
    store_id: str
    name: str
    webhook_id: str


async def connect_store(
    engine: AsyncEngine,
    box: SecretBox,
    *,
    store_id: str,
    btcpay_url: str,
    api_key: str,
    webhook_url: str,
    timeout: float,
) -> Connected:
    """Check the key's permissions, register the payout webhook with a fresh secret (sealed
    before the webhook exists, so BTCPay's first delivery finds it), and record the store.

    Raises GreenfieldAuthError (with ``missing_permission``) for a key that cannot do the job,
    and StoreNotVisible when the key may do it but BTCPay shows it no such store.
    """
    async with GreenfieldClient(btcpay_url, api_key, timeout=timeout) as client:
        info = await client.current_api_key()
        missing = info.missing(store_id)
        if missing:
            raise GreenfieldAuthError(
                "missing permission", status=403, missing_permission=missing[0]
            )
        try:
            await client.list_webhooks(store_id)
        except GreenfieldAuthError as exc:
            if exc.missing_permission and info.allows(exc.missing_permission, store_id):
                raise StoreNotVisible(
                    exc.message, status=exc.status, missing_permission=exc.missing_permission
                ) from None
            raise
        name = ""
        with contextlib.suppress(GreenfieldAuthError):
            # The store's name needs canviewstoresettings, which connecting does not.
            name = str((await client.get_store(store_id)).get("name") or "")
        secret = secrets.token_urlsafe(32)
        async with engine.begin() as conn:
            previous = await get_store(conn, store_id)
            await upsert_store(
                conn, store_id, webhook_secret_sealed=seal_webhook_secret(box, store_id, secret)
            )
        webhook = await client.create_webhook(
            store_id, webhook_url, secret, events=sorted(PAYOUT_EVENTS)
        )
        if previous is not None and previous.webhook_id and previous.webhook_id != webhook["id"]:
            # A second connect replaces the webhook; leaving the old one would double every event.
            with contextlib.suppress(GreenfieldError):
                await client.delete_webhook(store_id, previous.webhook_id)
    async with engine.begin() as conn:
        await upsert_store(
            conn,
            store_id,
            name=name,
            btcpay_url=btcpay_url.rstrip("/"),
            api_key_sealed=seal_api_key(box, store_id, api_key),
            webhook_id=str(webhook["id"]),
            webhook_secret_sealed=seal_webhook_secret(box, store_id, secret),
        )
    return Connected(store_id, name, str(webhook["id"]))


async def reconcile_stores(
    engine: AsyncEngine,
    box: SecretBox,
    *,
    timeout: float,
    store_id: str | None = None,
    progress: Progress | None = None,
) -> list[ReconcileResult]:
    """One full reconcile pass over one store, or every connected store (none: empty list)."""
    clients = StoreClients(engine, box, timeout=timeout)
    try:
        return await reconcile_all(engine, clients, store_id, progress=progress)
    finally:
        await clients.close()
