"""BTCPay's webhook sender: signed, indented JSON bodies, in order per webhook, redelivered.

One queue and one sender task per webhook keep deliveries in order. As in BTCPay's
WebhookSender, a delivery that fails (any answer but a 2xx, a network error, no answer in time)
is retried in place after 10 s, 1 min and six times 10 min, each retry a new delivery with a new
``deliveryId``, the first one's ``originalDeliveryId`` and ``isRedelivery: true``; the webhook's
later events wait behind it until it succeeds or the schedule runs out (about an hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from . import ids
from .config import Faults, SimConfig
from .models import PayoutEvent, Webhook
from .state import SimState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    webhook_id: str
    delivery_id: str
    original_delivery_id: str
    is_redelivery: bool
    event: PayoutEvent
    attempt: int = 0  # retries made so far
    held_back: bool = False  # already delayed once by the reorder fault

    def body(self) -> bytes:
        document: dict[str, Any] = {
            "deliveryId": self.delivery_id,
            "webhookId": self.webhook_id,
            "originalDeliveryId": self.original_delivery_id,
            "isRedelivery": self.is_redelivery,
            "type": self.event.type,
            "timestamp": self.event.timestamp,
            "storeId": self.event.store_id,
            "payoutId": self.event.payout_id,
            "pullPaymentId": self.event.pull_payment_id,
            "payoutState": self.event.payout_state,
        }
        # Newtonsoft's Formatting.Indented: two spaces, "key": value.
        return json.dumps(document, indent=2).encode()


def signature_header(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(
        self,
        state: SimState,
        config: SimConfig,
        rng: random.Random,
        faults: Callable[[], Faults],
    ) -> None:
        self.state = state
        self.config = config
        self.rng = rng
        self._faults = faults
        self.counters: Counter[str] = Counter()
        self._queues: dict[str, asyncio.Queue[Delivery]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._in_flight = 0  # deliveries being sent or waiting for their next retry
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.webhook_timeout),
            connector=aiohttp.TCPConnector(limit=0),
        )

    async def close(self) -> None:
        await self.stop_all()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stop_all(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for webhook_id in list(self._tasks):
            await self.stop(webhook_id)

    async def stop(self, webhook_id: str) -> None:
        self._queues.pop(webhook_id, None)
        task = self._tasks.pop(webhook_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def pending(self) -> int:
        queued = sum(q.qsize() for q in self._queues.values())
        return queued + len(self._timers) + self._in_flight

    # --- intake ---------------------------------------------------------------------------

    def on_event(self, event: PayoutEvent) -> None:
        if event.silent:
            return
        for webhook in list(self.state.webhooks.values()):
            if webhook.store_id == event.store_id and webhook.wants(event.type):
                delivery_id = ids.delivery_id()
                self._enqueue(Delivery(webhook.id, delivery_id, delivery_id, False, event))

    def _enqueue(self, delivery: Delivery) -> None:
        queue = self._queues.get(delivery.webhook_id)
        if queue is None:
            if delivery.webhook_id not in self.state.webhooks:
                return
            queue = asyncio.Queue()
            self._queues[delivery.webhook_id] = queue
            self._tasks[delivery.webhook_id] = asyncio.get_running_loop().create_task(
                self._run(delivery.webhook_id, queue), name=f"webhook-{delivery.webhook_id}"
            )
        queue.put_nowait(delivery)

    def _enqueue_later(self, delay: float, delivery: Delivery) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            self._enqueue(delivery)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    # --- sending --------------------------------------------------------------------------

    async def _run(self, webhook_id: str, queue: asyncio.Queue[Delivery]) -> None:
        while True:
            delivery = await queue.get()
            webhook = self.state.webhooks.get(webhook_id)
            if webhook is None:
                return
            self._in_flight += 1
            try:
                await self._deliver(webhook, delivery)
            finally:
                self._in_flight -= 1

    async def _deliver(self, webhook: Webhook, delivery: Delivery) -> None:
        faults = self._faults()
        if not delivery.held_back and self.rng.random() < faults.webhook_reorder_rate:
            self.counters["reordered"] += 1
            self._enqueue_later(faults.webhook_reorder_delay, replace(delivery, held_back=True))
            return
        if self.rng.random() < faults.webhook_drop_rate:
            self.counters["dropped"] += 1
            return
        delivered = await self._attempt(webhook, delivery)
        delays = self.config.redelivery_delays
        while not delivered:
            attempt = delivery.attempt
            if not webhook.automatic_redelivery or attempt >= len(delays):
                self.counters["abandoned"] += 1
                return
            # The queue waits: later events of this webhook go out only after this one.
            await asyncio.sleep(delays[attempt] * self.config.redelivery_scale)
            current = self.state.webhooks.get(webhook.id)
            if current is None or not current.wants(delivery.event.type):
                return
            webhook = current
            delivery = replace(
                delivery,
                delivery_id=ids.delivery_id(),
                is_redelivery=True,
                attempt=attempt + 1,
            )
            self.counters["redeliveries"] += 1
            delivered = await self._attempt(webhook, delivery)

    async def _attempt(self, webhook: Webhook, delivery: Delivery) -> bool:
        """One delivery attempt (twice at the duplicate fault); True on a 2xx answer."""
        faults = self._faults()
        if self.rng.random() < faults.webhook_fail_rate:
            self.counters["sent"] += 1
            self.counters["failed"] += 1
            self.counters["failed_in_transit"] += 1
            return False
        body = delivery.body()
        delivered = await self._post(webhook, body)
        if self.rng.random() < faults.webhook_duplicate_rate:
            self.counters["duplicated"] += 1
            delivered = await self._post(webhook, body) or delivered
        return delivered

    async def _post(self, webhook: Webhook, body: bytes) -> bool:
        """True on a 2xx answer: anything else is a failure BTCPay retries."""
        assert self._session is not None, "WebhookSender.start() was not awaited"
        headers = {
            "Content-Type": "application/json",
            "BTCPay-Sig": signature_header(webhook.secret, body),
            "User-Agent": "BTCPayServer",
        }
        self.counters["sent"] += 1
        try:
            async with self._session.post(webhook.url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.counters["failed"] += 1
            log.info("webhook %s delivery failed: %s", webhook.id, type(exc).__name__)
            return False
        if 200 <= status < 300:
            self.counters["succeeded"] += 1
            return True
        self.counters["failed"] += 1
        return False
