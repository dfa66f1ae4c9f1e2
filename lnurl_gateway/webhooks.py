"""BTCPay's payout webhooks: ``POST /webhooks/btcpay``.

Checks, in order: the body is a JSON object naming a store, the store is connected, the
``BTCPay-Sig`` header is the HMAC-SHA256 of the exact body bytes under the store's webhook
secret. Only then is the event written, and the 200 goes out only after that write committed:
BTCPay redelivers anything else, so a lost answer costs a duplicate, never an event.

The body carries no amounts, so the event is queued in the ledger (``enrich_pending``) for the
enrichment worker, which fetches the payout from Greenfield. Redeliveries carry a new
``deliveryId`` but the first one's ``originalDeliveryId``, which is the idempotency key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.batches import WriteBatcher
from ledger.db import readonly
from ledger.ingest import WebhookEvent, record_webhook_events, webhook_store
from ledger.secretbox import SecretBox, SecretBoxError

from .btcpay_stores import open_webhook_secret

log = logging.getLogger("lnurl_gateway.webhooks")

WEBHOOK_PATH = "/webhooks/btcpay"
PAYOUT_EVENTS = frozenset({"PayoutCreated", "PayoutApproved", "PayoutUpdated"})
SIGNATURE_HEADER = "BTCPay-Sig"
_MAX_ID = 64
_UNOPENABLE = "\x00unopenable"  # a secret no HMAC header can match


def signature_of(secret: str, body: bytes) -> str:
    """The ``BTCPay-Sig`` value BTCPay sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    # Constant time over the whole header, so its prefix leaks nothing either.
    return hmac.compare_digest(signature_of(secret, body).encode(), header.strip().encode())


class WebhookReceiver:
    def __init__(
        self,
        engine: AsyncEngine,
        box: SecretBox,
        *,
        on_queued: Callable[[], None] | None = None,
        cache_seconds: float = 5.0,
    ) -> None:
        self.engine = engine
        self.reader = readonly(engine)
        self.box = box
        self.on_queued = on_queued
        self.cache_seconds = cache_seconds
        self._secrets: dict[str, tuple[float, str | None]] = {}
        # Every event bumps the same ``webhook_events`` counter row: concurrent deliveries are
        # written together, one statement and one commit (see ``record_webhook_events``).
        self._writer: WriteBatcher[WebhookEvent, int | None] = WriteBatcher(self._write_events)

    async def _write_events(self, events: list[WebhookEvent]) -> list[int | None]:
        async with self.engine.begin() as conn:
            return await record_webhook_events(conn, events)

    async def _secret(self, store_id: str, *, fresh: bool = False) -> str | None:
        """The store's webhook secret, None for an unknown store.

        A known store's secret is kept for a few seconds: at BTCPay's delivery rates the lookup
        would otherwise be half of every request's database work. A signature that fails
        against a kept secret is checked again against the ledger (the store may have been
        connected again with a new secret).
        """
        now = time.monotonic()
        cached = self._secrets.get(store_id)
        if not fresh and cached is not None and cached[0] > now:
            return cached[1]
        async with self.reader.connect() as conn:
            store = await webhook_store(conn, store_id)
        secret: str | None = None
        if store is not None and store.webhook_secret_sealed is not None:
            try:
                secret = open_webhook_secret(self.box, store.id, store.webhook_secret_sealed)
            except SecretBoxError:
                log.error("store %s: webhook secret does not open with this master key", store.id)
                secret = _UNOPENABLE
        if secret is not None:
            self._secrets[store_id] = (now + self.cache_seconds, secret)
        return secret

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _refuse(request, 400, "bad-json", "the body is not JSON")
        if not isinstance(body, dict):
            return _refuse(request, 400, "bad-json", "the body is not a JSON object")
        store_id = body.get("storeId")
        if not _is_id(store_id):
            return _refuse(request, 400, "bad-event", "the body names no storeId")

        secret = await self._secret(store_id)
        if secret is None:
            return _refuse(request, 404, "unknown-store", "no connected store has it", store_id)
        if secret is _UNOPENABLE:
            return _json(500, {"error": "store-misconfigured", "message": "cannot verify"})
        header = request.headers.get(SIGNATURE_HEADER)
        if not signature_matches(secret, raw, header):
            secret = await self._secret(store_id, fresh=True)
            if secret is None or not signature_matches(secret, raw, header):
                return _refuse(request, 401, "bad-signature", "BTCPay-Sig does not match", store_id)

        event_type = body.get("type")
        if event_type not in PAYOUT_EVENTS:
            # Signed but not about payouts (a store subscribed to everything): nothing to keep,
            # and a 2xx stops BTCPay from retrying it.
            return _json(200, {"status": "ignored"})
        payout_id = body.get("payoutId")
        delivery_id = body.get("originalDeliveryId") or body.get("deliveryId")
        if not _is_id(payout_id) or not _is_id(delivery_id):
            return _refuse(request, 400, "bad-event", "payoutId or deliveryId missing", store_id)
        state = body.get("payoutState")

        event_id = await self._writer.write(
            WebhookEvent(
                store_id=store_id,
                payout_id=payout_id,
                event_type=event_type,
                state=state if isinstance(state, str) and len(state) <= 32 else None,
                delivery_id=delivery_id,
                payload=body,
                occurred_at=_timestamp(body.get("timestamp")),
            )
        )
        if event_id is None:
            return _json(200, {"status": "duplicate"})
        if self.on_queued is not None:
            self.on_queued()
        return _json(200, {"status": "accepted", "eventId": event_id})


def add_webhook_route(app: web.Application, receiver: WebhookReceiver) -> None:
    app.router.add_post(WEBHOOK_PATH, receiver.handle)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (ValueError, OverflowError, OSError):
            return None
    return None


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _refuse(
    request: web.Request, status: int, code: str, message: str, store_id: str | None = None
) -> web.Response:
    # One line per refused request; the body and headers may carry secrets and are not logged.
    log.warning(
        "webhook refused (%s %s) from %s%s",
        status,
        code,
        request.remote,
        f" for store {store_id!r}" if store_id else "",
    )
    return _json(status, {"error": code, "message": message})
