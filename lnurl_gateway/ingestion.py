"""BTCPay ingestion on the gateway listener: the webhook route and its two background tasks.

``setup_ingestion`` is what the composition root calls: it adds ``POST /webhooks/btcpay`` and
runs, for the application's lifetime, the enrichment worker (webhook events -> full payouts) and
the periodic reconciler (full sync of every connected store).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.secretbox import SecretBox

from .btcpay_stores import StoreClients
from .enrich import Enricher
from .reconcile import PeriodicReconciler
from .webhooks import WebhookReceiver, add_webhook_route

ENRICHER = web.AppKey("flash_enricher", Enricher)
RECONCILER = web.AppKey("flash_reconciler", PeriodicReconciler)


def setup_ingestion(
    app: web.Application,
    *,
    engine: AsyncEngine,
    box: SecretBox,
    reconcile_interval: float,
    btcpay_timeout: float,
) -> None:
    clients = StoreClients(engine, box, timeout=btcpay_timeout)
    # The two workers write concurrently: their batches take shared rows in one sorted order
    # (``ledger.payouts.upsert_payouts``), so they do not deadlock each other.
    enricher = Enricher(engine, clients)
    reconciler = PeriodicReconciler(engine, clients, reconcile_interval)
    app[ENRICHER] = enricher
    app[RECONCILER] = reconciler
    add_webhook_route(app, WebhookReceiver(engine, box, on_queued=enricher.wake))

    async def background(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(enricher.run(), name="btcpay-enrich"),
            asyncio.create_task(reconciler.run(), name="btcpay-reconcile"),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await clients.close()

    app.cleanup_ctx.append(background)


__all__ = ["ENRICHER", "RECONCILER", "setup_ingestion"]
