"""Moves approved Lightning payouts along on their own, like BTCPay's payout processor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .config import SimConfig
from .models import AWAITING_PAYMENT, IN_PROGRESS, PayoutEvent
from .payouts import PayoutBook


class AutoProgress:
    def __init__(self, book: PayoutBook, config: SimConfig) -> None:
        self.book = book
        self.config = config
        self._timers: set[asyncio.TimerHandle] = set()
        book.listeners.append(self.on_event)

    def on_event(self, event: PayoutEvent) -> None:
        if not self.config.auto_progress:
            return
        payout = self.book.state.payouts.get(event.payout_id)
        if payout is None or payout.state != event.payout_state:
            return
        delays = self.config.progress_delays
        # Each step carries the count of changes it saw: a manual change in between wins.
        if payout.state == AWAITING_PAYMENT:
            self._later(delays.start, self.book.start_payment, payout.id, payout.moves)
        elif payout.state == IN_PROGRESS:
            self._later(delays.settle, self.book.settle_payment, payout.id, payout.moves)

    def _later(
        self, delay: float, step: Callable[[str, int], object], payout_id: str, moves: int
    ) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            step(payout_id, moves)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def stop(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
