"""The slow-moving readings, kept between scrapes for a bounded time.

Two readings cost most of a scrape and barely move from one scrape to the next: the distinct
cards paid over the last day and 30 days (an index entry per card paid in the window, i.e.
nearly every card) and the choice of the top K cards (a few hundred candidates ranked over a
week). They are read at most every ``max_age`` seconds: a scrape that finds them older starts
one background read and meanwhile exports what it has, so no scrape waits for them; only a
scrape that finds none, or finds them older than ``STALE_LIMIT`` times ``max_age`` (the
background reads keep failing), reads them itself, under its own deadline.

The top cards' figures, the 1-hour window and everything else are read by every scrape. The
age of what a scrape exports is ``flash_exporter_cached_readings_age_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from ledger.readings import SlowReading

from .catalogue import ACTIVE_WINDOWS

log = logging.getLogger("exporter")

# Windows read through the cache: those of a day or more, where a minute is noise.
SLOW_WINDOWS: dict[str, int] = {name: s for name, s in ACTIVE_WINDOWS if s >= 86400}
# Past max_age x this, a cached reading is not exported any more: the scrape reads afresh.
STALE_LIMIT = 5

Reader = Callable[[], Awaitable[SlowReading]]


class SlowCache:
    """One exporter's slow readings. ``max_age`` 0: every scrape reads them itself."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.reading: SlowReading | None = None
        self.refreshing: asyncio.Task[None] | None = None

    def usable(self, now: datetime) -> SlowReading | None:
        """The reading a scrape at ``now`` may export, or None when it must read its own."""
        reading = self.reading
        if self.max_age <= 0 or reading is None:
            return None
        if now - reading.at > timedelta(seconds=self.max_age * STALE_LIMIT):
            return None
        return reading

    def keep(self, reading: SlowReading | None) -> None:
        """Keep a reading made by a scrape, unless a newer one is already kept."""
        if self.max_age <= 0 or reading is None:
            return
        if self.reading is None or reading.at >= self.reading.at:
            self.reading = reading

    def refresh_if_old(self, now: datetime, read: Reader) -> None:
        """Start one background read when the kept reading is older than ``max_age``."""
        reading = self.reading
        if self.max_age <= 0 or reading is None:
            return
        if now - reading.at <= timedelta(seconds=self.max_age):
            return
        if self.refreshing is not None and not self.refreshing.done():
            return
        self.refreshing = asyncio.get_running_loop().create_task(self._refresh(read))

    async def _refresh(self, read: Reader) -> None:
        try:
            self.keep(await read())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next scrape tries again; past the limit it reads itself
            log.warning("background read of the slow readings failed: %s", type(exc).__name__)

    async def close(self) -> None:
        """Stop a background read still running (the listener is shutting down)."""
        task, self.refreshing = self.refreshing, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
