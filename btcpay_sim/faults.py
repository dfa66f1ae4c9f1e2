"""Injected Greenfield faults: slow answers, 503s, hanging calls, dropped connections, and
answers held back after they were read (stale by the time they arrive)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from typing import Any

from aiohttp import web

from .config import Faults
from .errors import Handler

# Only the BTCPay-facing routes misbehave; the /_sim control routes always answer.
_FAULTY_PREFIXES = ("/api/", "/boltcard")


class FaultControl:
    def __init__(self, initial: Faults, rng: random.Random) -> None:
        self._initial = initial
        self.rng = rng
        self.current = initial
        self.counters: Counter[str] = Counter()
        self._released = asyncio.Event()
        self._released.set()

    def update(self, changes: dict[str, Any]) -> Faults:
        self.current = self.current.updated(changes)
        if self.current.hang:
            self._released.clear()
        else:
            self._released.set()
        return self.current

    def reset(self) -> Faults:
        self.current = self._initial
        self._released.set()
        return self.current

    async def wait_while_hanging(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), self.current.hang_timeout)

    def middleware(self) -> Any:
        @web.middleware
        async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith(_FAULTY_PREFIXES):
                return await handler(request)
            faults = self.current
            self.counters["api_requests"] += 1
            if faults.drop_connections:
                self.counters["dropped_connections"] += 1
                if request.transport is not None:
                    request.transport.close()
                raise web.HTTPServiceUnavailable()  # never reaches the closed socket
            if faults.hang:
                await self.wait_while_hanging()
            if faults.latency:
                await asyncio.sleep(faults.latency)
            if faults.fail_rate and self.rng.random() < faults.fail_rate:
                self.counters["injected_503"] += 1
                return web.json_response(
                    {"code": "service-unavailable", "message": "The server is unavailable"},
                    status=503,
                )
            response = await handler(request)
            if faults.slow_answer_rate and self.rng.random() < faults.slow_answer_rate:
                self.counters["slow_answers"] += 1
                await asyncio.sleep(faults.slow_answer_delay)
            return response

        return inject_faults
