"""The simulator's parts wired together; one instance per aiohttp application."""

from __future__ import annotations

import copy
import random

from aiohttp import web

from .config import SimConfig
from .faults import FaultControl
from .invoices import InvoiceMinter
from .payouts import PayoutBook
from .permissions import KeyRing
from .progress import AutoProgress
from .state import SimState
from .webhooks import WebhookSender


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self._initial = copy.deepcopy(config)
        self.config = config
        self.rng = random.Random(config.seed)
        self.keys = KeyRing(config.api_keys, config.permissive_keys)
        self.faults = FaultControl(config.faults, self.rng)
        self.minter = InvoiceMinter(network=config.network)
        self.state = SimState()
        self.book = PayoutBook(self.state, config, self.rng)
        self.progress = AutoProgress(self.book, config)
        self.webhooks = WebhookSender(self.state, config, self.rng, lambda: self.faults.current)
        self.book.listeners.append(self.webhooks.on_event)

    async def start(self) -> None:
        await self.webhooks.start()

    async def close(self) -> None:
        self.progress.stop()
        await self.webhooks.close()

    async def reset(self) -> None:
        """Forgets every record and restores the configured settings, keys and faults."""
        self.progress.stop()
        await self.webhooks.stop_all()
        self.state.clear()
        self.webhooks.counters.clear()
        self.faults.counters.clear()
        self.faults.reset()
        initial = copy.deepcopy(self._initial)
        for name in (
            "auto_progress",
            "progress_delays",
            "payment_failure_rate",
            "cancel_rate",
            "silent_cancel_rate",
        ):
            setattr(self.config, name, getattr(initial, name))
        self.config.redelivery_scale = initial.redelivery_scale
        self.keys = KeyRing(initial.api_keys, initial.permissive_keys)


SIMULATOR = web.AppKey("btcpay_simulator", Simulator)
