"""The enrichment worker: turns queued webhook events into full payouts fetched from Greenfield.

The queue is the ledger (``payout_events.enrich_pending``), so nothing waits in memory: a
restart, a crash or a BTCPay outage leaves the events where they are, and the next pass picks
them up. Several events for one payout need one fetch, since Greenfield answers with the payout
as it is now. Each fetched view carries the moment it was asked for, and ``upsert_payouts``
keeps the view read last (Completed once seen), so out-of-order events, a slow fetch and
concurrent workers converge on BTCPay's state.

While a store's BTCPay cannot be reached the worker backs off for that store alone, doubling the
wait up to a ceiling, and leaves its events queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.db import in_transaction, readonly
from ledger.ingest import (
    KnownPayout,
    PendingEvent,
    SyncTarget,
    complete_events,
    known_payouts,
    note_enrich_failure,
    pending_events,
)
from ledger.payouts import PayoutRecord, upsert_payouts

from .btcpay_stores import StoreClients
from .greenfield import GreenfieldAuthError, GreenfieldError, GreenfieldUnavailable
from .payout_shape import PayoutShapeError, decoder_knowing, normalise_payout

log = logging.getLogger("lnurl_gateway.enrich")


@dataclass
class EnrichStats:
    enriched: int = 0  # events taken off the queue with their payout written
    dropped: int = 0  # events taken off the queue with nothing to fetch (payout gone, bad data)
    deferred: int = 0  # events left queued (BTCPay unreachable, store not connected)
    fetches: int = 0


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0
    reason: str = ""


@dataclass
class Enricher:
    engine: AsyncEngine
    clients: StoreClients
    batch: int = 500
    concurrency: int = 16
    poll_interval: float = 5.0  # catches events queued by other replicas
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    _wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _backoff: dict[str, _Backoff] = field(default_factory=dict, repr=False)

    def wake(self) -> None:
        """Called by the webhook receiver once an event is committed."""
        self._wake.set()

    def backing_off(self) -> dict[str, float]:
        """Stores being waited out, with the seconds left."""
        now = time.monotonic()
        return {s: b.until - now for s, b in self._backoff.items() if b.until > now}

    async def run_once(self) -> EnrichStats:
        """Work through the queue once; returns when only backed-off stores' events remain."""
        stats = EnrichStats()
        targets = {t.id: t for t in await self.clients.targets()}
        after_id = 0
        while True:
            skip = list(self.backing_off())
            async with readonly(self.engine).connect() as conn:
                events = await pending_events(
                    conn, limit=self.batch, skip_stores=skip, after_id=after_id
                )
            if not events:
                return stats
            after_id = events[-1].id
            groups: dict[tuple[str, str], list[PendingEvent]] = defaultdict(list)
            for event in events:
                groups[(event.store_id, event.payout_id)].append(event)
            await self._enrich_batch(list(groups.values()), targets, stats)

    async def _enrich_batch(
        self,
        groups: list[list[PendingEvent]],
        targets: dict[str, SyncTarget],
        stats: EnrichStats,
    ) -> None:
        """Fetch every group's payout concurrently, then write them all in one transaction."""
        limit = asyncio.Semaphore(self.concurrency)

        async def fetch(group: list[PendingEvent]) -> tuple[dict[str, Any] | None, datetime]:
            async with limit:
                asked_at = datetime.now(UTC)
                return await self._fetch(targets.get(group[0].store_id), group, stats), asked_at

        fetched = await asyncio.gather(*(fetch(g) for g in groups))
        done = [
            (g, data, asked_at)
            for g, (data, asked_at) in zip(groups, fetched, strict=True)
            if data is not None
        ]
        failed = [
            e.id for g, (data, _) in zip(groups, fetched, strict=True) if data is None for e in g
        ]
        payout_ids = [g[0].payout_id for g, _, _ in done]
        async with readonly(self.engine).connect() as conn:
            known = await known_payouts(conn, payout_ids)
        # Reading new invoices is CPU work: a thread keeps the webhook receiver answering.
        shaped = await asyncio.to_thread(_shape, done, known)

        records = [record for _, record in shaped if record is not None]
        # A change completes the group's latest event row (its type names the change).
        events = {}
        for group, record in shaped:
            if record is not None:
                latest = max(group, key=lambda e: e.id)
                events[record.id] = (latest.event_type, latest.id)
        written = [e.id for group, record in shaped if record is not None for e in group]
        nothing = [e.id for group, record in shaped if record is None for e in group]

        async def write(conn: AsyncConnection) -> tuple[int, int]:
            await upsert_payouts(conn, records, source="webhook", events=events)
            enriched = await complete_events(conn, written)
            dropped = await complete_events(conn, nothing)
            await note_enrich_failure(conn, failed)
            return enriched, dropped

        # Batches lock shared rows in one order (see ``upsert_payouts``), so this worker and a
        # reconcile cannot deadlock each other; the retry covers anything else the server aborts.
        enriched, dropped = await in_transaction(self.engine, write)
        stats.enriched += enriched
        stats.dropped += dropped

    async def _fetch(
        self, target: SyncTarget | None, group: list[PendingEvent], stats: EnrichStats
    ) -> dict[str, Any] | None:
        """The payout as BTCPay has it now; ``{}`` when there is nothing to fetch ever; None
        when BTCPay should be asked again later."""
        store_id, payout_id = group[0].store_id, group[0].payout_id
        if target is None:
            stats.deferred += len(group)
            self._fail(store_id, "store has no BTCPay URL or API key")
            return None
        backoff = self._backoff.get(store_id)
        if backoff is not None and backoff.until > time.monotonic():
            stats.deferred += len(group)
            return None
        try:
            stats.fetches += 1
            data = await self.clients.client_for(target).get_payout(store_id, payout_id)
        except (GreenfieldUnavailable, GreenfieldAuthError) as exc:
            stats.deferred += len(group)
            self._fail(store_id, exc.message)
            return None
        except GreenfieldError as exc:
            # Not found, or refused as invalid: nothing a retry would change. The event rows
            # stay; they leave the queue.
            log.warning("store %s payout %s: not enriched: %s", store_id, payout_id, exc)
            return {}
        self._backoff.pop(store_id, None)
        return data if isinstance(data, dict) else {}

    def _fail(self, store_id: str, reason: str) -> None:
        backoff = self._backoff.setdefault(store_id, _Backoff())
        now = time.monotonic()
        if backoff.until > now:
            return  # already counted for this outage window
        backoff.failures += 1
        delay = min(self.backoff_max, self.backoff_base * 2 ** (backoff.failures - 1))
        backoff.until = now + random.uniform(delay / 2, delay)
        if backoff.reason != reason or backoff.failures in (1, 5, 10) or backoff.failures % 50 == 0:
            log.warning(
                "store %s: BTCPay not answering (%s); events stay queued, retry in %.1f s",
                store_id,
                reason,
                backoff.until - now,
            )
        backoff.reason = reason

    async def run(self) -> None:
        """Forever: drain the queue, then sleep until woken, a backoff ends, or the poll."""
        while True:
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker must outlive a ledger hiccup; it retries next pass
                log.exception("enrichment pass failed")
            waits = [self.poll_interval, *self.backing_off().values()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, min(waits)))


def _shape(
    done: list[tuple[list[PendingEvent], dict[str, Any], datetime]],
    known: dict[str, KnownPayout],
) -> list[tuple[list[PendingEvent], PayoutRecord | None]]:
    decode = decoder_knowing(known)
    shaped: list[tuple[list[PendingEvent], PayoutRecord | None]] = []
    for group, data, asked_at in done:
        record = None
        if data:
            try:
                record = normalise_payout(data, group[0].store_id, decode=decode)
                record.read_at = asked_at
            except PayoutShapeError as exc:
                log.warning("store %s: payout not enriched: %s", group[0].store_id, exc)
        shaped.append((group, record))
    return shaped
